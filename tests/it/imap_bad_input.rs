//! The IMAP proxy against bad and hostile clients: over-long lines, huge
//! literals, garbage, NUL, bare LF, disconnects mid-literal, silence,
//! refused addresses, idle and shutdown. The daemon must answer or close
//! cleanly and keep serving the next client.

use crate::support::imap::*;
use tokio::io::AsyncWriteExt;

async fn still_serving(env: &Env) {
    let mut c = env.client().await;
    c.send(b"n NOOP\r\n").await;
    assert_eq!(c.tagged("n").await.last().unwrap(), "n OK NOOP completed");
}

#[tokio::test]
async fn pre_login_commands_are_answered_locally() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(b"a CAPABILITY\r\nb ID (\"name\" \"test\")\r\nc NOOP\r\nd STARTTLS\r\ne SELECT INBOX\r\nf FROB\r\n").await;
    let lines = c.tagged("f").await;
    assert_eq!(
        lines[0],
        "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN"
    );
    assert_eq!(lines[1], "a OK CAPABILITY completed");
    assert!(lines[2].starts_with("* ID (\"name\" \"mailbridge\""));
    assert_eq!(lines[3], "b OK ID completed");
    assert_eq!(lines[4], "c OK NOOP completed");
    assert!(lines[5].starts_with("d BAD STARTTLS"));
    assert!(lines[6].starts_with("e BAD SELECT is not allowed before login"));
    assert_eq!(lines[7], "f BAD Unknown command");
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test]
async fn garbage_nul_and_bare_lf_get_bad_and_connection_stays() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(b"\x00\x01\xff garbage\r\n").await;
    assert!(c.line().await.starts_with("* BAD"));
    c.send(b"a NOOP\x00\r\n").await;
    assert!(c.line().await.starts_with("a BAD"));
    c.send(b"b NOOP\n").await;
    assert!(c.line().await.starts_with("b BAD"));
    c.send(b"c LOGIN \"unterminated\r\n").await;
    assert!(c.line().await.starts_with("c BAD"));
    c.send(b"d NOOP\r\n").await;
    assert_eq!(c.line().await, "d OK NOOP completed");
    still_serving(&env).await;
}

#[tokio::test]
async fn over_long_line_gets_bad_and_close() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    let mut line = b"a LOGIN ".to_vec();
    line.resize(mailbridge::imap::framing::MAX_LINE + 20_000, b'x');
    // The daemon may close before reading everything: ignore write errors.
    let _ = c.s.get_mut().write_all(&line).await;
    assert_eq!(c.line().await, "a BAD Command line too long; closing");
    c.read_to_eof().await;
    still_serving(&env).await;
}

#[tokio::test]
async fn huge_literal_refused_without_reading_it() {
    let env = setup(Setup::default()).await;
    // Synchronising: no "+", a BAD, and the connection closes.
    let mut c = env.client().await;
    c.send(b"a LOGIN dev {100000000}\r\n").await;
    assert_eq!(
        c.line().await,
        "a BAD Literal too large before login; closing"
    );
    c.read_to_eof().await;
    // Non-synchronising: the client starts sending; the daemon answers and
    // closes long before 100 MB could have been read.
    let mut c = env.client().await;
    c.send(b"b LOGIN dev {100000000+}\r\n").await;
    let _ = c.s.get_mut().write_all(&vec![b'x'; 64 * 1024]).await;
    assert_eq!(
        c.line().await,
        "b BAD Literal too large before login; closing"
    );
    still_serving(&env).await;
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test]
async fn client_disconnecting_mid_literal() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(b"a LOGIN dev {10}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    c.send(b"pla").await;
    drop(c);
    let mut c = env.client().await;
    c.send(b"b LOGIN dev {7+}\r\nplai").await;
    c.s.get_mut().shutdown().await.unwrap();
    assert!(c.read_to_eof().await.is_empty());
    still_serving(&env).await;
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test]
async fn silent_client_is_closed_after_login_timeout() {
    let env = setup(Setup {
        login_timeout: "300ms",
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    assert_eq!(c.line().await, "* BYE Autologout; no login in time");
    c.read_to_eof().await;
    // An unterminated literal counts as silence too.
    let mut c = env.client().await;
    c.send(b"a LOGIN dev {5}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    assert_eq!(c.line().await, "* BYE Autologout; no login in time");
    c.read_to_eof().await;
}

#[tokio::test]
async fn idle_proxied_connection_is_closed() {
    let env = setup(Setup {
        idle_timeout: "400ms",
        ..Setup::default()
    })
    .await;
    let mut c = env.logged_in().await;
    assert_eq!(c.line().await, "* BYE Autologout; idle for too long");
    c.read_to_eof().await;
    env.upstream
        .wait_for("upstream closed", |u| u.active() == 0)
        .await;
    assert_eq!(env.account_connections(), 0);
}

#[tokio::test]
async fn address_outside_allowed_networks_gets_bye() {
    let env = setup(Setup {
        allowed_networks: Some("10.0.0.0/8"),
        ..Setup::default()
    })
    .await;
    let mut c = Client::connect_raw(env.addr()).await;
    assert_eq!(
        c.line().await,
        "* BYE Your address is not allowed to use this server"
    );
    c.read_to_eof().await;
}

#[tokio::test]
async fn shutdown_says_bye_to_every_client() {
    let env = setup(Setup::default()).await;
    let mut pre = env.client().await;
    let mut post = env.logged_in().await;
    let Env {
        daemon, upstream, ..
    } = env;
    let stop = tokio::spawn(daemon.stop());
    assert_eq!(pre.line().await, "* BYE mailbridge shutting down");
    pre.read_to_eof().await;
    assert_eq!(post.line().await, "* BYE mailbridge shutting down");
    post.read_to_eof().await;
    tokio::time::timeout(READ_TIMEOUT, stop)
        .await
        .unwrap()
        .unwrap();
    upstream
        .wait_for("upstream closed", |u| u.active() == 0)
        .await;
}

#[tokio::test]
async fn many_simultaneous_connections_are_all_answered() {
    let env = setup(Setup::default()).await;
    let addr = env.addr();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.send(format!("t{i} CAPABILITY\r\n").as_bytes()).await;
                c.tagged(&format!("t{i}")).await.pop().unwrap()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("t{i} OK CAPABILITY completed"));
    }
    still_serving(&env).await;
}

#[tokio::test]
async fn upstream_dying_mid_fetch_closes_the_client_and_frees_the_slot() {
    let env = setup(Setup::default()).await;
    let mut c = env.logged_in().await;
    c.send(b"f FETCH 99 RFC822\r\n").await;
    assert_eq!(c.line().await, "* 99 FETCH (RFC822 {1000}");
    let rest = c.read_to_eof().await;
    assert_eq!(rest, b"only the first bytes");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while env.account_connections() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    still_serving(&env).await;
}
