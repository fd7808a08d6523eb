//! Upstream faults the existing delivery/IMAP tests do not cover: a real
//! outage (connection refused) while 200 messages are accepted over SMTP,
//! then recovery; dropped connections, 421, expired and wrong-name
//! certificates (deferred with a clear reason, AUTH never sent); an
//! unreachable IMAP upstream answered with `NO [UNAVAILABLE]` quickly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::ca::{ServerCert, TestCa};
use crate::support::config::{user, Account};
use crate::support::daemon::{start, TestDaemon};
use crate::support::delivery::{config, eventually, feed, Opts, PASSWORD, USER};
use crate::support::smtp::Smtp;
use crate::support::smtp_upstream::{Mode, SmtpUpstream, FORGED_AFTER_STARTTLS};
use mailbridge::spool::{EntryState, QueueEntry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Forwards every connection on `port` to `to` (the upstream coming back).
async fn forward(port: u16, to: SocketAddr) {
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
}

/// A server that accepts and, after sending `first` (maybe nothing), closes.
async fn rude_server(first: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(first).await;
            drop(s);
        }
    });
    port
}

async fn first_attempt(d: &TestDaemon, id: &mailbridge::spool::QueueId) -> QueueEntry {
    let spool = &d.daemon.context.spool;
    eventually("a first attempt", WAIT, || async {
        spool.entry(id).ok().filter(|e| e.attempts >= 1)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_while_200_accepted_then_all_delivered_in_order() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let port = closed_port().await;
    let mut o = Opts::new(port, "implicit", &ca.ca_file);
    o.delivery_extra = "concurrency = 1";
    let d = start(&config(&o)).await;
    let (mut c, _) = Smtp::connect(d.smtp_addr()).await.unwrap();
    c.cmd("EHLO outage").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..200 {
        let body = format!("Message-ID: <o{n}@outage.test>\r\n\r\nn{n}\r\n");
        let r = c.mail("to@example.org", body.as_bytes()).await.unwrap();
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
        ids.push(mailbridge::spool::QueueId(
            r.trim_end().rsplit(' ').next().unwrap().into(),
        ));
    }
    c.cmd("QUIT").await;
    let e = first_attempt(&d, &ids[0]).await;
    assert_eq!(e.state, EntryState::Deferred);
    let why = e.last_error.unwrap_or_default();
    assert!(
        why.to_lowercase().contains("refused"),
        "unclear reason: {why}"
    );
    assert!(up.received().is_empty());

    forward(port, up.addr).await; // the upstream is back
    let got = up.wait_for(200, Duration::from_secs(60)).await;
    let order: Vec<String> = got
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.data)
                .lines()
                .last()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (0..200).map(|n| format!("n{n}")).collect();
    assert_eq!(order, expected, "delivered in order of acceptance");
    let spool = &d.daemon.context.spool;
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
    assert!(spool.list_failed().unwrap().is_empty(), "none failed");
    d.stop().await;
}

/// Each fault: the message is deferred (not failed), the reason says what
/// happened, and the upstream never saw AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_defer_with_a_clear_reason_and_no_auth() {
    let ca = TestCa::new();
    struct Fault {
        name: &'static str,
        port: u16,
        up: Option<SmtpUpstream>,
        tls: &'static str,
        reason: &'static [&'static str],
    }
    async fn tls_up(cert: &ServerCert, mode: Mode) -> SmtpUpstream {
        SmtpUpstream::start(cert, mode, USER, PASSWORD).await
    }
    let mut faults = Vec::new();
    let up = tls_up(&ca.server_cert(), Mode::Starttls).await;
    up.script().greeting = Some("421 4.7.0 try again later".into());
    faults.push(Fault {
        name: "421 greeting",
        port: up.port(),
        up: Some(up),
        tls: "starttls",
        reason: &["421 4.7.0"],
    });
    faults.push(Fault {
        name: "dropped at once (implicit TLS)",
        port: rude_server(b"").await,
        up: None,
        tls: "implicit",
        reason: &["closed", "eof", "reset"],
    });
    faults.push(Fault {
        name: "dropped after the greeting",
        port: rude_server(b"220 hi\r\n").await,
        up: None,
        tls: "starttls",
        reason: &["closed", "eof"],
    });
    let up = tls_up(&ca.expired_cert(), Mode::Implicit).await;
    faults.push(Fault {
        name: "expired certificate",
        port: up.port(),
        up: Some(up),
        tls: "implicit",
        reason: &["expired"],
    });
    let up = tls_up(&ca.wrong_name_cert(), Mode::Starttls).await;
    faults.push(Fault {
        name: "wrong-name certificate",
        port: up.port(),
        up: Some(up),
        tls: "starttls",
        reason: &["name"],
    });

    let mut problems = Vec::new();
    for f in &faults {
        let d = start(&config(&Opts::new(f.port, f.tls, &ca.ca_file))).await;
        let id = feed(&d, &["a@example.org"], b"fault\r\n").await;
        let e = first_attempt(&d, &id).await;
        let why = e.last_error.clone().unwrap_or_default();
        let lower = why.to_lowercase();
        if e.state != EntryState::Deferred {
            problems.push(format!("{}: state {:?} ({why})", f.name, e.state));
        }
        if !f.reason.iter().any(|r| lower.contains(r)) {
            problems.push(format!(
                "{}: reason {why:?} does not say {:?}",
                f.name, f.reason
            ));
        }
        if let Some(up) = &f.up {
            if !up.auths().is_empty() {
                problems.push(format!("{}: AUTH was sent: {:?}", f.name, up.auths()));
            }
            if !up.received().is_empty() {
                problems.push(format!("{}: a message was delivered", f.name));
            }
        }
        println!("{}: deferred: {why}", f.name);
        d.stop().await;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn unreachable_imap_upstream_is_no_unavailable_quickly() {
    let port = closed_port().await;
    let account = Account::new(USER, "secret").imap(port, "implicit");
    let dev = user("dev", "pw", "acct");
    let d = start(&format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
[imap]
listen = ["127.0.0.1:0"]
{account}{dev}"#
    ))
    .await;
    let mut c = BufReader::new(TcpStream::connect(d.imap_addr()).await.unwrap());
    let mut l = String::new();
    c.read_line(&mut l).await.unwrap();
    let t = Instant::now();
    c.get_mut().write_all(b"a LOGIN dev pw\r\n").await.unwrap();
    l.clear();
    tokio::time::timeout(WAIT, c.read_line(&mut l))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        l,
        "a NO [UNAVAILABLE] The mail provider cannot be reached right now; try again later\r\n"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The connection stays usable for another try.
    c.get_mut().write_all(b"b NOOP\r\n").await.unwrap();
    l.clear();
    c.read_line(&mut l).await.unwrap();
    assert_eq!(l, "b OK NOOP completed\r\n");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_injected_after_starttls_defer_the_message_and_no_auth_is_sent() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Starttls, USER, PASSWORD).await;
    up.script().after_starttls = Some(FORGED_AFTER_STARTTLS.into());
    // The real server rejects the message: only the forged replies accept it.
    up.script().mail_reply = Some("554 5.7.1 rejected by the real server".into());
    let d = start(&config(&Opts::new(up.port(), "starttls", &ca.ca_file))).await;
    let id = feed(&d, &["a@example.org"], b"injected\r\n").await;
    let spool = &d.daemon.context.spool;
    // Deferred and retried, never delivered nor failed. (Gone from the
    // spool means it was taken as delivered on the forged replies.)
    let e = eventually("a second attempt, or the message gone", WAIT, || async {
        match spool.entry(&id) {
            Ok(e) if e.attempts < 2 => None,
            r => Some(r.ok()),
        }
    })
    .await;
    let Some(e) = e else {
        panic!(
            "the message left the spool: delivered on forged replies; AUTH sent: {:?}",
            up.auths()
        );
    };
    let why = e.last_error.clone().unwrap_or_default();
    println!("deferred: {why}");
    assert_eq!(e.state, EntryState::Deferred, "{why}");
    assert!(why.contains("data after accepting STARTTLS"), "{why}");
    assert!(
        up.auths().is_empty(),
        "AUTH sent after injected replies: {:?}",
        up.auths()
    );
    assert!(up.received().is_empty());
    assert!(spool.list_queued().unwrap().iter().any(|q| q.id == id));
    d.stop().await;
}
