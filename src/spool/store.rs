//! On-disk format of one spool entry and the durable file operations under it.
//!
//! An entry is `<id>.msg`: one line of JSON ([`Header`]: id, receipt time,
//! size, envelope), a `\n`, then the message bytes exactly as accepted. It is
//! written once (temp file, fsync, rename, fsync dir) and never modified once
//! renamed. A message streamed in as it arrives ([`super::incoming`]) first
//! gets a placeholder header padded with spaces to the widest the real one
//! can be; the real header overwrites it in the temp file at the end, padded
//! to the same width (JSON allows the trailing spaces, so files written
//! before streaming and after read the same way, format `v: 1`). Its
//! mutable delivery state lives beside it in `<id>.state` ([`State`], JSON),
//! replaced atomically by rename; a missing state file means "fresh".

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};

use super::{Envelope, SpoolError};

pub(crate) const MSG_EXT: &str = "msg";
pub(crate) const STATE_EXT: &str = "state";
/// Longest header line we accept (an envelope with 1000 long recipients fits).
const MAX_HEADER: u64 = 4 * 1024 * 1024;

/// The first line of a `.msg` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    pub v: u32,
    pub id: String,
    pub received_at_ms: u64,
    pub size: u64,
    pub envelope: Envelope,
}

/// Delivery state of an entry (the `.state` file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub attempts: u32,
    /// Unix ms; 0 or absent means "due now".
    #[serde(default)]
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why the entry is held (see [`super::HoldReason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<super::HoldReason>,
    /// Older versions: why the worker held it (read only; see [`State::upgrade`]).
    #[serde(default, skip_serializing)]
    pub held: Option<String>,
    /// Recipients still to deliver to; `None` means all of the envelope's.
    #[serde(default)]
    pub remaining: Option<Vec<String>>,
    /// When it was moved to the failed area (unix ms).
    #[serde(default)]
    pub failed_at_ms: Option<u64>,
    /// Older versions: put on hold by `mailbridge queue hold` (read only).
    #[serde(default, skip_serializing)]
    pub on_hold: bool,
    /// When `queue retry` put a failed entry back in the queue (unix ms):
    /// expiry counts from here, not from receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued_at_ms: Option<u64>,
}

impl State {
    /// Turns the hold fields older versions wrote into [`State::hold`].
    pub(crate) fn upgrade(mut self) -> State {
        if self.hold.is_none() {
            self.hold =
                super::hold::from_old(self.held.as_deref(), self.on_hold, self.next_attempt_ms);
        }
        self.held = None;
        self.on_hold = false;
        self
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn msg_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{MSG_EXT}"))
}

pub(crate) fn state_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{STATE_EXT}"))
}

/// Mode of every directory under the spool: owner only, whatever the umask.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file the daemon writes under the spool.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents) with [`DIR_MODE`], and sets an
/// existing directory to it (a spool made by an older version or by hand).
/// A chmod that fails is logged, not fatal.
pub(crate) fn private_dir(path: &Path) -> Result<(), SpoolError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(path).map_err(io_err(path))?;
    make_private(path, DIR_MODE);
    Ok(())
}

/// Sets `mode` on an existing file or directory that has another one (e.g.
/// readable by others, left by an older version); logs a failure.
pub(crate) fn make_private(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = fs::metadata(path) else { return };
        if meta.permissions().mode() & 0o777 == mode {
            return;
        }
        if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            tracing::warn!(
                "cannot make {} private (mode {mode:o}): {e}",
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// A new file (never an existing one) with [`FILE_MODE`], whatever the umask
/// (a umask only takes bits away: 0600 stays 0600 under 022, 027, 077).
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    // Readable too: a streamed message is read back from its temp file in direct mode.
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(path)
}

/// fsync a directory so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `parts` to a new file in `tmp`, fsyncs it and renames it to `dest`.
/// The caller fsyncs `dest`'s directory when durability is needed.
pub(crate) fn write_atomic(
    tmp: &Path,
    dest: &Path,
    parts: &[&[u8]],
    sync: bool,
) -> Result<(), SpoolError> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp_path = tmp.join(format!("{name}.{}.tmp", super::unique_suffix()));
    let result = (|| {
        let mut f = create_private(&tmp_path).map_err(io_err(&tmp_path))?;
        for p in parts {
            f.write_all(p).map_err(io_err(&tmp_path))?;
        }
        if sync {
            f.sync_all().map_err(io_err(&tmp_path))?;
        }
        drop(f);
        fs::rename(&tmp_path, dest).map_err(io_err(dest))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

/// `header` as its file line: JSON, padded with spaces to `width` bytes when
/// given (an error if it does not fit), then `\n`.
pub(crate) fn header_line(
    header: &Header,
    width: Option<usize>,
    path: &Path,
) -> Result<Vec<u8>, SpoolError> {
    let mut line = serde_json::to_vec(header).map_err(|e| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot encode header: {e}"),
    })?;
    if let Some(width) = width {
        if line.len() > width {
            return Err(SpoolError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("header of {} bytes does not fit {width}", line.len()),
            });
        }
        line.resize(width, b' ');
    }
    line.push(b'\n');
    Ok(line)
}

/// Writes a complete entry (message with header, optional state) into `dir`;
/// the caller fsyncs the directory (directly or through [`DirSync`]).
pub(crate) fn write_entry(
    tmp: &Path,
    dir: &Path,
    header: &Header,
    message: &[u8],
    state: Option<&State>,
) -> Result<(), SpoolError> {
    let line = header_line(header, None, dir)?;
    if let Some(state) = state {
        write_state(tmp, dir, &header.id, state, true)?;
    }
    write_atomic(tmp, &msg_path(dir, &header.id), &[&line, message], true)
}

/// Group commit of the spool's durable point: every caller returns only once
/// its message data, its inode and its directory entry are on disk, but
/// callers that arrive together share the flushes.
///
/// A committer hands over its written temp file ([`DirSync::commit`]); the
/// first caller that finds no batch in progress becomes the leader and, for
/// everything queued so far:
///
/// 1. makes the files' data and inodes durable: with one file, `fsync` of
///    that file (as before); with several, on Linux, one `syncfs` of the
///    spool's file system, which writes back and flushes every dirty page
///    and inode on it, so it covers all of the batch's files (and, since
///    Linux 5.8, reports their write-back errors); elsewhere one `fsync` per
///    file;
/// 2. renames each file into the directory (the data is already durable, so
///    a crash never leaves a name pointing at missing data, exactly as with
///    a per-file `fsync`);
/// 3. `fsync`s the directory once, through a handle kept open, which makes
///    every rename of the batch durable.
///
/// So a batch costs two flushes however many messages it holds, and
/// messages that arrive while one batch is being flushed form the next one.
/// Under load (the last batch held more than one message) a leader first
/// waits up to [`GATHER`] for others to join ([`gather_more`]): the
/// accepting sessions keep the CPU busy meanwhile, and fewer, larger
/// batches leave it more time; a lone message never waits.
/// Nobody is answered before step 3 covered its rename: the guarantee is the
/// one of "fsync the file, rename, fsync the directory" per message. The
/// price of `syncfs` is that it also writes back other dirty data on the
/// same file system (a spool on its own file system pays nothing for it).
/// Callers that renamed a file themselves ([`DirSync::after_rename`]) join
/// the same batches for step 3 only.
pub(crate) struct DirSync {
    dir: PathBuf,
    /// The directory, opened once and kept for its fsyncs.
    handle: std::sync::OnceLock<File>,
    state: Mutex<SyncState>,
    done: Condvar,
    /// Signalled when a message joins the queue (a gathering leader waits on it).
    arrived: Condvar,
    /// Flushes (fsync, syncfs) issued and messages committed, for the tests
    /// and the benchmark's "flushes per message".
    flushes: std::sync::atomic::AtomicU64,
    committed: std::sync::atomic::AtomicU64,
    /// Messages being received now ([`DirSync::receiving`]): commits to come.
    receiving: std::sync::atomic::AtomicUsize,
}

/// A message being received: counted in [`DirSync`] until dropped (it is
/// dropped just before the message's commit is submitted).
pub(crate) struct Receiving(std::sync::Arc<DirSync>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0
            .receiving
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A temp file whose content is final, to be made durable and renamed.
struct Job {
    file: File,
    from: PathBuf,
    to: PathBuf,
}

#[derive(Default)]
struct SyncState {
    next_ticket: u64,
    /// Waiting for the next batch; `None`: already renamed, directory only.
    queued: Vec<(u64, Option<Job>)>,
    /// Outcomes of finished batches not yet picked up by their callers.
    results: std::collections::HashMap<u64, Result<(), SpoolError>>,
    /// A leader is gathering or flushing a batch.
    busy: bool,
    /// Size of the last batch flushed.
    last_batch: usize,
}

/// Longest a leader waits for more messages to join its batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);
/// A batch this large is flushed without waiting for more.
const FULL_BATCH: usize = 16;

/// Whether a leader holding `queued` messages waits (up to [`GATHER`]) for
/// more to join: only under load, i.e. when other messages are being
/// received right now (`coming`, they commit soon) or the previous batch had
/// company (`last_batch` > 1), as PostgreSQL's `commit_delay` with
/// `commit_siblings`. A message arriving alone is flushed at once, so one
/// client never waits.
fn gather_more(queued: usize, last_batch: usize, coming: usize) -> bool {
    (coming > 0 || last_batch > 1) && queued < FULL_BATCH
}

impl DirSync {
    pub fn new(dir: &Path) -> DirSync {
        DirSync {
            dir: dir.to_path_buf(),
            handle: std::sync::OnceLock::new(),
            state: Mutex::new(SyncState::default()),
            done: Condvar::new(),
            arrived: Condvar::new(),
            flushes: Default::default(),
            committed: Default::default(),
            receiving: Default::default(),
        }
    }

    /// Counts a message whose DATA is arriving, until the guard is dropped.
    pub fn receiving(self: &std::sync::Arc<Self>) -> Receiving {
        self.receiving
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Receiving(self.clone())
    }

    /// Call after a rename into the directory; returns once it is durable.
    pub fn after_rename(&self) -> Result<(), SpoolError> {
        self.submit(None)
    }

    /// Makes `file` (written in full at `from`) durable, renames it to `to`
    /// (in this directory) and makes the rename durable; on an error the
    /// temp file is removed (unless the rename happened: then the entry
    /// stays, as a queued message whose answer was lost).
    pub fn commit(&self, file: File, from: PathBuf, to: PathBuf) -> Result<(), SpoolError> {
        self.submit(Some(Job { file, from, to }))
    }

    /// (flushes issued, messages committed) so far.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.flushes.load(Relaxed), self.committed.load(Relaxed))
    }

    fn submit(&self, job: Option<Job>) -> Result<(), SpoolError> {
        let poisoned = |_| SpoolError::Task("spool sync lock poisoned".into());
        let mut s = self.state.lock().map_err(poisoned)?;
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queued.push((ticket, job));
        self.arrived.notify_one();
        loop {
            if let Some(result) = s.results.remove(&ticket) {
                return result;
            }
            if s.busy {
                s = self.done.wait(s).map_err(poisoned)?;
                continue;
            }
            s.busy = true;
            let coming = || self.receiving.load(std::sync::atomic::Ordering::SeqCst);
            if gather_more(s.queued.len(), s.last_batch, coming()) {
                let deadline = std::time::Instant::now() + GATHER;
                while gather_more(s.queued.len(), s.last_batch, coming()) {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    s = match self.arrived.wait_timeout(s, left) {
                        Ok((s, _)) => s,
                        Err(_) => return Err(SpoolError::Task("spool sync lock poisoned".into())),
                    };
                }
            }
            let batch = std::mem::take(&mut s.queued);
            s.last_batch = batch.len();
            drop(s);
            let outcomes = self.run_batch(batch);
            s = self.state.lock().map_err(poisoned)?;
            s.busy = false;
            s.results.extend(outcomes);
            self.done.notify_all();
        }
    }

    /// Steps 1-3 of the type's description for one batch.
    fn run_batch(&self, batch: Vec<(u64, Option<Job>)>) -> Vec<(u64, Result<(), SpoolError>)> {
        use std::sync::atomic::Ordering::Relaxed;
        let files: Vec<&File> = batch
            .iter()
            .filter_map(|(_, j)| j.as_ref())
            .map(|j| &j.file)
            .collect();
        let data = self.sync_files(&files);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut renamed = Vec::with_capacity(batch.len());
        for (ticket, job) in batch {
            let Some(job) = job else {
                renamed.push(ticket);
                continue;
            };
            let Job { file, from, to } = job;
            drop(file);
            let step = match &data {
                Err(e) => Err(SpoolError::Io {
                    path: from.clone(),
                    source: same_error(e),
                }),
                Ok(()) => fs::rename(&from, &to).map_err(io_err(&to)),
            };
            match step {
                Ok(()) => {
                    self.committed.fetch_add(1, Relaxed);
                    renamed.push(ticket);
                }
                Err(e) => {
                    let _ = fs::remove_file(&from);
                    outcomes.push((ticket, Err(e)));
                }
            }
        }
        if renamed.is_empty() {
            return outcomes;
        }
        let dir = self.sync_dir();
        for ticket in renamed {
            let result = match &dir {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::Io {
                    path: self.dir.clone(),
                    source: same_error(e),
                }),
            };
            outcomes.push((ticket, result));
        }
        outcomes
    }

    /// Data and inodes of `files` on disk, in as few flushes as the platform allows.
    fn sync_files(&self, files: &[&File]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        match files {
            [] => Ok(()),
            [one] => {
                self.flushes.fetch_add(1, Relaxed);
                one.sync_all()
            }
            #[cfg(target_os = "linux")]
            [first, ..] => {
                self.flushes.fetch_add(1, Relaxed);
                rustix::fs::syncfs(first).map_err(std::io::Error::from)
            }
            #[cfg(not(target_os = "linux"))]
            many => many.iter().try_for_each(|f| {
                self.flushes.fetch_add(1, Relaxed);
                f.sync_all()
            }),
        }
    }

    /// fsync of the directory through the kept handle (opened on first use).
    fn sync_dir(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let handle = match self.handle.get() {
            Some(h) => h,
            None => {
                let opened = File::open(&self.dir)?;
                self.handle.get_or_init(|| opened)
            }
        };
        self.flushes.fetch_add(1, Relaxed);
        handle.sync_all()
    }
}

/// `e` once more, for each caller of a batch (errno kept: disk full stays disk full).
fn same_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

pub(crate) fn write_state(
    tmp: &Path,
    dir: &Path,
    id: &str,
    state: &State,
    sync: bool,
) -> Result<(), SpoolError> {
    let bytes = serde_json::to_vec(state).map_err(|e| SpoolError::Corrupt {
        path: state_path(dir, id),
        reason: format!("cannot encode state: {e}"),
    })?;
    write_atomic(tmp, &state_path(dir, id), &[&bytes], sync)
}

/// Reads and checks the header of a `.msg` file; returns it and the offset of the message.
pub(crate) fn read_header(path: &Path) -> Result<(Header, u64), SpoolError> {
    let f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::new(f.take(MAX_HEADER));
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).map_err(io_err(path))?;
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if line.last() != Some(&b'\n') {
        return Err(corrupt("no complete header line".into()));
    }
    let header: Header = serde_json::from_slice(&line[..line.len() - 1])
        .map_err(|e| corrupt(format!("bad header: {e}")))?;
    // The id names files the worker later removes or renames: it must be a
    // spool id, and the one this file is stored under.
    let stem = path.file_stem().and_then(|s| s.to_str());
    if !super::valid_id(&header.id) || stem != Some(header.id.as_str()) {
        return Err(corrupt(format!(
            "header id {:?} is not this file's id",
            header.id
        )));
    }
    let offset = line.len() as u64;
    if offset + header.size != file_len {
        return Err(corrupt(format!(
            "truncated or padded: header says {} message bytes, file holds {}",
            header.size,
            file_len.saturating_sub(offset)
        )));
    }
    Ok((header, offset))
}

/// Reads the message bytes of a `.msg` file (after checking its header)
/// into one buffer of exactly the message's size (no other copy).
pub(crate) fn read_message(path: &Path) -> Result<(Header, Vec<u8>), SpoolError> {
    let (header, offset) = read_header(path)?;
    let mut f = File::open(path).map_err(io_err(path))?;
    let msg = read_body(&mut f, offset, header.size, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
            SpoolError::Corrupt {
                path: path.to_path_buf(),
                reason: "changed while reading".into(),
            }
        }
        _ => io_err(path)(e),
    })?;
    Ok((header, msg))
}

/// `size` bytes from `offset` of `f`, and nothing after them, in a buffer
/// with room for `spare` more bytes (so appending them copies nothing).
pub(crate) fn read_body(
    f: &mut File,
    offset: u64,
    size: u64,
    spare: usize,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let len = usize::try_from(size).map_err(|_| std::io::ErrorKind::InvalidData)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut msg = Vec::with_capacity(len.saturating_add(spare));
    msg.resize(len, 0);
    f.read_exact(&mut msg)?;
    if f.read(&mut [0u8; 1])? != 0 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(msg)
}

/// Reads a state file; a missing file is the default state. A garbled one is
/// treated as default too (the message itself is intact; worst case it is retried early).
pub(crate) fn read_state(dir: &Path, id: &str) -> State {
    match fs::read(state_path(dir, id)) {
        Ok(b) => serde_json::from_slice::<State>(&b)
            .unwrap_or_default()
            .upgrade(),
        Err(_) => State::default(),
    }
}

/// Ids of the `.msg` files in `dir`.
pub(crate) fn list_ids(dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mut ids = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(&format!(".{MSG_EXT}")) {
            if super::valid_id(id) {
                ids.push(id.to_string());
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (PathBuf, PathBuf, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("mailbridge-dirsync-{}", super::super::new_id()));
        let (tmp, queue) = (root.join("tmp"), root.join("queue"));
        fs::create_dir_all(&tmp).unwrap();
        fs::create_dir_all(&queue).unwrap();
        (root, tmp, queue)
    }

    fn job(tmp: &Path, queue: &Path, i: usize) -> Job {
        let from = tmp.join(format!("{i}.tmp"));
        let mut file = create_private(&from).unwrap();
        file.write_all(format!("message {i}").as_bytes()).unwrap();
        Job {
            file,
            from,
            to: queue.join(format!("{i}.msg")),
        }
    }

    #[test]
    fn a_leader_waits_for_company_only_under_load() {
        assert!(!gather_more(1, 0, 0), "first message ever: flushed at once");
        assert!(
            !gather_more(1, 1, 0),
            "alone, nobody else receiving: at once"
        );
        assert!(gather_more(1, 1, 3), "others are receiving: they join");
        assert!(gather_more(1, 2, 0));
        assert!(gather_more(FULL_BATCH - 1, 5, 5));
        assert!(!gather_more(FULL_BATCH, 5, 5), "full: flushed at once");
    }

    #[test]
    fn a_batch_of_ten_messages_costs_two_flushes() {
        let (root, tmp, queue) = dirs();
        let sync = DirSync::new(&queue);
        let batch = (0..10)
            .map(|i| (i as u64, Some(job(&tmp, &queue, i))))
            .collect();
        let outcomes = sync.run_batch(batch);
        assert_eq!(outcomes.len(), 10);
        assert!(outcomes.iter().all(|(_, r)| r.is_ok()));
        let expected_flushes = if cfg!(target_os = "linux") { 2 } else { 11 };
        assert_eq!(sync.counts(), (expected_flushes, 10));
        for i in 0..10 {
            assert_eq!(
                fs::read(queue.join(format!("{i}.msg"))).unwrap(),
                format!("message {i}").as_bytes()
            );
        }
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_commits_all_land_and_share_flushes() {
        let (root, tmp, queue) = dirs();
        let sync = std::sync::Arc::new(DirSync::new(&queue));
        let n = 20;
        let start = std::sync::Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (sync, start) = (sync.clone(), start.clone());
                let j = job(&tmp, &queue, i);
                std::thread::spawn(move || {
                    start.wait();
                    if i % 5 == 0 {
                        // A caller that renamed its file itself joins for the directory fsync.
                        j.file.sync_all().unwrap();
                        fs::rename(&j.from, &j.to).unwrap();
                        sync.after_rename()
                    } else {
                        sync.commit(j.file, j.from, j.to)
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(fs::read_dir(&queue).unwrap().count(), n);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        let (flushes, committed) = sync.counts();
        assert_eq!(committed, 16);
        assert!(flushes <= 2 * n as u64, "{flushes}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_failed_rename_fails_only_its_own_message_and_removes_its_file() {
        let (root, tmp, queue) = dirs();
        let sync = DirSync::new(&queue);
        let good = job(&tmp, &queue, 1);
        let mut bad = job(&tmp, &queue, 2);
        bad.to = root.join("no-such-dir").join("2.msg");
        let outcomes = sync.run_batch(vec![(1, Some(good)), (2, Some(bad))]);
        let result = |t: u64| {
            outcomes
                .iter()
                .find(|(k, _)| *k == t)
                .map(|(_, r)| r.is_ok())
        };
        assert_eq!((result(1), result(2)), (Some(true), Some(false)));
        assert!(queue.join("1.msg").exists());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }
}
