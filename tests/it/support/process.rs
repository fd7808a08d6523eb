//! Helpers for the hardening tests: run the real `mailbridge` binary as a
//! child process (config in a temp dir, ports learned from its log), and a
//! the wait for its output (the SMTP client that tolerates the server
//! vanishing is [`super::smtp::Smtp`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::wait;

/// A running `mailbridge` child and everything it printed so far.
pub struct Proc {
    pub child: Child,
    pub smtp: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    /// stderr and stdout lines, as printed.
    pub output: Arc<Mutex<Vec<String>>>,
}

/// Writes `toml` to `dir/relay.toml` (mode 0600) and returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The binary under test with `-c config` and `args`.
pub fn command(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailbridge"));
    c.arg("-c").arg(config).args(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    c
}

fn collect<R: std::io::Read + Send + 'static>(
    r: R,
    out: Arc<Mutex<Vec<String>>>,
    tx: std::sync::mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            out.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let i = line.find(marker)? + marker.len();
    let rest = &line[i..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Proc {
    /// Spawns `cmd` and waits (up to 20 s) until both listeners are logged,
    /// or returns as soon as the process exits.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn mailbridge");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        collect(child.stderr.take().unwrap(), output.clone(), tx.clone());
        collect(child.stdout.take().unwrap(), output.clone(), tx);
        let mut p = Proc {
            child,
            smtp: None,
            imap: None,
            output,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while p.smtp.is_none() || p.imap.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    p.smtp = p.smtp.or_else(|| addr_after(&line, "SMTP listening on "));
                    p.imap = p.imap.or_else(|| addr_after(&line, "IMAP listening on "));
                }
                Err(_) => break,
            }
        }
        p
    }

    /// Waits for the process to exit on its own (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait::blocking(
            || "mailbridge to exit".into(),
            timeout,
            || self.child.try_wait().unwrap(),
        )
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the clean exit.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.wait_exit(Duration::from_secs(20));
    }

    pub fn text(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `needle` appears in the process output (panics after `timeout`).
pub fn wait_output(p: &Proc, needle: &str, timeout: Duration) {
    wait::blocking(
        || format!("{needle:?} in the output:\n{}", p.text()),
        timeout,
        || p.text().contains(needle).then_some(()),
    )
}

/// `mailbridge -c DIR/relay.toml queue ARGS...`, run to the end.
pub fn queue(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("-c")
        .arg(dir.join("relay.toml"))
        .arg("queue")
        .args(args)
        .output()
        .unwrap()
}

/// A finished command's stdout as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
