//! `mailbridge init`: a local CA, a certificate for this machine signed by
//! it (localhost, 127.0.0.1, ::1 and the host name), and a starter
//! relay.toml with local TLS switched on. Never overwrites a file without
//! `--force`; private keys are created with mode 0600. [`crate::cli::init`]
//! prints what was written.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The CA certificate devices must trust.
pub const CA_CERT: &str = "certs/ca.pem";
/// The listener certificate and key (what the starter config points at).
pub const SERVER_CERT: &str = "certs/localhost.pem";
pub const SERVER_KEY: &str = "certs/localhost.key";
pub const CONFIG: &str = "relay.toml";
pub const GITIGNORE: &str = "certs/.gitignore";
const GITIGNORE_TEXT: &str = "*.key\n*.pem\n!.gitignore\n";

/// The shipped, commented configuration: the starter config is this with
/// `tls_cert`/`tls_key` uncommented.
const SHIPPED_CONFIG: &str = include_str!("../relay.toml");
const TLS_LINES: [(&str, &str); 2] = [
    (
        "# tls_cert = \"certs/localhost.pem\"\n",
        "tls_cert = \"certs/localhost.pem\"\n",
    ),
    (
        "# tls_key = \"certs/localhost.key\"\n",
        "tls_key = \"certs/localhost.key\"\n",
    ),
];

/// Longest validity clients accept for a certificate from a locally trusted
/// CA (Apple platforms refuse more than 825 days).
pub const SERVER_CERT_DAYS: i64 = 825;
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("not overwriting files that already exist: {}. Move them away, or run `mailbridge init --force` to replace them all", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot make the certificates: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`init`] wrote.
#[derive(Debug)]
pub struct Written {
    /// Every file written, in order: CA, certificate, key, config (and the
    /// certs/.gitignore if it was missing).
    pub files: Vec<PathBuf>,
    /// The names the certificate is valid for.
    pub names: Vec<String>,
}

/// The starter configuration: the shipped relay.toml with local TLS on.
pub fn starter_config() -> String {
    let mut text = SHIPPED_CONFIG.to_string();
    for (commented, set) in TLS_LINES {
        text = text.replacen(commented, set, 1);
    }
    text
}

/// Creates the CA, certificate, key and relay.toml under `dir`.
pub fn init(dir: &Path, force: bool) -> Result<Written, InitError> {
    let targets = [CA_CERT, SERVER_CERT, SERVER_KEY, CONFIG].map(|p| dir.join(p));
    if !force {
        let existing: Vec<PathBuf> = targets
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            return Err(InitError::Exists(existing));
        }
    }
    let names = certificate_names();
    let material = make_certificates(&names)?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).map_err(|source| InitError::Io {
        path: certs.clone(),
        source,
    })?;
    let [ca, cert, key, config] = targets;
    write_new(&ca, material.ca_pem.as_bytes(), false)?;
    write_new(&cert, material.cert_pem.as_bytes(), false)?;
    write_new(&key, material.key_pem.as_bytes(), true)?;
    // The config may soon hold the app password: owner only, like the key.
    write_new(&config, starter_config().as_bytes(), true)?;
    let mut files = vec![ca, cert, key, config];
    let gitignore = dir.join(GITIGNORE);
    if gitignore.symlink_metadata().is_err() {
        write_new(&gitignore, GITIGNORE_TEXT.as_bytes(), false)?;
        files.push(gitignore);
    }
    Ok(Written { files, names })
}

/// localhost, 127.0.0.1, ::1 and this machine's host name (if it is a valid DNS name).
fn certificate_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        Ipv4Addr::LOCALHOST.to_string(),
        Ipv6Addr::LOCALHOST.to_string(),
    ];
    if let Some(host) = hostname::get()
        .ok()
        .and_then(|h| h.to_str().map(str::to_ascii_lowercase))
    {
        if is_dns_name(&host) && !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

struct Material {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_certificates(names: &[String]) -> Result<Material, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let host = names.last().map_or("localhost", String::as_str);

    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name = distinguished_name(&format!("mailbridge local CA ({host})"));
    ca.not_before = now - Duration::days(1);
    ca.not_after = now + Duration::days(CA_DAYS);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::default();
    for name in names {
        leaf.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        });
    }
    leaf.distinguished_name = distinguished_name("localhost");
    // ECDSA key: signing only (key encipherment is for RSA).
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::days(1);
    leaf.not_after = now + Duration::days(SERVER_CERT_DAYS);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(Material {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "mailbridge");
    dn
}

/// Writes a new file; an existing one (only with --force) is removed first so
/// that a private file is created with mode 0600 rather than inheriting the
/// old file's mode.
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), InitError> {
    let io_err = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starter_config_sets_tls_and_keeps_the_rest() {
        let text = starter_config();
        for (commented, set) in TLS_LINES {
            assert!(SHIPPED_CONFIG.contains(commented), "{commented}");
            assert!(text.contains(set) && !text.contains(commented));
        }
        assert_eq!(text.len() + 4, SHIPPED_CONFIG.len());
    }

    #[test]
    fn host_names_are_checked() {
        assert!(is_dns_name("printer-host.lan"));
        assert!(!is_dns_name("bad_name"));
        assert!(!is_dns_name("-x"));
        assert!(!is_dns_name(""));
        let names = certificate_names();
        assert_eq!(&names[..3], ["localhost", "127.0.0.1", "::1"]);
    }
}
