//! One DATA streamed to the spool as it arrives: the bytes of each read are
//! cleaned by the [`DataReader`] into a small buffer, which is written to the
//! message's temp file whenever it fills. The header fix-ups
//! ([`message::head`]) go ahead of the client's first byte once its header
//! section has been seen (at most [`message::HEAD_WINDOW`] bytes held back),
//! so the body is never copied whole. The buffers of all connections share
//! one byte budget (`smtp.data_buffer_budget`): a connection that cannot get
//! its share waits before taking more bytes off its socket (backpressure),
//! and gives its share back while it waits for a slow client.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::data::{DataOutcome, DataReader};
use super::message::{self, TraceInfo};
use crate::config::MIN_DATA_BUFFER_BUDGET;
use crate::spool::{Envelope, InMemory, Incoming, MemoryBudget, Spool, SpoolError};

/// The buffer is written out once it holds this much (and the head is decided).
const FLUSH_AT: usize = message::HEAD_WINDOW;
/// Input cleaned per step: one step appends at most `2 * INGEST_SLICE + 3`.
const INGEST_SLICE: usize = 8 * 1024;
/// Budget taken by one connection: its buffer never grows past it
/// (`FLUSH_AT` + one step + the head, with room to spare).
const SHARE: usize = MIN_DATA_BUFFER_BUDGET;

/// The owned parts of the `Received:` header (see [`TraceInfo`]).
pub struct Trace {
    pub helo: String,
    pub peer: IpAddr,
    pub hostname: String,
    pub protocol: &'static str,
    pub id: String,
}

/// Called once with the first bytes of the message (its header section, or
/// [`message::HEAD_WINDOW`] bytes of it) before they are written.
pub type OnHead = Box<dyn FnOnce(&[u8]) + Send>;

pub struct Intake {
    reader: DataReader,
    /// Cleaned bytes not yet written (the head first, once decided).
    out: Vec<u8>,
    /// Set until the head is decided and put in front of `out`.
    trace: Option<(Trace, Option<OnHead>)>,
    /// Where the bytes go; `None` once nothing more will be stored (no
    /// transaction, or a write failed and `error` says why).
    incoming: Option<Incoming>,
    error: Option<SpoolError>,
    budget: Arc<Semaphore>,
    share: Option<OwnedSemaphorePermit>,
}

impl Intake {
    /// `incoming` is `Err` when the message cannot be stored (it is then read
    /// to its end and refused), `None` when it will not be (no transaction).
    pub fn new(
        reader: DataReader,
        incoming: Option<Result<Incoming, SpoolError>>,
        trace: Trace,
        on_head: Option<OnHead>,
        budget: Arc<Semaphore>,
    ) -> Intake {
        let (incoming, error) = match incoming {
            Some(Ok(i)) => (Some(i), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Intake {
            reader,
            out: Vec::new(),
            trace: Some((trace, on_head)),
            incoming,
            error,
            budget,
            share: None,
        }
    }

    pub fn eight_bit(&self) -> bool {
        self.reader.eight_bit()
    }

    /// Takes bytes from `input` (waiting for budget first); returns how many
    /// were used and, at the final ".", the outcome. Full buffers are written.
    pub async fn take(&mut self, input: &[u8]) -> (usize, Option<DataOutcome>) {
        if input.is_empty() {
            return (0, None);
        }
        if self.share.is_none() {
            // Closed never happens (the semaphore lives in the spool); if it
            // did, going on unbudgeted beats refusing mail.
            self.share = self
                .budget
                .clone()
                .acquire_many_owned(SHARE as u32)
                .await
                .ok();
        }
        let mut used = 0;
        while used < input.len() {
            let end = input.len().min(used + INGEST_SLICE);
            let (n, outcome) = self.reader.ingest(&input[used..end], &mut self.out);
            used += n;
            if outcome.is_some() {
                return (used, outcome);
            }
            self.decide_head(false);
            if self.trace.is_none() && self.out.len() >= FLUSH_AT {
                self.write().await;
            }
        }
        (used, None)
    }

    /// Does this connection hold budget it could give back while it waits?
    pub fn can_park(&self) -> bool {
        self.share.is_some() && self.trace.is_none()
    }

    /// Before a long wait for the client: writes what is buffered and gives
    /// the budget back (not while the head is undecided: those bytes must
    /// wait for the rest of the header section).
    pub async fn park(&mut self) {
        if !self.can_park() {
            return;
        }
        self.write().await;
        self.out = Vec::new();
        self.share = None;
    }

    /// The message was complete: writes the rest and moves it into the queue
    /// (durable on return); returns its size.
    pub async fn commit(mut self, spool: &Spool, envelope: &Envelope) -> Result<u64, SpoolError> {
        self.decide_head(true);
        let last = std::mem::take(&mut self.out);
        self.share = None;
        match (self.incoming.take(), self.error.take()) {
            (Some(i), _) => i.commit(spool, envelope, last).await,
            (None, Some(e)) => Err(e),
            (None, None) => Err(SpoolError::Task("message was not being stored".into())),
        }
    }

    /// The message was complete: the whole of it in one buffer (direct
    /// mode), paid for from `budget` (see [`MemoryBudget`]).
    pub async fn into_message(mut self, budget: &MemoryBudget) -> Result<InMemory, SpoolError> {
        self.decide_head(true);
        let last = std::mem::take(&mut self.out);
        self.share = None;
        match (self.incoming.take(), self.error.take()) {
            (Some(i), _) => i.into_message(last, budget).await,
            (None, Some(e)) => Err(e),
            (None, None) => Err(SpoolError::Task("message was not being stored".into())),
        }
    }

    /// The message is refused: nothing of it is kept.
    pub async fn discard(mut self) {
        if let Some(i) = self.incoming.take() {
            i.discard().await;
        }
    }

    /// Puts the head in front of the buffered start once it is decided.
    fn decide_head(&mut self, complete: bool) {
        if self.trace.is_none() || !message::head_decided(&self.out, complete) {
            return;
        }
        let Some((t, on_head)) = self.trace.take() else {
            return;
        };
        if let Some(f) = on_head {
            f(&self.out);
        }
        let head = message::head(
            &self.out,
            &TraceInfo {
                helo: &t.helo,
                peer: t.peer,
                hostname: &t.hostname,
                protocol: t.protocol,
                id: &t.id,
            },
        );
        let mut out = Vec::with_capacity(SHARE.max(head.len() + self.out.len()));
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.out);
        self.out = out;
    }

    /// Writes the buffer out (or drops it when nothing is being stored).
    async fn write(&mut self) {
        if let Some(i) = &mut self.incoming {
            if let Err(e) = i.write(&mut self.out).await {
                // The temp file is gone; the rest is read and dropped.
                self.incoming = None;
                self.error = Some(e);
            }
        }
        self.out.clear();
    }
}
