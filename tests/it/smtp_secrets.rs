//! No password or AUTH argument reaches the logs, even at trace level.

use crate::support::logs::LogBuf;
use crate::support::smtp::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

#[tokio::test]
async fn auth_secrets_never_logged_at_trace() {
    let (logs, _guard) = LogBuf::capture();

    let wrong = "wrong-Pa55word-xyz";
    let d = start("").await;
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    c.cmd("EHLO dev").await;
    let plain_wrong = STANDARD.encode(format!("\0{USER}\0{wrong}"));
    assert_ok(&c.cmd(&format!("AUTH PLAIN {plain_wrong}")).await, "535");
    assert_ok(&c.cmd("AUTH LOGIN").await, "334");
    let login_user = STANDARD.encode("someone-else");
    c.cmd(&login_user).await;
    let login_wrong = STANDARD.encode(wrong);
    assert_ok(&c.cmd(&login_wrong).await, "535");
    let plain_right = STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    assert_ok(&c.cmd(&format!("AUTH PLAIN {plain_right}")).await, "235");
    let r = c
        .send_mail("a@example.com", &["b@example.com"], b"Subject: s")
        .await;
    queue_id(&r);
    c.cmd("QUIT").await;
    d.stop().await;

    let text = logs.text();
    assert!(
        text.contains("client authenticated"),
        "logging was not captured: {text}"
    );
    for secret in [
        wrong,
        PASSWORD,
        "upstream-app-password",
        "someone-else",
        plain_wrong.as_str(),
        plain_right.as_str(),
        login_user.as_str(),
        login_wrong.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} appears in the logs");
    }
}
