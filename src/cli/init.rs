//! Printing for `mailbridge init`: what [`crate::init::init`] wrote and what
//! to do next.

use std::path::Path;
use std::process::ExitCode;

use crate::init::{init, CA_CERT, CONFIG, GITIGNORE, SERVER_CERT, SERVER_CERT_DAYS, SERVER_KEY};

/// `mailbridge init [--force] [--dir DIR]`: runs [`init`] and tells the
/// admin what was written and what to do next.
pub fn command(dir: &Path, force: bool) -> ExitCode {
    let written = match init(dir, force) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mailbridge init: {e}");
            return ExitCode::from(1);
        }
    };
    let [ca, cert, key, config] = [CA_CERT, SERVER_CERT, SERVER_KEY, CONFIG].map(|p| dir.join(p));
    println!("mailbridge init wrote:");
    println!(
        "  {}  local CA certificate: install it on each device as a trusted CA",
        ca.display()
    );
    println!(
        "  {}  listener certificate for {}",
        cert.display(),
        written.names.join(", ")
    );
    println!(
        "  {}  its private key (mode 0600; keep it private, never commit it)",
        key.display()
    );
    println!(
        "  {}  starter configuration with tls_cert and tls_key set (mode 0600)",
        config.display()
    );
    if written.files.len() > 4 {
        println!(
            "  {}  keeps keys and certificates out of git",
            dir.join(GITIGNORE).display()
        );
    }
    println!(
        "\nNext:
  1. Edit {config}: the account's username and app password, and [[users]] if devices log in.
  2. Trust {ca} on every device that will use TLS (import it as a trusted root/CA certificate).
  3. Run `mailbridge --config {config} check`, then `mailbridge --config {config}`.
     STARTTLS is now offered on the SMTP and IMAP ports; uncomment smtps_listen and
     imaps_listen for implicit-TLS ports. Only TLS 1.2 and 1.3 are accepted: devices that
     need SSLv3 or TLS 1.0 must keep using the plaintext ports, on loopback or a trusted LAN.
The CA's private key was not kept, so it cannot be used to issue any other certificate.
The certificate is valid for {SERVER_CERT_DAYS} days; run `mailbridge init --force` for new ones
(devices must then trust the new {CA_CERT}).",
        config = config.display(),
        ca = ca.display(),
    );
    ExitCode::SUCCESS
}
