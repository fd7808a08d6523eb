//! Carries out a [`Disposition`]: the spool change (off the runtime
//! threads), the log line, the metrics and the status page event. No
//! decisions are made here; they are all in [`super::disposition`].

use std::sync::Arc;

use tracing::{error, info, warn};

use super::direct::as_text;
use super::disposition::{join_reasons, Disposition, Next};
use crate::spool::{Deferral, EntryState, HoldReason, QueueEntry, QueueId};
use crate::text::Printable;
use crate::Context;

/// Applies `d` to `entry` (whose bytes are `message`, needed only to record
/// refused recipients). Returns the ids now in the failed area (for notices).
pub(super) async fn apply(
    ctx: &Context,
    entry: &QueueEntry,
    message: Option<Arc<Vec<u8>>>,
    d: Disposition,
) -> Vec<QueueId> {
    let mut failed = Vec::new();
    let (id, size) = (&entry.id, entry.size);
    let account = &entry.envelope.account;
    if !d.delivered.is_empty() {
        let reply = d
            .reply
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        info!(queue_id = %id, size, rcpts = d.delivered.len(), reply = %Printable(&reply), "delivered");
        ctx.metrics.message_delivered(account);
        ctx.metrics.reauthorized(account);
        ctx.status.delivered(entry, &d.delivered, &reply);
    }
    if !d.refused.is_empty() {
        let reason = join_reasons(&d.refused);
        let refused = as_text(&d.refused);
        let (envelope, list) = (entry.envelope.clone(), refused.clone());
        let recorded = match message {
            Some(m) => {
                ctx.spool
                    .blocking(move |s| s.record_failed(&envelope, &m, &list))
                    .await
            }
            None => Err(crate::spool::SpoolError::Task("message not loaded".into())),
        };
        match recorded {
            Ok(fid) => {
                ctx.status.refused(&fid, entry, &refused, &reason);
                warn!(
                    queue_id = %id, failed_id = %fid, size, rcpts = refused.len(), reply = %Printable(&reason),
                    "failed for some recipients: recorded in the failed area"
                );
                failed.push(fid);
            }
            Err(e) => {
                error!(queue_id = %id, reply = %Printable(&reason), "recipients failed but cannot be recorded: {}", Printable(&e.to_string()))
            }
        }
    }
    let qid = id.clone();
    match d.then {
        Next::Unchanged => {}
        Next::Complete => {
            if let Err(e) = ctx.spool.blocking(move |s| s.complete(&qid)).await {
                error!(queue_id = %id, "delivered but cannot remove from the spool: {e}");
            }
        }
        Next::Fail {
            attempts,
            reason,
            remaining,
        } => {
            let rcpts = remaining.as_deref().unwrap_or(&entry.remaining);
            warn!(queue_id = %id, size, rcpts = rcpts.len(), reply = %Printable(&reason), "failed: moved to the failed area");
            ctx.metrics.message_failed(account);
            ctx.status.failed(entry, rcpts, &reason);
            match ctx
                .spool
                .blocking(move |s| s.fail(&qid, attempts, &reason, remaining))
                .await
            {
                Ok(()) => failed.push(id.clone()),
                Err(e) => error!(queue_id = %id, "cannot move to the failed area: {e}"),
            }
        }
        Next::DeferUntil {
            at,
            after,
            attempts,
            remaining,
            reason,
            config,
        } => {
            let retry_in = humantime::format_duration(after);
            let rcpts = remaining.len();
            if config {
                warn!(queue_id = %id, size, rcpts, attempts, retry_in = %retry_in, reply = %Printable(&reason), "deferred");
            } else {
                info!(queue_id = %id, size, rcpts, attempts, retry_in = %retry_in, reply = %Printable(&reason), "deferred");
            }
            ctx.metrics.message_deferred(account);
            ctx.status.deferred(entry, &remaining, &reason);
            let d = Deferral {
                attempts,
                next_attempt: at,
                reason,
                hold: None,
                remaining: Some(remaining),
            };
            if let Err(e) = ctx.spool.blocking(move |s| s.defer(&qid, &d)).await {
                error!(queue_id = %id, "cannot record deferral: {e}");
            }
        }
        Next::Hold {
            hold,
            reason,
            until,
        } => {
            if entry.state != EntryState::Held {
                warn!(queue_id = %id, size, rcpts = entry.remaining.len(), "held: {}", Printable(&reason));
            }
            if let HoldReason::NeedsReauthorization { account, reason } = &hold {
                ctx.metrics.reauthorization_needed(account, reason);
            }
            let d = Deferral {
                attempts: entry.attempts,
                next_attempt: until,
                reason,
                hold: Some(hold),
                remaining: Some(entry.remaining.clone()),
            };
            if let Err(e) = ctx.spool.blocking(move |s| s.defer(&qid, &d)).await {
                error!(queue_id = %id, "cannot record hold: {e}");
            }
        }
    }
    failed
}
