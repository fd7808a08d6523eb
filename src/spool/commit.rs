//! Group commit of the spool's durable point ([`DirSync`]): one thread, the
//! committer, finishes, flushes and renames the messages that complete
//! together (one `syncfs` for their data, one `fsync` of the directory for
//! their renames), and nobody is answered before both covered its message.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::store::io_err;
use super::SpoolError;

/// Group commit of the spool's durable point: every caller is answered only
/// once its message data, its inode and its directory entry are on disk,
/// but callers that arrive together share the flushes.
///
/// A committer submits its temp file with the step that finishes writing
/// it ([`DirSync::commit`]); one thread (started on first use, ended when
/// the spool is dropped) takes everything submitted so far as a batch and:
///
/// 1. runs each message's finishing step (its last bytes and its real
///    header, at most one buffer's worth), so a message costs no trip of
///    its own to the blocking pool;
/// 2. makes the files' data and inodes durable: with one file, `fsync` of
///    that file; with several, on Linux, one `syncfs` of the spool's file
///    system, which writes back and flushes every dirty page and inode on
///    it, so it covers all of the batch's files (and, since Linux 5.8,
///    reports their write-back errors); elsewhere one `fsync` per file;
/// 3. renames each file into the directory (the data is already durable, so
///    a crash never leaves a name pointing at missing data, exactly as with
///    a per-file `fsync`);
/// 4. `fsync`s the directory once, through a handle kept open, which makes
///    every rename of the batch durable, and answers each caller.
///
/// So a batch costs two flushes however many messages it holds, and
/// messages that arrive while one batch is being flushed form the next one.
/// Under load (the last batch held more than one message, or messages are
/// being received) the committer first waits up to [`GATHER`] for others to
/// join ([`gather_more`]); a lone message never waits. Nobody is answered
/// before step 4 covered its rename: the guarantee is the one of "fsync the
/// file, rename, fsync the directory" per message. The price of `syncfs` is
/// that it also writes back other dirty data on the same file system (a
/// spool on its own file system pays nothing for it). Callers that renamed
/// a file themselves ([`DirSync::after_rename`]) join the same batches for
/// step 4 only. Callers wait on a oneshot channel, not on a lock: a batch's
/// end wakes exactly its own callers.
pub(crate) struct DirSync {
    dir: PathBuf,
    /// To the committer thread; `None` until the first submission.
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    shared: Arc<Shared>,
}

/// What the callers and the committer thread both see.
#[derive(Default)]
struct Shared {
    /// Flushes (fsync, syncfs) issued and messages committed, for the
    /// metrics' "flushes per message" and the tests.
    flushes: AtomicU64,
    committed: AtomicU64,
    /// Messages being received now ([`DirSync::receiving`]): commits to come.
    receiving: AtomicUsize,
}

/// A message being received: counted in [`DirSync`] until dropped (it is
/// dropped just before the message's commit is submitted).
pub(crate) struct Receiving(Arc<Shared>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes what is left of a temp file and hands it back open.
pub(crate) type Finish = Box<dyn FnOnce() -> std::io::Result<File> + Send>;

/// One submission.
struct Job {
    work: Work,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

enum Work {
    /// A temp file at `from`, finished by `finish`, to be made durable and
    /// renamed to `to` (in the directory).
    File {
        finish: Finish,
        from: PathBuf,
        to: PathBuf,
    },
    /// Already renamed by the caller: the directory fsync only.
    Renamed,
}

/// Longest the committer waits for more messages to join its batch.
const GATHER: Duration = Duration::from_millis(1);
/// A batch this large is flushed without waiting for more.
const FULL_BATCH: usize = 16;

/// Whether the committer, holding `queued` messages, waits (up to
/// [`GATHER`]) for more to join: only under load, i.e. when other messages
/// are being received right now (`coming`, they commit soon) or the
/// previous batch had company (`last_batch` > 1), as PostgreSQL's
/// `commit_delay` with `commit_siblings`. A message arriving alone is
/// flushed at once, so one client never waits.
fn gather_more(queued: usize, last_batch: usize, coming: usize) -> bool {
    (coming > 0 || last_batch > 1) && queued < FULL_BATCH
}

impl DirSync {
    pub fn new(dir: &Path) -> DirSync {
        DirSync {
            dir: dir.to_path_buf(),
            sender: Mutex::new(None),
            shared: Arc::default(),
        }
    }

    /// Counts a message whose DATA is arriving, until the guard is dropped.
    pub fn receiving(&self) -> Receiving {
        self.shared.receiving.fetch_add(1, Ordering::SeqCst);
        Receiving(self.shared.clone())
    }

    /// Call (off the runtime threads) after a rename into the directory;
    /// returns once it is durable.
    pub fn after_rename(&self) -> Result<(), SpoolError> {
        self.submit(Work::Renamed)?
            .blocking_recv()
            .map_err(|_| gone())?
    }

    /// Finishes the temp file at `from` with `finish`, makes it durable,
    /// renames it to `to` (in this directory) and makes the rename durable.
    /// On an error the temp file is removed (unless the rename happened:
    /// then the entry stays, as a queued message whose answer was lost).
    /// The work goes on if the caller stops waiting.
    pub async fn commit(
        &self,
        from: PathBuf,
        to: PathBuf,
        finish: Finish,
    ) -> Result<(), SpoolError> {
        self.submit(Work::File { finish, from, to })?
            .await
            .map_err(|_| gone())?
    }

    /// (flushes issued, messages committed) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.flushes.load(Ordering::Relaxed),
            self.shared.committed.load(Ordering::Relaxed),
        )
    }

    fn submit(&self, work: Work) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        let (done, answer) = oneshot::channel();
        let mut sender = self
            .sender
            .lock()
            .map_err(|_| SpoolError::Task("spool commit lock poisoned".into()))?;
        if sender.is_none() {
            let (tx, rx) = mpsc::channel();
            let mut committer = Committer {
                dir: self.dir.clone(),
                handle: None,
                shared: self.shared.clone(),
            };
            std::thread::Builder::new()
                .name("spool-commit".into())
                .spawn(move || committer.run(rx))
                .map_err(|e| SpoolError::Task(format!("cannot start the spool committer: {e}")))?;
            *sender = Some(tx);
        }
        match sender.as_ref().map(|tx| tx.send(Job { work, done })) {
            Some(Ok(())) => Ok(answer),
            _ => {
                // The thread is gone (it only ends with the spool): start anew next time.
                *sender = None;
                Err(gone())
            }
        }
    }
}

fn gone() -> SpoolError {
    SpoolError::Task("the spool committer stopped".into())
}

/// The committer thread's side.
struct Committer {
    dir: PathBuf,
    /// The directory, opened once and kept for its fsyncs.
    handle: Option<File>,
    shared: Arc<Shared>,
}

impl Committer {
    /// Takes batches until every sender is gone.
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let mut last_batch = 0;
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let coming = || self.shared.receiving.load(Ordering::SeqCst);
            let deadline = Instant::now() + GATHER;
            while gather_more(batch.len(), last_batch, coming()) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        batch.push(job);
                        batch.extend(rx.try_iter());
                    }
                    Err(_) => break,
                }
            }
            last_batch = batch.len();
            self.run_batch(batch);
        }
    }

    /// Steps 1-4 of [`DirSync`]'s description for one batch; answers every job.
    fn run_batch(&mut self, batch: Vec<Job>) {
        let mut files = Vec::with_capacity(batch.len());
        let mut renamed = Vec::with_capacity(batch.len());
        for Job { work, done } in batch {
            match work {
                Work::Renamed => renamed.push(done),
                Work::File { finish, from, to } => match finish() {
                    Ok(file) => files.push((file, from, to, done)),
                    Err(e) => {
                        let _ = fs::remove_file(&from);
                        let _ = done.send(Err(io_err(&from)(e)));
                    }
                },
            }
        }
        let open: Vec<&File> = files.iter().map(|(f, ..)| f).collect();
        let data = self.sync_files(&open);
        for (file, from, to, done) in files {
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
                    self.shared.committed.fetch_add(1, Ordering::Relaxed);
                    renamed.push(done);
                }
                Err(e) => {
                    let _ = fs::remove_file(&from);
                    let _ = done.send(Err(e));
                }
            }
        }
        if renamed.is_empty() {
            return;
        }
        let dir = self.sync_dir();
        for done in renamed {
            let result = match &dir {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::Io {
                    path: self.dir.clone(),
                    source: same_error(e),
                }),
            };
            // A caller that stopped waiting: its message is committed all the same.
            let _ = done.send(result);
        }
    }

    /// Data and inodes of `files` on disk, in as few flushes as the platform allows.
    fn sync_files(&self, files: &[&File]) -> std::io::Result<()> {
        let count = || self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        match files {
            [] => Ok(()),
            [one] => {
                count();
                one.sync_all()
            }
            #[cfg(target_os = "linux")]
            [first, ..] => {
                count();
                rustix::fs::syncfs(first).map_err(std::io::Error::from)
            }
            #[cfg(not(target_os = "linux"))]
            many => many.iter().try_for_each(|f| {
                count();
                f.sync_all()
            }),
        }
    }

    /// fsync of the directory through the kept handle (opened on first use).
    fn sync_dir(&mut self) -> std::io::Result<()> {
        let handle = match self.handle.take() {
            Some(h) => h,
            None => File::open(&self.dir)?,
        };
        self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        let synced = handle.sync_all();
        self.handle = Some(handle);
        synced
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

    /// A temp file whose finishing step writes "message {i}".
    fn file_job(tmp: &Path, queue: &Path, i: usize) -> (PathBuf, PathBuf, Finish) {
        let from = tmp.join(format!("{i}.tmp"));
        let file = create_private(&from).unwrap();
        let finish: Finish = Box::new(move || {
            let mut file = file;
            file.write_all(format!("message {i}").as_bytes())?;
            Ok(file)
        });
        (from, queue.join(format!("{i}.msg")), finish)
    }

    fn committer(queue: &Path) -> (Committer, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let c = Committer {
            dir: queue.to_path_buf(),
            handle: None,
            shared: shared.clone(),
        };
        (c, shared)
    }

    fn job(work: Work) -> (Job, oneshot::Receiver<Result<(), SpoolError>>) {
        let (done, answer) = oneshot::channel();
        (Job { work, done }, answer)
    }

    #[test]
    fn the_committer_waits_for_company_only_under_load() {
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
        let (mut c, shared) = committer(&queue);
        let (batch, answers): (Vec<_>, Vec<_>) = (0..10)
            .map(|i| {
                let (from, to, finish) = file_job(&tmp, &queue, i);
                job(Work::File { finish, from, to })
            })
            .unzip();
        c.run_batch(batch);
        for mut a in answers {
            assert!(matches!(a.try_recv(), Ok(Ok(()))));
        }
        let expected_flushes = if cfg!(target_os = "linux") { 2 } else { 11 };
        let counts = (
            shared.flushes.load(Ordering::Relaxed),
            shared.committed.load(Ordering::Relaxed),
        );
        assert_eq!(counts, (expected_flushes, 10));
        for i in 0..10 {
            assert_eq!(
                fs::read(queue.join(format!("{i}.msg"))).unwrap(),
                format!("message {i}").as_bytes()
            );
        }
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land_and_share_flushes() {
        let (root, tmp, queue) = dirs();
        let sync = Arc::new(DirSync::new(&queue));
        let n = 20;
        let start = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (sync, start) = (sync.clone(), start.clone());
                let (from, to, finish) = file_job(&tmp, &queue, i);
                tokio::spawn(async move {
                    start.wait().await;
                    if i % 5 == 0 {
                        // A caller that renamed its file itself joins for the directory fsync.
                        tokio::task::spawn_blocking(move || {
                            finish()?.sync_all()?;
                            fs::rename(&from, &to)?;
                            sync.after_rename().map_err(std::io::Error::other)
                        })
                        .await
                        .unwrap()
                        .map_err(|e| SpoolError::Task(e.to_string()))
                    } else {
                        sync.commit(from, to, finish).await
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(fs::read_dir(&queue).unwrap().count(), n);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        let (flushes, committed) = sync.counts();
        assert_eq!(committed, 16);
        assert!(flushes <= 2 * n as u64, "{flushes}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_failed_rename_or_write_fails_only_its_own_message_and_removes_its_file() {
        let (root, tmp, queue) = dirs();
        let (mut c, _) = committer(&queue);
        let (from, to, finish) = file_job(&tmp, &queue, 1);
        let (good, mut good_answer) = job(Work::File { finish, from, to });
        let (from, _, finish) = file_job(&tmp, &queue, 2);
        let to = root.join("no-such-dir").join("2.msg");
        let (bad, mut bad_answer) = job(Work::File { finish, from, to });
        let from = tmp.join("3.tmp");
        fs::write(&from, b"partial").unwrap();
        let failing: Finish = Box::new(|| Err(std::io::Error::other("disk full")));
        let to = queue.join("3.msg");
        let (unwritten, mut unwritten_answer) = job(Work::File {
            finish: failing,
            from,
            to,
        });
        c.run_batch(vec![good, bad, unwritten]);
        assert!(matches!(good_answer.try_recv(), Ok(Ok(()))));
        assert!(matches!(bad_answer.try_recv(), Ok(Err(_))));
        assert!(matches!(unwritten_answer.try_recv(), Ok(Err(_))));
        assert!(queue.join("1.msg").exists());
        assert!(!queue.join("3.msg").exists());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_still_gets_its_message_committed() {
        let (root, tmp, queue) = dirs();
        let sync = DirSync::new(&queue);
        let (from, to, finish) = file_job(&tmp, &queue, 7);
        // Dropped at its first poll: submitted, never awaited to the end.
        let mut commit = Box::pin(sync.commit(from, to.clone(), finish));
        let _ = futures_poll_once(commit.as_mut()).await;
        drop(commit);
        // A later submission is answered only after the earlier one's batch.
        let (from, to8, finish) = file_job(&tmp, &queue, 8);
        sync.commit(from, to8.clone(), finish).await.unwrap();
        assert!(to.exists() && to8.exists());
        fs::remove_dir_all(root).unwrap();
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
