//! An in-process upstream SMTP server for tests: implicit TLS or STARTTLS
//! (real rustls with a cert from the test CA), EHLO advertising AUTH, checked
//! credentials (and XOAUTH2 with a set of valid access tokens, a bad token
//! answered the way Gmail does: a `334` base64 JSON challenge, then `535`
//! after the client's empty line), every received message recorded (envelope and exact bytes,
//! dot-stuffing undone), and a script of failures (4xx/5xx, hangs).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::ca::ServerCert;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TLS from the first byte (like port 465).
    Implicit,
    /// Plaintext greeting, STARTTLS offered (like port 587).
    Starttls,
    /// Plaintext, no STARTTLS offered (a client must refuse to AUTH).
    PlainOnly,
}

/// What the server does wrong, on purpose.
#[derive(Debug, Default, Clone)]
pub struct Script {
    /// Answer `451 4.3.0` at the end of DATA this many times.
    pub data_451: usize,
    /// Answer this (e.g. "554 5.7.0 rejected") at the end of DATA (see `data_reply_times`).
    pub data_reply: Option<String>,
    /// How many times `data_reply` is given (`None`: always).
    pub data_reply_times: Option<usize>,
    /// Answer this to MAIL FROM, always.
    pub mail_reply: Option<String>,
    /// Recipients answered `550 5.1.1 no such user`.
    pub reject_rcpts: HashSet<String>,
    /// Recipients answered `451 4.2.1 mailbox busy` once each (then accepted).
    pub busy_rcpts_once: HashSet<String>,
    /// Never answer the end of DATA this many times (the client must time out).
    pub hang_data: usize,
    /// Mechanisms advertised (default PLAIN LOGIN).
    pub mechanisms: Option<Vec<&'static str>>,
    /// Greet with this (e.g. "421 4.3.2 down") and close: the service is unavailable.
    pub greeting: Option<String>,
    /// Sent right after the `220` to STARTTLS, in the same write and before
    /// the TLS handshake (a man in the middle forging the replies that follow).
    pub after_starttls: Option<String>,
    /// Refuse a message with a DATA line longer than this many octets, CRLF
    /// included (RFC 5321 4.5.3.1.6: 1000), with `500 5.5.2 Line too long`,
    /// as strict servers do.
    pub max_line_length: Option<usize>,
}

/// Replies a man in the middle appends to the `220` to STARTTLS: a forged
/// EHLO offering AUTH, then `235` to AUTH and the whole transaction accepted.
/// A client that reads them as if they came over TLS "delivers" a message
/// the real server never accepted.
pub const FORGED_AFTER_STARTTLS: &str =
    "250-upstream.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n\
    235 2.7.0 accepted\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go ahead\r\n\
    250 2.0.0 OK queued as forged\r\n221 2.0.0 bye\r\n";

/// One message as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub auth_user: String,
    /// The password or access token the connection logged in with.
    pub auth_secret: String,
    pub mail_from: String,
    pub mail_params: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// Which connection (1-based) carried it.
    pub connection: usize,
}

/// One AUTH attempt.
#[derive(Debug, Clone)]
pub struct AuthAttempt {
    pub mechanism: String,
    pub user: String,
    pub password: String,
    pub ok: bool,
}

#[derive(Default)]
pub struct Shared {
    pub script: Mutex<Script>,
    pub received: Mutex<Vec<Received>>,
    pub auths: Mutex<Vec<AuthAttempt>>,
    pub notify: Notify,
    pub connections: AtomicUsize,
    pub tls_failures: AtomicUsize,
    /// Transactions in which DATA was started (including failed ones).
    pub data_attempts: AtomicUsize,
    /// Largest number of RCPTs seen in one transaction, per transaction.
    pub rcpt_counts: Mutex<Vec<usize>>,
    /// Access tokens `AUTH XOAUTH2` accepts (for the server's user).
    pub valid_tokens: Mutex<HashSet<String>>,
}

/// Gmail's challenge to a refused XOAUTH2 token (base64 of its JSON).
pub const XOAUTH2_CHALLENGE: &str =
    r#"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#;

pub struct SmtpUpstream {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub user: String,
    pub password: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl SmtpUpstream {
    /// Starts a server on 127.0.0.1:0 accepting `user`/`password`.
    pub async fn start(cert: &ServerCert, mode: Mode, user: &str, password: &str) -> SmtpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = cert.acceptor();
        let (sh, u, p) = (shared.clone(), user.to_string(), password.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let n = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (sh, acceptor, u, p) = (sh.clone(), acceptor.clone(), u.clone(), p.clone());
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = if mode == Mode::Implicit {
                        match acceptor.accept(tcp).await {
                            Ok(s) => Box::new(s),
                            Err(_) => {
                                sh.tls_failures.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    } else {
                        Box::new(tcp)
                    };
                    let _ = session(stream, mode, acceptor, sh, n, &u, &p).await;
                });
            }
        });
        SmtpUpstream {
            addr,
            shared,
            user: user.into(),
            password: password.into(),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn script(&self) -> MutexGuard<'_, Script> {
        self.shared.script.lock().unwrap()
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Makes `token` an access token `AUTH XOAUTH2` accepts.
    pub fn accept_token(&self, token: &str) {
        self.shared
            .valid_tokens
            .lock()
            .unwrap()
            .insert(token.to_string());
    }

    pub fn auths(&self) -> Vec<AuthAttempt> {
        self.shared.auths.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("upstream got {} messages, expected {n}: {:#?}", r.len(), r);
            }
        }
    }
}

async fn session(
    stream: Box<dyn Io>,
    mode: Mode,
    acceptor: tokio_rustls::TlsAcceptor,
    sh: Arc<Shared>,
    conn_no: usize,
    user: &str,
    password: &str,
) -> std::io::Result<()> {
    let mut io = BufReader::new(stream);
    let mut tls = mode == Mode::Implicit;
    let greeting = sh.script.lock().unwrap().greeting.clone();
    if let Some(g) = greeting {
        io.write_all(format!("{g}\r\n").as_bytes()).await?;
        return Ok(());
    }
    io.write_all(b"220 upstream.test ESMTP ready\r\n").await?;
    let mut authed: Option<String> = None;
    let mut secret = String::new();
    let mut from: Option<(String, String)> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let Some(line) = read_line(&mut io).await? else {
            return Ok(());
        };
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                let mechs = sh
                    .script
                    .lock()
                    .unwrap()
                    .mechanisms
                    .clone()
                    .unwrap_or(vec!["PLAIN", "LOGIN"]);
                let mut caps = vec![
                    "upstream.test".to_string(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "SIZE 35882577".into(),
                ];
                if !tls && mode == Mode::Starttls {
                    caps.push("STARTTLS".into());
                }
                if tls {
                    caps.push(format!("AUTH {}", mechs.join(" ")));
                }
                let n = caps.len();
                let mut out = String::new();
                for (i, c) in caps.iter().enumerate() {
                    out.push_str(&format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }));
                }
                io.write_all(out.as_bytes()).await?;
            }
            "STARTTLS" if mode == Mode::Starttls && !tls => {
                let injected = sh.script.lock().unwrap().after_starttls.clone();
                let reply = format!("220 2.0.0 go ahead\r\n{}", injected.unwrap_or_default());
                io.write_all(reply.as_bytes()).await?;
                let inner = io.into_inner();
                match acceptor.accept(inner).await {
                    Ok(s) => {
                        io = BufReader::new(Box::new(s) as Box<dyn Io>);
                        tls = true;
                    }
                    Err(_) => {
                        sh.tls_failures.fetch_add(1, Ordering::SeqCst);
                        return Ok(());
                    }
                }
            }
            "AUTH" => {
                if !tls {
                    io.write_all(b"538 5.7.11 encryption required\r\n").await?;
                    continue;
                }
                let parts: Vec<&str> = line.split(' ').collect();
                let mech = parts
                    .get(1)
                    .map(|s| s.to_ascii_uppercase())
                    .unwrap_or_default();
                let (u, p) = match mech.as_str() {
                    "PLAIN" => {
                        let arg = match parts.get(2) {
                            Some(a) => a.to_string(),
                            None => {
                                io.write_all(b"334 \r\n").await?;
                                read_line(&mut io).await?.unwrap_or_default()
                            }
                        };
                        let raw = b64.decode(arg.trim()).unwrap_or_default();
                        let f: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                        let s = |i: usize| {
                            f.get(i)
                                .map(|x| String::from_utf8_lossy(x).into_owned())
                                .unwrap_or_default()
                        };
                        (s(1), s(2))
                    }
                    "LOGIN" => {
                        io.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                        let u = read_line(&mut io).await?.unwrap_or_default();
                        io.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                        let p = read_line(&mut io).await?.unwrap_or_default();
                        let d = |s: &str| {
                            String::from_utf8_lossy(&b64.decode(s.trim()).unwrap_or_default())
                                .into_owned()
                        };
                        (d(&u), d(&p))
                    }
                    "XOAUTH2" => {
                        let arg = match parts.get(2) {
                            Some(a) => a.to_string(),
                            None => {
                                io.write_all(b"334 \r\n").await?;
                                read_line(&mut io).await?.unwrap_or_default()
                            }
                        };
                        let raw =
                            String::from_utf8_lossy(&b64.decode(arg.trim()).unwrap_or_default())
                                .into_owned();
                        let field = |k: &str| {
                            raw.split('\x01')
                                .find_map(|f| f.strip_prefix(k))
                                .unwrap_or_default()
                                .to_string()
                        };
                        let (u, t) = (field("user="), field("auth=Bearer "));
                        let ok = u == user && sh.valid_tokens.lock().unwrap().contains(&t);
                        sh.auths.lock().unwrap().push(AuthAttempt {
                            mechanism: mech,
                            user: u.clone(),
                            password: t.clone(),
                            ok,
                        });
                        if ok {
                            authed = Some(u);
                            secret = t;
                            io.write_all(b"235 2.7.0 Accepted\r\n").await?;
                        } else {
                            let c = b64.encode(XOAUTH2_CHALLENGE);
                            io.write_all(format!("334 {c}\r\n").as_bytes()).await?;
                            // The client's empty line ends the exchange.
                            let _ = read_line(&mut io).await?;
                            io.write_all(
                                b"535-5.7.8 Username and Password not accepted. For more information, go to\r\n\
                                  535 5.7.8  https://support.google.com/mail/?p=BadCredentials\r\n",
                            )
                            .await?;
                        }
                        continue;
                    }
                    _ => {
                        io.write_all(b"504 5.5.4 unknown mechanism\r\n").await?;
                        continue;
                    }
                };
                let ok = u == user && p == password;
                sh.auths.lock().unwrap().push(AuthAttempt {
                    mechanism: mech,
                    user: u.clone(),
                    password: p,
                    ok,
                });
                if ok {
                    authed = Some(u);
                    secret = password.to_string();
                    io.write_all(b"235 2.7.0 accepted\r\n").await?;
                } else {
                    io.write_all(b"535 5.7.8 Username and Password not accepted\r\n")
                        .await?;
                }
            }
            "MAIL" => {
                if authed.is_none() {
                    io.write_all(b"530 5.7.0 authentication required\r\n")
                        .await?;
                    continue;
                }
                let scripted = sh.script.lock().unwrap().mail_reply.clone();
                if let Some(r) = scripted {
                    io.write_all(format!("{r}\r\n").as_bytes()).await?;
                    continue;
                }
                let rest = &line[10.min(line.len())..];
                let (addr, params) = match rest.find('>') {
                    Some(i) => (
                        rest[..i].trim_start_matches('<').to_string(),
                        rest[i + 1..].trim().to_string(),
                    ),
                    None => (rest.to_string(), String::new()),
                };
                from = Some((addr, params));
                rcpts.clear();
                io.write_all(b"250 2.1.0 OK\r\n").await?;
            }
            "RCPT" => {
                let rest = &line[8.min(line.len())..];
                let addr = rest
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string();
                if from.is_none() {
                    io.write_all(b"503 5.5.1 MAIL first\r\n").await?;
                } else if sh.script.lock().unwrap().reject_rcpts.contains(&addr) {
                    io.write_all(b"550 5.1.1 no such user\r\n").await?;
                } else if sh.script.lock().unwrap().busy_rcpts_once.remove(&addr) {
                    io.write_all(b"451 4.2.1 mailbox busy\r\n").await?;
                } else {
                    rcpts.push(addr);
                    io.write_all(b"250 2.1.5 OK\r\n").await?;
                }
            }
            "DATA" => {
                if rcpts.is_empty() {
                    io.write_all(b"554 5.5.1 no valid recipients\r\n").await?;
                    continue;
                }
                io.write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                let max_line = sh.script.lock().unwrap().max_line_length;
                let mut line_too_long = false;
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if max_line.is_some_and(|m| l.len() > m) {
                        line_too_long = true;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    if l.first() == Some(&b'.') {
                        l.remove(0);
                    }
                    data.extend_from_slice(&l);
                }
                sh.data_attempts.fetch_add(1, Ordering::SeqCst);
                sh.rcpt_counts.lock().unwrap().push(rcpts.len());
                enum Verdict {
                    Hang,
                    Reply(String),
                    Accept,
                }
                let verdict = {
                    let mut s = sh.script.lock().unwrap();
                    if line_too_long {
                        Verdict::Reply("500 5.5.2 Line too long".to_string())
                    } else if s.hang_data > 0 {
                        s.hang_data -= 1;
                        Verdict::Hang
                    } else if s.data_451 > 0 {
                        s.data_451 -= 1;
                        Verdict::Reply("451 4.3.0 try again later".to_string())
                    } else if s.data_reply.is_some() && s.data_reply_times != Some(0) {
                        if let Some(n) = s.data_reply_times.as_mut() {
                            *n -= 1;
                        }
                        s.data_reply.clone().map_or(Verdict::Accept, Verdict::Reply)
                    } else {
                        Verdict::Accept
                    }
                };
                let (mail_from, mail_params) = from.take().unwrap_or_default();
                let rc = std::mem::take(&mut rcpts);
                match verdict {
                    Verdict::Reply(r) => io.write_all(format!("{r}\r\n").as_bytes()).await?,
                    Verdict::Hang => {
                        // Never answer; keep the connection until the client gives up.
                        let mut sink = Vec::new();
                        let _ = io.read_until(b'\n', &mut sink).await;
                        return Ok(());
                    }
                    Verdict::Accept => {
                        sh.received.lock().unwrap().push(Received {
                            auth_user: authed.clone().unwrap_or_default(),
                            auth_secret: secret.clone(),
                            mail_from,
                            mail_params,
                            rcpts: rc,
                            data,
                            connection: conn_no,
                        });
                        sh.notify.notify_waiters();
                        io.write_all(b"250 2.0.0 OK queued as 42\r\n").await?;
                    }
                }
            }
            "RSET" => {
                from = None;
                rcpts.clear();
                io.write_all(b"250 2.0.0 OK\r\n").await?;
            }
            "NOOP" => io.write_all(b"250 2.0.0 OK\r\n").await?,
            "QUIT" => {
                io.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => io.write_all(b"502 5.5.2 unknown command\r\n").await?,
        }
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    let s = String::from_utf8_lossy(&buf);
    Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()))
}
