//! Spent message files kept for reuse: a delivered message's file is
//! renamed into `tmp/` and emptied instead of unlinked, and the next message
//! received is written into it instead of a new file (as PostgreSQL recycles
//! its WAL segments), so the accept path neither allocates nor frees an
//! inode per message.
//!
//! Why: creating a file is the single largest cost of accepting a message
//! on ext4 (inode allocation took about a quarter of the daemon's CPU in a
//! profile of 20 clients sending 10 KB messages; on a file system without a
//! journal ext4 also scans recently deleted inodes on every allocation),
//! and a create takes the directory's lock exclusively where opening an
//! existing name shares it.
//!
//! What it keeps: at most `cap` empty files named `spare-*` in `tmp/`, known
//! only to this process (the pool is in memory; a crash leaves empty files
//! that the start-up clean-up removes). A spare never holds mail: the file
//! is renamed out of `queue/` first (so a crash cannot leave an emptied
//! message in the queue) and then truncated; a spare that cannot be emptied
//! is removed. (On a file system that keeps no order between metadata
//! changes, ext4 without a journal, a power loss right after a retire can
//! persist the truncation and not the rename: the delivered message's empty
//! file then loads as damaged and is moved to `corrupt/` with a warning. No
//! mail is lost; with a journal the rename is always on disk first.)

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name prefix of spare files in `tmp/`.
pub(crate) const PREFIX: &str = "spare-";

/// The pool of spare files of one spool.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    /// Most spares kept; 0 turns reuse off (every spent file is unlinked).
    cap: usize,
    free: Mutex<Vec<PathBuf>>,
}

impl Spares {
    pub fn new(cap: usize) -> Spares {
        Spares {
            cap,
            free: Mutex::new(Vec::new()),
        }
    }

    /// An empty spare file's path to write the next message into, if any.
    pub fn take(&self) -> Option<PathBuf> {
        self.free.lock().ok()?.pop()
    }

    /// Opens `spare` (from [`Spares::take`]) for writing a new message; it
    /// is empty (checked, and emptied if not). `None` when it is gone or
    /// unusable: the caller creates a new file instead.
    pub fn open(spare: &Path) -> Option<File> {
        let f = OpenOptions::new().read(true).write(true).open(spare).ok()?;
        match f.metadata() {
            Ok(m) if m.len() == 0 => Some(f),
            Ok(_) if f.set_len(0).is_ok() => Some(f),
            _ => {
                let _ = fs::remove_file(spare);
                None
            }
        }
    }

    /// Retires `spent` (a delivered message's file in `queue/`): renamed to
    /// a new spare in `tmp`, emptied and kept, or, with the pool full or
    /// the file not renamable, unlinked as before. Either way `spent` is
    /// gone from the queue afterwards (or was already: `NotFound`).
    pub fn retire(&self, spent: &Path, tmp: &Path) -> std::io::Result<()> {
        let room = self.free.lock().is_ok_and(|free| free.len() < self.cap);
        if !room {
            return fs::remove_file(spent);
        }
        let spare = tmp.join(format!("{PREFIX}{}", super::unique_suffix()));
        if let Err(e) = fs::rename(spent, &spare) {
            return match e.kind() {
                std::io::ErrorKind::NotFound => Err(e),
                _ => fs::remove_file(spent),
            };
        }
        let emptied = OpenOptions::new()
            .write(true)
            .open(&spare)
            .and_then(|f| f.set_len(0));
        match (emptied, self.free.lock()) {
            (Ok(()), Ok(mut free)) if free.len() < self.cap => free.push(spare),
            _ => {
                let _ = fs::remove_file(&spare);
            }
        }
        Ok(())
    }

    /// How many spares are kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }
}

/// True for a spare file's name (the start-up clean-up removes them all:
/// they belonged to an earlier run's pool).
pub(crate) fn is_spare(name: &str) -> bool {
    name.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let (queue, tmp) = (d.path().join("queue"), d.path().join("tmp"));
        fs::create_dir(&queue).unwrap();
        fs::create_dir(&tmp).unwrap();
        (d, queue, tmp)
    }

    use crate::spool::tests::file_names as names;

    #[test]
    fn a_retired_file_leaves_the_queue_empty_and_is_reused_as_the_same_inode() {
        use std::os::unix::fs::MetadataExt;
        let (_d, queue, tmp) = dirs();
        let spares = Spares::new(4);
        let spent = queue.join("a.msg");
        fs::write(&spent, b"delivered mail").unwrap();
        let inode = fs::metadata(&spent).unwrap().ino();
        spares.retire(&spent, &tmp).unwrap();
        assert!(names(&queue).is_empty());
        let spare = spares.take().unwrap();
        assert!(is_spare(&spare.file_name().unwrap().to_string_lossy()));
        assert_eq!(fs::metadata(&spare).unwrap().len(), 0, "no mail kept");
        assert_eq!(fs::metadata(&spare).unwrap().ino(), inode);
        let mut f = Spares::open(&spare).unwrap();
        f.write_all(b"next").unwrap();
        assert_eq!(fs::read(&spare).unwrap(), b"next");
        assert!(spares.take().is_none());
    }

    #[test]
    fn a_full_pool_or_none_at_all_unlinks_as_before() {
        let (_d, queue, tmp) = dirs();
        for cap in [0, 1] {
            let spares = Spares::new(cap);
            for i in 0..3 {
                let p = queue.join(format!("{cap}-{i}.msg"));
                fs::write(&p, b"x").unwrap();
                spares.retire(&p, &tmp).unwrap();
            }
            assert_eq!(spares.len(), cap);
        }
        assert!(names(&queue).is_empty());
        assert_eq!(
            names(&tmp).len(),
            1,
            "only the kept spare: {:?}",
            names(&tmp)
        );
    }

    #[test]
    fn retiring_a_missing_file_says_not_found_and_keeps_nothing() {
        let (_d, queue, tmp) = dirs();
        let spares = Spares::new(4);
        let e = spares.retire(&queue.join("gone.msg"), &tmp).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(spares.len(), 0);
        assert!(names(&tmp).is_empty());
    }

    #[test]
    fn a_spare_that_vanished_or_holds_bytes_is_not_trusted() {
        let (_d, _queue, tmp) = dirs();
        assert!(Spares::open(&tmp.join("spare-gone")).is_none());
        let p = tmp.join("spare-dirty");
        fs::write(&p, b"left over").unwrap();
        let f = Spares::open(&p).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
    }
}
