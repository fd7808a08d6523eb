//! Group commit of the spool's durable point ([`DirSync`]): messages that
//! finish together share their flushes (one `syncfs` for their data, one
//! `fsync` of the directory for their renames), and nobody is answered
//! before both covered its message.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use super::store::io_err;
use super::SpoolError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::store::create_private;
    use std::io::Write;

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
