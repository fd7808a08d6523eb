//! `mailbridge queue list | show | retry | delete | hold | release`: plain file operations on
//! the spool directory, safe while the daemon runs (every change is an atomic
//! rename; the worker re-reads the queue every few seconds and tolerates
//! entries that vanish under it).
//!
//! Everything shown that came from a client or a provider (addresses, HELO
//! name, headers, upstream replies) goes through [`Printable`] (text) or
//! [`printable_json`] (`--json`), so a terminal cannot be driven by it.

use std::process::ExitCode;
use std::time::SystemTime;

use serde::Serialize;

use super::{EntryState, HoldReason, QueueEntry, QueueId, Spool, SpoolError};
use crate::cli::QueueCommand;
use crate::config::Config;
use crate::text::{printable_json, Printable};

/// One entry as `--json` prints it.
#[derive(Serialize)]
struct EntryView<'a> {
    id: &'a str,
    state: EntryState,
    account: &'a str,
    mail_from: &'a str,
    recipients: &'a [String],
    remaining: &'a [String],
    size: u64,
    attempts: u32,
    received_at: String,
    next_attempt: Option<String>,
    failed_at: Option<String>,
    last_error: Option<&'a str>,
    /// Why it is held, typed (`state` is derived from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<&'a HoldReason>,
    client: &'a str,
    helo: &'a str,
    local_user: Option<&'a str>,
    /// Why the provider may rewrite `From:` (only from `queue show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

fn view(e: &QueueEntry) -> EntryView<'_> {
    EntryView {
        id: &e.id.0,
        state: e.state,
        account: &e.envelope.account,
        mail_from: &e.envelope.mail_from,
        recipients: &e.envelope.recipients,
        remaining: &e.remaining,
        size: e.size,
        attempts: e.attempts,
        received_at: rfc3339(e.received_at),
        next_attempt: e.next_attempt.map(rfc3339),
        failed_at: e.failed_at.map(rfc3339),
        last_error: e.last_error.as_deref(),
        hold: e.hold.as_ref(),
        client: &e.envelope.client,
        helo: &e.envelope.helo,
        local_user: e.envelope.local_user.as_deref(),
        warning: None,
    }
}

/// Runs one `queue` subcommand; prints to stdout, errors to stderr.
pub fn run(config: &Config, command: QueueCommand) -> ExitCode {
    let spool = match Spool::open(&config.smtp.spool_dir) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let result = match command {
        QueueCommand::List { json } => list(&spool, json),
        QueueCommand::Show { id, json } => show(config, &spool, &QueueId(id), json),
        QueueCommand::Retry { id: Some(id) } => retry_one(&spool, &id),
        QueueCommand::Retry { id: None } => retry_all(&spool),
        QueueCommand::Delete { id } => spool
            .delete(&QueueId(id.clone()))
            .map(|()| println!("{id}: deleted")),
        QueueCommand::Hold { id } => spool.hold(&QueueId(id.clone())).map(|()| {
            println!("{id}: on hold (not delivered until `mailbridge queue release {id}`)")
        }),
        QueueCommand::Release { id } => spool
            .release(&QueueId(id.clone()))
            .map(|()| println!("{id}: released; will be delivered now")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    // Errors can quote damaged spool contents.
    eprintln!("mailbridge queue: {}", Printable(msg));
    ExitCode::from(1)
}

fn to_json<T: Serialize>(v: &T) -> Result<String, SpoolError> {
    serde_json::to_string_pretty(v)
        .map(|json| printable_json(&json))
        .map_err(|e| SpoolError::Task(e.to_string()))
}

/// Addresses for a text line, each escaped.
fn addresses(list: &[String]) -> String {
    let shown: Vec<String> = list.iter().map(|a| Printable(a).to_string()).collect();
    shown.join(", ")
}

fn list(spool: &Spool, json: bool) -> Result<(), SpoolError> {
    let entries = spool.list()?;
    if json {
        let views: Vec<EntryView> = entries.iter().map(view).collect();
        println!("{}", to_json(&views)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("spool is empty ({})", spool.dir().display());
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:>9} {:>4} {:<20} {:<24} LAST ERROR",
        "ID", "STATE", "SIZE", "TRY", "RECEIVED", "RECIPIENTS"
    );
    for e in &entries {
        let rcpts = match e.remaining.len() {
            0 => String::new(),
            1 => Printable(&e.remaining[0]).to_string(),
            n => format!("{} (+{})", Printable(&e.remaining[0]), n - 1),
        };
        let received = rfc3339(e.received_at);
        println!(
            "{:<24} {:<9} {:>9} {:>4} {:<20} {:<24} {}",
            e.id.0,
            e.state.to_string(),
            e.size,
            e.attempts,
            received.get(..19).unwrap_or(&received),
            rcpts,
            Printable(e.last_error.as_deref().unwrap_or(""))
        );
    }
    let failed = entries
        .iter()
        .filter(|e| e.state == EntryState::Failed)
        .count();
    let on_hold = entries
        .iter()
        .filter(|e| e.state == EntryState::OnHold)
        .count();
    let held = match on_hold {
        0 => String::new(),
        n => format!(" ({n} on hold)"),
    };
    println!("{} queued{held}, {failed} failed", entries.len() - failed);
    Ok(())
}

fn show(config: &Config, spool: &Spool, id: &QueueId, json: bool) -> Result<(), SpoolError> {
    let e = spool.entry(id)?;
    let message = spool.read_message(id);
    let mut v = view(&e);
    v.warning = match (&message, config.account(&e.envelope.account)) {
        (Ok(m), Some(account)) => crate::smtp::sender::rewrite_warning(m, account),
        _ => None,
    };
    if json {
        println!("{}", to_json(&v)?);
        return Ok(());
    }
    println!("id:           {}", v.id);
    println!("state:        {}", e.state);
    println!("account:      {}", v.account);
    println!("from:         <{}>", Printable(v.mail_from));
    println!("recipients:   {}", addresses(v.recipients));
    if v.remaining != v.recipients {
        println!("remaining:    {}", addresses(v.remaining));
    }
    println!("size:         {} bytes", v.size);
    println!(
        "received:     {} from {} (HELO {})",
        v.received_at,
        Printable(v.client),
        Printable(v.helo)
    );
    if let Some(u) = v.local_user {
        println!("local user:   {}", Printable(u));
    }
    println!("attempts:     {}", v.attempts);
    if let Some(n) = &v.next_attempt {
        println!("next attempt: {n}");
    }
    if let Some(f) = &v.failed_at {
        println!("failed at:    {f}");
    }
    if let Some(err) = v.last_error {
        println!("last error:   {}", Printable(err));
    }
    if let Some(w) = &v.warning {
        println!("warning:      {}", Printable(w));
    }
    // The header section, to recognise the message (bodies can be large).
    if let Ok(msg) = message {
        let end = msg
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(msg.len())
            .min(8192);
        println!("headers:");
        for line in String::from_utf8_lossy(&msg[..end]).lines() {
            println!("  {}", Printable(line));
        }
    }
    Ok(())
}

fn retry_one(spool: &Spool, id: &str) -> Result<(), SpoolError> {
    let qid = QueueId(id.to_string());
    spool.retry(&qid)?;
    if spool
        .entry(&qid)
        .is_ok_and(|e| e.state == EntryState::OnHold)
    {
        println!("{id}: on hold; it is sent once released (`mailbridge queue release {id}`)");
    } else {
        println!("{id}: will be retried now");
    }
    Ok(())
}

fn retry_all(spool: &Spool) -> Result<(), SpoolError> {
    let mut n = 0;
    for e in spool.list_queued()? {
        match spool.retry(&e.id) {
            Ok(()) => n += 1,
            Err(SpoolError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    println!("{n} queued message(s) will be retried now");
    Ok(())
}
