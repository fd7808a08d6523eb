//! Why a queued entry is held ([`HoldReason`]), persisted in its state
//! file; the state `queue list` shows is derived from it. Reads the three
//! shapes older versions wrote (`held` text, a daily-limit hold recognised by
//! its text, `on_hold`), so their spools load unchanged.

use serde::{Deserialize, Serialize};

/// Why an entry waits without being tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HoldReason {
    /// Our configuration is wrong (unknown account, no usable password):
    /// not the message's fault; `reason` says what to fix.
    Config { reason: String },
    /// The account is at its daily limit; due again at `until_ms` (unix ms)
    /// or earlier, when the limiter finds room.
    DailyLimit { until_ms: u64 },
    /// `mailbridge queue hold`: not delivered until released.
    Admin,
    /// The account's OAuth2 grant was refused: someone must authorize the
    /// account again before its mail can go.
    NeedsReauthorization { account: String, reason: String },
}

impl HoldReason {
    /// Put on hold by the admin (shown as `on-hold`), rather than by the worker (`held`).
    pub fn is_admin(&self) -> bool {
        matches!(self, HoldReason::Admin)
    }
}

/// How older versions started the text of a daily-limit hold.
const OLD_DAILY_LIMIT_PREFIX: &str = "daily limit";

/// The hold an old state file describes: `on_hold` (admin) wins over a
/// `held` text, which is a daily-limit hold if its text says so (its time
/// was the entry's `next_attempt_ms`) and a configuration hold otherwise.
pub(crate) fn from_old(
    held: Option<&str>,
    on_hold: bool,
    next_attempt_ms: u64,
) -> Option<HoldReason> {
    if on_hold {
        return Some(HoldReason::Admin);
    }
    let text = held?;
    Some(if text.starts_with(OLD_DAILY_LIMIT_PREFIX) {
        HoldReason::DailyLimit {
            until_ms: next_attempt_ms,
        }
    } else {
        HoldReason::Config {
            reason: text.to_string(),
        }
    })
}
