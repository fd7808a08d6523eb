//! The state changes of entries already in the spool, each a rename or a
//! state-file write: complete, defer or hold, fail, record failed
//! recipients, retry, hold and release (`mailbridge queue`), delete, move a
//! damaged entry aside, and the start-up clean-up.

use std::fs;
use std::path::Path;
use std::time::Duration;

use tracing::warn;

use super::store::{self, io_err, msg_path, state_path, Header, State};
use super::{
    checked, make_private, new_id, now_ms, to_ms, Deferral, Envelope, HoldReason, QueueId, Spool,
    SpoolError, FILE_MODE,
};

impl Spool {
    /// Delivered to every recipient: remove it.
    pub fn complete(&self, id: &QueueId) -> Result<(), SpoolError> {
        checked(id)?;
        let p = msg_path(&self.queue, &id.0);
        // Kept for the next message received, or unlinked (see `super::spares`).
        match self.spares.retire(&p, &self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
        let _ = fs::remove_file(state_path(&self.queue, &id.0));
        Ok(())
    }

    /// Records a temporary failure (or a hold) and when to try again.
    /// A no-op if the entry was deleted meanwhile.
    pub fn defer(&self, id: &QueueId, d: &Deferral) -> Result<(), SpoolError> {
        checked(id)?;
        if !msg_path(&self.queue, &id.0).exists() {
            return Ok(());
        }
        let previous = store::read_state(&self.queue, &id.0);
        let state = State {
            attempts: d.attempts,
            next_attempt_ms: to_ms(d.next_attempt),
            last_error: Some(d.reason.clone()),
            // `queue hold` may have run while this delivery was in flight.
            hold: match previous.hold {
                Some(HoldReason::Admin) => Some(HoldReason::Admin),
                _ => d.hold.clone(),
            },
            remaining: d.remaining.clone(),
            failed_at_ms: None,
            requeued_at_ms: previous.requeued_at_ms,
            ..State::default()
        };
        store::write_state(&self.tmp, &self.queue, &id.0, &state, true)
    }

    /// Moves a queued entry to the failed area with `reason` (the upstream's reply).
    pub fn fail(
        &self,
        id: &QueueId,
        attempts: u32,
        reason: &str,
        remaining: Option<Vec<String>>,
    ) -> Result<(), SpoolError> {
        checked(id)?;
        let src = msg_path(&self.queue, &id.0);
        if !src.exists() {
            return Ok(());
        }
        let state = State {
            attempts,
            last_error: Some(reason.to_string()),
            remaining,
            failed_at_ms: Some(now_ms()),
            ..State::default()
        };
        store::write_state(&self.tmp, &self.failed, &id.0, &state, true)?;
        fs::rename(&src, msg_path(&self.failed, &id.0)).map_err(io_err(&src))?;
        store::sync_dir(&self.failed)?;
        let _ = fs::remove_file(state_path(&self.queue, &id.0));
        Ok(())
    }

    /// Records recipients that failed permanently (with the upstream's reply) as a
    /// new entry in the failed area holding a copy of the message. Used when only
    /// some recipients are rejected (spool and direct mode).
    pub fn record_failed(
        &self,
        envelope: &Envelope,
        message: &[u8],
        failures: &[(String, String)],
    ) -> Result<QueueId, SpoolError> {
        let id = new_id();
        let mut env = envelope.clone();
        env.recipients = failures.iter().map(|(r, _)| r.clone()).collect();
        let reason = failures
            .iter()
            .map(|(r, reply)| format!("<{r}>: {reply}"))
            .collect::<Vec<_>>()
            .join("; ");
        let header = Header {
            v: 1,
            id: id.0.clone(),
            received_at_ms: now_ms(),
            size: message.len() as u64,
            envelope: env,
        };
        let state = State {
            attempts: 1,
            last_error: Some(reason),
            failed_at_ms: Some(now_ms()),
            ..State::default()
        };
        store::write_entry(&self.tmp, &self.failed, &header, message, Some(&state))?;
        store::sync_dir(&self.failed)?;
        Ok(id)
    }

    /// Makes an entry due now: a queued one keeps its attempts; a failed one goes
    /// back to the queue (its remaining recipients) with attempts reset.
    pub fn retry(&self, id: &QueueId) -> Result<(), SpoolError> {
        let (dir, failed) = self.locate(id)?;
        let mut state = store::read_state(dir, &id.0);
        state.next_attempt_ms = 0;
        // A worker's hold is looked at again now; the admin's stays.
        if !state.hold.as_ref().is_some_and(HoldReason::is_admin) {
            state.hold = None;
        }
        if failed {
            state.attempts = 0;
            state.failed_at_ms = None;
            state.requeued_at_ms = Some(now_ms());
            store::write_state(&self.tmp, &self.queue, &id.0, &state, true)?;
            let src = msg_path(&self.failed, &id.0);
            fs::rename(&src, msg_path(&self.queue, &id.0)).map_err(io_err(&src))?;
            store::sync_dir(&self.queue)?;
            let _ = fs::remove_file(state_path(&self.failed, &id.0));
        } else {
            store::write_state(&self.tmp, &self.queue, &id.0, &state, false)?;
        }
        Ok(())
    }

    /// Puts a queued entry on hold (`mailbridge queue hold`): the worker skips
    /// it until [`Spool::release`]. A delivery already in flight finishes.
    pub fn hold(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.set_on_hold(id, true)
    }

    /// Releases a held entry: due now.
    pub fn release(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.set_on_hold(id, false)
    }

    fn set_on_hold(&self, id: &QueueId, on_hold: bool) -> Result<(), SpoolError> {
        let (dir, failed) = self.locate(id)?;
        if failed {
            return Err(SpoolError::NotQueued(id.0.clone()));
        }
        let mut state = store::read_state(dir, &id.0);
        if on_hold {
            state.hold = Some(HoldReason::Admin);
        } else {
            if state.hold.as_ref().is_some_and(HoldReason::is_admin) {
                state.hold = None;
            }
            state.next_attempt_ms = 0;
        }
        store::write_state(&self.tmp, &self.queue, &id.0, &state, true)
    }

    /// Removes an entry (queued or failed). A delivery in progress finishes or
    /// fails harmlessly; its later state update is ignored.
    pub fn delete(&self, id: &QueueId) -> Result<(), SpoolError> {
        let (dir, _) = self.locate(id)?;
        let p = msg_path(dir, &id.0);
        fs::remove_file(&p).map_err(io_err(&p))?;
        let _ = fs::remove_file(state_path(dir, &id.0));
        Ok(())
    }

    /// Moves a damaged entry to `corrupt/` and logs it.
    pub(super) fn quarantine(&self, dir: &Path, id: &str, why: &str) {
        warn!(queue_id = %id, "damaged spool entry moved to {}: {}", self.corrupt.display(), crate::text::Printable(why));
        for p in [msg_path(dir, id), state_path(dir, id)] {
            if let Some(name) = p.file_name() {
                let _ = fs::rename(&p, self.corrupt.join(name));
            }
        }
    }

    /// Start-up clean-up (before this run keeps any spare file): stale temp
    /// files, an earlier run's spare files, state files without a message;
    /// files others could read (written by an older version) made private.
    pub fn recover(&self) {
        for dir in [&self.queue, &self.failed, &self.corrupt, &self.tmp] {
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    make_private(&e.path(), FILE_MODE);
                }
            }
        }
        let stale = Duration::from_secs(60);
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > stale)
        };
        if let Ok(rd) = fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                // An earlier run's spare files: empty, and known to no pool.
                let spare = super::spares::is_spare(&e.file_name().to_string_lossy());
                if spare || old(&e.path()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for dir in [&self.queue, &self.failed] {
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(&format!(".{}", store::STATE_EXT)) {
                    if !msg_path(dir, id).exists() && old(&e.path()) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}
