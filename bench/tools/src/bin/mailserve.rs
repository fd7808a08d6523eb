//! A fast IMAP and POP3 upstream over implicit TLS (rustls, ring): the
//! "own ceiling" peer for the IMAP/POP3 download benchmarks, so that the
//! proxy in front of it, not the mail server, is the bottleneck. One user;
//! a mailbox of `--messages` copies of bench.py's 25 KB message, held in
//! memory with every answer pre-encoded: `FETCH` (any set, any items) sends
//! the whole mailbox as `BODY[]` literals in one write, `RETR n` one
//! message in one write. Also LOGIN, CAPABILITY, SELECT/EXAMINE, NOOP,
//! LOGOUT (IMAP) and USER/PASS, CAPA, STAT, LIST, QUIT (POP3).
//!
//! Usage: mailserve --cert C --key K --user U --pass P [--messages 1000] [--size 25000]
//! Prints `READY <imaps_port> <pop3s_port>` once both listen.

use std::sync::Arc;

use mailbridge_bench_tools::{acceptor, Args};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

struct Mailbox {
    user: String,
    pass: String,
    count: usize,
    /// `* n FETCH (BODY[] {len}\r\n...)\r\n` for every message, concatenated.
    fetch_all: Vec<u8>,
    /// `+OK len octets\r\n` + dot-stuffed body + `.\r\n`, per message.
    retr: Vec<Vec<u8>>,
    /// Sum of the message sizes.
    octets: usize,
}

/// The same message as bench/benchlib.py's `bench_messages`.
fn message(i: usize, size: usize, to: &str) -> Vec<u8> {
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    let mut m = format!(
        "From: sender{i}@example.org\r\nTo: {to}\r\nSubject: message {i}\r\n\
         Message-ID: <{i}@bench>\r\nDate: Thu, 26 Nov 2026 05:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    let reps = size.saturating_sub(m.len()) / line.len();
    for _ in 0..reps {
        m.extend_from_slice(line);
    }
    m
}

fn dot_stuffed(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 16);
    let mut at_line_start = true;
    for &b in m {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

impl Mailbox {
    fn new(user: String, pass: String, count: usize, size: usize) -> Mailbox {
        let (mut fetch_all, mut retr, mut octets) = (Vec::new(), Vec::new(), 0);
        for i in 1..=count {
            let m = message(i, size, &user);
            octets += m.len();
            fetch_all
                .extend_from_slice(format!("* {i} FETCH (BODY[] {{{}}}\r\n", m.len()).as_bytes());
            fetch_all.extend_from_slice(&m);
            fetch_all.extend_from_slice(b")\r\n");
            let mut r = format!("+OK {} octets\r\n", m.len()).into_bytes();
            r.extend_from_slice(&dot_stuffed(&m));
            r.extend_from_slice(b".\r\n");
            retr.push(r);
        }
        Mailbox {
            user,
            pass,
            count,
            fetch_all,
            retr,
            octets,
        }
    }
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let tls = acceptor(&a);
    let mb = Arc::new(Mailbox::new(
        a.str("user", "user"),
        a.str("pass", "pass"),
        a.num("messages", 1000) as usize,
        a.num("size", 25000) as usize,
    ));
    let imap = TcpListener::bind("127.0.0.1:0").await.expect("bind imap");
    let pop3 = TcpListener::bind("127.0.0.1:0").await.expect("bind pop3");
    println!(
        "READY {} {}",
        imap.local_addr().expect("addr").port(),
        pop3.local_addr().expect("addr").port()
    );
    let (t2, m2) = (tls.clone(), mb.clone());
    tokio::spawn(serve(pop3, t2, m2, true));
    serve(imap, tls, mb, false).await;
}

async fn serve(l: TcpListener, tls: tokio_rustls::TlsAcceptor, mb: Arc<Mailbox>, pop3: bool) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let (tls, mb) = (tls.clone(), mb.clone());
        tokio::spawn(async move {
            if let Ok(s) = tls.accept(s).await {
                let mut s = BufReader::with_capacity(16 * 1024, s);
                let _ = if pop3 {
                    pop3_session(&mut s, &mb).await
                } else {
                    imap_session(&mut s, &mb).await
                };
                let _ = s.get_mut().shutdown().await;
            }
        });
    }
}

type Io<S> = BufReader<S>;

async fn read_line<S: AsyncRead + Unpin>(
    s: &mut Io<S>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    Ok(s.read_until(b'\n', line).await? > 0)
}

/// Writes `out` and flushes once no pipelined command is waiting.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Io<S>,
    out: &[u8],
) -> std::io::Result<()> {
    s.get_mut().write_all(out).await?;
    if s.buffer().is_empty() {
        s.get_mut().flush().await?;
    }
    Ok(())
}

/// An atom or a quoted string at the start of `i`; the rest after one space.
fn astring(i: &str) -> (String, &str) {
    if let Some(q) = i.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((k, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => return (out, q[k + 1..].trim_start()),
                c => out.push(c),
            }
        }
        (out, "")
    } else {
        let end = i.find(' ').unwrap_or(i.len());
        (i[..end].to_string(), i[end..].trim_start())
    }
}

async fn imap_session<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Io<S>,
    mb: &Mailbox,
) -> std::io::Result<()> {
    answer(
        s,
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] mailserve ready\r\n",
    )
    .await?;
    let mut line = Vec::new();
    let mut logged_in = false;
    while read_line(s, &mut line).await? {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let (tag, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let (cmd, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let out = match cmd.to_ascii_uppercase().as_str() {
            "CAPABILITY" => format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK CAPABILITY completed\r\n"),
            "LOGIN" => {
                let (u, rest) = astring(args);
                let (p, _) = astring(rest);
                logged_in = u == mb.user && p == mb.pass;
                if logged_in {
                    format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
                } else {
                    format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                }
            }
            "SELECT" | "EXAMINE" if logged_in => format!(
                "* FLAGS (\\Seen)\r\n* {} EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n\
                 {tag} OK [READ-WRITE] SELECT completed\r\n",
                mb.count
            ),
            "FETCH" if logged_in => {
                s.get_mut().write_all(&mb.fetch_all).await?;
                format!("{tag} OK FETCH completed\r\n")
            }
            "LOGOUT" => {
                answer(s, format!("* BYE logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes()).await?;
                return Ok(());
            }
            _ if !logged_in => format!("{tag} BAD log in first\r\n"),
            _ => format!("{tag} OK done\r\n"),
        };
        answer(s, out.as_bytes()).await?;
    }
    Ok(())
}

async fn pop3_session<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Io<S>,
    mb: &Mailbox,
) -> std::io::Result<()> {
    answer(s, b"+OK mailserve ready\r\n").await?;
    let mut line = Vec::new();
    let (mut user, mut logged_in) = (String::new(), false);
    while read_line(s, &mut line).await? {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let (cmd, arg) = text.split_once(' ').unwrap_or((&text, ""));
        let cmd = cmd.to_ascii_uppercase();
        if logged_in && cmd == "RETR" {
            match arg
                .parse::<usize>()
                .ok()
                .and_then(|n| mb.retr.get(n.wrapping_sub(1)))
            {
                Some(r) => answer(s, r).await?,
                None => answer(s, b"-ERR no such message\r\n").await?,
            }
            continue;
        }
        let out = match cmd.as_str() {
            "CAPA" => "+OK\r\nUSER\r\n.\r\n".to_string(),
            "USER" => {
                user = arg.to_string();
                "+OK\r\n".to_string()
            }
            "PASS" => {
                logged_in = user == mb.user && arg == mb.pass;
                if logged_in {
                    "+OK Logged in.\r\n"
                } else {
                    "-ERR [AUTH] Authentication failed.\r\n"
                }
                .to_string()
            }
            "STAT" if logged_in => format!("+OK {} {}\r\n", mb.count, mb.octets),
            "LIST" if logged_in => {
                let mut o = format!("+OK {} messages\r\n", mb.count);
                for (i, r) in mb.retr.iter().enumerate() {
                    o.push_str(&format!("{} {}\r\n", i + 1, r.len()));
                }
                o + ".\r\n"
            }
            "QUIT" => {
                answer(s, b"+OK Logging out.\r\n").await?;
                return Ok(());
            }
            _ if !logged_in => "-ERR log in first\r\n".to_string(),
            _ => "+OK\r\n".to_string(),
        };
        answer(s, out.as_bytes()).await?;
    }
    Ok(())
}
