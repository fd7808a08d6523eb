//! The durable on-disk queue. (Stub: owned by the spool/delivery work.)

pub mod admin;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the SMTP session hands to the spool with the message bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Account that will send it (from the local login or `default_account`).
    pub account: String,
    /// Reverse-path as the client gave it ("" for `MAIL FROM:<>`).
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// Client address, HELO name and local user, for logs and `queue show`.
    pub client: String,
    pub helo: String,
    pub local_user: Option<String>,
    pub smtputf8: bool,
    pub body_8bit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub String);

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Ok(Spool { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `message` (final bytes, CRLF line ends, not dot-stuffed) and its
    /// envelope durably; returns only once both are fsynced and renamed into place.
    pub async fn enqueue(&self, _envelope: &Envelope, _message: &[u8]) -> Result<QueueId, SpoolError> {
        todo!("spool")
    }
}
