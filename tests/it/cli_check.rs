//! `mailbridge check` (the real binary): a TLS mode that does not match the
//! well-known port is reported once, as a warning above the login result.

use std::process::Command;

#[test]
fn check_reports_a_port_and_tls_mode_mismatch_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    // Port 465 is implicit TLS; starttls is configured. Nothing answers on
    // 127.0.0.1:465 in a test, so the login fails as well, which is where the
    // old code repeated the hint.
    let text = "[[accounts]]\nname = \"a\"\nprovider = \"custom\"\nusername = \"u@example.com\"\n\
        password = \"secret-app-password\"\n\
        smtp = { host = \"127.0.0.1\", port = 465, tls = \"starttls\" }\n\
        imap = { host = \"127.0.0.1\", port = 993, tls = \"implicit\" }\n\
        [smtp]\nspool_dir = \"spool\"\n";
    std::fs::write(&cfg, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "  smtp: warning: port 465 normally uses implicit TLS, but tls = \"starttls\" is configured\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  smtp 127.0.0.1:465 (starttls TLS): FAILED: "),
        "{stdout}"
    );
    assert_eq!(
        stdout.to_lowercase().matches("normally uses").count(),
        1,
        "the hint is printed once: {stdout}"
    );
    assert!(stdout.contains("some checks failed"), "{stdout}");
    assert!(!stdout.contains("secret-app-password"), "{stdout}");
}
