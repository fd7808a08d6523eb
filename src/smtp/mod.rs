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
use crate::Context;

/// Serves one inbound SMTP connection (the listener has entered its span).
pub async fn handle_connection(
    stream: ClientStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    connection::serve(stream, peer, ctx, shutdown).await
}
