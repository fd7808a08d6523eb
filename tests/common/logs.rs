//! Log capture for the tests that check what the daemon logs: every event of
//! the current thread's subscriber (plain text, no colours) into memory. The
//! daemon's tasks run on the test's current-thread runtime, so they log into
//! it too. A test using it should be alone in its test binary: a thread-local
//! subscriber can miss events while other tests register call sites.

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// The captured log output.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl LogBuf {
    /// Starts capturing every level until the guard is dropped.
    pub fn capture() -> (LogBuf, DefaultGuard) {
        capture(tracing::Level::TRACE)
    }

    /// Bytes captured so far (to look only at what comes after a point).
    #[allow(dead_code)]
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Logs at `level` and above from this thread go to the returned buffer
/// until the guard is dropped.
pub fn capture(level: tracing::Level) -> (LogBuf, DefaultGuard) {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
