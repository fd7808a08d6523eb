//! Helpers for the hardening tests: run the real `mailbridge` binary as a
//! child process (config in a temp dir, ports learned from its log), and a
//! small raw SMTP client that tolerates the server vanishing.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;

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
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mailbridge did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// A raw SMTP client whose every call returns `None` once the server is gone.
pub struct Smtp {
    r: TokioBufReader<TcpStream>,
}

impl Smtp {
    pub async fn connect(addr: SocketAddr) -> Option<(Smtp, String)> {
        let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let (c, g) = Smtp::from_stream(s).await;
        Some((c, g?))
    }

    /// Wraps a connected stream; the greeting is `None` if none came.
    pub async fn from_stream(s: TcpStream) -> (Smtp, Option<String>) {
        let mut c = Smtp {
            r: TokioBufReader::new(s),
        };
        let g = c.reply().await;
        (c, g)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Option<()> {
        self.r.get_mut().write_all(bytes).await.ok()
    }

    /// One whole reply (multi-line joined), `None` on EOF, error or 10 s silence.
    pub async fn reply(&mut self) -> Option<String> {
        self.reply_within(Duration::from_secs(10)).await
    }

    /// [`Smtp::reply`], with `None` only after `silence` without a byte.
    pub async fn reply_within(&mut self, silence: Duration) -> Option<String> {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(silence, self.r.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            out.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(out);
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> Option<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// [`Smtp::cmd`] for a reply that may take up to `silence` (a throttled login).
    pub async fn cmd_within(&mut self, line: &str, silence: Duration) -> Option<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply_within(silence).await
    }

    /// MAIL/RCPT/DATA/body; the final reply, or `None` if the server went away
    /// or refused a step (then the reply so far is lost on purpose).
    pub async fn mail(&mut self, rcpt: &str, body: &[u8]) -> Option<String> {
        let r = self.cmd("MAIL FROM:<dev@local>").await?;
        if !r.starts_with("250") {
            return Some(r);
        }
        let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
        if !r.starts_with("250") {
            return Some(r);
        }
        let r = self.cmd("DATA").await?;
        if !r.starts_with("354") {
            return Some(r);
        }
        self.send(body).await?;
        self.send(b".\r\n").await?;
        self.reply().await
    }
}

/// Polls `check` every 20 ms until it is true; panics after `timeout`.
pub async fn poll_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `needle` appears in the process output (panics after `timeout`).
pub fn wait_output(p: &Proc, needle: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !p.text().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not in the output:\n{}",
            p.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
