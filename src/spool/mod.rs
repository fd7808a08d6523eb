//! The durable on-disk queue: enqueue (fsynced before the SMTP 250), list,
//! read, and the state changes the delivery worker and `mailbridge queue` make
//! (defer, hold, complete, fail, retry, delete, move damaged entries aside).
//!
//! Layout under `spool_dir`: `queue/` (waiting mail), `failed/` (permanently
//! failed or expired, kept with the upstream's reply), `corrupt/` (damaged
//! entries moved aside), `tmp/` (files being written). See [`store`] for the
//! file format. Every change is a rename, so the daemon and `mailbridge queue`
//! can work on the same directory at once.

pub mod admin;
mod changes;
mod commit;
mod handoff;
mod hold;
mod incoming;
pub mod memory;
mod spares;
pub(crate) mod store;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use handoff::{Durable, Handoff};
pub use hold::HoldReason;
pub use incoming::Incoming;
pub use memory::{InMemory, MemoryBudget};
pub(crate) use store::{create_private, make_private, FILE_MODE};
use store::{msg_path, Header, State};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: damaged spool entry: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no message with id {0} in the spool")]
    NotFound(String),
    #[error("message {0} is in the failed area (use `mailbridge queue retry {0}`)")]
    NotQueued(String),
    #[error("spool task failed: {0}")]
    Task(String),
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

impl QueueId {
    /// A fresh id, for a message whose id must be known before it is
    /// stored (the `Received:` header carries it, see [`Spool::enqueue_as`]).
    pub fn generate() -> QueueId {
        new_id()
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Waiting for its first attempt.
    Queued,
    /// Tried, failed temporarily, waiting for `next_attempt`.
    Deferred,
    /// Not tried: held by the worker (a configuration problem or the daily
    /// limit; `hold` says which and `last_error` says why).
    Held,
    /// Put on hold by `mailbridge queue hold`: not delivered until released.
    #[serde(rename = "on-hold")]
    OnHold,
    /// Failed permanently or expired; kept in the failed area.
    Failed,
}

impl std::fmt::Display for EntryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntryState::Queued => "queued",
            EntryState::Deferred => "deferred",
            EntryState::Held => "held",
            EntryState::OnHold => "on-hold",
            EntryState::Failed => "failed",
        })
    }
}

/// One message in the spool as `list`/`entry` report it.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub id: QueueId,
    pub envelope: Envelope,
    pub state: EntryState,
    pub attempts: u32,
    /// When the worker will try next (`None`: now, or never for failed entries).
    pub next_attempt: Option<SystemTime>,
    /// The last upstream reply or error (or why it is held / failed).
    pub last_error: Option<String>,
    pub received_at: SystemTime,
    /// Start of the current stay in the queue: receipt, or the time `queue
    /// retry` brought a failed message back. `expire_after` counts from here.
    pub queued_since: SystemTime,
    /// Message size in bytes.
    pub size: u64,
    /// Recipients still to deliver (all of the envelope's until some are done).
    pub remaining: Vec<String>,
    pub failed_at: Option<SystemTime>,
    /// Why it is held, if it is (the `state` shown is derived from it).
    pub hold: Option<HoldReason>,
}

/// How a deferral or hold is recorded.
#[derive(Debug, Clone)]
pub struct Deferral {
    pub attempts: u32,
    pub next_attempt: SystemTime,
    pub reason: String,
    /// Set when the entry is held rather than deferred.
    pub hold: Option<HoldReason>,
    /// Recipients still to deliver, if fewer than the envelope's.
    pub remaining: Option<Vec<String>>,
}

pub struct Spool {
    dir: PathBuf,
    queue: PathBuf,
    failed: PathBuf,
    corrupt: PathBuf,
    tmp: PathBuf,
    /// Tells the worker about every entry made durable by this process.
    handoff: Arc<Handoff>,
    /// Shared fsyncs of `queue/` for concurrent enqueues.
    queue_sync: Arc<commit::DirSync>,
    /// Bytes of received DATA that may sit in memory at once, across every
    /// connection, before they reach their temp file (`smtp.data_buffer_budget`).
    data_budget: Arc<Semaphore>,
    /// Bytes of whole messages read into memory for delivery at once, by
    /// the worker and direct mode together (`delivery.message_buffer_budget`).
    memory: Arc<MemoryBudget>,
    /// Delivered messages' files kept empty in `tmp/` for the next messages
    /// received (none unless [`Spool::with_spares`]).
    spares: Arc<spares::Spares>,
}

/// How many spent message files the daemon keeps for reuse ([`Spool::with_spares`]).
pub const SPARE_FILES: usize = 4096;

/// Runs `work` on the blocking pool and waits for it (see [`Spool::blocking`]).
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
}

pub(crate) fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A suffix unique within this process (for ids and temp names).
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:04x}{:04x}", n & 0xffff, rand::random::<u16>())
}

/// Ids are hex digits and '-' only (they become file names).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// `Ok` if `id` can name a spool file (the same rule as for `mailbridge
/// queue` arguments), so no path outside the spool is ever touched.
fn checked(id: &QueueId) -> Result<(), SpoolError> {
    if valid_id(&id.0) {
        Ok(())
    } else {
        Err(SpoolError::NotFound(format!("{:?}", id.0)))
    }
}

/// A new id: receipt time in microseconds (so ids sort by age) and a unique suffix.
fn new_id() -> QueueId {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    QueueId(format!("{micros:014x}{}", unique_suffix()))
}

impl Spool {
    /// Opens (creating if needed) the spool directory and its subdirectories.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let spool = Spool {
            dir: dir.to_path_buf(),
            queue: dir.join("queue"),
            failed: dir.join("failed"),
            corrupt: dir.join("corrupt"),
            tmp: dir.join("tmp"),
            handoff: Arc::new(Handoff::default()),
            queue_sync: Arc::new(commit::DirSync::new(&dir.join("queue"))),
            data_budget: Arc::new(Semaphore::new(crate::config::DEFAULT_DATA_BUFFER_BUDGET)),
            memory: Arc::new(MemoryBudget::new(
                crate::config::DEFAULT_MESSAGE_BUFFER_BUDGET,
            )),
            spares: Arc::new(spares::Spares::default()),
        };
        for d in [dir, &spool.queue, &spool.failed, &spool.corrupt, &spool.tmp] {
            store::private_dir(d)?;
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hand-off every enqueue announces itself on (the worker holds its receiver).
    pub fn handoff(&self) -> Arc<Handoff> {
        self.handoff.clone()
    }

    /// Runs blocking spool work (file reads, writes, fsyncs) off the runtime
    /// threads: the one way the daemon does it.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = self.clone();
        off_runtime(move || work(&spool)).await
    }

    /// Sets the shared budget of buffered DATA bytes (see `data_budget`).
    pub fn with_data_budget(mut self, bytes: usize) -> Spool {
        self.data_budget = Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)));
        self
    }

    /// Sets the budget of message bytes read into memory for delivery (see `memory`).
    pub fn with_memory_budget(mut self, bytes: usize) -> Spool {
        self.memory = Arc::new(MemoryBudget::new(bytes));
        self
    }

    /// Keeps up to `cap` delivered messages' files, emptied, to write the
    /// next messages into instead of creating files (see [`spares`]): for
    /// the daemon, whose delivery worker is the one that completes messages.
    pub fn with_spares(mut self, cap: usize) -> Spool {
        self.spares = Arc::new(spares::Spares::new(cap));
        self
    }

    /// (flushes issued, messages committed) by the group commit of `queue/`
    /// so far (the metrics' `spool_flushes` and `spool_commits`).
    pub fn commit_counts(&self) -> (u64, u64) {
        self.queue_sync.counts()
    }

    /// The budget every whole message read for delivery claims from first.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// The shared budget of buffered DATA bytes, one permit a byte.
    pub fn data_budget(&self) -> &Arc<Semaphore> {
        &self.data_budget
    }

    /// Stores `message` (final bytes, CRLF line ends, not dot-stuffed) and its
    /// envelope durably; returns only once both are fsynced and renamed into place.
    pub async fn enqueue(
        &self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<QueueId, SpoolError> {
        self.enqueue_as(new_id(), envelope, message).await
    }

    /// [`Spool::enqueue`] under an id from [`QueueId::generate`].
    pub async fn enqueue_as(
        &self,
        id: QueueId,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<QueueId, SpoolError> {
        self.enqueue_owned(id, envelope, Arc::new(message.to_vec()))
            .await
    }

    /// [`Spool::enqueue`] of bytes already held (e.g. an [`InMemory`]
    /// message in direct mode), without copying them.
    pub async fn enqueue_shared<M>(
        &self,
        envelope: &Envelope,
        message: Arc<M>,
    ) -> Result<QueueId, SpoolError>
    where
        M: AsRef<[u8]> + Send + Sync + 'static,
    {
        self.enqueue_owned(new_id(), envelope, message).await
    }

    async fn enqueue_owned<M>(
        &self,
        id: QueueId,
        envelope: &Envelope,
        message: Arc<M>,
    ) -> Result<QueueId, SpoolError>
    where
        M: AsRef<[u8]> + Send + Sync + 'static,
    {
        let message_len = (*message).as_ref().len();
        let header = Header {
            v: 1,
            id: id.0.clone(),
            received_at_ms: now_ms(),
            size: message_len as u64,
            envelope: envelope.clone(),
        };
        let (tmp, queue, queue_sync) = (
            self.tmp.clone(),
            self.queue.clone(),
            self.queue_sync.clone(),
        );
        off_runtime(move || {
            store::write_entry(&tmp, &queue, &header, (*message).as_ref(), None)?;
            queue_sync.after_rename()
        })
        .await?;
        // Durable now: the worker hears of it from here, in every mode.
        self.handoff.durable(id.clone(), envelope.account.clone());
        Ok(id)
    }

    /// Every queued and failed message, oldest first. Damaged entries are moved aside.
    pub fn list(&self) -> Result<Vec<QueueEntry>, SpoolError> {
        let mut all = self.list_queued()?;
        all.extend(self.list_area(&self.failed, true)?);
        all.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(all)
    }

    /// Messages waiting for delivery (queued, deferred, held), oldest first.
    pub fn list_queued(&self) -> Result<Vec<QueueEntry>, SpoolError> {
        self.list_area(&self.queue, false)
    }

    /// Failed messages, oldest first.
    pub fn list_failed(&self) -> Result<Vec<QueueEntry>, SpoolError> {
        self.list_area(&self.failed, true)
    }

    fn list_area(&self, dir: &Path, failed: bool) -> Result<Vec<QueueEntry>, SpoolError> {
        let mut out = Vec::new();
        for id in store::list_ids(dir)? {
            match store::read_header(&msg_path(dir, &id)) {
                Ok((h, _)) => out.push(make_entry(h, store::read_state(dir, &id), failed)),
                Err(SpoolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e @ SpoolError::Corrupt { .. }) => self.quarantine(dir, &id, &e.to_string()),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(out)
    }

    /// One message's entry, queued or failed.
    pub fn entry(&self, id: &QueueId) -> Result<QueueEntry, SpoolError> {
        let (dir, failed) = self.locate(id)?;
        let (h, _) = store::read_header(&msg_path(dir, &id.0))?;
        Ok(make_entry(h, store::read_state(dir, &id.0), failed))
    }

    /// The message bytes exactly as accepted (queued or failed).
    pub fn read_message(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let (dir, _) = self.locate(id)?;
        Ok(store::read_message(&msg_path(dir, &id.0))?.1)
    }

    /// A queued entry and its bytes in one call (the tests' shortcut for
    /// [`Spool::load_for_delivery`]). Damaged entries are moved aside (and
    /// reported as `Corrupt`).
    #[cfg(test)]
    pub fn load_queued(&self, id: &QueueId) -> Result<(QueueEntry, Vec<u8>), SpoolError> {
        let (entry, mut opened) = self.open_queued(id)?;
        let bytes = self.read_opened(&mut opened)?;
        Ok((entry, bytes))
    }

    /// A queued entry (header and state) and its file, still open, for
    /// [`Spool::read_opened`]: one open of the message file per delivery.
    fn open_queued(&self, id: &QueueId) -> Result<(QueueEntry, Opened), SpoolError> {
        checked(id)?;
        let path = msg_path(&self.queue, &id.0);
        let read = File::open(&path)
            .map_err(store::io_err(&path))
            .and_then(|f| store::read_header_of(&f, &path).map(|h| (f, h)));
        match read {
            Ok((file, (header, offset))) => {
                let state = store::read_state(&self.queue, &id.0);
                let entry = make_entry(header.clone(), state, false);
                let opened = Opened {
                    path,
                    file,
                    header,
                    offset,
                };
                Ok((entry, opened))
            }
            Err(e) => Err(self.load_failed(id, e)),
        }
    }

    /// The bytes of a message opened by [`Spool::open_queued`].
    fn read_opened(&self, o: &mut Opened) -> Result<Vec<u8>, SpoolError> {
        store::read_message_body(&mut o.file, &o.path, o.offset, o.header.size)
            .map_err(|e| self.load_failed(&QueueId(o.header.id.clone()), e))
    }

    /// A read for delivery that failed: a missing file is `NotFound`, a
    /// damaged entry is moved aside.
    fn load_failed(&self, id: &QueueId, e: SpoolError) -> SpoolError {
        match e {
            SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                SpoolError::NotFound(id.0.clone())
            }
            e @ SpoolError::Corrupt { .. } => {
                self.quarantine(&self.queue, &id.0, &e.to_string());
                e
            }
            e => e,
        }
    }

    /// A queued entry and its bytes, for delivery: the bytes are claimed
    /// from the memory budget before they are read (waiting for room), and
    /// not read at all (`None`) for an entry on hold (`mailbridge queue hold`).
    /// The file is opened once; when the claim had to wait, its state is
    /// read again after it and its name checked (a `queue hold` or `queue
    /// delete` meanwhile is seen).
    pub async fn load_for_delivery(
        self: &Arc<Self>,
        id: &QueueId,
    ) -> Result<(QueueEntry, Option<InMemory>), SpoolError> {
        let qid = id.clone();
        // One trip when the bytes fit in the budget right away (the usual
        // case); a message that must wait for room is read after the wait.
        let first = self
            .blocking(move |s| {
                let (head, mut opened) = s.open_queued(&qid)?;
                if head.state == EntryState::OnHold {
                    return Ok(Loaded::Held(head));
                }
                match s.memory.try_claim(head.size) {
                    Some(claim) => {
                        let bytes = s.read_opened(&mut opened)?;
                        Ok(Loaded::Read(head, InMemory::new(bytes, claim)))
                    }
                    None => Ok(Loaded::Opened(head, opened)),
                }
            })
            .await?;
        let (head, opened) = match first {
            Loaded::Held(head) => return Ok((head, None)),
            Loaded::Read(entry, bytes) => return Ok((entry, Some(bytes))),
            Loaded::Opened(head, opened) => (head, opened),
        };
        let claim = self.memory.claim(head.size).await;
        let (entry, bytes) = self
            .blocking(move |s| {
                let mut opened = opened;
                // `queue delete` while this waited for room: not sent.
                if !opened.path.exists() {
                    return Err(SpoolError::NotFound(opened.header.id));
                }
                let bytes = s.read_opened(&mut opened)?;
                let state = store::read_state(&s.queue, &opened.header.id);
                Ok((make_entry(opened.header, state, false), bytes))
            })
            .await?;
        if entry.state == EntryState::OnHold {
            return Ok((entry, None)); // put on hold while waiting for room
        }
        Ok((entry, Some(InMemory::new(bytes, claim))))
    }

    fn locate(&self, id: &QueueId) -> Result<(&Path, bool), SpoolError> {
        if valid_id(&id.0) {
            if msg_path(&self.queue, &id.0).exists() {
                return Ok((&self.queue, false));
            }
            if msg_path(&self.failed, &id.0).exists() {
                return Ok((&self.failed, true));
            }
        }
        Err(SpoolError::NotFound(id.0.clone()))
    }
}

/// What the first step of [`Spool::load_for_delivery`] came to.
enum Loaded {
    /// On hold: not read.
    Held(QueueEntry),
    /// Read, its bytes claimed from the budget.
    Read(QueueEntry, InMemory),
    /// Waits for room in the budget, file open.
    Opened(QueueEntry, Opened),
}

/// A queued message's file, open after its header was read.
struct Opened {
    path: PathBuf,
    file: File,
    header: Header,
    /// Where the message bytes start.
    offset: u64,
}

fn make_entry(h: Header, s: State, failed: bool) -> QueueEntry {
    let state = match (&s.hold, failed) {
        (_, true) => EntryState::Failed,
        (Some(h), _) if h.is_admin() => EntryState::OnHold,
        (Some(_), _) => EntryState::Held,
        (None, _) if s.attempts > 0 => EntryState::Deferred,
        (None, _) => EntryState::Queued,
    };
    QueueEntry {
        id: QueueId(h.id),
        remaining: s.remaining.unwrap_or_else(|| h.envelope.recipients.clone()),
        envelope: h.envelope,
        state,
        attempts: s.attempts,
        next_attempt: (!failed && s.next_attempt_ms > 0).then(|| from_ms(s.next_attempt_ms)),
        last_error: s.last_error,
        received_at: from_ms(h.received_at_ms),
        queued_since: from_ms(s.requeued_at_ms.unwrap_or(h.received_at_ms)),
        size: h.size,
        failed_at: s.failed_at_ms.map(from_ms),
        hold: if failed { None } else { s.hold },
    }
}

#[cfg(test)]
mod tests;
