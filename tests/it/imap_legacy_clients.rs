//! What real clients and compliance testers do that tripped the proxy
//! (issue 12): the RFC 2971 maximum ID before login, and clients that log
//! out but keep their socket open, against the per-account connection cap.

use crate::support::imap::*;
use mailbridge::imap::framing::{ID_MAX_FIELD, ID_MAX_PAIRS, ID_MAX_VALUE, MAX_LINE};
use tokio::io::AsyncWriteExt;

/// The RFC 2971 maximum ID: 30 pairs, 30-octet fields, 1024-octet values;
/// quoted with every octet escaped (the longest line), or as `{n}`/`{n+}`
/// literals.
fn maximal_id(tag: &str, literal: Option<&str>) -> Vec<u8> {
    let string = |out: &mut Vec<u8>, n: usize| match literal {
        None => {
            out.push(b'"');
            (0..n).for_each(|k| out.extend_from_slice(if k % 2 == 0 { b"\\\"" } else { b"\\\\" }));
            out.push(b'"');
        }
        Some(plus) => {
            out.extend_from_slice(format!("{{{n}{plus}}}\r\n").as_bytes());
            out.extend((0..n).map(|k| b"(){}\" x"[k % 7]));
        }
    };
    let mut cmd = format!("{tag} ID (").into_bytes();
    for pair in 0..ID_MAX_PAIRS {
        if pair > 0 {
            cmd.push(b' ');
        }
        string(&mut cmd, ID_MAX_FIELD);
        cmd.push(b' ');
        string(&mut cmd, ID_MAX_VALUE);
    }
    cmd.extend_from_slice(b")\r\n");
    cmd
}

/// Before login, the RFC 2971 maximum ID gets the same answer as a short
/// one in every encoding (about 32 KiB as literals, 62 KiB quoted with
/// escapes), and the session goes on to log in. Before, the proxy answered
/// `BAD Command line too long; closing`.
#[tokio::test]
async fn maximal_id_before_login_is_answered_and_login_follows() {
    let env = setup(Setup::default()).await;
    for (form, literal) in [
        ("escaped", None),
        ("literal", Some("")),
        ("literal+", Some("+")),
    ] {
        let mut c = env.client().await;
        let id = maximal_id("i", literal);
        c.send(&id).await;
        let lines = c.tagged("i").await;
        let answer: Vec<_> = lines.iter().filter(|l| !l.starts_with("+ ")).collect();
        assert!(
            answer.len() == 2
                && answer[0].starts_with("* ID (\"name\" \"mailbridge\"")
                && answer[1] == "i OK ID completed",
            "{form} ({} bytes): {lines:?}",
            id.len()
        );
        let continuations = lines.len() - answer.len();
        let expected = if literal == Some("") {
            2 * ID_MAX_PAIRS
        } else {
            0
        };
        assert_eq!(continuations, expected, "{form}");
        let lines = c.login_dev().await;
        assert!(
            lines.last().unwrap().starts_with("a OK"),
            "{form}: {lines:?}"
        );
    }
}

/// The line cap stays: one byte over it gets the BAD and a close, and the
/// daemon serves the next client.
#[tokio::test]
async fn line_over_the_pre_login_cap_is_still_refused() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    let mut line = b"a ID (\"name\" \"".to_vec();
    line.resize(MAX_LINE - 3, b'x');
    line.extend_from_slice(b"\")\r\n");
    assert_eq!(line.len(), MAX_LINE + 1);
    // The daemon may close before reading everything: ignore write errors.
    let _ = c.s.get_mut().write_all(&line).await;
    assert_eq!(c.line().await, "a BAD Command line too long; closing");
    c.read_to_eof().await;
    let mut c = env.client().await;
    c.send(b"n NOOP\r\n").await;
    assert_eq!(c.line().await, "n OK NOOP completed");
}

/// `max_connections_per_account = N`: N clients LOGIN, LOGOUT, see the
/// proxy's close and keep their sockets open. The upstream sessions are
/// over, so the slots are free and another login succeeds. Before, each slot
/// stayed taken until the client closed (or 30 s later), and it got
/// `NO [UNAVAILABLE] Too many connections for this account`.
#[tokio::test]
async fn slots_are_freed_at_logout_while_clients_stay_connected() {
    const CAP: usize = 3;
    let env = setup(Setup {
        cap: CAP,
        ..Setup::default()
    })
    .await;
    for round in 0..2 {
        let mut lingering = Vec::new();
        for i in 0..CAP {
            let mut c = env.logged_in().await;
            c.send(b"z LOGOUT\r\n").await;
            let lines = c.tagged("z").await;
            assert_eq!(
                lines.last().unwrap(),
                "z OK LOGOUT completed",
                "round {round} client {i}"
            );
            c.read_to_eof().await;
            assert_eq!(env.account_connections(), 0, "round {round} client {i}");
            lingering.push(c);
        }
        let mut c = env.client().await;
        let lines = c.login_dev().await;
        assert!(
            lines.last().unwrap().starts_with("a OK"),
            "round {round}: {lines:?}"
        );
        assert_eq!(env.account_connections(), 1);
        c.send(b"z LOGOUT\r\n").await;
        c.tagged("z").await;
        c.read_to_eof().await;
        // The earlier clients are still connected (we have not closed them).
        assert_eq!(lingering.len(), CAP);
    }
    // The cap itself still holds for live sessions.
    let mut live = Vec::new();
    for _ in 0..CAP {
        live.push(env.logged_in().await);
    }
    let mut c = env.client().await;
    let lines = c.login_dev().await;
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("a NO [UNAVAILABLE] Too many connections"),
        "{lines:?}"
    );
}

/// A close the proxy decides on before login is logged at info with its
/// reason (before, nothing was logged).
#[tokio::test]
async fn pre_login_closes_are_logged_with_the_reason() {
    let (logs, _guard) = crate::support::logs::capture(tracing::Level::INFO);
    let env = setup(Setup::default()).await;
    let mut long = b"a NOOP ".to_vec();
    long.resize(MAX_LINE + 100, b'x');
    let cases: [(&[u8], &str); 2] = [
        (&long, "a BAD Command line too long; closing"),
        (
            b"b LOGIN dev {100000}\r\n",
            "b BAD Literal too large before login; closing",
        ),
    ];
    for (input, answer) in cases {
        let mut c = env.client().await;
        // The daemon may close before reading everything: ignore write errors.
        let _ = c.s.get_mut().write_all(input).await;
        assert_eq!(c.line().await, answer);
        c.read_to_eof().await;
    }
    env.daemon.stop().await;
    let text = logs.text();
    for reason in ["reason=\"line_too_long\"", "reason=\"literal_too_large\""] {
        assert!(
            text.lines().any(|l| l.contains(" INFO ")
                && l.contains("listener=\"imap\"")
                && l.contains(reason)
                && l.contains("closing the connection")),
            "no info line with {reason:?}:\n{text}"
        );
    }
}
