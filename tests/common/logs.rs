//! Log capture for tests: every line a thread-scoped tracing subscriber
//! writes (the daemon's tasks run on a `#[tokio::test]`'s one thread).

use std::sync::{Arc, Mutex};

/// The captured bytes, shared with the subscriber's writer.
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
    /// Captures this thread's events at `level` and above (plain text, no
    /// colours) until the guard is dropped.
    pub fn capture(level: tracing::Level) -> (LogBuf, tracing::subscriber::DefaultGuard) {
        let logs = LogBuf::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Bytes captured so far (an offset for [`LogBuf::text`] slices).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
