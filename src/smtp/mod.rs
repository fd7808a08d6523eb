//! Inbound SMTP. (Stub.)

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Context;

pub async fn handle_connection(_stream: TcpStream, _peer: SocketAddr, _ctx: Arc<Context>, _shutdown: CancellationToken) {}
