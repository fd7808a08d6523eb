//! Log capture for the tests that check what the daemon logs: every event
//! (all levels, no colours) of the current thread's subscriber into memory.
//! A test using it should be alone in its test binary: a thread-local
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

impl LogBuf {
    /// Starts capturing until the guard is dropped.
    pub fn capture() -> (LogBuf, DefaultGuard) {
        let logs = LogBuf::default();
        let writer = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(sub))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
