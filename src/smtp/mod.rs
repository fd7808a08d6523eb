//! Inbound SMTP: the session state machine ([`session`], no I/O), the tokio
//! connection loop ([`connection`]), the DATA reader ([`data`]) and its
//! streaming into the spool ([`intake`]), SASL
//! decoding ([`sasl`]), message fix-ups ([`message`]), envelope paths as
//! received ([`path`]), the `From:` check ([`sender`]) and every reply text
//! ([`replies`]).

pub mod connection;
pub mod data;
mod intake;
pub mod message;
pub mod path;
pub mod replies;
pub mod sasl;
pub mod sender;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::stream::ClientStream;

/// What an SMTP listener uses; rebuilt on each reload (see [`crate::reload`]).
/// The spool, the worker's wake-up, the metrics, the status page and the
/// upstream clients are the ones the worker uses too.
pub struct SmtpContext {
    pub config: Arc<crate::config::Config>,
    pub auth: Arc<crate::auth::LocalAuth>,
    pub spool: Arc<crate::spool::Spool>,
    /// Signalled after each enqueue so the worker looks at the queue at once.
    pub wake_delivery: Arc<crate::spool::Handoff>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub status: Arc<crate::status::Status>,
    /// Upstream SMTP clients (direct mode).
    pub upstream: Arc<crate::delivery::Upstream>,
    /// Local TLS (STARTTLS and smtps) by `smtp.tls_profile`; `None` without `tls_cert`/`tls_key`.
    pub tls: Option<crate::tls::LocalAcceptor>,
}

/// Serves one inbound SMTP connection (the listener has entered its span).
pub async fn handle_connection(
    stream: ClientStream,
    peer: SocketAddr,
    ctx: Arc<SmtpContext>,
    shutdown: CancellationToken,
) {
    connection::serve(stream, peer, ctx, shutdown).await
}
