//! An in-process IMAP test upstream over real TLS (implicit, or STARTTLS on
//! a plain connection). It accepts one username/password, records every
//! LOGIN command exactly as received, counts connections, and serves a tiny
//! fixed mailbox (three messages, the third large) for SELECT/FETCH, plus
//! NOOP, IDLE/DONE, LIST (optionally with a `\Sent` mailbox) and LOGOUT, and
//! records every command after login; anything else gets a tagged OK. `FETCH 99`
//! makes it drop the connection in the middle of a literal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use base64::Engine;

use super::ca::ServerCert;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Implicit,
    Starttls,
}

/// Size of message 3 (the large one).
pub const BIG_SIZE: usize = 5 * 1024 * 1024;
/// Capabilities in the tagged LOGIN OK.
pub const POST_LOGIN_CAPS: &str = "IMAP4rev1 IDLE UIDPLUS MOVE X-TEST-UPSTREAM";

/// The fixed messages, 1-based.
pub fn message(n: usize) -> Vec<u8> {
    match n {
        1 => b"From: a@example.com\r\nSubject: one\r\n\r\nHello one\r\n".to_vec(),
        2 => "From: b@example.com\r\nSubject: two\r\n\r\nHall\u{f6}chen {zwei} \"quoted\"\r\n"
            .as_bytes()
            .to_vec(),
        _ => {
            let mut v = b"From: c@example.com\r\nSubject: big\r\n\r\n".to_vec();
            let mut i = 0u64;
            while v.len() < BIG_SIZE - 80 {
                v.extend_from_slice(
                    format!(
                        "line {i:08} {:x} the quick brown fox jumps over\r\n",
                        i * 2654435761
                    )
                    .as_bytes(),
                );
                i += 1;
            }
            v.resize(BIG_SIZE - 2, b'x');
            v.extend_from_slice(b"\r\n");
            v
        }
    }
}

#[derive(Default)]
pub struct Shared {
    /// Every LOGIN command as received (literals inline).
    pub logins: Mutex<Vec<Vec<u8>>>,
    /// Connections accepted so far.
    pub connections: AtomicUsize,
    /// Connections open now.
    pub active: AtomicUsize,
    /// Signalled on every accept, login and close.
    pub changed: Notify,
    /// Every command after login as received (literals inline).
    pub commands: Mutex<Vec<Vec<u8>>>,
    /// If set, LIST names this mailbox with the `\Sent` special-use flag.
    pub sent_mailbox: Mutex<Option<String>>,
    /// The greeting offers `AUTH=XOAUTH2 SASL-IR` (AUTHENTICATE XOAUTH2 is
    /// always accepted, with the configured password as the bearer token).
    pub sasl_ir: AtomicBool,
}

pub struct ImapUpstream {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImapUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Config {
    username: String,
    password: String,
    mode: Mode,
    /// Send capabilities as untagged `* CAPABILITY` instead of a response code.
    untagged_caps: bool,
    big: Arc<Vec<u8>>,
}

impl ImapUpstream {
    pub async fn start(cert: &ServerCert, username: &str, password: &str) -> ImapUpstream {
        Self::start_with(cert, username, password, Mode::Implicit, false).await
    }

    pub async fn start_with(
        cert: &ServerCert,
        username: &str,
        password: &str,
        mode: Mode,
        untagged_caps: bool,
    ) -> ImapUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = cert.acceptor();
        let config = Arc::new(Config {
            username: username.into(),
            password: password.into(),
            mode,
            untagged_caps,
            big: Arc::new(message(3)),
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
        ImapUpstream { addr, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn logins(&self) -> Vec<Vec<u8>> {
        self.shared.logins.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
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
            let extra = if sh.sasl_ir.load(Ordering::SeqCst) {
                " AUTH=XOAUTH2 SASL-IR"
            } else {
                ""
            };
            s.write_all(
                format!("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN{extra}] test upstream ready\r\n")
                    .as_bytes(),
            )
            .await?;
            s.flush().await?;
            session(&mut s, config, sh).await
        }
        Mode::Starttls => {
            let mut plain = BufReader::new(tcp);
            plain
                .write_all(
                    b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] plain test upstream\r\n",
                )
                .await?;
            loop {
                let line = read_line(&mut plain).await?;
                let (tag, rest) = split_tag(&line);
                if rest.eq_ignore_ascii_case(b"STARTTLS\r\n") {
                    plain
                        .write_all(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes())
                        .await?;
                    break;
                }
                if rest.len() >= 5 && rest[..5].eq_ignore_ascii_case(b"LOGIN") {
                    sh.logins.lock().unwrap().push(line.clone());
                    sh.changed.notify_waiters();
                }
                plain
                    .write_all(format!("{tag} BAD STARTTLS first\r\n").as_bytes())
                    .await?;
            }
            let tls = acceptor.accept(plain.into_inner()).await?;
            let mut s = BufReader::new(tls);
            session(&mut s, config, sh).await
        }
    }
}

async fn read_line<S: AsyncBufRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if s.read_until(b'\n', &mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line)
}

fn split_tag(line: &[u8]) -> (String, &[u8]) {
    let sp = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    (
        String::from_utf8_lossy(&line[..sp]).into_owned(),
        line.get(sp + 1..).unwrap_or(b""),
    )
}

/// Reads a command with its literals (answering `+` to synchronising ones).
async fn read_command<S: AsyncBufRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut cmd = Vec::new();
    loop {
        let line = read_line(s).await?;
        cmd.extend_from_slice(&line);
        let Some(body) = line.strip_suffix(b"}\r\n") else {
            return Ok(cmd);
        };
        let Some(open) = body.iter().rposition(|b| *b == b'{') else {
            return Ok(cmd);
        };
        let inner = &body[open + 1..];
        let (digits, sync) = match inner.strip_suffix(b"+") {
            Some(d) => (d, false),
            None => (inner, true),
        };
        let Ok(n) = std::str::from_utf8(digits).unwrap_or("x").parse::<usize>() else {
            return Ok(cmd);
        };
        if sync {
            s.write_all(b"+ go ahead\r\n").await?;
            s.flush().await?;
        }
        let mut data = vec![0; n];
        s.read_exact(&mut data).await?;
        cmd.extend_from_slice(&data);
    }
}

/// Parses one astring (atom, quoted, literal) at the start of `i`.
pub fn parse_astring(i: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    match i.first()? {
        b'"' => {
            let mut out = Vec::new();
            let mut k = 1;
            loop {
                match *i.get(k)? {
                    b'"' => return Some((out, &i[k + 1..])),
                    b'\\' => {
                        out.push(*i.get(k + 1)?);
                        k += 2;
                    }
                    c => {
                        out.push(c);
                        k += 1;
                    }
                }
            }
        }
        b'{' => {
            let close = i.iter().position(|b| *b == b'}')?;
            let n: usize = std::str::from_utf8(&i[1..close])
                .ok()?
                .trim_end_matches('+')
                .parse()
                .ok()?;
            let data = i.get(close + 3..close + 3 + n)?;
            Some((data.to_vec(), &i[close + 3 + n..]))
        }
        _ => {
            let end = i
                .iter()
                .position(|b| *b == b' ' || *b == b'\r')
                .unwrap_or(i.len());
            Some((i[..end].to_vec(), &i[end..]))
        }
    }
}

fn parse_login(rest: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let rest = rest.get(6..)?; // "LOGIN "
    let (user, rest) = parse_astring(rest)?;
    let (pass, rest) = parse_astring(rest.strip_prefix(b" ")?)?;
    (rest == b"\r\n").then_some((user, pass))
}

async fn session<S: AsyncBufRead + AsyncWrite + Unpin>(
    s: &mut S,
    config: &Config,
    sh: &Shared,
) -> std::io::Result<()> {
    let mut logged_in = false;
    loop {
        let cmd = read_command(s).await?;
        if logged_in {
            sh.commands.lock().unwrap().push(cmd.clone());
            sh.changed.notify_waiters();
        }
        let (tag, rest) = split_tag(&cmd);
        let upper = String::from_utf8_lossy(rest).to_ascii_uppercase();
        let word = upper.split([' ', '\r']).next().unwrap_or("").to_string();
        match word.as_str() {
            "CAPABILITY" => {
                s.write_all(
                    format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n").as_bytes(),
                )
                .await?;
            }
            "AUTHENTICATE" if upper.starts_with("AUTHENTICATE XOAUTH2") => {
                sh.logins.lock().unwrap().push(cmd.clone());
                sh.changed.notify_waiters();
                let inline = String::from_utf8_lossy(rest)
                    .trim_end()
                    .split(' ')
                    .nth(2)
                    .map(str::to_string);
                let response = match inline {
                    Some(r) => r,
                    None => {
                        s.write_all(b"+ \r\n").await?;
                        s.flush().await?;
                        String::from_utf8_lossy(&read_line(s).await?)
                            .trim()
                            .to_string()
                    }
                };
                let expected = format!(
                    "user={}\x01auth=Bearer {}\x01\x01",
                    config.username, config.password
                );
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(response.as_bytes())
                    .unwrap_or_default();
                if decoded == expected.as_bytes() {
                    logged_in = true;
                    s.write_all(
                        format!("{tag} OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in\r\n").as_bytes(),
                    )
                    .await?;
                } else {
                    // Gmail's answer to a bad token: a JSON challenge, then NO.
                    let challenge = base64::engine::general_purpose::STANDARD.encode(
                        r#"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#,
                    );
                    s.write_all(format!("+ {challenge}\r\n").as_bytes()).await?;
                    s.flush().await?;
                    let _ = read_line(s).await?;
                    s.write_all(
                        format!(
                            "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"
                        )
                        .as_bytes(),
                    )
                    .await?;
                }
            }
            "LOGIN" => {
                sh.logins.lock().unwrap().push(cmd.clone());
                sh.changed.notify_waiters();
                let ok = parse_login(rest).is_some_and(|(u, p)| {
                    u == config.username.as_bytes() && p == config.password.as_bytes()
                });
                if ok {
                    logged_in = true;
                    if config.untagged_caps {
                        s.write_all(
                            format!("* CAPABILITY {POST_LOGIN_CAPS}\r\n{tag} OK Logged in\r\n")
                                .as_bytes(),
                        )
                        .await?;
                    } else {
                        s.write_all(
                            format!("{tag} OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in\r\n")
                                .as_bytes(),
                        )
                        .await?;
                    }
                } else {
                    s.write_all(
                        format!(
                            "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"
                        )
                        .as_bytes(),
                    )
                    .await?;
                }
            }
            "SELECT" | "EXAMINE" if logged_in => {
                s.write_all(
                    format!(
                        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n\
                         * OK [UIDVALIDITY 42] UIDs valid\r\n* OK [UIDNEXT 4] Predicted next UID\r\n\
                         {tag} OK [READ-WRITE] {word} completed\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            }
            "FETCH" if logged_in && upper.starts_with("FETCH 99 ") => {
                // Dies mid-response: half a literal, then the TCP connection
                // goes away without a TLS close_notify.
                s.write_all(b"* 99 FETCH (RFC822 {1000}\r\nonly the first bytes")
                    .await?;
                s.flush().await?;
                return Ok(());
            }
            "FETCH" if logged_in => {
                let set = upper.split(' ').nth(1).unwrap_or("");
                let body_item = if upper.contains("BODY[]") || upper.contains("BODY.PEEK[]") {
                    "BODY[]"
                } else {
                    "RFC822"
                };
                for n in 1..=3usize {
                    if !in_set(set, n) {
                        continue;
                    }
                    let body = if n == 3 {
                        config.big.as_ref().clone()
                    } else {
                        message(n)
                    };
                    s.write_all(
                        format!("* {n} FETCH (UID {n} {body_item} {{{}}}\r\n", body.len())
                            .as_bytes(),
                    )
                    .await?;
                    s.write_all(&body).await?;
                    s.write_all(b")\r\n").await?;
                }
                s.write_all(format!("{tag} OK FETCH completed\r\n").as_bytes())
                    .await?;
            }
            "LIST" if logged_in => {
                let sent = sh.sent_mailbox.lock().unwrap().clone();
                let mut r = "* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n".to_string();
                if let Some(name) = sent {
                    r.push_str(&format!(
                        "* LIST (\\HasNoChildren \\Sent) \"/\" \"{name}\"\r\n"
                    ));
                }
                r.push_str(&format!("{tag} OK LIST completed\r\n"));
                s.write_all(r.as_bytes()).await?;
            }
            "IDLE" if logged_in => {
                s.write_all(b"+ idling\r\n").await?;
                s.flush().await?;
                let done = read_line(s).await?;
                if done.eq_ignore_ascii_case(b"DONE\r\n") {
                    s.write_all(format!("{tag} OK IDLE terminated\r\n").as_bytes())
                        .await?;
                } else {
                    s.write_all(format!("{tag} BAD expected DONE\r\n").as_bytes())
                        .await?;
                }
            }
            "LOGOUT" => {
                s.write_all(
                    format!("* BYE test upstream logging out\r\n{tag} OK LOGOUT completed\r\n")
                        .as_bytes(),
                )
                .await?;
                s.flush().await?;
                s.shutdown().await?;
                return Ok(());
            }
            _ if !logged_in && word != "NOOP" => {
                s.write_all(format!("{tag} BAD log in first\r\n").as_bytes())
                    .await?;
            }
            _ => {
                s.write_all(format!("{tag} OK {word} completed\r\n").as_bytes())
                    .await?;
            }
        }
        s.flush().await?;
    }
}

fn in_set(set: &str, n: usize) -> bool {
    set.split(',').any(|part| match part.split_once(':') {
        Some((a, b)) => {
            let lo = a.parse().unwrap_or(1);
            let hi = if b == "*" {
                usize::MAX
            } else {
                b.parse().unwrap_or(0)
            };
            (lo..=hi).contains(&n)
        }
        None => part == "*" && n == 3 || part.parse() == Ok(n),
    })
}
