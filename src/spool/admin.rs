//! The data behind `mailbridge queue list | show | retry | delete | hold | release`:
//! plain file operations on the spool directory, safe while the daemon runs
//! (every change is an atomic rename; the worker re-reads the queue every few
//! seconds and tolerates entries that vanish under it). Printing lives in
//! [`crate::cli::queue`].

use std::time::SystemTime;

use serde::Serialize;

use super::{EntryState, HoldReason, QueueEntry, QueueId, Spool, SpoolError};
use crate::config::Config;

/// One entry as `queue list` and `queue show` present it (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    pub id: String,
    pub state: EntryState,
    pub account: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub remaining: Vec<String>,
    pub size: u64,
    pub attempts: u32,
    pub received_at: String,
    pub next_attempt: Option<String>,
    pub failed_at: Option<String>,
    pub last_error: Option<String>,
    /// Why it is held, typed (`state` is derived from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldReason>,
    pub client: String,
    pub helo: String,
    pub local_user: Option<String>,
    /// Why the provider may rewrite `From:` (only from `queue show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `queue show`: the entry and, when the message file is readable, its
/// header section (at most 8 KiB, to recognise the message).
#[derive(Debug, Clone)]
pub struct Shown {
    pub entry: EntryView,
    pub headers: Option<String>,
}

/// What `queue retry ID` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// It is retried now.
    Now,
    /// It is on hold: sent once released.
    OnHold,
}

/// A time as `queue` shows it (RFC 3339, UTC).
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

/// The view of one entry.
pub fn view(e: &QueueEntry) -> EntryView {
    EntryView {
        id: e.id.0.clone(),
        state: e.state,
        account: e.envelope.account.clone(),
        mail_from: e.envelope.mail_from.clone(),
        recipients: e.envelope.recipients.clone(),
        remaining: e.remaining.clone(),
        size: e.size,
        attempts: e.attempts,
        received_at: rfc3339(e.received_at),
        next_attempt: e.next_attempt.map(rfc3339),
        failed_at: e.failed_at.map(rfc3339),
        last_error: e.last_error.clone(),
        hold: e.hold.clone(),
        client: e.envelope.client.clone(),
        helo: e.envelope.helo.clone(),
        local_user: e.envelope.local_user.clone(),
        warning: None,
    }
}

/// Opens the configured spool.
pub fn open(config: &Config) -> Result<Spool, SpoolError> {
    Spool::open(&config.smtp.spool_dir)
}

/// Every entry, queued and failed.
pub fn list(spool: &Spool) -> Result<Vec<EntryView>, SpoolError> {
    Ok(spool.list()?.iter().map(view).collect())
}

/// One entry with the `From:` rewrite warning and its headers.
pub fn show(config: &Config, spool: &Spool, id: &QueueId) -> Result<Shown, SpoolError> {
    let e = spool.entry(id)?;
    let message = spool.read_message(id);
    let mut entry = view(&e);
    entry.warning = match (&message, config.account(&e.envelope.account)) {
        (Ok(m), Some(account)) => crate::smtp::sender::rewrite_warning(m, account),
        _ => None,
    };
    let headers = message.ok().map(|msg| {
        let end = msg
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(msg.len())
            .min(8192);
        String::from_utf8_lossy(&msg[..end]).into_owned()
    });
    Ok(Shown { entry, headers })
}

/// Retries one message now (also a failed one).
pub fn retry_one(spool: &Spool, id: &QueueId) -> Result<Retried, SpoolError> {
    spool.retry(id)?;
    let held = spool.entry(id).is_ok_and(|e| e.state == EntryState::OnHold);
    Ok(if held { Retried::OnHold } else { Retried::Now })
}

/// Retries every queued message now; returns how many.
pub fn retry_all(spool: &Spool) -> Result<usize, SpoolError> {
    let mut n = 0;
    for e in spool.list_queued()? {
        match spool.retry(&e.id) {
            Ok(()) => n += 1,
            Err(SpoolError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(n)
}
