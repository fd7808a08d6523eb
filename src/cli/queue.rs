//! Printing for `mailbridge queue ...` (text and `--json`) over the data
//! [`crate::spool::admin`] returns.
//!
//! Everything shown that came from a client or a provider (addresses, HELO
//! name, headers, upstream replies) goes through [`Printable`] (text) or
//! [`printable_json`] (`--json`), so a terminal cannot be driven by it.

use std::process::ExitCode;

use serde::Serialize;

use super::QueueCommand;
use crate::config::Config;
use crate::spool::admin::{self, EntryView, Retried, Shown};
use crate::spool::{EntryState, QueueId, Spool, SpoolError};
use crate::text::{printable_json, Printable};

/// Runs one `queue` subcommand; prints to stdout, errors to stderr.
pub fn run(config: &Config, command: QueueCommand) -> ExitCode {
    let spool = match admin::open(config) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let result =
        match command {
            QueueCommand::List { json } => admin::list(&spool).and_then(|v| list(&spool, &v, json)),
            QueueCommand::Show { id, json } => {
                admin::show(config, &spool, &QueueId(id)).and_then(|s| show(&s, json))
            }
            QueueCommand::Retry { id: Some(id) } => admin::retry_one(&spool, &QueueId(id.clone()))
                .map(|r| match r {
                    Retried::OnHold => println!(
                        "{id}: on hold; it is sent once released (`mailbridge queue release {id}`)"
                    ),
                    Retried::Now => println!("{id}: will be retried now"),
                }),
            QueueCommand::Retry { id: None } => admin::retry_all(&spool)
                .map(|n| println!("{n} queued message(s) will be retried now")),
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

fn list(spool: &Spool, entries: &[EntryView], json: bool) -> Result<(), SpoolError> {
    if json {
        println!("{}", to_json(&entries)?);
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
    for e in entries {
        let rcpts = match e.remaining.len() {
            0 => String::new(),
            1 => Printable(&e.remaining[0]).to_string(),
            n => format!("{} (+{})", Printable(&e.remaining[0]), n - 1),
        };
        let received = &e.received_at;
        println!(
            "{:<24} {:<9} {:>9} {:>4} {:<20} {:<24} {}",
            e.id,
            e.state.to_string(),
            e.size,
            e.attempts,
            received.get(..19).unwrap_or(received),
            rcpts,
            Printable(e.last_error.as_deref().unwrap_or(""))
        );
    }
    let count = |state| entries.iter().filter(|e| e.state == state).count();
    let failed = count(EntryState::Failed);
    let held = match count(EntryState::OnHold) {
        0 => String::new(),
        n => format!(" ({n} on hold)"),
    };
    println!("{} queued{held}, {failed} failed", entries.len() - failed);
    Ok(())
}

fn show(shown: &Shown, json: bool) -> Result<(), SpoolError> {
    let v = &shown.entry;
    if json {
        println!("{}", to_json(v)?);
        return Ok(());
    }
    println!("id:           {}", v.id);
    println!("state:        {}", v.state);
    println!("account:      {}", v.account);
    println!("from:         <{}>", Printable(&v.mail_from));
    println!("recipients:   {}", addresses(&v.recipients));
    if v.remaining != v.recipients {
        println!("remaining:    {}", addresses(&v.remaining));
    }
    println!("size:         {} bytes", v.size);
    println!(
        "received:     {} from {} (HELO {})",
        v.received_at,
        Printable(&v.client),
        Printable(&v.helo)
    );
    if let Some(u) = &v.local_user {
        println!("local user:   {}", Printable(u));
    }
    println!("attempts:     {}", v.attempts);
    if let Some(n) = &v.next_attempt {
        println!("next attempt: {n}");
    }
    if let Some(f) = &v.failed_at {
        println!("failed at:    {f}");
    }
    if let Some(err) = &v.last_error {
        println!("last error:   {}", Printable(err));
    }
    if let Some(w) = &v.warning {
        println!("warning:      {}", Printable(w));
    }
    if let Some(headers) = &shown.headers {
        println!("headers:");
        for line in headers.lines() {
            println!("  {}", Printable(line));
        }
    }
    Ok(())
}
