//! `mailbridge check`: the config is valid and every account can log in upstream. (Stub.)

use std::process::ExitCode;

use crate::config::Config;

pub async fn run(_config: &Config) -> ExitCode {
    ExitCode::SUCCESS
}
