//! The spool writability probe behind `/healthz`: a file created and removed
//! in the spool's tmp/ at start and then every [`PROBE_INTERVAL`] by one
//! background task, never per request (scrapes must not write to the spool).
//! `/healthz` reports the last result and when it was taken.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Metrics;
use crate::spool::Spool;

/// How often the background task probes the spool.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// One probe's outcome.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// `None` when the file could be written and removed, else the error.
    pub error: Option<String>,
    pub at: SystemTime,
}

/// The last probe result, and how many probes ran (tests use the count).
#[derive(Default)]
pub struct SpoolProbe {
    last: Mutex<Option<ProbeResult>>,
    runs: AtomicU64,
}

impl SpoolProbe {
    /// Probes `tmp` now (blocking file I/O) and records the result; logs
    /// when writability changes.
    pub fn run(&self, tmp: &Path) -> ProbeResult {
        let result = ProbeResult {
            error: write_probe(tmp).err(),
            at: SystemTime::now(),
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            let was_ok = last.as_ref().map(|r| r.error.is_none());
            match (&result.error, was_ok) {
                (Some(e), Some(true) | None) => warn!(error = %e, "spool is not writable"),
                (None, Some(false)) => info!("spool is writable again"),
                _ => {}
            }
            *last = Some(result.clone());
        }
        result
    }

    /// The most recent result (`None` before the first probe).
    pub fn last(&self) -> Option<ProbeResult> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Probes run so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

/// Re-probes every [`PROBE_INTERVAL`] until `shutdown` (the first probe is
/// the caller's, before the listener serves). The schedule starts when this
/// is called, not when the task is first polled.
pub fn run_every_interval(
    metrics: Arc<Metrics>,
    spool: Arc<Spool>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let start = tokio::time::Instant::now() + PROBE_INTERVAL;
    let mut tick = tokio::time::interval_at(start, PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (m, s) = (metrics.clone(), spool.clone());
            let _ = tokio::task::spawn_blocking(move || m.probe_spool(&s)).await;
        }
    }
}

/// Creates and removes a file in the spool's tmp/ directory.
fn write_probe(tmp: &Path) -> Result<(), String> {
    let p = tmp.join(format!("healthz-{}", crate::spool::unique_suffix()));
    // 0600 like every spool file, whatever the umask.
    crate::spool::create_private(&p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"ok"))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_last_result_and_counts_runs() {
        let dir = tempfile::tempdir().unwrap();
        let probe = SpoolProbe::default();
        assert!(probe.last().is_none());
        assert!(probe.run(dir.path()).error.is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe file removed"
        );
        let gone = dir.path().join("missing");
        let r = probe.run(&gone);
        assert!(r.error.as_deref().unwrap().contains("missing"), "{r:?}");
        assert!(probe.last().unwrap().error.is_some());
        assert_eq!(probe.runs(), 2);
    }
}
