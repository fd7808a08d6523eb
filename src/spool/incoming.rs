//! A message being received: its bytes go to a file in `tmp/` as they
//! arrive (behind a placeholder header, see [`super::store`]), and only at
//! the end is the real header written, the file fsynced and renamed into
//! `queue/` (the durable point before the SMTP 250), in a group commit with
//! the messages finishing at the same time ([`super::commit::DirSync`]). Every file operation
//! runs in `spawn_blocking` or on the committer thread, never on a runtime
//! thread. The file is a spare one when there is one ([`super::spares`]).
//! A message that is not
//! committed (refused, client gone, disk full, session dropped) leaves no
//! file behind: the temp file is removed on every failure and on drop.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::store::{self, create_private, header_line, io_err, msg_path, Header, MSG_EXT};
use super::{now_ms, unique_suffix, Envelope, InMemory, MemoryBudget, QueueId, Spool, SpoolError};

/// A message on its way into the spool.
pub struct Incoming {
    id: QueueId,
    tmp: PathBuf,
    queue: PathBuf,
    queue_sync: Arc<super::commit::DirSync>,
    /// Where a spent file to write into comes from ([`super::spares`]).
    spares: Arc<super::spares::Spares>,
    /// Counts this message as coming for the group commit until it is submitted.
    receiving: Option<super::commit::Receiving>,
    /// The temp file once the first bytes were written, with its path
    /// (a spare file's, or a new one's).
    file: Option<File>,
    path: Option<PathBuf>,
    /// `path` is a spare file to reuse (not yet opened).
    spare: bool,
    /// Width of the placeholder header line (without its `\n`).
    width: usize,
    /// The placeholder header line.
    placeholder: Vec<u8>,
    /// Message bytes written after the header so far.
    written: u64,
}

impl Spool {
    /// Starts receiving a message under `id` (no I/O until bytes arrive).
    /// `envelope` sizes the placeholder header; the one given to
    /// [`Incoming::commit`] may differ only in `body_8bit`.
    pub fn receive(&self, id: QueueId, envelope: &Envelope) -> Result<Incoming, SpoolError> {
        let mut widest = envelope.clone();
        // "false" is longer than "true": the placeholder is the widest.
        widest.body_8bit = false;
        let header = Header {
            v: 1,
            id: id.0.clone(),
            received_at_ms: u64::MAX,
            size: u64::MAX,
            envelope: widest,
        };
        let placeholder = header_line(&header, None, &self.tmp)?;
        Ok(Incoming {
            id,
            tmp: self.tmp.clone(),
            queue: self.queue.clone(),
            queue_sync: self.queue_sync.clone(),
            spares: self.spares.clone(),
            receiving: Some(self.queue_sync.receiving()),
            file: None,
            path: None,
            spare: false,
            width: placeholder.len() - 1,
            placeholder,
            written: 0,
        })
    }
}

/// What a blocking step gives back: the file (still open) or the error.
type Step = Result<(File, Vec<u8>), SpoolError>;

impl Incoming {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Appends `buf` to the temp file (creating it first) and empties `buf`
    /// (keeping its capacity). On an error the temp file is already gone.
    pub async fn write(&mut self, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        if buf.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(buf);
        let n = bytes.len() as u64;
        let (file, mut bytes) = self.blocking(bytes, |f, b| f.write_all(b)).await?;
        self.file = Some(file);
        self.written += n;
        bytes.clear();
        *buf = bytes;
        Ok(())
    }

    /// Writes `last`, the real header (`envelope`, size), then has the file
    /// fsynced, renamed into `queue/` and the directory fsynced (grouped with
    /// concurrent commits, see [`super::commit::DirSync`]); returns the message size.
    pub async fn commit(
        mut self,
        spool: &Spool,
        envelope: &Envelope,
        last: Vec<u8>,
    ) -> Result<u64, SpoolError> {
        let size = self.written + last.len() as u64;
        let header = Header {
            v: 1,
            id: self.id.0.clone(),
            received_at_ms: now_ms(),
            size,
            envelope: envelope.clone(),
        };
        let line = header_line(&header, Some(self.width), &self.tmp)?;
        let dest = msg_path(&self.queue, &self.id.0);
        let (path, spare) = self.temp_path();
        let file = self.file.take();
        let placeholder = std::mem::take(&mut self.placeholder);
        let sync = self.queue_sync.clone();
        // From here the committer owns the temp file (it removes it on a
        // failure), and the message counts as submitted.
        self.path = None;
        self.receiving = None;
        // The last bytes and the real header are written by the committer
        // thread, which then fsyncs, renames and fsyncs the directory,
        // grouped with the messages committed at the same time (see
        // `super::commit::DirSync`).
        let at = path.clone();
        let finish: super::commit::Finish = Box::new(move || {
            let mut f = open_temp(file, &at, spare, &placeholder)?;
            f.write_all(&last)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&line)?;
            Ok(f)
        });
        sync.commit(path, dest, finish).await?;
        spool
            .handoff
            .durable(self.id.clone(), envelope.account.clone());
        Ok(size)
    }

    /// The message written so far plus `last`, read back into one buffer
    /// once its size is claimed from `budget` (waiting for room), and the
    /// temp file removed (direct mode: sent now, never queued).
    pub async fn into_message(
        mut self,
        last: Vec<u8>,
        budget: &MemoryBudget,
    ) -> Result<InMemory, SpoolError> {
        let claim = budget.claim(self.written + last.len() as u64).await;
        if self.path.is_none() {
            return Ok(InMemory::new(last, claim));
        }
        let (offset, size) = (self.placeholder.len() as u64, self.written);
        let (_, message) = self
            .blocking(last, move |f, out| {
                // One buffer of exactly the message's size, `last` at its end.
                let mut whole = store::read_body(f, offset, size, out.len())?;
                whole.append(out);
                *out = whole;
                Ok(())
            })
            .await?;
        self.discard().await;
        Ok(InMemory::new(message, claim))
    }

    /// Removes the temp file (a refused or abandoned message).
    pub async fn discard(mut self) {
        self.file = None;
        if let Some(path) = self.path.take() {
            let _ = tokio::task::spawn_blocking(move || fs::remove_file(path)).await;
        }
    }

    /// The temp file's path, chosen once: a spare file if the pool has one
    /// (then true), else a new name in `tmp/`.
    fn temp_path(&mut self) -> (PathBuf, bool) {
        if let Some(p) = &self.path {
            return (p.clone(), self.spare);
        }
        let (p, spare) = match self.spares.take() {
            Some(p) => (p, true),
            None => {
                let name = format!("{}.{MSG_EXT}.{}.tmp", self.id, unique_suffix());
                (self.tmp.join(name), false)
            }
        };
        self.path = Some(p.clone());
        self.spare = spare;
        (p, spare)
    }

    /// Runs `op` on the temp file (opened or created with the placeholder
    /// header if needed) in `spawn_blocking`; on an error removes the file.
    async fn blocking<F>(&mut self, bytes: Vec<u8>, op: F) -> Step
    where
        F: FnOnce(&mut File, &mut Vec<u8>) -> std::io::Result<()> + Send + 'static,
    {
        let (path, spare) = self.temp_path();
        let file = self.file.take();
        let placeholder = self.placeholder.clone();
        let task_path = path.clone();
        let result = tokio::task::spawn_blocking(move || -> Step {
            let path = task_path;
            let mut bytes = bytes;
            let run = |file: Option<File>, bytes: &mut Vec<u8>| -> std::io::Result<File> {
                let mut f = open_temp(file, &path, spare, &placeholder)?;
                op(&mut f, bytes)?;
                Ok(f)
            };
            match run(file, &mut bytes) {
                Ok(f) => Ok((f, bytes)),
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    Err(io_err(&path)(e))
                }
            }
        })
        .await;
        match result {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => {
                self.path = None;
                Err(e)
            }
            Err(e) => Err(SpoolError::Task(e.to_string())),
        }
    }
}

/// The temp file: `file` if it is open already, else the spare at `path`
/// (when `spare`) or a new file there, with the placeholder header written.
fn open_temp(
    file: Option<File>,
    path: &std::path::Path,
    spare: bool,
    placeholder: &[u8],
) -> std::io::Result<File> {
    if let Some(f) = file {
        return Ok(f);
    }
    let reused = if spare {
        super::spares::Spares::open(path)
    } else {
        None
    };
    let mut f = match reused {
        Some(f) => f,
        None => create_private(path)?,
    };
    f.write_all(placeholder)?;
    Ok(f)
}

impl Drop for Incoming {
    /// A message never committed nor discarded (its session ended mid-DATA):
    /// its temp file goes, off the runtime threads when there is a runtime.
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        self.file = None;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || fs::remove_file(path));
            }
            Err(_) => {
                let _ = fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::EntryState;

    fn env() -> Envelope {
        Envelope {
            account: "test".into(),
            mail_from: "dev@local".into(),
            recipients: vec!["a@x".into()],
            client: "127.0.0.1".into(),
            helo: "printer".into(),
            local_user: None,
            smtputf8: false,
            body_8bit: false,
        }
    }

    fn spool() -> (PathBuf, Spool) {
        let d =
            std::env::temp_dir().join(format!("mailbridge-incoming-{}", super::super::new_id()));
        let s = Spool::open(&d).unwrap();
        (d, s)
    }

    use crate::spool::tests::file_names as files;

    #[test]
    fn file_in_the_format_before_streaming_still_loads() {
        // Byte for byte what `enqueue` wrote before messages were streamed:
        // an unpadded JSON header line, `\n`, the message.
        let (dir, s) = spool();
        let id = "0005f1a2b3c4d5e6a1b2c3d4";
        let bytes: &[u8] = b"{\"v\":1,\"id\":\"0005f1a2b3c4d5e6a1b2c3d4\",\"received_at_ms\":1700000000000,\"size\":21,\"envelope\":{\"account\":\"test\",\"mail_from\":\"dev@local\",\"recipients\":[\"a@x\",\"b@y\"],\"client\":\"127.0.0.1\",\"helo\":\"printer\",\"local_user\":null,\"smtputf8\":false,\"body_8bit\":true}}\nSubject: o\r\n\r\nold\r\n\r\n";
        fs::write(dir.join("queue").join(format!("{id}.msg")), bytes).unwrap();
        let (entry, msg) = s.load_queued(&QueueId(id.into())).unwrap();
        assert_eq!(msg, b"Subject: o\r\n\r\nold\r\n\r\n");
        assert_eq!(entry.size, 21);
        assert_eq!(entry.state, EntryState::Queued);
        assert_eq!(entry.remaining, vec!["a@x", "b@y"]);
        assert!(entry.envelope.body_8bit);
        assert_eq!(s.list_queued().unwrap().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn streamed_message_is_committed_with_a_padded_header() {
        let (dir, s) = spool();
        let id = QueueId::generate();
        let mut inc = s.receive(id.clone(), &env()).unwrap();
        let mut buf = b"Subject: s\r\n\r\n".to_vec();
        inc.write(&mut buf).await.unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            files(&dir.join("tmp")).len(),
            1,
            "written to tmp/ as it arrives"
        );
        assert!(files(&dir.join("queue")).is_empty());
        let mut buf = vec![b'x'; 100_000];
        inc.write(&mut buf).await.unwrap();
        let mut final_env = env();
        final_env.body_8bit = true;
        let size = inc
            .commit(&s, &final_env, b"\r\nend\r\n".to_vec())
            .await
            .unwrap();
        assert_eq!(size, 14 + 100_000 + 7);
        assert!(files(&dir.join("tmp")).is_empty());
        let (entry, msg) = s.load_queued(&id).unwrap();
        assert_eq!(entry.size, size);
        assert!(entry.envelope.body_8bit);
        assert!(msg.starts_with(b"Subject: s\r\n\r\nxxx"));
        assert!(msg.ends_with(b"x\r\nend\r\n"));
        let raw = fs::read(dir.join("queue").join(format!("{id}.msg"))).unwrap();
        let line_end = raw.iter().position(|b| *b == b'\n').unwrap();
        assert!(
            raw[..line_end].ends_with(b" "),
            "header padded to the placeholder's width"
        );
        let mut announced = s.handoff().take_receiver().unwrap();
        assert_eq!(announced.try_recv().unwrap().0, id);
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn small_message_committed_in_one_step_and_direct_read_back() {
        let (dir, s) = spool();
        let id = QueueId::generate();
        let inc = s.receive(id.clone(), &env()).unwrap();
        inc.commit(&s, &env(), b"tiny\r\n".to_vec()).await.unwrap();
        assert_eq!(s.read_message(&id).unwrap(), b"tiny\r\n");
        // Direct mode: read back whole, nothing left anywhere.
        let mut inc = s.receive(QueueId::generate(), &env()).unwrap();
        inc.write(&mut b"part one, ".to_vec()).await.unwrap();
        let budget = super::super::MemoryBudget::new(1024);
        let m = inc
            .into_message(b"part two".to_vec(), &budget)
            .await
            .unwrap();
        assert_eq!(&*m, b"part one, part two");
        assert_eq!(
            budget.in_use(),
            m.len(),
            "its size is claimed until dropped"
        );
        drop(m);
        assert_eq!(budget.in_use(), 0);
        assert!(files(&dir.join("tmp")).is_empty());
        assert_eq!(files(&dir.join("queue")).len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn discarded_or_dropped_message_leaves_no_file() {
        let (dir, s) = spool();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inc = rt.block_on(async {
            let mut a = s.receive(QueueId::generate(), &env()).unwrap();
            a.write(&mut b"abc".to_vec()).await.unwrap();
            a.discard().await;
            let mut b = s.receive(QueueId::generate(), &env()).unwrap();
            b.write(&mut b"abc".to_vec()).await.unwrap();
            b
        });
        assert_eq!(files(&dir.join("tmp")).len(), 1);
        drop(inc); // outside the runtime: removed at once
        assert!(files(&dir.join("tmp")).is_empty());
        assert!(files(&dir.join("queue")).is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
