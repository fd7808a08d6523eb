//! Direct mode (`mode = "direct"`): the upstream transaction happens inside
//! the client's, and the upstream's verdict becomes the client's reply.
//! Recipients that fail while others succeed are never lost: permanent ones
//! go to the failed area, temporary ones into the queue for retry.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::outcome::DirectReply;
use super::reply::Cause;
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
        spool: &Arc<Spool>,
    ) -> DirectReply {
        if account.oauth2.is_none() && account.password.secret().is_none() {
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
        reservation.commit(report.delivered().len()).await;
        let (delivered, permanent, temporary) =
            (report.delivered(), report.permanent(), report.temporary());
        if delivered.is_empty() {
            if let Some(f) = &report.connect_failure {
                warn!(size, rcpts = envelope.recipients.len(), reply = %Printable(f.reason()), "direct: deferred to the client");
                return DirectReply::unavailable(f.reason());
            }
            if let Some((_, cause)) = temporary.first() {
                info!(size, rcpts = envelope.recipients.len(), reply = %Printable(&cause.to_string()), "direct: deferred to the client");
                return DirectReply::for_client(cause, 451);
            }
            if let Some((_, cause)) = permanent.first() {
                warn!(size, rcpts = envelope.recipients.len(), reply = %Printable(&cause.to_string()), "direct: rejected");
                return DirectReply::for_client(cause, 554);
            }
            return DirectReply::unavailable("no recipients");
        }
        let last = report.last_reply.as_ref().map(ToString::to_string);
        info!(
            size,
            rcpts = delivered.len(),
            reply = %Printable(last.as_deref().unwrap_or("")),
            "direct: delivered"
        );
        if !permanent.is_empty() {
            // A copy only when some recipients failed (rare), off the runtime threads.
            let (env, msg, list) = (envelope.clone(), message.to_vec(), as_text(&permanent));
            let recorded = spool
                .blocking(move |s| s.record_failed(&env, &msg, &list))
                .await;
            match recorded {
                Ok(id) => {
                    warn!(failed_id = %id, rcpts = permanent.len(), "direct: some recipients failed; recorded in the failed area")
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
        if !temporary.is_empty() {
            let mut env = envelope.clone();
            env.recipients = temporary.iter().map(|(r, _)| r.clone()).collect();
            // The spool wakes the worker itself once the copy is durable.
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
        DirectReply::delivered(report.last_reply.as_ref())
    }
}

/// Recipients with their cause as the spool records them.
pub(super) fn as_text(list: &[(String, Cause)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, c)| (r.clone(), c.to_string()))
        .collect()
}
