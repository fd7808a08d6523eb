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
    read_header_of(&f, path)
}

/// [`read_header`] of `f`, open at `path` (its position is left anywhere).
pub(crate) fn read_header_of(f: &File, path: &Path) -> Result<(Header, u64), SpoolError> {
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
    let mut f = File::open(path).map_err(io_err(path))?;
    let (header, offset) = read_header_of(&f, path)?;
    let msg = read_message_body(&mut f, path, offset, header.size)?;
    Ok((header, msg))
}

/// The message bytes of the `.msg` file `f` (open at `path`) whose header
/// [`read_header_of`] found `size` bytes from `offset`.
pub(crate) fn read_message_body(
    f: &mut File,
    path: &Path,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>, SpoolError> {
    read_body(f, offset, size, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
            SpoolError::Corrupt {
                path: path.to_path_buf(),
                reason: "changed while reading".into(),
            }
        }
        _ => io_err(path)(e),
    })
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
