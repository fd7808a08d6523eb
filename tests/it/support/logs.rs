//! Log capture for the tests that check what the daemon logs: the events of
//! the current thread (plain text, no colours) into memory. The daemon's
//! tasks run on the test's current-thread runtime, so they log into it too.
//!
//! All tests share one process, so the capture is one global subscriber,
//! installed once and never replaced, whose writer and level are chosen per
//! thread. (A `set_default` subscriber per test is not enough: tracing caches
//! each call site's interest process-wide, and a call site first reached
//! while another test's scoped subscriber was being set up or torn down can
//! stay disabled, so a capture could miss events.) Threads without a capture
//! are filtered out per event and never formatted.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

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

thread_local! {
    /// This thread's capture: where its events go and from which level.
    static CURRENT: RefCell<Option<(LogBuf, tracing::Level)>> = const { RefCell::new(None) };
}

/// Writes to the current thread's capture (nothing if there is none; the
/// filter keeps such events from being formatted in the first place).
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|c| {
            if let Some((buf, _)) = c.borrow_mut().as_mut() {
                buf.write(b)
            } else {
                Ok(b.len())
            }
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Dynamic: decided per event (a `filter_fn` would cache the answer
        // of whichever thread reached a call site first).
        let enabled = tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
            CURRENT.with(|c| c.borrow().as_ref().is_some_and(|(_, l)| meta.level() <= l))
        });
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .with_filter(enabled);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the log capture is the only global subscriber in the test crate");
    });
}

/// Ends the current thread's capture when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

impl LogBuf {
    /// Starts capturing every level until the guard is dropped.
    pub fn capture() -> (LogBuf, CaptureGuard) {
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
pub fn capture(level: tracing::Level) -> (LogBuf, CaptureGuard) {
    install_once();
    let logs = LogBuf::default();
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        assert!(c.is_none(), "one log capture per thread at a time");
        *c = Some((logs.clone(), level));
    });
    (logs, CaptureGuard(()))
}
