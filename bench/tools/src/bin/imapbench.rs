//! IMAP client for the benchmarks, plaintext or implicit TLS:
//!   download --addr A [--tls --ca CA] --user U --pass P [--runs 3] [--repeat 1]
//!       LOGIN, SELECT INBOX, `repeat` x `FETCH 1:* BODY.PEEK[]`; prints per run
//!       `RUN msgs=N bytes=B secs=S mbps=X` (literal bytes / time from first FETCH to last OK).
//!   logins --addr A [--tls --ca CA] --user U --pass P [--conns 8] [--secs 10]
//!       connect, LOGIN, LOGOUT in a loop; prints `RESULT ok=N errors=E secs=S rate=R`.
//!   idle --addr A [--tls --ca CA] --user U --pass P --conns 2000
//!       opens and logs in `conns` sessions (50 at a time), prints `HELD ok=N errors=E`,
//!       then on stdin `CHECK` sends NOOP on each (prints `CHECK ok=N errors=E`);
//!       stdin EOF or `QUIT` ends it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbridge_bench_tools::{client_config, server_name, Args};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Target {
    addr: String,
    tls: Option<(tokio_rustls::TlsConnector, String)>,
    user: String,
    pass: String,
}

struct Session {
    s: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
    tag: u64,
}

impl Session {
    async fn connect(t: &Target) -> std::io::Result<Session> {
        let tcp = TcpStream::connect(&t.addr).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &t.tls {
            Some((c, host)) => Box::new(c.connect(server_name(host), tcp).await?),
            None => Box::new(tcp),
        };
        let mut s = Session {
            s: BufReader::with_capacity(256 * 1024, io),
            line: Vec::with_capacity(4096),
            tag: 0,
        };
        s.read_line().await?;
        if !s.line.starts_with(b"* OK") {
            return Err(std::io::Error::other(format!(
                "greeting {:?}",
                String::from_utf8_lossy(&s.line)
            )));
        }
        Ok(s)
    }
    async fn read_line(&mut self) -> std::io::Result<()> {
        self.line.clear();
        if self.s.read_until(b'\n', &mut self.line).await? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        Ok(())
    }
    /// Sends a command and reads to its tagged reply; returns (literal bytes, FETCH responses).
    async fn command(&mut self, cmd: &str) -> std::io::Result<(u64, u64)> {
        self.tag += 1;
        let tag = format!("a{} ", self.tag);
        self.s
            .get_mut()
            .write_all(format!("{tag}{cmd}\r\n").as_bytes())
            .await?;
        self.s.get_mut().flush().await?;
        let (mut lit, mut fetches) = (0u64, 0u64);
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            self.read_line().await?;
            if self.line.starts_with(b"* ") && memfind(&self.line, b" FETCH ") {
                fetches += 1;
            }
            // A line ending in {n}\r\n is followed by n bytes, then the rest of the line.
            while let Some(n) = literal_len(&self.line) {
                lit += n;
                let mut left = n as usize;
                while left > 0 {
                    let k = left.min(sink.len());
                    self.s.read_exact(&mut sink[..k]).await?;
                    left -= k;
                }
                self.read_line().await?;
            }
            if self.line.starts_with(tag.as_bytes()) {
                let rest = &self.line[tag.len()..];
                if rest.starts_with(b"OK") {
                    return Ok((lit, fetches));
                }
                return Err(std::io::Error::other(format!(
                    "{cmd}: {}",
                    String::from_utf8_lossy(&self.line).trim_end()
                )));
            }
        }
    }
    async fn login(&mut self, t: &Target) -> std::io::Result<()> {
        self.command(&format!("LOGIN \"{}\" \"{}\"", t.user, t.pass))
            .await
            .map(|_| ())
    }
}

fn memfind(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

fn literal_len(line: &[u8]) -> Option<u64> {
    let l = line.strip_suffix(b"\r\n").unwrap_or(line);
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&l[open + 1..]).ok()?.parse().ok()
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let tls = if a.flag("tls") {
        let cfg = client_config(a.str("ca", "ca.pem").as_ref());
        Some((
            tokio_rustls::TlsConnector::from(cfg),
            a.str("host", "127.0.0.1"),
        ))
    } else {
        None
    };
    let t = Arc::new(Target {
        addr: a.str("addr", "127.0.0.1:1143"),
        tls,
        user: a.str("user", "bench"),
        pass: a.str("pass", "bench"),
    });
    match a.str("_cmd", "").as_str() {
        "download" => download(&t, a.num("runs", 3), a.num("repeat", 1)).await,
        "logins" => logins(t, a.num("conns", 8), a.num("secs", 10)).await,
        "idle" => idle(t, a.num("conns", 2000)).await,
        other => {
            eprintln!("unknown mode {other:?}: download | logins | idle");
            std::process::exit(2);
        }
    }
}

async fn download(t: &Target, runs: u64, repeat: u64) {
    for _ in 0..runs {
        let mut s = Session::connect(t).await.expect("connect");
        s.login(t).await.expect("login");
        s.command("SELECT INBOX").await.expect("select");
        let t0 = Instant::now();
        let (mut bytes, mut msgs) = (0, 0);
        for _ in 0..repeat.max(1) {
            let (b, m) = s.command("FETCH 1:* BODY.PEEK[]").await.expect("fetch");
            bytes += b;
            msgs = m;
        }
        let secs = t0.elapsed().as_secs_f64();
        let _ = s.command("LOGOUT").await;
        println!(
            "RUN msgs={msgs} bytes={bytes} secs={secs:.4} mbps={:.1}",
            bytes as f64 / secs / 1e6
        );
    }
}

async fn logins(t: Arc<Target>, conns: u64, secs: u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (t, ok, errors) = (t.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = async {
                    let mut s = Session::connect(&t).await?;
                    s.login(&t).await?;
                    s.command("LOGOUT").await
                }
                .await;
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {e}");
                        }
                        0
                    }
                };
            }
        }));
    }
    for x in tasks {
        let _ = x.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "RESULT ok={n} errors={} secs={secs:.3} rate={:.1}",
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
}

async fn idle(t: Arc<Target>, conns: u64) {
    let sem = Arc::new(Semaphore::new(50));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for _ in 0..conns {
        let (t, sem) = (t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let mut s = Session::connect(&t).await?;
            s.login(&t).await?;
            Ok::<Session, std::io::Error>(s)
        }));
    }
    let mut held = Vec::new();
    let mut errors = 0u64;
    for x in tasks {
        match x.await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => {
                if errors == 0 {
                    eprintln!("first error: {e}");
                }
                errors += 1
            }
            Err(_) => errors += 1,
        }
    }
    println!(
        "HELD ok={} errors={errors} secs={:.2}",
        held.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut cmd = String::new();
    loop {
        cmd.clear();
        if stdin.read_line(&mut cmd).await.unwrap_or(0) == 0 || cmd.trim() == "QUIT" {
            break;
        }
        if cmd.trim() == "CHECK" {
            let (mut ok, mut bad) = (0u64, 0u64);
            for s in held.iter_mut() {
                match s.command("NOOP").await {
                    Ok(_) => ok += 1,
                    Err(_) => bad += 1,
                }
            }
            println!("CHECK ok={ok} errors={bad}");
        }
    }
}
