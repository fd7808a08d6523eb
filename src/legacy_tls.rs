//! The opt-in `legacy` TLS profile of the local listeners: TLS 1.0/1.1 and the
//! RSA key exchange ciphers that printers and MFPs from before about 2017
//! speak, through the system OpenSSL (rustls will never offer them). Every
//! `cfg(feature = "legacy-tls")` of the crate lives in this module: without
//! the feature, [`Acceptor`] and [`Stream`] are uninhabited and
//! [`Acceptor::new`] explains how to rebuild. The upstream side never uses it.

use std::path::PathBuf;

/// True in a build with `--features legacy-tls`.
pub const AVAILABLE: bool = cfg!(feature = "legacy-tls");

/// The command that makes a build which has the legacy profile.
pub const REBUILD_COMMAND: &str = "cargo build --release --features legacy-tls";

/// What the admin reads when a config asks for the profile in a build without it.
pub fn not_built_message() -> String {
    format!(
        "\"legacy\" needs a mailbridge built with the legacy-tls feature (OpenSSL); rebuild with: {REBUILD_COMMAND}"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LegacyTlsError {
    #[error("{}", not_built_message())]
    NotBuilt,
    #[error("{path}: {reason}")]
    Material { path: PathBuf, reason: String },
    #[error("OpenSSL: {0}")]
    OpenSsl(String),
}

/// OpenSSL's cipher list for the profile: Mozilla's intermediate ciphers
/// first (the server's preference wins, so modern clients still get AEAD and
/// forward secrecy), then the CBC-SHA and plain RSA key exchange suites old
/// devices need. Names the library lacks are skipped by OpenSSL. Security
/// level 0 is what lets OpenSSL 3 use SHA-1/MD5 signatures, i.e. TLS 1.0/1.1.
pub const CIPHER_LIST: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:\
DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:\
AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:DES-CBC3-SHA:@SECLEVEL=0";

/// The start-up warning for a listener family (`"smtp"`, `"imap"`) that uses
/// the profile; `rsa_key` is whether the certificate's key is RSA.
pub fn startup_warning(section: &str, rsa_key: bool) -> String {
    let mut w = format!(
        "LEGACY TLS: {section}.tls_profile = \"legacy\": the local {section} listeners accept TLS 1.0 and 1.1 \
         and RSA key exchange (OpenSSL security level 0). These are broken protocols: use this only for \
         old devices on a trusted network, never on a port reachable from the internet"
    );
    if !rsa_key {
        w.push_str(
            "; the certificate's key is not RSA, so devices that only know RSA key exchange still \
             cannot connect: use an RSA certificate (see the README, \"Old TLS for printers\")",
        );
    }
    w
}

#[cfg(feature = "legacy-tls")]
pub use with_openssl::{Acceptor, Stream};
#[cfg(not(feature = "legacy-tls"))]
pub use without_openssl::{Acceptor, Stream};

#[cfg(feature = "legacy-tls")]
mod with_openssl {
    use std::io;
    use std::path::Path;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use openssl::pkey::Id;
    use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslOptions, SslVersion};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    use super::{LegacyTlsError, CIPHER_LIST};

    /// The OpenSSL server context, built once; cloning shares it.
    #[derive(Clone)]
    pub struct Acceptor {
        ssl: SslAcceptor,
        rsa_key: bool,
    }

    impl Acceptor {
        /// Loads the PEM certificate chain and key and builds the context.
        pub fn new(cert: &Path, key: &Path) -> Result<Acceptor, LegacyTlsError> {
            let ossl = |e: openssl::error::ErrorStack| LegacyTlsError::OpenSsl(e.to_string());
            let material = |path: &Path, e: openssl::error::ErrorStack| LegacyTlsError::Material {
                path: path.into(),
                reason: e.to_string(),
            };
            let mut b =
                SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(ossl)?;
            b.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
            // Old clients that renegotiate are rare; refusing it closes a CPU DoS.
            b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
            b.set_min_proto_version(Some(SslVersion::TLS1))
                .map_err(ossl)?;
            b.set_cipher_list(CIPHER_LIST).map_err(ossl)?;
            b.set_certificate_chain_file(cert)
                .map_err(|e| material(cert, e))?;
            b.set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| material(key, e))?;
            b.check_private_key().map_err(|e| material(key, e))?;
            let ssl = b.build();
            let rsa_key = ssl
                .context()
                .private_key()
                .is_some_and(|k| k.id() == Id::RSA);
            Ok(Acceptor { ssl, rsa_key })
        }

        /// Whether clients limited to RSA key exchange can connect (the key is RSA).
        pub fn has_rsa_key(&self) -> bool {
            self.rsa_key
        }

        /// The server side of a handshake (the caller bounds its time).
        pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
            let ssl = Ssl::new(self.ssl.context()).map_err(io::Error::other)?;
            let mut s = tokio_openssl::SslStream::new(ssl, tcp).map_err(io::Error::other)?;
            Pin::new(&mut s)
                .accept()
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            Ok(Stream(s))
        }
    }

    /// A client connection over OpenSSL.
    pub struct Stream(tokio_openssl::SslStream<TcpStream>);

    impl Stream {
        /// The negotiated protocol ("TLSv1", ...) and cipher, for logs.
        pub fn describe(&self) -> (&'static str, &'static str) {
            let ssl = self.0.ssl();
            let cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("none");
            (ssl.version_str(), cipher)
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }
}

#[cfg(not(feature = "legacy-tls"))]
mod without_openssl {
    use std::io;
    use std::path::Path;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    use super::LegacyTlsError;

    /// No legacy acceptor exists in this build (the type has no values).
    #[derive(Clone)]
    pub enum Acceptor {}

    impl Acceptor {
        /// Always [`LegacyTlsError::NotBuilt`] in this build.
        pub fn new(_cert: &Path, _key: &Path) -> Result<Acceptor, LegacyTlsError> {
            Err(LegacyTlsError::NotBuilt)
        }

        pub fn has_rsa_key(&self) -> bool {
            match *self {}
        }

        pub async fn accept(&self, _tcp: TcpStream) -> io::Result<Stream> {
            match *self {}
        }
    }

    /// No legacy connection exists in this build (the type has no values).
    pub enum Stream {}

    impl Stream {
        pub fn describe(&self) -> (&'static str, &'static str) {
            match *self {}
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match *self.get_mut() {}
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match *self.get_mut() {}
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match *self.get_mut() {}
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match *self.get_mut() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_is_loud_and_names_the_key() {
        let w = startup_warning("smtp", true);
        assert!(
            w.starts_with("LEGACY TLS: smtp.tls_profile = \"legacy\""),
            "{w}"
        );
        assert!(w.contains("TLS 1.0") && !w.contains("not RSA"), "{w}");
        assert!(startup_warning("imap", false).contains("not RSA"));
    }

    #[test]
    fn not_built_message_names_the_rebuild_command() {
        assert!(not_built_message().contains("cargo build --release --features legacy-tls"));
    }

    #[test]
    fn cipher_list_has_the_old_device_suites_and_level_0() {
        for c in ["AES128-SHA", "AES256-SHA", "DES-CBC3-SHA"] {
            assert!(CIPHER_LIST.split(':').any(|x| x == c), "{c}");
        }
        assert!(CIPHER_LIST.ends_with(":@SECLEVEL=0"));
    }
}
