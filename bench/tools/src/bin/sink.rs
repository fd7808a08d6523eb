//! A fast SMTP sink with implicit TLS and AUTH PLAIN/LOGIN (one user): the
//! upstream for the end-to-end benchmarks. Records, per message, the value of
//! its `X-Bench-Id:` header and the receipt time (end of DATA). A plain-TCP
//! control port answers `COUNT` (messages, bytes, TLS sessions), `DUMP <path>` (writes "id t_us" lines) and `RESET`.
//!
//! Usage: sink --cert C --key K --user U --pass P [--port 0] [--ctl-port 0]
//! Prints `READY <smtp_port> <ctl_port>` once both listen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use mailbridge_bench_tools::{acceptor, now_us, Args};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;

struct State {
    user: String,
    pass: String,
    count: AtomicU64,
    bytes: AtomicU64,
    /// TLS sessions accepted (how well a client reuses its upstream connections).
    conns: AtomicU64,
    receipts: Mutex<Vec<(String, u64)>>,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let tls = acceptor(&a);
    let st = Arc::new(State {
        user: a.str("user", "user"),
        pass: a.str("pass", "pass"),
        count: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        conns: AtomicU64::new(0),
        receipts: Mutex::new(Vec::with_capacity(100_000)),
    });
    // A deep backlog (std's default is 128) so bursts of connects are not dropped.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(([127, 0, 0, 1], a.num("port", 0) as u16).into())
        .expect("bind");
    let l = sock.listen(4096).expect("listen");
    let c = TcpListener::bind(("127.0.0.1", a.num("ctl-port", 0) as u16))
        .await
        .expect("bind ctl");
    println!(
        "READY {} {}",
        l.local_addr().unwrap().port(),
        c.local_addr().unwrap().port()
    );
    let st2 = st.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = c.accept().await {
            let st = st2.clone();
            tokio::spawn(async move {
                let _ = control(s, st).await;
            });
        }
    });
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let tls = tls.clone();
        let st = st.clone();
        tokio::spawn(async move {
            if let Ok(s) = tls.accept(s).await {
                st.conns.fetch_add(1, Ordering::Relaxed);
                let _ = session(s, st).await;
            }
        });
    }
}

async fn control(s: tokio::net::TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let line = line.trim();
    let reply = if line == "COUNT" {
        format!(
            "{} {} {}\n",
            st.count.load(Ordering::Relaxed),
            st.bytes.load(Ordering::Relaxed),
            st.conns.load(Ordering::Relaxed)
        )
    } else if let Some(path) = line.strip_prefix("DUMP ") {
        let v = st.receipts.lock().unwrap().clone();
        let mut out = String::with_capacity(v.len() * 24);
        for (id, t) in &v {
            out.push_str(&format!("{id} {t}\n"));
        }
        std::fs::write(path, out)?;
        format!("OK {}\n", v.len())
    } else if line == "RESET" {
        st.receipts.lock().unwrap().clear();
        st.count.store(0, Ordering::Relaxed);
        st.bytes.store(0, Ordering::Relaxed);
        st.conns.store(0, Ordering::Relaxed);
        "OK\n".into()
    } else {
        "ERR\n".into()
    };
    w.write_all(reply.as_bytes()).await
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default()
}

async fn session<S>(s: S, st: Arc<State>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (r, w) = tokio::io::split(s);
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut w = BufWriter::with_capacity(16 * 1024, w);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    w.flush().await?;
    let mut authed = false;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("");
        match verb {
            "EHLO" => w.write_all(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 AUTH PLAIN LOGIN\r\n").await?,
            "HELO" => w.write_all(b"250 sink\r\n").await?,
            "AUTH" => {
                let parts: Vec<&str> = text.split_whitespace().collect();
                let mech = parts.get(1).map(|m| m.to_ascii_uppercase()).unwrap_or_default();
                let ok = if mech == "PLAIN" {
                    let ir = match parts.get(2) {
                        Some(ir) => ir.to_string(),
                        None => {
                            w.write_all(b"334 \r\n").await?;
                            w.flush().await?;
                            read_line(&mut r).await?
                        }
                    };
                    let d = b64(&ir);
                    let f: Vec<&[u8]> = d.split(|b| *b == 0).collect();
                    f.len() == 3 && f[1] == st.user.as_bytes() && f[2] == st.pass.as_bytes()
                } else if mech == "LOGIN" {
                    let u = match parts.get(2) {
                        Some(u) => u.to_string(),
                        None => {
                            w.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                            w.flush().await?;
                            read_line(&mut r).await?
                        }
                    };
                    w.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                    w.flush().await?;
                    let p = read_line(&mut r).await?;
                    b64(&u) == st.user.as_bytes() && b64(&p) == st.pass.as_bytes()
                } else {
                    false
                };
                authed = ok;
                if ok {
                    w.write_all(b"235 2.7.0 ok\r\n").await?
                } else {
                    w.write_all(b"535 5.7.8 bad credentials\r\n").await?
                }
            }
            "MAIL" if !authed => w.write_all(b"530 5.7.0 auth first\r\n").await?,
            "MAIL" | "RCPT" | "RSET" | "NOOP" => w.write_all(b"250 ok\r\n").await?,
            "DATA" => {
                w.write_all(b"354 go\r\n").await?;
                w.flush().await?;
                let mut id = String::new();
                let mut in_headers = true;
                let mut size = 0u64;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    size += line.len() as u64;
                    if in_headers {
                        if line == b"\r\n" || line == b"\n" {
                            in_headers = false;
                        } else if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"x-bench-id:") {
                            id = String::from_utf8_lossy(&line[11..]).trim().to_string();
                        }
                    }
                }
                let t = now_us();
                st.count.fetch_add(1, Ordering::Relaxed);
                st.bytes.fetch_add(size, Ordering::Relaxed);
                if !id.is_empty() {
                    st.receipts.lock().unwrap().push((id, t));
                }
                w.write_all(b"250 2.0.0 queued\r\n").await?
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                w.flush().await?;
                return Ok(());
            }
            _ => w.write_all(b"502 5.5.1 unknown\r\n").await?,
        }
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut s = String::new();
    r.read_line(&mut s).await?;
    Ok(s.trim_end().to_string())
}
