//! The `mailbridge` binary: logging, config, signals (SIGTERM/SIGINT stop,
//! SIGHUP reloads relay.toml), and command dispatch.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailbridge::cli::{self, Cli, Command, LogFormat};
use mailbridge::config::Config;
use mailbridge::Daemon;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let (filter, bad) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        Err(e) => {
            let set = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
            (EnvFilter::new("info"), set.then(|| e.to_string()))
        }
    };
    // Colours only on a terminal (not in journald or a log file); NO_COLOR wins.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(e) = bad {
        warn!("RUST_LOG is not a valid filter ({e}); logging at info");
    }
}

/// Makes glibc's malloc hand every buffer of 1 MiB or more straight back to
/// the system when it is freed. By default a freed large buffer raises
/// glibc's mmap threshold to its size, so the next message buffers come
/// from (and stay in) per-thread arenas: with each message read on another
/// blocking thread, the daemon kept about one message per arena although
/// `delivery.message_buffer_budget` bounds the bytes in use (10 x 20 MB
/// peaked at 164 MiB instead of about 30 MiB, docs/BENCHMARKS.md section 7).
///
/// It also caps glibc's arenas at two (one per tokio worker on a small
/// machine; glibc's default is eight per core): every short-lived blocking
/// thread otherwise gets an arena of its own, which keeps its freed memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn large_buffers_back_to_the_system() {
    const THRESHOLD: libc::c_int = 1024 * 1024;
    const ARENAS: libc::c_int = 2;
    // SAFETY: mallopt only sets a parameter of glibc's allocator (it takes
    // the allocator's own lock); it is called once, before any other thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn large_buffers_back_to_the_system() {}

fn main() -> ExitCode {
    large_buffers_back_to_the_system();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::HashPassword) => cli::hash_password_command(),
        Some(Command::Init { force, ref dir }) => cli::init::command(dir, force),
        Some(Command::Generate { ref what }) => mailbridge::packaging::command(what),
        _ => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mailbridge: cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let code = runtime.block_on(async_main(cli));
            // Sessions still running past the shutdown bound are dropped here.
            runtime.shutdown_timeout(Duration::from_secs(1));
            code
        }
    }
}

async fn async_main(cli: Cli) -> ExitCode {
    let config = match cli::load_config(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match &cli.command {
        None | Some(Command::Run) => serve(config, &cli.config).await,
        Some(Command::Check) => cli::check::run(&config).await,
        Some(Command::Queue { command }) => cli::queue::run(&config, command.clone()),
        Some(Command::Auth(args)) => mailbridge::oauth2::cli::run(&config, args).await,
        Some(Command::HashPassword) => cli::hash_password_command(),
        Some(Command::Init { force, dir }) => cli::init::command(dir, *force),
        Some(Command::Generate { what }) => mailbridge::packaging::command(what),
    }
}

/// Runs the daemon until SIGTERM/SIGINT; SIGHUP reloads `config_path`.
async fn serve(config: Config, config_path: &Path) -> ExitCode {
    let bound = mailbridge::SHUTDOWN_GRACE + config.delivery.timeout;
    // Before the listeners open: a SIGTERM that arrives while the daemon is
    // still starting (sessions already served) must stop it gracefully, not kill it.
    let mut signals = Signals::new();
    let daemon = match Daemon::start(config).await {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            eprintln!("mailbridge: {e}");
            return ExitCode::from(1);
        }
    };
    while let Signal::Reload = signals.next().await {
        info!("SIGHUP: reloading {}", config_path.display());
        match Config::load(config_path) {
            // `reload` logs its own outcome.
            Ok(new) => {
                let _ = daemon.reload(new);
            }
            Err(e) => {
                error!("configuration reload rejected, keeping the running configuration: {e}")
            }
        }
    }
    info!("shutting down (sessions get 421 / BYE; the worker finishes the message in hand)");
    if tokio::time::timeout(bound, daemon.shutdown())
        .await
        .is_err()
    {
        warn!(
            "sessions still open {} after shutdown began; dropping them (every accepted message is in the spool)",
            humantime::format_duration(bound)
        );
    }
    info!("stopped");
    ExitCode::SUCCESS
}

#[cfg_attr(not(unix), allow(dead_code))]
enum Signal {
    Stop,
    Reload,
}

/// SIGTERM/SIGINT and SIGHUP on Unix; Ctrl-C only elsewhere.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| warn!("cannot watch SIGTERM: {e}"))
                .ok();
            let hup = signal(SignalKind::hangup())
                .map_err(|e| warn!("cannot watch SIGHUP (no live reload): {e}"))
                .ok();
            Signals { term, hup }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let Signals { term, hup } = self;
            let term = async {
                match term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let hup = async {
                match hup {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => Signal::Stop,
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                Some(()) = hup => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
