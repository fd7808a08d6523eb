//! The metrics HTTP listener: a deliberately tiny HTTP/1.1 server (GET or
//! HEAD, one request per connection, bounded request head and time) serving
//! `/metrics` (Prometheus/OpenMetrics text), `/healthz` (JSON; 200 when the
//! listeners are up and the last spool probe could write, else 503) and `/`,
//! the read-only status page ([`crate::status`]).
//!
//! Who may ask: a client outside `metrics.allowed_networks` gets `403
//! Forbidden`; a `Host` other than an IP literal, `localhost` or a name in
//! `metrics.allowed_hosts` gets `421 Misdirected Request` (DNS rebinding);
//! HTTP/1.1 without `Host` gets `400`. Both lists follow config reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use super::host::{self, HostVerdict};
use super::{Metrics, UpstreamStatus};
use crate::config::ip_allowed;
use crate::disconnect::{log_close, CloseReason};
use crate::Context;

/// Longest request head we read.
const MAX_HEAD: usize = 8 * 1024;
/// A scrape must send its request and take the answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused client may take to send its request before its 403.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once (scrapers are few).
const MAX_CONNECTIONS: usize = 32;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Serves until `shutdown`; each connection in its own task on `tasks`.
/// Each request reads the current context from `live` (a reload may change
/// who is allowed; the metrics and spool are the same in every context).
pub async fn serve(
    listener: TcpListener,
    live: Arc<ArcSwap<Context>>,
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
        let ctx = live.load_full();
        let span = info_span!(
            "conn",
            listener = "metrics",
            session = crate::listener::next_session_id(),
            peer = %peer
        );
        tasks.spawn(
            async move {
                if tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, peer, &ctx))
                    .await
                    .is_err()
                {
                    debug!("metrics request timed out");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Logs a warning when metrics would be readable from other machines.
pub fn warn_if_exposed(addr: SocketAddr, allowed: &[IpNet]) {
    if let Some(w) = exposure_warning(addr, allowed) {
        warn!("{w}");
    }
}

/// The warning for a non-loopback listen address whose allowed networks
/// admit non-loopback clients (`None` when only this machine can ask).
pub fn exposure_warning(addr: SocketAddr, allowed: &[IpNet]) -> Option<String> {
    let loopback_only = |n: &IpNet| n.network().is_loopback() && n.broadcast().is_loopback();
    if addr.ip().is_loopback() || allowed.iter().all(loopback_only) {
        return None;
    }
    let nets: Vec<String> = allowed.iter().map(|n| n.to_string()).collect();
    Some(format!(
        "metrics listen address {addr} is not loopback and metrics.allowed_networks admits [{}]: \
         /metrics and /healthz can be read from there (they carry account names and upstream replies); \
         narrow metrics.allowed_networks or restrict the port with a firewall",
        nets.join(", ")
    ))
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: &Arc<Context>) {
    let access = &ctx.config.metrics;
    if !ip_allowed(&access.allowed_networks, peer.ip()) {
        log_close(CloseReason::AccessDenied);
        // Take the request head first (briefly), so the 403 is not lost to
        // the reset a close with unread bytes causes.
        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT, read_request(&mut stream)).await;
        let _ = respond(
            &mut stream,
            "403 Forbidden",
            "text/plain",
            b"forbidden: address not in metrics.allowed_networks\n",
            false,
        )
        .await;
        return;
    }
    let Some(request) = read_request(&mut stream).await else {
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
    let hosts: Vec<&str> = request.hosts.iter().map(String::as_str).collect();
    match host::judge(&hosts, request.http11, &access.allowed_hosts) {
        HostVerdict::Allowed => {}
        HostVerdict::Bad => {
            let _ = respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"bad request: send one Host header\n",
                false,
            )
            .await;
            return;
        }
        HostVerdict::Misdirected => {
            let shown: String = hosts.concat().chars().take(80).collect();
            info!(host = ?shown, "metrics request refused: Host is not an IP address, localhost or in metrics.allowed_hosts");
            let _ = respond(
                &mut stream,
                "421 Misdirected Request",
                "text/plain",
                b"misdirected request: use an IP address, localhost or a name in metrics.allowed_hosts\n",
                false,
            )
            .await;
            return;
        }
    }
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
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
    let path = request.target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match path {
        "/" => {
            // The spool listing is file I/O: off the runtime threads.
            let ctx = ctx.clone();
            let page = tokio::task::spawn_blocking(move || {
                crate::status::render::page(&crate::status::collect(&ctx))
            })
            .await;
            match page {
                Ok(html) => ("200 OK", HTML, html.into_bytes()),
                Err(_) => (
                    "500 Internal Server Error",
                    "text/plain",
                    b"status page failed\n".to_vec(),
                ),
            }
        }
        "/metrics" => {
            let (m, spool) = (ctx.metrics.clone(), ctx.spool.clone());
            let text = tokio::task::spawn_blocking(move || m.render(&spool))
                .await
                .unwrap_or_default();
            ("200 OK", OPENMETRICS, text.into_bytes())
        }
        "/healthz" => {
            // No file I/O here: the spool's state is the last timed probe's.
            let report = health(&ctx.metrics);
            // Degraded (an account waits for `mailbridge auth`): a restart would not help.
            let status = if report.status == "ok" || report.status == "degraded" {
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
            b"not found (try /, /metrics or /healthz)\n".to_vec(),
        ),
    };
    let _ = respond(&mut stream, status, ctype, &body, head_only).await;
}

/// The parts of a request head the handler looks at.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    /// HTTP/1.1 (or a later 1.x): `Host` is required.
    http11: bool,
    /// Every `Host` header value, in order.
    hosts: Vec<String>,
}

/// Reads the request head (bounded); `None` when it is not HTTP/1.x.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
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
    parse_head(std::str::from_utf8(&buf).ok()?)
}

/// Parses the request line and collects the `Host` headers. A folded
/// header line (leading space or tab) or a line without `:` is malformed.
fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.lines();
    let mut parts = lines.next()?.split_ascii_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next()?;
    let minor = version.strip_prefix("HTTP/1.")?;
    let mut hosts = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return None;
        }
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("host") {
            hosts.push(value.trim_matches([' ', '\t']).to_string());
        }
    }
    Some(Request {
        method,
        target,
        http11: minor != "0",
        hosts,
    })
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
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
    /// "ok", "degraded" (an OAuth2 account needs `mailbridge auth`; its
    /// mail is held) or "unavailable".
    status: &'static str,
    listeners_up: bool,
    /// From the last spool probe (taken every few seconds, not per request).
    spool_writable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool_error: Option<String>,
    /// RFC 3339 time of that probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    spool_checked_at: Option<String>,
    /// Last delivery outcome per account (absent until the first attempt).
    upstreams: std::collections::BTreeMap<String, UpstreamStatus>,
    /// OAuth2 accounts whose mail is held until `mailbridge auth ACCOUNT`, with why.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    reauthorization_needed: std::collections::BTreeMap<String, String>,
}

fn health(metrics: &Metrics) -> Health {
    let listeners_up = metrics.listening();
    let (spool_writable, spool_error, spool_checked_at) = match metrics.spool_probe().last() {
        Some(r) => (r.error.is_none(), r.error, Some(super::rfc3339(r.at))),
        None => (false, Some("spool not probed yet".into()), None),
    };
    let reauthorization_needed = metrics.reauthorizations();
    Health {
        status: match (
            listeners_up && spool_writable,
            reauthorization_needed.is_empty(),
        ) {
            (false, _) => "unavailable",
            (true, false) => "degraded",
            (true, true) => "ok",
        },
        listeners_up,
        spool_writable,
        spool_error,
        spool_checked_at,
        upstreams: metrics.upstreams(),
        reauthorization_needed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing_collects_host_headers_and_the_version() {
        let r =
            parse_head("GET /healthz HTTP/1.1\r\nhOsT:  localhost:9925 \r\nAccept: */*\r\n\r\n")
                .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/healthz");
        assert!(r.http11);
        assert_eq!(r.hosts, ["localhost:9925"]);
        let r = parse_head("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.http11);
        assert!(r.hosts.is_empty());
        let r = parse_head("GET / HTTP/1.1\nHost: a\nHost: b\n\n").unwrap();
        assert_eq!(r.hosts, ["a", "b"]);
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(parse_head("GET / HTTP/2\r\n\r\n").is_none());
        assert!(parse_head("GET /\r\n\r\n").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nHost: a\r\n  evil.example\r\n\r\n").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nno colon\r\n\r\n").is_none());
    }

    #[test]
    fn exposure_warning_only_when_other_machines_are_admitted() {
        let nets = |l: &[&str]| l.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        let loopback = nets(&["127.0.0.0/8", "::1/128"]);
        let lan: SocketAddr = "192.168.1.5:9925".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9925".parse().unwrap();
        assert!(exposure_warning(local, &nets(&["0.0.0.0/0"])).is_none());
        assert!(exposure_warning(lan, &loopback).is_none());
        let w = exposure_warning(lan, &nets(&["127.0.0.0/8", "0.0.0.0/0"])).unwrap();
        assert!(
            w.contains("0.0.0.0/0") && w.contains("192.168.1.5:9925"),
            "{w}"
        );
        assert!(exposure_warning(lan, &nets(&["192.168.1.0/24"])).is_some());
    }
}
