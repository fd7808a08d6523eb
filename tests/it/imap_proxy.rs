//! The IMAP proxy end to end: the real daemon on port 0 in front of an
//! in-process IMAPS upstream; logins in every form, the credential swap, the
//! byte pump, caps, passthrough, and an independent client (async-imap).

use crate::support::imap::*;
use crate::support::imap_upstream::{message, Mode, POST_LOGIN_CAPS};
use base64::Engine;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

const EXPECTED_UPSTREAM_LOGIN: &[u8] = b"L1 LOGIN \"real@example.com\" \"upstreamsecret\"\r\n";

async fn assert_proxied(c: &mut Client) {
    c.send(b"s SELECT INBOX\r\n").await;
    let lines = c.tagged("s").await;
    assert!(lines.contains(&"* 3 EXISTS".to_string()), "{lines:?}");
    assert_eq!(lines.last().unwrap(), "s OK [READ-WRITE] SELECT completed");
}

#[tokio::test]
async fn login_argument_forms() {
    let env = setup(Setup::default()).await;
    let odd_quoted = ODD_PW.replace('\\', "\\\\").replace('"', "\\\"");
    let odd = ODD_PW.as_bytes();
    let forms: Vec<Vec<Vec<u8>>> = vec![
        // atoms
        vec![format!("a LOGIN {DEV} {DEV_PW}\r\n").into_bytes()],
        // quoted, with space, quote, backslash, brace and 8-bit text
        vec![format!("a LOGIN \"{ODD}\" \"{odd_quoted}\"\r\n").into_bytes()],
        // synchronising literals (wait for "+" between pieces)
        vec![
            format!("a LOGIN {{{}}}\r\n", ODD.len()).into_bytes(),
            format!("{ODD} {{{}}}\r\n", odd.len()).into_bytes(),
            [odd, b"\r\n"].concat(),
        ],
        // non-synchronising literals in one write
        vec![[
            format!("a LOGIN {{{}+}}\r\n{ODD} {{{}+}}\r\n", ODD.len(), odd.len()).as_bytes(),
            odd,
            b"\r\n",
        ]
        .concat()],
    ];
    for (i, pieces) in forms.iter().enumerate() {
        let mut c = env.client().await;
        for (k, p) in pieces.iter().enumerate() {
            c.send(p).await;
            if k + 1 < pieces.len() {
                assert!(
                    c.line().await.starts_with("+ "),
                    "form {i}: no continuation"
                );
            }
        }
        let lines = c.tagged("a").await;
        assert_eq!(
            lines.last().unwrap(),
            &format!("a OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in"),
            "form {i}"
        );
        assert_proxied(&mut c).await;
    }
    // The upstream saw exactly the account's credentials every time.
    let logins = env.upstream.logins();
    assert_eq!(logins.len(), forms.len());
    assert!(
        logins.iter().all(|l| l == EXPECTED_UPSTREAM_LOGIN),
        "{logins:?}"
    );
}

#[tokio::test]
async fn authenticate_plain_forms() {
    let env = setup(Setup::default()).await;
    let creds = b64(format!("\0{DEV}\0{DEV_PW}").as_bytes());
    // SASL-IR
    let mut c = env.client().await;
    c.send(format!("a AUTHENTICATE PLAIN {creds}\r\n").as_bytes())
        .await;
    assert!(c
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a OK [CAPABILITY"));
    assert_proxied(&mut c).await;
    // continuation, with authzid equal to the user and an odd password
    let mut c = env.client().await;
    c.send(b"b authenticate plain\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(format!("{}\r\n", b64(format!("{ODD}\0{ODD}\0{ODD_PW}").as_bytes())).as_bytes())
        .await;
    assert!(c
        .tagged("b")
        .await
        .last()
        .unwrap()
        .starts_with("b OK [CAPABILITY"));
    // cancel, "=" and a wrong mechanism keep the connection usable
    let mut c = env.client().await;
    c.send(b"c AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(b"*\r\n").await;
    assert!(c
        .tagged("c")
        .await
        .last()
        .unwrap()
        .starts_with("c BAD AUTHENTICATE cancelled"));
    c.send(b"d AUTHENTICATE PLAIN =\r\n").await;
    assert!(c.tagged("d").await.last().unwrap().starts_with("d BAD"));
    c.send(b"e AUTHENTICATE LOGIN\r\n").await;
    assert!(c.tagged("e").await.last().unwrap().starts_with("e NO"));
    c.send(format!("f AUTHENTICATE PLAIN {creds}\r\n").as_bytes())
        .await;
    assert!(c.tagged("f").await.last().unwrap().starts_with("f OK"));
    assert_eq!(env.upstream.logins().len(), 3);
    assert!(env
        .upstream
        .logins()
        .iter()
        .all(|l| l == EXPECTED_UPSTREAM_LOGIN));
}

#[tokio::test]
async fn wrong_local_password_never_reaches_upstream() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(b"a LOGIN dev wrong\r\n").await;
    assert_eq!(
        c.tagged("a").await.last().unwrap(),
        "a NO [AUTHENTICATIONFAILED] Invalid credentials"
    );
    c.send(b"b LOGIN nobody plainpw\r\n").await;
    assert!(c
        .tagged("b")
        .await
        .last()
        .unwrap()
        .starts_with("b NO [AUTHENTICATIONFAILED]"));
    // Still usable: a correct login afterwards works.
    c.send(format!("c LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
        .await;
    assert!(c.tagged("c").await.last().unwrap().starts_with("c OK"));
    assert_eq!(env.upstream.connections(), 1);
}

#[tokio::test]
async fn passthrough_on_sends_unknown_users_upstream() {
    let env = setup(Setup {
        passthrough: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {REAL_USER} upstreamsecret\r\n").as_bytes())
        .await;
    assert!(c
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a OK [CAPABILITY"));
    assert_proxied(&mut c).await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {REAL_USER} \"not it\"\r\n").as_bytes())
        .await;
    assert!(c
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a NO [AUTHENTICATIONFAILED]"));
    // A local user is still swapped.
    let mut c = env.logged_in().await;
    assert_proxied(&mut c).await;
    let logins = env.upstream.logins();
    assert_eq!(logins[0], EXPECTED_UPSTREAM_LOGIN);
    assert_eq!(logins[1], b"L1 LOGIN \"real@example.com\" \"not it\"\r\n");
    assert_eq!(logins[2], EXPECTED_UPSTREAM_LOGIN);
}

#[tokio::test]
async fn passthrough_off_refuses_unknown_users_locally() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {REAL_USER} upstreamsecret\r\n").as_bytes())
        .await;
    assert!(c
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a NO [AUTHENTICATIONFAILED]"));
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test]
async fn upstream_with_untrusted_certificate_is_refused() {
    let env = setup(Setup {
        wrong_ca: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
        .await;
    assert!(c
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a NO [UNAVAILABLE]"));
    assert!(env.upstream.logins().is_empty());
    assert_eq!(env.account_connections(), 0);
}

#[tokio::test]
async fn upstream_refusing_account_password_gives_authenticationfailed() {
    let env = setup(Setup {
        upstream_password: "changed".into(),
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
        .await;
    let reply = c.tagged("a").await.pop().unwrap();
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(
        !reply.contains("upstreamsecret") && !reply.contains(REAL_USER),
        "{reply}"
    );
}

#[tokio::test]
async fn per_account_connection_cap() {
    let env = setup(Setup {
        cap: 2,
        ..Setup::default()
    })
    .await;
    let c1 = env.logged_in().await;
    let _c2 = env.logged_in().await;
    let mut c3 = env.client().await;
    c3.send(format!("a LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
        .await;
    assert!(c3
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a NO [UNAVAILABLE]"));
    assert_eq!(env.upstream.connections(), 2);
    drop(c1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while env.account_connections() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    c3.send(format!("b LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
        .await;
    assert!(c3.tagged("b").await.last().unwrap().starts_with("b OK"));
}

#[tokio::test]
async fn logout_before_and_after_login() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(b"a LOGOUT\r\n").await;
    assert_eq!(c.line().await, "* BYE mailbridge logging out");
    assert_eq!(c.line().await, "a OK LOGOUT completed");
    assert!(c.read_to_eof().await.is_empty());
    let mut c = env.logged_in().await;
    c.send(b"z LOGOUT\r\n").await;
    assert_eq!(c.line().await, "* BYE test upstream logging out");
    assert_eq!(c.line().await, "z OK LOGOUT completed");
    assert!(c.read_to_eof().await.is_empty());
    env.upstream
        .wait_for("upstream closed", |u| u.active() == 0)
        .await;
}

#[tokio::test]
async fn large_fetch_is_byte_exact_and_idle_passes() {
    let env = setup(Setup::default()).await;
    let mut c = env.logged_in().await;
    assert_proxied(&mut c).await;
    c.send(b"f FETCH 3 RFC822\r\n").await;
    let head = c.line().await;
    let expected = message(3);
    assert_eq!(
        head,
        format!("* 3 FETCH (UID 3 RFC822 {{{}}}", expected.len())
    );
    let mut body = vec![0u8; expected.len()];
    tokio::time::timeout(
        READ_TIMEOUT,
        tokio::io::AsyncReadExt::read_exact(&mut c.s, &mut body),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(body == expected, "5 MB body differs");
    assert_eq!(c.line().await, ")");
    assert_eq!(c.line().await, "f OK FETCH completed");
    c.send(b"i IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    c.send(b"DONE\r\n").await;
    assert_eq!(c.line().await, "i OK IDLE terminated");
}

/// The upstream's answer to `FETCH set RFC822` for the messages `set`.
fn fetch_answer(tag: &str, set: &[usize]) -> Vec<u8> {
    let mut v = Vec::new();
    for &n in set {
        let body = message(n);
        v.extend_from_slice(
            format!("* {n} FETCH (UID {n} RFC822 {{{}}}\r\n", body.len()).as_bytes(),
        );
        v.extend_from_slice(&body);
        v.extend_from_slice(b")\r\n");
    }
    v.extend_from_slice(format!("{tag} OK FETCH completed\r\n").as_bytes());
    v
}

/// 15 MB of pipelined FETCH answers from the TLS upstream to a client that
/// reads slowly: the pump's writes keep coming back short or pending, and
/// what they did not take must be sent later, in order, none lost.
#[tokio::test]
async fn slow_client_gets_pipelined_big_fetches_byte_exact() {
    let env = setup(Setup::default()).await;
    let tcp = crate::support::wait::slow_client(env.addr()).await;
    let (mut c, greeting) = Client::from_stream(tcp, READ_TIMEOUT).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    assert!(c.login_dev().await.last().unwrap().starts_with("a OK"));
    c.send(b"f1 FETCH 3 RFC822\r\nf2 FETCH 1:3 RFC822\r\nf3 FETCH 3 RFC822\r\n")
        .await;
    let expected = [
        fetch_answer("f1", &[3]),
        fetch_answer("f2", &[1, 2, 3]),
        fetch_answer("f3", &[3]),
    ]
    .concat();
    crate::support::wait::read_slowly_and_compare(&mut c.s, &expected, READ_TIMEOUT).await;
    c.send(b"n NOOP\r\n").await;
    assert!(c.line().await.starts_with("n OK"));
}

#[tokio::test]
async fn starttls_upstream_and_untagged_capabilities() {
    let env = setup(Setup {
        mode: Mode::Starttls,
        untagged_caps: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {DEV} {DEV_PW}\r\n").as_bytes())
        .await;
    let lines = c.tagged("a").await;
    assert_eq!(
        lines.last().unwrap(),
        &format!("a OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in")
    );
    assert_proxied(&mut c).await;
    // Recorded only once, after TLS: the plain phase never saw LOGIN.
    assert_eq!(
        env.upstream.logins(),
        vec![EXPECTED_UPSTREAM_LOGIN.to_vec()]
    );
}

#[tokio::test]
async fn account_password_is_quoted_or_sent_as_literal() {
    // TOML literal string: p"w\{3}x) (a quote, a backslash and a literal marker).
    let pw = "p\"w\\{3}x)".to_string();
    let env = setup(Setup {
        account_password: pw.clone(),
        upstream_password: pw,
        ..Setup::default()
    })
    .await;
    let mut c = env.logged_in().await;
    assert_proxied(&mut c).await;
    assert_eq!(
        env.upstream.logins(),
        vec![b"L1 LOGIN \"real@example.com\" \"p\\\"w\\\\{3}x)\"\r\n".to_vec()]
    );
    drop(env);
    let pw = "p\u{e4}ssw\u{f6}rd".to_string();
    let env = setup(Setup {
        account_password: pw.clone(),
        upstream_password: pw.clone(),
        ..Setup::default()
    })
    .await;
    let mut c = env.logged_in().await;
    assert_proxied(&mut c).await;
    let expected = [
        b"L1 LOGIN \"real@example.com\" {10}\r\n".as_slice(),
        pw.as_bytes(),
        b"\r\n",
    ]
    .concat();
    assert_eq!(env.upstream.logins(), vec![expected]);
}

#[tokio::test]
async fn async_imap_client_login_select_fetch() {
    let env = setup(Setup::default()).await;
    let tcp = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    let mut client = async_imap::Client::new(tcp);
    let greeting = client.read_response().await.unwrap().unwrap();
    assert!(format!("{:?}", greeting.parsed()).contains("mailbridge ready"));
    let mut session = client.login(ODD, ODD_PW).await.map_err(|(e, _)| e).unwrap();
    let mailbox = session.select("INBOX").await.unwrap();
    assert_eq!(mailbox.exists, 3);
    let fetches: Vec<_> = {
        use futures::TryStreamExt;
        session
            .fetch("1:3", "RFC822")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(fetches.len(), 3);
    for f in &fetches {
        assert_eq!(
            f.body().unwrap(),
            message(f.message as usize).as_slice(),
            "message {}",
            f.message
        );
    }
    session.logout().await.unwrap();
}

#[tokio::test]
async fn check_login_reports_success_and_failures() {
    let env = setup(Setup::default()).await;
    let config = env.daemon.daemon.context.config.clone();
    let account = config.account("acct").unwrap().clone();
    let timeout = std::time::Duration::from_secs(5);
    let ok = mailbridge::check::imap_login(&account, None, timeout)
        .await
        .unwrap();
    assert!(ok.contains("logged in as real@example.com"), "{ok}");
    let mut bad = account.clone();
    bad.password =
        mailbridge::config::Password::Set(mailbridge::secret::Secret::new("wrongpassword"));
    let e = mailbridge::check::imap_login(&bad, None, timeout)
        .await
        .unwrap_err();
    assert!(
        e.contains("app password") && !e.contains("wrongpassword"),
        "{e}"
    );
    let mut untrusted = account.clone();
    untrusted.ca_file = None;
    let e = mailbridge::check::imap_login(&untrusted, None, timeout)
        .await
        .unwrap_err();
    assert!(e.contains("ca_file"), "{e}");
    let mut wrong_mode = account.clone();
    wrong_mode.imap.tls = mailbridge::config::TlsMode::Starttls;
    let e = mailbridge::check::imap_login(&wrong_mode, None, std::time::Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(e.contains("TLS mode"), "{e}");
    let mut unreachable = account.clone();
    unreachable.imap.port = 1;
    let e = mailbridge::check::imap_login(&unreachable, None, timeout)
        .await
        .unwrap_err();
    assert!(e.contains("reachable"), "{e}");
}

#[tokio::test]
async fn commands_pipelined_after_login_are_forwarded() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {DEV} {DEV_PW}\r\nb SELECT INBOX\r\nc NOOP\r\n").as_bytes())
        .await;
    assert!(c
        .tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a OK [CAPABILITY"));
    assert!(c.tagged("b").await.contains(&"* 3 EXISTS".to_string()));
    assert_eq!(c.tagged("c").await.last().unwrap(), "c OK NOOP completed");
}
