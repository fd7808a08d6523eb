//! Delivery: the worker that sends spooled mail upstream. (Stub.)

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::Context;

/// Upstream SMTP clients, one per account.
pub struct Upstream {}

impl Upstream {
    pub fn new(_config: &Config) -> Result<Upstream, String> {
        Ok(Upstream {})
    }
}

pub async fn run(_ctx: Arc<Context>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}
