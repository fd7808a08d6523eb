//! IMAP proxy. (Stub.)

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::Context;

pub struct ImapState {}

impl ImapState {
    pub fn new(_config: &Config) -> Result<ImapState, String> {
        Ok(ImapState {})
    }
}

pub async fn handle_connection(_stream: TcpStream, _peer: SocketAddr, _ctx: Arc<Context>, _shutdown: CancellationToken) {}
