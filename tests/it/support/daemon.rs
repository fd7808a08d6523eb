//! Start the real daemon in-process on port 0 from a TOML text.

use std::path::PathBuf;

use mailbridge::config::Config;
use mailbridge::Daemon;

/// A daemon and the temporary directory holding its relay.toml and spool.
pub struct TestDaemon {
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
}

impl TestDaemon {
    pub fn smtp_addr(&self) -> std::net::SocketAddr {
        self.daemon.smtp_addrs[0]
    }

    pub fn imap_addr(&self) -> std::net::SocketAddr {
        self.daemon.imap_addrs[0]
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.daemon.shutdown().await;
        self.dir
    }
}

/// Writes `toml` as relay.toml in a new temp dir (spool_dir "spool" resolves
/// inside it) and starts the daemon. Listen addresses should use port 0.
pub async fn start(toml: &str) -> TestDaemon {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(toml, dir).await
}

/// Like [`start`] but in an existing directory (restart tests reuse the spool).
pub async fn start_in(toml: &str, dir: tempfile::TempDir) -> TestDaemon {
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, toml).expect("write relay.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("test config: {e}"));
    let daemon = Daemon::start(config)
        .await
        .unwrap_or_else(|e| panic!("daemon start: {e}"));
    TestDaemon { daemon, dir }
}
