//! The command line: `run` (default), `check`, `queue ...`, `auth`, `hash-password`, `init`
//! (and the hidden `generate` for packagers, see [`crate::packaging`]).
//! The library computes; printing lives here:
//! - [`queue`], [`check`], [`init`]: the output of those commands.

pub mod check;
pub mod init;
pub mod queue;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "mailbridge",
    version,
    about = "Plaintext SMTP and IMAP on loopback for legacy devices; authenticated TLS to Gmail upstream",
    after_help = "Without a command, `run` is assumed. Log filtering follows RUST_LOG (e.g. RUST_LOG=mailbridge=debug)."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "relay.toml",
        env = "MAILBRIDGE_CONFIG"
    )]
    pub config: PathBuf,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and log in to every account's SMTP and IMAP server.
    Check,
    /// Inspect and manage the spool (works while the daemon runs).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Authorize an OAuth2 account (stores its token), or show/forget stored tokens.
    Auth(crate::oauth2::cli::AuthArgs),
    /// Read a password on stdin and print an argon2id hash for [[users]].password_hash.
    HashPassword,
    /// Create a local CA and a certificate for this machine in certs/, and a starter relay.toml.
    Init {
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
        /// Directory to create relay.toml and certs/ in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Write the man page, shell completions or packaged files (for packagers).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: crate::packaging::GenerateCommand,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum QueueCommand {
    /// List queued and failed messages.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope, state and last upstream reply.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Retry now: one message (also a failed one), or every deferred message.
    Retry { id: Option<String> },
    /// Delete a message from the spool (queued or failed).
    Delete { id: String },
    /// Put a queued message on hold: it is not delivered until released.
    Hold { id: String },
    /// Release a held message: it is delivered now.
    Release { id: String },
}

/// Reads a password from stdin (one line, or all of it) and hashes it.
pub fn hash_password_command() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("mailbridge: cannot read stdin: {e}");
        return ExitCode::from(1);
    }
    let password = input.strip_suffix('\n').unwrap_or(&input);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("mailbridge: empty password on stdin (usage: echo -n 'device password' | mailbridge hash-password)");
        return ExitCode::from(1);
    }
    match crate::auth::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailbridge: hashing failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config or prints why not.
pub fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(&cli.config).map_err(|e| {
        eprintln!("mailbridge: configuration error: {e}");
        ExitCode::from(2)
    })
}
