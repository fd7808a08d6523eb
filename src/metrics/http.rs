//! The metrics HTTP listener: a deliberately tiny HTTP/1.1 server (GET or
//! HEAD, one request per connection, bounded request head and time) serving
//! `/metrics` (Prometheus/OpenMetrics text) and `/healthz` (JSON; 200 when the
//! listeners are up and the spool is writable, else 503).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Metrics, UpstreamStatus};
use crate::spool::Spool;

/// Longest request head we read.
const MAX_HEAD: usize = 8 * 1024;
/// A scrape must send its request and take the answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (scrapers are few).
const MAX_CONNECTIONS: usize = 32;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read; all of it survives config reloads.
#[derive(Clone)]
pub struct HealthSources {
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
}

/// Serves until `shutdown`; each connection in its own task on `tasks`.
pub async fn serve(
    listener: TcpListener,
    sources: HealthSources,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(listener = "metrics", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let sources = sources.clone();
        tasks.spawn(async move {
            if tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &sources))
                .await
                .is_err()
            {
                debug!(%peer, "metrics request timed out");
            }
            drop(permit);
        });
    }
}

/// Logs a warning when metrics would be reachable from other machines.
pub fn warn_if_exposed(addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        warn!("metrics listen address {addr} is not loopback: /metrics and /healthz can be read from the network (they carry account names and upstream replies); restrict it with a firewall");
    }
}

async fn handle(mut stream: TcpStream, sources: &HealthSources) {
    let Some((method, path)) = read_request(&mut stream).await else {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
            false,
        )
        .await;
        return;
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        )
        .await;
        return;
    }
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => {
            let m = sources.clone();
            let text = tokio::task::spawn_blocking(move || m.metrics.render(&m.spool))
                .await
                .unwrap_or_default();
            ("200 OK", OPENMETRICS, text.into_bytes())
        }
        "/healthz" => {
            let m = sources.clone();
            let report = tokio::task::spawn_blocking(move || health(&m))
                .await
                .unwrap_or_else(|_| Health::unknown());
            let status = if report.status == "ok" {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            // Upstream replies inside: no raw DEL/C1/bidi for a terminal running curl.
            let mut body = serde_json::to_string_pretty(&report)
                .map(|json| crate::text::printable_json(&json).into_bytes())
                .unwrap_or_default();
            body.push(b'\n');
            (status, "application/json", body)
        }
        _ => (
            "404 Not Found",
            "text/plain",
            b"not found (try /metrics or /healthz)\n".to_vec(),
        ),
    };
    let _ = respond(&mut stream, status, ctype, &body, head_only).await;
}

/// Reads the request head; returns (method, target).
async fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = std::str::from_utf8(&buf).ok()?;
    let mut parts = head.lines().next()?.split_ascii_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    parts
        .next()?
        .starts_with("HTTP/1.")
        .then_some((method, target))
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

/// The `/healthz` body.
#[derive(Serialize)]
struct Health {
    /// "ok" or "unavailable".
    status: &'static str,
    listeners_up: bool,
    spool_writable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool_error: Option<String>,
    /// Last delivery outcome per account (absent until the first attempt).
    upstreams: std::collections::BTreeMap<String, UpstreamStatus>,
}

impl Health {
    fn unknown() -> Health {
        Health {
            status: "unavailable",
            listeners_up: false,
            spool_writable: false,
            spool_error: Some("health check failed".into()),
            upstreams: Default::default(),
        }
    }
}

fn health(s: &HealthSources) -> Health {
    let listeners_up = s.metrics.listening();
    let spool_error = spool_write_probe(&s.spool.dir().join("tmp")).err();
    let spool_writable = spool_error.is_none();
    Health {
        status: if listeners_up && spool_writable {
            "ok"
        } else {
            "unavailable"
        },
        listeners_up,
        spool_writable,
        spool_error,
        upstreams: s.metrics.upstreams(),
    }
}

/// Creates and removes a file in the spool's tmp/ directory.
fn spool_write_probe(tmp: &Path) -> Result<(), String> {
    let p = tmp.join(format!("healthz-{}", crate::spool::unique_suffix()));
    std::fs::write(&p, b"ok").map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))
}
