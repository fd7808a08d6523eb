//! Secrets never reach the logs: the POP3 proxy at trace level through
//! failed local, failed upstream, passthrough and successful logins. (Log
//! capture: `support::logs`.)

use crate::support::pop3::*;
use base64::Engine;

#[tokio::test]
async fn passwords_never_appear_in_pop3_logs() {
    let (logs, _guard) = crate::support::logs::LogBuf::capture();
    let env = setup(Setup {
        passthrough: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    // Local user, wrong password.
    c.cmd(&format!("USER {DEV}")).await;
    assert!(c.cmd("PASS wrongpass1").await.starts_with("-ERR [AUTH]"));
    // Passthrough with the real user name and a wrong password.
    c.cmd(&format!("USER {REAL_USER}")).await;
    assert!(c.cmd("PASS wrongpass2").await.starts_with("-ERR [AUTH]"));
    // AUTH PLAIN with a wrong password, then the right one.
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("\0{DEV}\0wrongpass3"));
    assert!(c
        .cmd(&format!("AUTH PLAIN {bad}"))
        .await
        .starts_with("-ERR [AUTH]"));
    let good = base64::engine::general_purpose::STANDARD.encode(format!("\0{DEV}\0{DEV_PW}"));
    assert_eq!(c.cmd(&format!("AUTH PLAIN {good}")).await, "+OK Logged in");
    assert_eq!(c.cmd("QUIT").await, "+OK Logging out.");
    c.read_to_eof().await;
    // Stopping waits for every session to finish (and log its end).
    env.daemon.stop().await;
    let text = logs.text();
    assert!(text.contains("logged in upstream"), "{text}");
    assert!(text.contains("POP3 session ended"), "{text}");
    assert!(text.contains("POP3 login failed"), "{text}");
    for secret in [
        "wrongpass1",
        "wrongpass2",
        "wrongpass3",
        DEV_PW,
        REAL_PW,
        &bad,
        &good,
    ] {
        assert!(!text.contains(secret), "{secret:?} in logs:\n{text}");
    }
}
