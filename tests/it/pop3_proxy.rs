//! The POP3 proxy end to end: the real daemon on port 0 in front of an
//! in-process POP3 upstream over TLS; the credential swap, bytes through the
//! pump, refusals, hostile input before login, STLS and pop3s, the cap.

use crate::support::pop3::*;
use crate::support::pop3_upstream::{retr_response, Mode};
use base64::Engine;
use rustls::pki_types::ServerName;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn expected_upstream_login(user: &str) -> Vec<Vec<u8>> {
    vec![
        format!("USER {user}\r\n").into_bytes(),
        format!("PASS {REAL_PW}\r\n").into_bytes(),
    ]
}

#[tokio::test]
async fn login_swap_and_retr_bytes_identical() {
    let env = setup(Setup::default()).await;
    let mut c = env.logged_in().await;
    assert_eq!(env.upstream.logins(), expected_upstream_login(REAL_USER));
    assert_eq!(env.account_connections(), 1);
    for n in 1..=3 {
        c.send(format!("RETR {n}\r\n").as_bytes()).await;
        let got = c.multi_raw().await;
        assert!(
            got == retr_response(n),
            "RETR {n}: {} bytes differ",
            got.len()
        );
    }
    c.send(b"UIDL\r\n").await;
    assert_eq!(
        c.multi_raw().await,
        b"+OK\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
    );
    assert_eq!(c.cmd("DELE 1").await, "+OK Marked 1");
    assert_eq!(c.cmd("QUIT").await, "+OK Logging out.");
    c.read_to_eof().await;
    env.upstream
        .wait_for("delete", |u| u.deleted() == vec![1])
        .await;
    env.wait_account_connections(0).await;
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let env = setup(Setup::default()).await;
    let creds = b64(format!("\0{DEV}\0{DEV_PW}").as_bytes());
    let mut c = env.client().await;
    assert_eq!(c.cmd(&format!("AUTH PLAIN {creds}")).await, "+OK Logged in");
    assert_eq!(
        c.cmd("STAT").await,
        format!(
            "+OK 3 {}",
            (1..=3)
                .map(|n| crate::support::pop3_upstream::message(n).len())
                .sum::<usize>()
        )
    );
    let mut c = env.client().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd(&creds).await, "+OK Logged in");
    assert_eq!(c.cmd("NOOP").await, "+OK");
    let logins = env.upstream.logins();
    assert_eq!(logins.len(), 4);
    assert_eq!(logins[2..], expected_upstream_login(REAL_USER)[..]);
}

#[tokio::test]
async fn recent_mode_prefixes_the_upstream_user() {
    let env = setup(Setup {
        recent_mode: true,
        upstream_password: REAL_PW.into(),
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(format!("USER {DEV}\r\nPASS {DEV_PW}\r\n").as_bytes())
        .await;
    assert_eq!(c.line().await, "+OK Send PASS");
    // The test upstream only knows REAL_USER, so it refuses "recent:...".
    assert!(c.line().await.starts_with("-ERR [SYS/PERM]"));
    assert_eq!(
        env.upstream.logins()[0],
        format!("USER recent:{REAL_USER}\r\n").into_bytes()
    );
}

#[tokio::test]
async fn wrong_local_password_never_reaches_upstream() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    assert_eq!(c.cmd(&format!("USER {DEV}")).await, "+OK Send PASS");
    assert_eq!(
        c.cmd("PASS wrong").await,
        "-ERR [AUTH] Wrong user name or password"
    );
    // The session goes on (AUTHORIZATION state) and can log in now.
    c.login(DEV, DEV_PW).await;
    assert_eq!(env.upstream.connections(), 1);
}

#[tokio::test]
async fn upstream_refusing_the_app_password_gives_a_hint_and_no_secret() {
    let env = setup(Setup {
        upstream_password: "changed".into(),
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.cmd(&format!("USER {DEV}")).await;
    let r = c.cmd(&format!("PASS {DEV_PW}")).await;
    assert!(r.starts_with("-ERR [SYS/PERM]"), "{r}");
    assert!(
        r.contains("app password") && r.contains("mailbridge check"),
        "{r}"
    );
    assert!(!r.contains(REAL_PW) && !r.contains(DEV_PW), "{r}");
    env.wait_account_connections(0).await;
    env.upstream
        .wait_for("upstream closed", |u| u.active() == 0)
        .await;
}

#[tokio::test]
async fn hostile_input_before_login() {
    let env = setup(Setup::default()).await;
    let table: &[(&[u8], &str)] = &[
        (b"USER a\0b\r\n", "-ERR Invalid command line"),
        (b"\xff\xfe\r\n", "-ERR Invalid command line"),
        (b"AUTH PLAIN !!!\r\n", "-ERR Malformed"),
        (b"AUTH PLAIN =\r\n", "-ERR Malformed"),
        (b"XYZZY\r\n", "-ERR Unknown command"),
        (b"RETR 1\r\n", "-ERR Log in first"),
        (b"LIST\r\n", "-ERR Log in first"),
        (b"DELE 1\r\n", "-ERR Log in first"),
        (b"NOOP\r\n", "-ERR NOOP is only valid after login"),
        (
            b"APOP dev c4c9334bac560ecc979e58001b3e22fb\r\n",
            "-ERR APOP is not supported",
        ),
        (b"PASS nouser\r\n", "-ERR Send USER first"),
        (b"STLS\r\n", "-ERR STLS is not offered"),
        (b"AUTH KERBEROS_V4\r\n", "-ERR Unsupported mechanism"),
    ];
    let mut c = env.client().await;
    for (input, want) in table {
        c.send(input).await;
        let got = c.line().await;
        assert!(
            got.starts_with(want),
            "{:?}: {got}",
            String::from_utf8_lossy(input)
        );
    }
    // Still serving this session, and nothing went upstream.
    c.send(b"AUTH PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    assert_eq!(
        c.cmd("not base64 at all").await,
        "-ERR Malformed AUTH PLAIN response (bad base64 or layout)"
    );
    c.login(DEV, DEV_PW).await;
    assert_eq!(env.upstream.logins().len(), 2);

    // An over-long line: -ERR, then the connection closes.
    let mut c = env.client().await;
    let mut long = b"USER ".to_vec();
    long.resize(100_000, b'a');
    c.send(&long).await;
    let rest = String::from_utf8_lossy(&c.read_to_eof().await).to_string();
    assert_eq!(rest, "-ERR Line too long; closing\r\n");

    // Too many errors in a row close the session.
    let mut c = env.client().await;
    c.send(&b"BOGUS\r\n".repeat(50)).await;
    let all = String::from_utf8_lossy(&c.read_to_eof().await).to_string();
    assert!(all.ends_with("-ERR Too many errors; closing\r\n"), "{all}");
    assert_eq!(all.matches("-ERR").count(), 21, "{all}");

    // The daemon keeps serving others.
    let mut c = env.logged_in().await;
    assert_eq!(c.cmd("QUIT").await, "+OK Logging out.");
}

#[tokio::test]
async fn capa_and_quit_before_login() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    c.send(b"CAPA\r\n").await;
    let capa = String::from_utf8(c.multi_raw().await).unwrap();
    assert!(
        capa.contains("\r\nUSER\r\n") && capa.contains("\r\nSASL PLAIN\r\n"),
        "{capa}"
    );
    assert!(!capa.contains("STLS") && !capa.contains("APOP"), "{capa}");
    assert_eq!(c.cmd("QUIT").await, "+OK mailbridge signing off");
    assert!(c.read_to_eof().await.is_empty());
    assert_eq!(env.upstream.connections(), 0);
}

#[tokio::test]
async fn stls_then_login_and_pop3s() {
    let env = setup(Setup {
        local_tls: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(b"CAPA\r\n").await;
    assert!(String::from_utf8(c.multi_raw().await)
        .unwrap()
        .contains("\r\nSTLS\r\n"));
    // A USER sent before STLS is forgotten; bytes pipelined after it are dropped.
    assert_eq!(c.cmd(&format!("USER {DEV}")).await, "+OK Send PASS");
    c.send(b"STLS\r\nPASS injected\r\n").await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation now");
    let tcp = c.s.into_inner();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = env.connector().connect(name.clone(), tcp).await.unwrap();
    let mut c = Client::new(tls);
    c.send(b"CAPA\r\n").await;
    assert!(!String::from_utf8(c.multi_raw().await)
        .unwrap()
        .contains("STLS"));
    assert_eq!(c.cmd("PASS x").await, "-ERR Send USER first");
    c.login(DEV, DEV_PW).await;
    c.send(b"RETR 2\r\n").await;
    assert_eq!(c.multi_raw().await, retr_response(2));

    // Implicit TLS listener.
    let tcp = tokio::net::TcpStream::connect(env.pop3s_addr())
        .await
        .unwrap();
    let tls = env.connector().connect(name, tcp).await.unwrap();
    let mut c = Client::new(tls);
    assert_eq!(c.line().await, "+OK mailbridge POP3 ready");
    assert_eq!(c.cmd("STLS").await, "-ERR TLS is already active");
    c.login(DEV, DEV_PW).await;
    assert_eq!(env.upstream.logins().len(), 4);
}

/// Pipelined RETRs of the 5 MB message from the TLS upstream to a client
/// that reads slowly, in plaintext and over local TLS (pop3s): every byte
/// arrives, in order, although the pump's writes keep coming back short.
#[tokio::test]
async fn slow_client_gets_pipelined_big_retrs_byte_exact() {
    let env = setup(Setup {
        local_tls: true,
        ..Setup::default()
    })
    .await;
    let pipelined = b"RETR 3\r\nRETR 2\r\nRETR 3\r\nRETR 1\r\n";
    let expected = [3, 2, 3, 1].map(retr_response).concat();
    use crate::support::wait::{read_slowly_and_compare as compare, slow_client as slow};

    let mut c = Client::new(slow(env.addr()).await);
    assert!(c.line().await.starts_with("+OK"));
    c.login(DEV, DEV_PW).await;
    c.send(pipelined).await;
    compare(&mut c.s, &expected, READ_TIMEOUT).await;
    assert_eq!(c.cmd("NOOP").await, "+OK");

    let name = ServerName::try_from("localhost").unwrap();
    let tls = env
        .connector()
        .connect(name, slow(env.pop3s_addr()).await)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    assert_eq!(c.line().await, "+OK mailbridge POP3 ready");
    c.login(DEV, DEV_PW).await;
    c.send(pipelined).await;
    compare(&mut c.s, &expected, READ_TIMEOUT).await;
    assert_eq!(c.cmd("QUIT").await, "+OK Logging out.");
}

#[tokio::test]
async fn upstream_stls_mode() {
    let env = setup(Setup {
        mode: Mode::Starttls,
        ..Setup::default()
    })
    .await;
    let mut c = env.logged_in().await;
    c.send(b"RETR 1\r\n").await;
    assert_eq!(c.multi_raw().await, retr_response(1));
    // Credentials only after STLS.
    let lines = env.upstream.lines();
    assert_eq!(lines[0], b"STLS\r\n");
    assert_eq!(lines[1..3], expected_upstream_login(REAL_USER)[..]);
}

#[tokio::test]
async fn per_account_session_cap_is_freed_when_a_session_ends() {
    let env = setup(Setup {
        cap: 1,
        ..Setup::default()
    })
    .await;
    let mut first = env.logged_in().await;
    let mut second = env.client().await;
    second.cmd(&format!("USER {DEV}")).await;
    assert!(second
        .cmd(&format!("PASS {DEV_PW}"))
        .await
        .starts_with("-ERR [IN-USE]"));
    assert_eq!(env.upstream.connections(), 1);
    assert_eq!(first.cmd("QUIT").await, "+OK Logging out.");
    first.read_to_eof().await;
    env.wait_account_connections(0).await;
    second.login(DEV, DEV_PW).await;
}

#[tokio::test]
async fn check_logs_in_to_pop3_and_explains_a_refusal() {
    let env = setup(Setup::default()).await;
    let config = env.daemon.daemon.current().config.clone();
    let account = config.account("acct").unwrap();
    let timeout = std::time::Duration::from_secs(10);
    let ok = mailbridge::check::pop3_login(account, None, timeout)
        .await
        .unwrap();
    assert!(ok.contains(&format!("logged in as {REAL_USER}")), "{ok}");
    // QUIT before any DELE: nothing deleted.
    env.upstream
        .wait_for("check quit", |u| {
            u.lines().last().map(|l| l.as_slice()) == Some(b"QUIT\r\n")
        })
        .await;
    assert!(env.upstream.deleted().is_empty());

    let wrong = setup(Setup {
        upstream_password: "changed".into(),
        ..Setup::default()
    })
    .await;
    let config = wrong.daemon.daemon.current().config.clone();
    let e = mailbridge::check::pop3_login(config.account("acct").unwrap(), None, timeout)
        .await
        .unwrap_err();
    assert!(
        e.contains("POP is enabled") && e.contains("server said"),
        "{e}"
    );
    assert!(!e.contains(REAL_PW), "{e}");
}

#[tokio::test]
async fn pop3_metrics_count_sessions_logins_and_failures() {
    let env = setup(Setup::default()).await;
    let metrics = env.daemon.daemon.context.metrics.clone();
    let mut c = env.client().await;
    c.cmd(&format!("USER {DEV}")).await;
    assert!(c.cmd("PASS wrong").await.starts_with("-ERR [AUTH]"));
    assert_eq!(metrics.pop3_sessions_active(), 1);
    c.login(DEV, DEV_PW).await;
    let text = metrics.render(&env.daemon.daemon.context.spool);
    assert!(text.contains("mailbridge_pop3_sessions_active 1"), "{text}");
    assert!(text.contains("mailbridge_pop3_logins_total 1"), "{text}");
    assert!(
        text.contains("mailbridge_auth_failures_total{protocol=\"pop3\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn untrusted_upstream_certificate_gets_no_credentials() {
    let env = setup(Setup {
        wrong_ca: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.cmd(&format!("USER {DEV}")).await;
    assert!(c
        .cmd(&format!("PASS {DEV_PW}"))
        .await
        .starts_with("-ERR [SYS/TEMP] Upstream POP3 server unavailable"));
    assert_eq!(env.upstream.connections(), 1);
    assert!(env.upstream.lines().is_empty());
    env.wait_account_connections(0).await;
}

#[tokio::test]
async fn silent_client_is_closed_at_the_login_timeout_and_idle_after_login() {
    let env = setup(Setup {
        login_timeout: "1s",
        idle_timeout: "1s",
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    let start = std::time::Instant::now();
    let rest = String::from_utf8_lossy(&c.read_to_eof().await).to_string();
    assert_eq!(rest, "-ERR Autologout; no login in time\r\n");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    // After login: the idle timeout closes both sides and frees the slot.
    let mut c = env.logged_in().await;
    let rest = String::from_utf8_lossy(&c.read_to_eof().await).to_string();
    assert_eq!(rest, "-ERR Autologout; idle for too long\r\n");
    env.wait_account_connections(0).await;
}

#[tokio::test]
async fn shutdown_says_goodbye_before_login() {
    let env = setup(Setup::default()).await;
    let mut c = env.client().await;
    let stop = tokio::spawn(env.daemon.stop());
    let rest = String::from_utf8_lossy(&c.read_to_eof().await).to_string();
    assert_eq!(rest, "-ERR [SYS/TEMP] mailbridge shutting down\r\n");
    stop.await.unwrap();
}
