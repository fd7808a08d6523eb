//! A throw-away CA and server certificates for test upstreams, made at test time.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA, a leaf for `localhost`/127.0.0.1 signed by it, and the CA's PEM in a file.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM) written to disk: use as `ca_file`.
    pub ca_file: PathBuf,
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A server certificate chain and key, ready for rustls.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        mailbridge::tls::install_crypto_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(self.chain.clone(), key)
                .expect("test server config"),
        )
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config())
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        Self::named("mailbridge test CA")
    }

    pub fn named(cn: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = params.self_signed(&ca_key).expect("ca cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_pem = ca_cert.pem();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write ca");
        TestCa {
            dir,
            ca_file,
            ca_pem,
            ca_cert,
            ca_key,
        }
    }

    /// A TLS client trusting only this CA.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        mailbridge::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in mailbridge::tls::load_certs(&self.ca_file).unwrap() {
            roots.add(c).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A leaf valid for `localhost` and 127.0.0.1.
    pub fn server_cert(&self) -> ServerCert {
        self.leaf(&["localhost"], true, false)
    }

    /// A leaf for another name only (host name verification must fail).
    pub fn wrong_name_cert(&self) -> ServerCert {
        self.leaf(&["wrong.example"], false, false)
    }

    /// A leaf for localhost that expired long ago.
    pub fn expired_cert(&self) -> ServerCert {
        self.leaf(&["localhost"], true, true)
    }

    fn leaf(&self, names: &[&str], ip: bool, expired: bool) -> ServerCert {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0]);
        params.distinguished_name = dn;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        ServerCert {
            chain: vec![cert.der().clone(), self.ca_cert.der().clone()],
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
