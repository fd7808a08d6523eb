//! The one hand-off from "message durable" to the delivery worker: the
//! spool announces every entry it has fsynced and renamed into `queue/`
//! (SMTP sessions, direct mode's deferred recipients, failure notices alike),
//! and the worker receives it at once. [`Handoff::notify_one`] asks the
//! worker to look again without a new message (a reload, a moved clock).
//! Changes made by `mailbridge queue` in another process reach the worker
//! only through its slow rescan.

use std::sync::Mutex;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

use super::QueueId;

/// A message that is now durable in the queue, and its account.
pub type Durable = (QueueId, String);

pub struct Handoff {
    tx: UnboundedSender<Durable>,
    rx: Mutex<Option<UnboundedReceiver<Durable>>>,
    look: Notify,
}

impl Default for Handoff {
    fn default() -> Handoff {
        let (tx, rx) = unbounded_channel();
        Handoff {
            tx,
            rx: Mutex::new(Some(rx)),
            look: Notify::new(),
        }
    }
}

impl Handoff {
    /// Announces an entry the spool has made durable.
    pub(crate) fn durable(&self, id: QueueId, account: String) {
        // No receiver (the CLI, or the worker stopped): nothing waits for it.
        let _ = self.tx.send((id, account));
    }

    /// Wakes the worker to look at its schedule again (no new message).
    pub fn notify_one(&self) {
        self.look.notify_one();
    }

    /// The receiving end, for the one worker that delivers (`None` after the first call).
    pub fn take_receiver(&self) -> Option<UnboundedReceiver<Durable>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Resolves at the next [`Handoff::notify_one`] (or at once if one is pending).
    pub async fn looked(&self) {
        self.look.notified().await
    }
}
