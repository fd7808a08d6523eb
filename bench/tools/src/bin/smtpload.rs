//! SMTP load generator (plaintext, no AUTH) that records when each message got
//! its 250 after DATA, for accept->upstream latency. Every message carries an
//! `X-Bench-Id:` header the sink records.
//!
//! Usage: smtpload --addr 127.0.0.1:2525 --conns 20 --total 2000 --size 10240
//!   [--reuse] [--out accepts.txt] [--prefix run1]
//!   [--hold] [--per-conn N]   hold mode: open and EHLO all `conns` sessions first,
//!                             print HELD, then each sends `per-conn` messages on
//!                             its connection; then all QUIT.
//! Prints one summary line: `RESULT sent=N errors=E secs=S rate=R`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailbridge_bench_tools::{now_us, Args};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
    line: String,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(8192, r),
            w: BufWriter::with_capacity(64 * 1024, w),
            line: String::new(),
        };
        c.expect('2').await?;
        c.cmd(b"EHLO bench.local\r\n", '2').await?;
        Ok(c)
    }
    /// Reads a (multi-line) reply; error unless its code starts with `want`.
    async fn expect(&mut self, want: char) -> std::io::Result<()> {
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line).await? == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            if self.line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        if !self.line.starts_with(want) {
            return Err(std::io::Error::other(format!(
                "unexpected reply {:?}",
                self.line.trim_end()
            )));
        }
        Ok(())
    }
    async fn cmd(&mut self, c: &[u8], want: char) -> std::io::Result<()> {
        self.w.write_all(c).await?;
        self.w.flush().await?;
        self.expect(want).await
    }
    async fn send(&mut self, id: &str, body: &[u8]) -> std::io::Result<()> {
        self.cmd(b"MAIL FROM:<bench@local.test>\r\n", '2').await?;
        self.cmd(b"RCPT TO:<sink@example.org>\r\n", '2').await?;
        self.cmd(b"DATA\r\n", '3').await?;
        let hdr = format!(
            "From: bench@local.test\r\nTo: sink@example.org\r\nSubject: bench {id}\r\nMessage-ID: <{id}@bench.local>\r\nX-Bench-Id: {id}\r\n\r\n"
        );
        self.w.write_all(hdr.as_bytes()).await?;
        self.w.write_all(body).await?;
        self.w.write_all(b".\r\n").await?;
        self.w.flush().await?;
        self.expect('2').await
    }
}

/// Every connect and every message must finish within 60 s (else it counts as an error).
async fn limit<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out after 60 s")))
}

fn body(size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size + 80);
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    while b.len() + line.len() <= size.max(line.len()) {
        b.extend_from_slice(line);
    }
    b
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let addr = a.str("addr", "127.0.0.1:2525");
    let conns = a.num("conns", 20) as usize;
    let total = a.num("total", 2000) as usize;
    let reuse = a.flag("reuse");
    let hold = a.flag("hold");
    let per_conn = a.num("per-conn", 1) as usize;
    let prefix = a.str("prefix", "m");
    let body = Arc::new(body(a.num("size", 10240) as usize));
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let accepts = Arc::new(Mutex::new(Vec::with_capacity(total.max(conns * per_conn))));
    let first_err = Arc::new(Mutex::new(None::<String>));
    let barrier = Arc::new(Barrier::new(conns + 1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for wi in 0..conns {
        let (addr, body, next, errors, sent, accepts, first_err, barrier, prefix) = (
            addr.clone(),
            body.clone(),
            next.clone(),
            errors.clone(),
            sent.clone(),
            accepts.clone(),
            first_err.clone(),
            barrier.clone(),
            prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let note = |e: std::io::Error| {
                errors.fetch_add(1, Ordering::Relaxed);
                let mut f = first_err.lock().unwrap();
                if f.is_none() {
                    *f = Some(e.to_string());
                }
            };
            if hold {
                // Stagger connects a little so 1,000 SYNs do not all land at once.
                tokio::time::sleep(Duration::from_millis((wi / 50) as u64 * 20)).await;
                let c = limit(Conn::open(&addr)).await;
                barrier.wait().await;
                let mut c = match c {
                    Ok(c) => c,
                    Err(e) => return note(e),
                };
                for k in 0..per_conn {
                    let id = format!("{prefix}-{wi}-{k}");
                    match limit(c.send(&id, &body)).await {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                            accepts.lock().unwrap().push((id, now_us()));
                        }
                        Err(e) => return note(e),
                    }
                }
                if let Err(e) = c.cmd(b"QUIT\r\n", '2').await {
                    note(e)
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis((wi / 50) as u64 * 10)).await;
            let mut conn: Option<Conn> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if conn.is_none() {
                    match limit(Conn::open(&addr)).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            note(e);
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let id = format!("{prefix}-{i}");
                match limit(c.send(&id, &body)).await {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        accepts.lock().unwrap().push((id, now_us()));
                    }
                    Err(e) => {
                        note(e);
                        conn = None;
                        continue;
                    }
                }
                if !reuse {
                    if let Some(mut c) = conn.take() {
                        let _ = c.cmd(b"QUIT\r\n", '2').await;
                    }
                }
            }
            if let Some(mut c) = conn.take() {
                let _ = c.cmd(b"QUIT\r\n", '2').await;
            }
        }));
    }
    let mut t0 = start;
    if hold {
        barrier.wait().await;
        println!("HELD {} secs={:.3}", conns, start.elapsed().as_secs_f64());
        t0 = Instant::now();
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(p) = a.opt("out") {
        let v = accepts.lock().unwrap();
        let mut s = String::with_capacity(v.len() * 24);
        for (id, t) in v.iter() {
            s.push_str(&format!("{id} {t}\n"));
        }
        std::fs::write(p, s).expect("write accepts");
    }
    let n = sent.load(Ordering::Relaxed);
    if let Some(e) = first_err.lock().unwrap().as_ref() {
        eprintln!("first error: {e}");
    }
    println!(
        "RESULT sent={} errors={} secs={:.3} rate={:.1}",
        n,
        errors.load(Ordering::Relaxed),
        secs,
        n as f64 / secs
    );
}
