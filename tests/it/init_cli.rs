//! `mailbridge init`: files and modes, no overwrite without --force, the
//! starter relay.toml parses, and the generated certificate verifies for
//! localhost (and 127.0.0.1) against the generated CA in a real handshake.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use mailbridge::config::Config;

fn init(dir: &Path, force: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbridge"));
    cmd.arg("init").arg("--dir").arg(dir);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_files_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("ca.pem") && stdout.contains("Next:"),
        "{stdout}"
    );
    let key = dir.path().join("certs/localhost.key");
    let files = [
        "certs/ca.pem",
        "certs/localhost.pem",
        "certs/localhost.key",
        "relay.toml",
        "certs/.gitignore",
    ];
    for f in files {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let gitignore = std::fs::read_to_string(dir.path().join("certs/.gitignore")).unwrap();
    assert!(gitignore.contains("*.key") && gitignore.contains("*.pem"));
    #[cfg(unix)]
    {
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("relay.toml")), 0o600);
    }
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("PRIVATE KEY"));
    // No CA private key is left lying around.
    let keys: Vec<_> = std::fs::read_dir(dir.path().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".key"))
        .collect();
    assert_eq!(keys, ["localhost.key"]);

    // Again without --force: refused, names the files, changes nothing.
    let before = std::fs::read(&key).unwrap();
    let out = init(dir.path(), false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("localhost.key")
            && stderr.contains("relay.toml")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // Only one file in the way is enough to refuse.
    let lone = tempfile::tempdir().unwrap();
    std::fs::write(lone.path().join("relay.toml"), "# mine\n").unwrap();
    let out = init(lone.path(), false);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(lone.path().join("relay.toml")).unwrap(),
        "# mine\n"
    );
    assert!(!lone.path().join("certs/localhost.key").exists());

    // With --force: new key, still 0600 even if the old file was made wider.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = init(dir.path(), true);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(std::fs::read(&key).unwrap(), before);
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
}

#[tokio::test]
async fn generated_config_parses_and_certificate_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let written = mailbridge::init::init(dir.path(), false).unwrap();
    assert!(written.names.iter().any(|n| n == "localhost"));

    let config = Config::load(&dir.path().join("relay.toml")).unwrap();
    let tls = config.tls.expect("starter config sets tls_cert/tls_key");
    assert_eq!(tls.cert, dir.path().join("certs/localhost.pem"));
    assert_eq!(tls.key, dir.path().join("certs/localhost.key"));

    // A daemon on port 0 using the generated certificate and key.
    let toml = format!(
        r#"tls_cert = '{cert}'
tls_key = '{key}'
[smtp]
listen = ["127.0.0.1:0"]
smtps_listen = ["127.0.0.1:0"]
[imap]
listen = ["127.0.0.1:0"]
[delivery]
retry_initial = "1h"
{account}"#,
        cert = tls.cert.display(),
        key = tls.key.display(),
        account = crate::support::config::Account::new("me@example.com", "x"),
    );
    let d = crate::support::daemon::start(&toml).await;
    let addr = d.daemon.smtps_addrs[0];

    let mut roots = rustls::RootCertStore::empty();
    for c in mailbridge::tls::load_certs(&dir.path().join("certs/ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"220 ");
    }
    // A name the certificate is not for must fail (verification is real).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let wrong = rustls::pki_types::ServerName::try_from("example.com").unwrap();
    assert!(tokio_rustls::TlsConnector::from(config)
        .connect(wrong, tcp)
        .await
        .is_err());
    d.stop().await;
}
