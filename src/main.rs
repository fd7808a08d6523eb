//! The `mailbridge` binary: logging, config, signals, and command dispatch.

use std::process::ExitCode;

use clap::Parser;
use mailbridge::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::HashPassword) => cli::hash_password_command(),
        _ => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mailbridge: cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(async_main(cli))
        }
    }
}

async fn async_main(cli: Cli) -> ExitCode {
    let config = match cli::load_config(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match &cli.command {
        None | Some(Command::Run) => match mailbridge::run(config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("mailbridge: {e}");
                ExitCode::from(1)
            }
        },
        Some(Command::Check) => mailbridge::check::run(&config).await,
        Some(Command::Queue { command }) => mailbridge::spool::admin::run(&config, command.clone()),
        Some(Command::HashPassword) => cli::hash_password_command(),
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
