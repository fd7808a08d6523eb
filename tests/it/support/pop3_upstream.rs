//! An in-process POP3 test upstream over real TLS (implicit, or STLS on a
//! plain connection). It accepts one user name/password, records every line
//! it receives (USER and PASS included, to check the credential swap),
//! counts connections, and serves a fixed maildrop of three messages (the
//! second has lines starting with "." to check dot-stuffing passes through,
//! the third is large) for STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP and
//! QUIT (which deletes what DELE marked, RFC 1939 UPDATE state).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use base64::Engine;

use super::ca::ServerCert;
pub use super::imap_upstream::Mode;

/// The fixed messages, 1-based (as stored, before dot-stuffing).
pub fn message(n: usize) -> Vec<u8> {
    match n {
        1 => b"From: a@example.com\r\nSubject: one\r\n\r\nHello one\r\n".to_vec(),
        2 => b"From: b@example.com\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
            .to_vec(),
        _ => super::imap_upstream::message(3),
    }
}

/// The exact bytes of a `RETR n` answer: status line, dot-stuffed body, ".".
pub fn retr_response(n: usize) -> Vec<u8> {
    let m = message(n);
    let mut v = format!("+OK {} octets\r\n", m.len()).into_bytes();
    for line in m.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            v.push(b'.');
        }
        v.extend_from_slice(line);
    }
    v.extend_from_slice(b".\r\n");
    v
}

#[derive(Default)]
pub struct Shared {
    /// Every line received, in order, per connection appended.
    pub lines: Mutex<Vec<Vec<u8>>>,
    pub connections: AtomicUsize,
    pub active: AtomicUsize,
    /// Messages deleted by a QUIT after DELE.
    pub deleted: Mutex<Vec<usize>>,
    pub changed: Notify,
}

pub struct Pop3Upstream {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Pop3Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Config {
    username: String,
    password: String,
    mode: Mode,
}

impl Pop3Upstream {
    pub async fn start(cert: &ServerCert, username: &str, password: &str, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = cert.acceptor();
        let config = Arc::new(Config {
            username: username.into(),
            password: password.into(),
            mode,
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                sh.active.fetch_add(1, Ordering::SeqCst);
                sh.changed.notify_waiters();
                let (acceptor, config, sh) = (acceptor.clone(), config.clone(), sh.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, acceptor, &config, &sh).await;
                    sh.active.fetch_sub(1, Ordering::SeqCst);
                    sh.changed.notify_waiters();
                });
            }
        });
        Pop3Upstream { addr, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<Vec<u8>> {
        self.shared.lines.lock().unwrap().clone()
    }

    /// The USER and PASS lines received so far.
    pub fn logins(&self) -> Vec<Vec<u8>> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(b"USER ") || l.starts_with(b"PASS "))
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    pub fn deleted(&self) -> Vec<usize> {
        self.shared.deleted.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) until `f` holds.
    pub async fn wait_for(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let changed = self.shared.changed.notified();
            if f(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                assert!(f(self), "timed out waiting for: {what}");
                return;
            }
        }
    }
}

async fn read_line<S: AsyncBufRead + Unpin>(s: &mut S, sh: &Shared) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if s.read_until(b'\n', &mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    sh.lines.lock().unwrap().push(line.clone());
    sh.changed.notify_waiters();
    Ok(line)
}

async fn serve(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    config: &Config,
    sh: &Shared,
) -> std::io::Result<()> {
    match config.mode {
        Mode::Implicit => {
            let tls = acceptor.accept(tcp).await?;
            let mut s = BufReader::new(tls);
            s.write_all(b"+OK test POP3 upstream ready\r\n").await?;
            s.flush().await?;
            session(&mut s, config, sh).await
        }
        Mode::Starttls => {
            let mut plain = BufReader::new(tcp);
            plain.write_all(b"+OK plain test POP3 upstream\r\n").await?;
            loop {
                let line = read_line(&mut plain, sh).await?;
                if line.eq_ignore_ascii_case(b"STLS\r\n") {
                    plain.write_all(b"+OK Begin TLS\r\n").await?;
                    break;
                }
                plain.write_all(b"-ERR STLS first\r\n").await?;
            }
            let tls = acceptor.accept(plain.into_inner()).await?;
            let mut s = BufReader::new(tls);
            session(&mut s, config, sh).await
        }
    }
}

async fn session<S: AsyncBufRead + AsyncWrite + Unpin>(
    s: &mut S,
    config: &Config,
    sh: &Shared,
) -> std::io::Result<()> {
    let mut user: Option<String> = None;
    let mut logged_in = false;
    let mut marked: Vec<usize> = Vec::new();
    let sizes: Vec<usize> = (1..=3).map(|n| message(n).len()).collect();
    loop {
        let line = read_line(s, sh).await?;
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let (verb, arg) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let verb = verb.to_ascii_uppercase();
        let n: usize = arg.split(' ').next().unwrap_or("").parse().unwrap_or(0);
        let valid = (1..=3).contains(&n) && !marked.contains(&n);
        let reply: Vec<u8> = match verb.as_str() {
            "USER" if !logged_in => {
                user = Some(arg.to_string());
                b"+OK\r\n".to_vec()
            }
            "AUTH" if !logged_in && arg.eq_ignore_ascii_case("XOAUTH2") => {
                // The configured password is the bearer token; a bad one gets
                // Gmail's JSON challenge, then -ERR.
                s.write_all(b"+ \r\n").await?;
                s.flush().await?;
                let response = read_line(s, sh).await?;
                let expected = format!(
                    "user={}\x01auth=Bearer {}\x01\x01",
                    config.username, config.password
                );
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(String::from_utf8_lossy(&response).trim())
                    .unwrap_or_default();
                if decoded == expected.as_bytes() {
                    logged_in = true;
                    b"+OK User successfully authenticated.\r\n".to_vec()
                } else {
                    let challenge = base64::engine::general_purpose::STANDARD.encode(
                        r#"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#,
                    );
                    s.write_all(format!("+ {challenge}\r\n").as_bytes()).await?;
                    s.flush().await?;
                    let _ = read_line(s, sh).await?;
                    b"-ERR [AUTH] Authentication failed.\r\n".to_vec()
                }
            }
            "PASS" if !logged_in => {
                if user.take().as_deref() == Some(config.username.as_str())
                    && arg == config.password
                {
                    logged_in = true;
                    b"+OK Logged in.\r\n".to_vec()
                } else {
                    b"-ERR [AUTH] Authentication failed.\r\n".to_vec()
                }
            }
            "QUIT" => {
                if logged_in {
                    sh.deleted.lock().unwrap().extend(&marked);
                }
                s.write_all(b"+OK Logging out.\r\n").await?;
                s.flush().await?;
                return Ok(());
            }
            _ if !logged_in => b"-ERR Unknown command.\r\n".to_vec(),
            "NOOP" => b"+OK\r\n".to_vec(),
            "STAT" => {
                let live: Vec<usize> = (1..=3).filter(|k| !marked.contains(k)).collect();
                let total: usize = live.iter().map(|k| sizes[k - 1]).sum();
                format!("+OK {} {total}\r\n", live.len()).into_bytes()
            }
            "LIST" => {
                let mut v = b"+OK\r\n".to_vec();
                for k in (1..=3).filter(|k| !marked.contains(k)) {
                    v.extend(format!("{k} {}\r\n", sizes[k - 1]).into_bytes());
                }
                v.extend(b".\r\n");
                v
            }
            "UIDL" => {
                let mut v = b"+OK\r\n".to_vec();
                for k in (1..=3).filter(|k| !marked.contains(k)) {
                    v.extend(format!("{k} uid-{k}\r\n").into_bytes());
                }
                v.extend(b".\r\n");
                v
            }
            "RETR" if valid => retr_response(n),
            "TOP" if valid => {
                let m = message(n);
                let end = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut v = b"+OK\r\n".to_vec();
                v.extend_from_slice(&m[..end]);
                v.extend(b".\r\n");
                v
            }
            "DELE" if valid => {
                marked.push(n);
                format!("+OK Marked {n}\r\n").into_bytes()
            }
            "RSET" => {
                marked.clear();
                b"+OK\r\n".to_vec()
            }
            _ => b"-ERR No such message or command\r\n".to_vec(),
        };
        s.write_all(&reply).await?;
        s.flush().await?;
    }
}
