//! Observability: the Prometheus registry (prometheus-client encodes the
//! exposition format), the counters the sessions and the worker increment,
//! the last upstream outcome per account, and the optional HTTP listener
//! ([`http`]) serving `/metrics` and `/healthz`, with its `Host` check
//! ([`host`]) and the timed spool probe ([`probe`]) `/healthz` reports.
//!
//! One [`Metrics`] lives for the whole process and survives config reloads
//! (it is shared by every [`crate::Context`]).

pub mod host;
pub mod http;
pub mod probe;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use crate::spool::Spool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: String,
}

type LatencyFamily = Family<AccountLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 ms .. ~51 s.
    Histogram::new(exponential_buckets(0.05, 2.0, 11))
}

/// The last delivery outcome of one account (what `/healthz` reports).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    /// The account's server could be reached and logged in to.
    pub reachable: bool,
    /// RFC 3339 time of the outcome.
    pub at: String,
    /// The upstream's last reply or the connection error.
    pub detail: String,
}

/// Every metric mailbridge exports, plus health state.
pub struct Metrics {
    registry: Registry,
    accepted: Family<AccountLabel, Counter>,
    delivered: Family<AccountLabel, Counter>,
    deferred: Family<AccountLabel, Counter>,
    failed: Family<AccountLabel, Counter>,
    latency: LatencyFamily,
    queue_size: Gauge,
    failed_size: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    imap_sessions: Gauge,
    pop3_sessions: Gauge,
    pop3_logins: Counter,
    /// The spool's group commit: flushes issued and messages made durable.
    spool_flushes: Counter,
    spool_commits: Counter,
    auth_failures: Family<ProtocolLabel, Counter>,
    tls_errors: Family<ProtocolLabel, Counter>,
    reloads: Family<ProtocolLabel, Counter>,
    /// True while the listeners are bound and accepting.
    listening: AtomicBool,
    upstreams: Mutex<BTreeMap<String, UpstreamStatus>>,
    /// 1 while an OAuth2 account's mail is held for re-authorization.
    reauthorization: Family<AccountLabel, Gauge>,
    /// Those accounts and why (for `/healthz`; never a token).
    reauthorization_reasons: Mutex<BTreeMap<String, String>>,
    /// Last spool writability probe (for `/healthz`).
    spool_probe: probe::SpoolProbe,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("mailbridge"),
            accepted: Family::default(),
            delivered: Family::default(),
            deferred: Family::default(),
            failed: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_size: Gauge::default(),
            failed_size: Gauge::default(),
            oldest_age: Gauge::default(),
            imap_sessions: Gauge::default(),
            pop3_sessions: Gauge::default(),
            pop3_logins: Counter::default(),
            spool_flushes: Counter::default(),
            spool_commits: Counter::default(),
            auth_failures: Family::default(),
            tls_errors: Family::default(),
            reloads: Family::default(),
            listening: AtomicBool::new(false),
            upstreams: Mutex::new(BTreeMap::new()),
            reauthorization: Family::default(),
            reauthorization_reasons: Mutex::new(BTreeMap::new()),
            spool_probe: probe::SpoolProbe::default(),
        };
        let r = &mut m.registry;
        r.register(
            "messages_accepted",
            "Messages accepted from clients into the spool",
            m.accepted.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages delivered upstream (to at least one recipient)",
            m.delivered.clone(),
        );
        r.register(
            "messages_deferred",
            "Delivery attempts that failed temporarily (will be retried)",
            m.deferred.clone(),
        );
        r.register(
            "messages_failed",
            "Messages that failed permanently or expired (moved to the failed area)",
            m.failed.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Duration of one upstream SMTP delivery (connect to final reply)",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register(
            "queue_messages",
            "Messages waiting in the spool (queued, deferred, held)",
            m.queue_size.clone(),
        );
        r.register(
            "failed_messages",
            "Messages in the failed area",
            m.failed_size.clone(),
        );
        r.register_with_unit(
            "queue_oldest_age",
            "Age of the oldest message waiting in the spool",
            Unit::Seconds,
            m.oldest_age.clone(),
        );
        r.register(
            "imap_sessions_active",
            "IMAP client connections currently open",
            m.imap_sessions.clone(),
        );
        r.register(
            "pop3_sessions_active",
            "POP3 client connections currently open",
            m.pop3_sessions.clone(),
        );
        r.register(
            "pop3_logins",
            "POP3 logins that reached the upstream mailbox",
            m.pop3_logins.clone(),
        );
        r.register(
            "spool_flushes",
            "Flushes (fsync, syncfs) issued to make received messages durable; shared by the messages committed together",
            m.spool_flushes.clone(),
        );
        r.register(
            "spool_commits",
            "Received messages made durable (the flushes per message is spool_flushes_total / spool_commits_total)",
            m.spool_commits.clone(),
        );
        r.register(
            "auth_failures",
            "Failed local logins (protocol smtp or imap)",
            m.auth_failures.clone(),
        );
        r.register(
            "tls_errors",
            "Failed TLS handshakes with local clients (STARTTLS or implicit TLS)",
            m.tls_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (result ok or rejected)",
            m.reloads.clone(),
        );
        r.register(
            "oauth2_reauthorization_needed",
            "1 while the account's OAuth2 grant is lost and its mail is held until `mailbridge auth ACCOUNT`",
            m.reauthorization.clone(),
        );
        m
    }

    /// The account's OAuth2 grant is lost: its mail is held (`reason` has no token).
    pub fn reauthorization_needed(&self, account: &str, reason: &str) {
        self.reauthorization.get_or_create(&label(account)).set(1);
        if let Ok(mut m) = self.reauthorization_reasons.lock() {
            m.insert(account.to_string(), reason.chars().take(300).collect());
        }
    }

    /// The account has a token again (or delivered): no longer held for it.
    pub fn reauthorized(&self, account: &str) {
        let was = self
            .reauthorization_reasons
            .lock()
            .map(|mut m| m.remove(account).is_some())
            .unwrap_or(false);
        if was {
            self.reauthorization.get_or_create(&label(account)).set(0);
        }
    }

    /// The accounts waiting for `mailbridge auth`, with why.
    pub fn reauthorizations(&self) -> BTreeMap<String, String> {
        self.reauthorization_reasons
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn message_accepted(&self, account: &str) {
        self.accepted.get_or_create(&label(account)).inc();
    }

    pub fn message_delivered(&self, account: &str) {
        self.delivered.get_or_create(&label(account)).inc();
    }

    pub fn message_deferred(&self, account: &str) {
        self.deferred.get_or_create(&label(account)).inc();
    }

    pub fn message_failed(&self, account: &str) {
        self.failed.get_or_create(&label(account)).inc();
    }

    /// One upstream transaction took `took`.
    pub fn upstream_latency(&self, account: &str, took: Duration) {
        self.latency
            .get_or_create(&label(account))
            .observe(took.as_secs_f64());
    }

    /// One upstream delivery attempt: its duration, and whether the server was
    /// reachable (`connect_failure` says why not) or its last reply.
    pub fn delivery_attempt(
        &self,
        account: &str,
        took: Duration,
        connect_failure: Option<&str>,
        last_reply: Option<&str>,
    ) {
        self.upstream_latency(account, took);
        match connect_failure {
            Some(why) => self.upstream_outcome(account, false, why),
            None => self.upstream_outcome(account, true, last_reply.unwrap_or("")),
        }
    }

    /// Records whether the account's server was reachable, and its last reply.
    pub fn upstream_outcome(&self, account: &str, reachable: bool, detail: &str) {
        if let Ok(mut map) = self.upstreams.lock() {
            map.insert(
                account.to_string(),
                UpstreamStatus {
                    reachable,
                    at: rfc3339(SystemTime::now()),
                    detail: detail.chars().take(300).collect(),
                },
            );
        }
    }

    /// The last outcome per account.
    pub fn upstreams(&self) -> BTreeMap<String, UpstreamStatus> {
        self.upstreams.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// `protocol`: "smtp" or "imap".
    pub fn auth_failure(&self, protocol: &str) {
        self.auth_failures
            .get_or_create(&ProtocolLabel {
                protocol: protocol.to_string(),
            })
            .inc();
    }

    /// `protocol`: "smtp", "imap", "smtps" or "imaps".
    pub fn tls_error(&self, protocol: &str) {
        self.tls_errors
            .get_or_create(&ProtocolLabel {
                protocol: protocol.to_string(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.reloads
            .get_or_create(&ProtocolLabel {
                protocol: result.to_string(),
            })
            .inc();
    }

    /// Counts an IMAP client connection until the guard is dropped.
    pub fn imap_session(&self) -> SessionGuard {
        self.imap_sessions.inc();
        SessionGuard(self.imap_sessions.clone())
    }

    /// Counts a POP3 client connection until the guard is dropped.
    pub fn pop3_session(&self) -> SessionGuard {
        self.pop3_sessions.inc();
        SessionGuard(self.pop3_sessions.clone())
    }

    pub fn pop3_sessions_active(&self) -> i64 {
        self.pop3_sessions.get()
    }

    /// A POP3 session logged in upstream.
    pub fn pop3_login(&self) {
        self.pop3_logins.inc();
    }

    pub fn imap_sessions_active(&self) -> i64 {
        self.imap_sessions.get()
    }

    pub fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
    }

    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Probes whether `spool` can be written now (blocking file I/O) and
    /// keeps the result for `/healthz`. The metrics listener calls this at
    /// start and on a timer; tests call it to skip the wait.
    pub fn probe_spool(&self, spool: &Spool) -> probe::ProbeResult {
        self.spool_probe.run(&spool.dir().join("tmp"))
    }

    /// The last spool probe and the number run so far.
    pub fn spool_probe(&self) -> &probe::SpoolProbe {
        &self.spool_probe
    }

    /// The exposition text, after refreshing the queue gauges from `spool`.
    pub fn render(&self, spool: &Spool) -> String {
        self.refresh_queue(spool);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn refresh_queue(&self, spool: &Spool) {
        let (flushes, commits) = spool.commit_counts();
        self.spool_flushes
            .inc_by(flushes.saturating_sub(self.spool_flushes.get()));
        self.spool_commits
            .inc_by(commits.saturating_sub(self.spool_commits.get()));
        if let Ok(queued) = spool.list_queued() {
            self.queue_size.set(queued.len() as i64);
            let oldest = queued
                .iter()
                .map(|e| e.received_at)
                .min()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            self.oldest_age.set(oldest.as_secs_f64());
        }
        if let Ok(failed) = spool.list_failed() {
            self.failed_size.set(failed.len() as i64);
        }
    }
}

/// Decrements the IMAP session gauge when dropped.
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn label(account: &str) -> AccountLabel {
    AccountLabel {
        account: account.to_string(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_account_labels() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let m = Metrics::new();
        m.message_accepted("gmail");
        m.message_accepted("gmail");
        m.upstream_latency("gmail", Duration::from_millis(120));
        let _s = m.imap_session();
        let text = m.render(&spool);
        assert!(
            text.contains("mailbridge_messages_accepted_total{account=\"gmail\"} 2"),
            "{text}"
        );
        assert!(text.contains("mailbridge_upstream_latency_seconds_count{account=\"gmail\"} 1"));
        assert!(text.contains("mailbridge_imap_sessions_active 1"));
        assert!(text.contains("mailbridge_queue_messages 0"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn reauthorization_gauge_per_account_set_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let m = Metrics::new();
        m.reauthorization_needed("ms", "invalid_grant");
        let text = m.render(&spool);
        assert!(
            text.contains("mailbridge_oauth2_reauthorization_needed{account=\"ms\"} 1"),
            "{text}"
        );
        assert_eq!(
            m.reauthorizations().get("ms").map(String::as_str),
            Some("invalid_grant")
        );
        m.reauthorized("ms");
        assert!(m
            .render(&spool)
            .contains("mailbridge_oauth2_reauthorization_needed{account=\"ms\"} 0"));
        assert!(m.reauthorizations().is_empty());
    }
}
