//! Direct mode (`mode = "direct"`): the upstream transaction happens inside
//! the client's, and the upstream's verdict becomes the client's reply.
//! Recipients that fail while others succeed are never lost: permanent ones
//! go to the failed area, temporary ones into the queue for retry.

use tracing::{error, info, warn};

use super::outcome::DirectReply;
use super::upstream::{no_password, Upstream};
use crate::config::Account;
use crate::spool::{Envelope, Spool};
use crate::text::Printable;

impl Upstream {
    /// Delivers now and returns the reply the SMTP client should get.
    pub async fn send_direct(
        &self,
        account: &Account,
        envelope: &Envelope,
        message: &[u8],
        spool: &Spool,
    ) -> DirectReply {
        if account.password.secret().is_none() {
            return DirectReply::no_password(&no_password(account));
        }
        let size = message.len();
        let reservation = match self
            .limits()
            .try_reserve(&account.name, envelope.recipients.len())
        {
            Ok(r) => r,
            Err(full) => {
                info!(size, rcpts = envelope.recipients.len(), reply = %Printable(&full.reason()), "direct: deferred to the client");
                return DirectReply::daily_limit(&full.reason());
            }
        };
        let report = self
            .deliver(account, envelope, &envelope.recipients, message)
            .await;
        reservation.commit(report.delivered.len());
        if report.delivered.is_empty() {
            if let Some(f) = &report.connect_failure {
                warn!(size, rcpts = envelope.recipients.len(), reply = %Printable(f.reason()), "direct: deferred to the client");
                return DirectReply::unavailable(f.reason());
            }
            if let Some((_, r)) = report.temporary.first() {
                info!(size, rcpts = envelope.recipients.len(), reply = %Printable(r), "direct: deferred to the client");
                return upstream_reply(r, 451);
            }
            if let Some((_, r)) = report.permanent.first() {
                warn!(size, rcpts = envelope.recipients.len(), reply = %Printable(r), "direct: rejected");
                return upstream_reply(r, 554);
            }
            return DirectReply::unavailable("no recipients");
        }
        info!(
            size,
            rcpts = report.delivered.len(),
            reply = %Printable(report.last_reply.as_deref().unwrap_or("")),
            "direct: delivered"
        );
        if !report.permanent.is_empty() {
            match spool.record_failed(envelope, message, &report.permanent) {
                Ok(id) => {
                    warn!(failed_id = %id, rcpts = report.permanent.len(), "direct: some recipients failed; recorded in the failed area")
                }
                Err(e) => {
                    error!(
                        "direct: cannot record failed recipients: {}",
                        Printable(&e.to_string())
                    );
                    return DirectReply::spool_error();
                }
            }
        }
        if !report.temporary.is_empty() {
            let mut env = envelope.clone();
            env.recipients = report.temporary.iter().map(|(r, _)| r.clone()).collect();
            match spool.enqueue(&env, message).await {
                Ok(id) => {
                    info!(queue_id = %id, rcpts = env.recipients.len(), "direct: queued the temporarily failed recipients for retry")
                }
                Err(e) => {
                    error!(
                        "direct: cannot queue temporarily failed recipients: {}",
                        Printable(&e.to_string())
                    );
                    return DirectReply::spool_error();
                }
            }
        }
        DirectReply::delivered(report.last_reply.as_deref())
    }
}

/// The upstream reply recorded as "STAGE: 550 5.1.1 text" turned into a client reply.
fn upstream_reply(recorded: &str, fallback: u16) -> DirectReply {
    let reply = ["MAIL FROM: ", "RCPT TO: ", "DATA: "]
        .iter()
        .find_map(|p| recorded.strip_prefix(p))
        .unwrap_or(recorded);
    DirectReply::from_upstream(reply, fallback)
}
