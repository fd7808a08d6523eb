//! Secrets never reach the logs: the IMAP proxy at trace level through
//! failed, passthrough and successful logins. (Log capture: `support::logs`.)

use crate::support::imap::*;
use crate::support::logs::LogBuf;
use base64::Engine;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn passwords_never_appear_in_logs() {
    let (logs, _guard) = LogBuf::capture();
    let env = setup(Setup {
        passthrough: true,
        ..Setup::default()
    })
    .await;
    let mut c = env.client().await;
    c.send(format!("a LOGIN {DEV} wrongpass1\r\n").as_bytes())
        .await;
    assert!(c.tagged("a").await.last().unwrap().starts_with("a NO"));
    c.send(format!("b LOGIN {REAL_USER} wrongpass2\r\n").as_bytes())
        .await;
    assert!(c.tagged("b").await.last().unwrap().starts_with("b NO"));
    let creds = b64(format!("\0{ODD}\0{ODD_PW}").as_bytes());
    c.send(format!("c AUTHENTICATE PLAIN {creds}\r\n").as_bytes())
        .await;
    assert!(c.tagged("c").await.last().unwrap().starts_with("c OK"));
    c.send(b"d LOGOUT\r\n").await;
    c.read_to_eof().await;
    // Stopping waits for every session to finish (and log its end).
    env.daemon.stop().await;
    let text = logs.text();
    assert!(text.contains("logged in upstream"), "{text}");
    assert!(text.contains("IMAP session ended"), "{text}");
    for secret in [
        "wrongpass1",
        "wrongpass2",
        ODD_PW,
        "upstreamsecret",
        creds.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} in logs:\n{text}");
    }
}
