//! TLS material: the one crypto provider, upstream client configs (webpki
//! roots plus an account's `ca_file`), and local server configs from PEM
//! with the acceptor each local listener family uses ([`LocalAcceptor`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificates: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("{path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificates { path: PathBuf },
    #[error("{path}: cannot read private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("legacy TLS profile: {0}")]
    Legacy(#[from] crate::legacy_tls::LegacyTlsError),
}

/// Installs ring as the process-wide rustls provider. Safe to call often.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Certificates {
            path: path.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { path: path.into() });
    }
    Ok(certs)
}

/// Root store for upstream connections: Mozilla's roots (webpki-roots) plus
/// the certificates in `ca_file`, if any. Verification is never disabled.
pub fn upstream_roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// A client config for upstream TLS (IMAP, and anything not going through lettre).
pub fn upstream_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    install_crypto_provider();
    let roots = upstream_roots(ca_file)?;
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Each account's upstream TLS client config (webpki roots plus its
/// `ca_file`), built once per configuration for the IMAP and POP3 proxies.
pub struct UpstreamTls(std::collections::HashMap<String, Arc<ClientConfig>>);

impl UpstreamTls {
    pub fn new(config: &crate::config::Config) -> Result<UpstreamTls, String> {
        let mut by_account = std::collections::HashMap::new();
        for a in &config.accounts {
            let tls = upstream_client_config(a.ca_file.as_deref())
                .map_err(|e| format!("account {}: IMAP upstream TLS: {e}", a.name))?;
            by_account.insert(a.name.clone(), tls);
        }
        Ok(UpstreamTls(by_account))
    }

    /// The config for `account`, if it is configured.
    pub fn get(&self, account: &str) -> Option<Arc<ClientConfig>> {
        self.0.get(account).cloned()
    }
}

/// A server config for local TLS listeners (TLS 1.2 and 1.3 only).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The local TLS acceptor of one listener family, by `tls_profile`; built
/// once (at start and on reload) and cloned per connection.
#[derive(Clone)]
pub enum LocalAcceptor {
    /// rustls, TLS 1.2 and 1.3 (`tls_profile = "modern"`, the default).
    Modern(tokio_rustls::TlsAcceptor),
    /// OpenSSL with TLS 1.0/1.1 allowed (`tls_profile = "legacy"`).
    Legacy(crate::legacy_tls::Acceptor),
}

/// The acceptors for the SMTP and IMAP listeners; `None` without local TLS.
pub struct LocalAcceptors {
    pub smtp: Option<LocalAcceptor>,
    pub imap: Option<LocalAcceptor>,
    /// POP3 has no `tls_profile`: always the modern (rustls) acceptor.
    pub pop3: Option<LocalAcceptor>,
}

impl LocalAcceptors {
    /// Builds each profile in use once, from the configured certificate.
    pub fn new(config: &crate::config::Config) -> Result<LocalAcceptors, TlsError> {
        use crate::config::TlsProfile;
        let Some(t) = &config.tls else {
            return Ok(LocalAcceptors {
                smtp: None,
                imap: None,
                pop3: None,
            });
        };
        let profiles = [config.smtp.tls_profile, config.imap.tls_profile];
        // POP3 always uses the modern profile, so it is always built.
        let modern = Some(LocalAcceptor::Modern(tokio_rustls::TlsAcceptor::from(
            server_config(&t.cert, &t.key)?,
        )));
        let legacy = match profiles.contains(&TlsProfile::Legacy) {
            true => Some(LocalAcceptor::Legacy(crate::legacy_tls::Acceptor::new(
                &t.cert, &t.key,
            )?)),
            false => None,
        };
        let pick = |p| match p {
            TlsProfile::Modern => modern.clone(),
            TlsProfile::Legacy => legacy.clone(),
        };
        Ok(LocalAcceptors {
            smtp: pick(config.smtp.tls_profile),
            imap: pick(config.imap.tls_profile),
            pop3: modern,
        })
    }
}
