//! `mailbridge queue ...`: list, show, retry, delete on the spool directory. (Stub.)

use std::process::ExitCode;

use crate::cli::QueueCommand;
use crate::config::Config;

pub fn run(_config: &Config, _command: QueueCommand) -> ExitCode {
    eprintln!("not yet");
    ExitCode::from(1)
}
