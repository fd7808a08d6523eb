//! Crash safety with the real binary: 2,000 messages from concurrent
//! clients, `kill -9` in the middle, restart on the same spool; every message
//! that got a 250 must arrive upstream (at-least-once: duplicates are counted
//! and printed, loss fails the test).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::ca::TestCa;
use crate::support::delivery::{config, Opts, PASSWORD, USER};
use crate::support::process::{command, write_config, Proc};
use crate::support::smtp::Smtp;
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::wait::poll_until;

const TOTAL: usize = 2000;
const CLIENTS: usize = 8;

fn message(n: usize) -> Vec<u8> {
    format!("Message-ID: <m{n}@crash.test>\r\nSubject: crash {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

fn message_id(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let start = text.find("Message-ID: <")? + "Message-ID: <".len();
    let end = text[start..].find('>')? + start;
    Some(text[start..end].to_string())
}

struct Shared {
    next: AtomicUsize,
    acked: Mutex<HashSet<String>>,
}

/// One client: takes message numbers from the shared counter and sends them
/// until the numbers run out or the server goes away.
async fn client(addr: SocketAddr, sh: Arc<Shared>) {
    let Some((mut c, _)) = Smtp::connect(addr).await else {
        return;
    };
    if c.cmd("EHLO crash").await.is_none() {
        return;
    }
    loop {
        let n = sh.next.fetch_add(1, Ordering::SeqCst);
        if n >= TOTAL {
            let _ = c.cmd("QUIT").await;
            return;
        }
        match c.mail("to@example.org", &message(n)).await {
            Some(r) if r.starts_with("250") => {
                sh.acked.lock().unwrap().insert(format!("m{n}@crash.test"));
            }
            Some(r) => panic!("message {n} refused: {r}"),
            None => return, // killed: this one was never acknowledged
        }
    }
}

async fn run_clients(addr: SocketAddr, sh: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| tokio::spawn(client(addr, sh.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_message() {
    let started = Instant::now();
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    // At first the upstream answers 451 to every message: a backlog builds.
    up.script().data_451 = usize::MAX;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &config(&Opts::new(up.port(), "implicit", &ca.ca_file)),
    );
    let sh = Arc::new(Shared {
        next: AtomicUsize::new(0),
        acked: Mutex::new(HashSet::new()),
    });

    // Phase 1: load, then SIGKILL once about half is acknowledged.
    let mut p = Proc::spawn(command(&cfg, &["run"]));
    let addr = p
        .smtp
        .unwrap_or_else(|| panic!("no SMTP address:\n{}", p.text()));
    let clients = run_clients(addr, &sh).await;
    // Part-way, the upstream starts accepting: at the kill some messages are
    // mid-delivery (the source of duplicates) and many are still queued.
    poll_until("a backlog", Duration::from_secs(60), || {
        sh.acked.lock().unwrap().len() >= TOTAL * 19 / 40
    })
    .await;
    up.script().data_451 = 0;
    poll_until("half acknowledged", Duration::from_secs(60), || {
        sh.acked.lock().unwrap().len() >= TOTAL / 2
    })
    .await;
    p.kill9();
    for c in clients {
        c.await.unwrap();
    }
    let acked_at_kill = sh.acked.lock().unwrap().len();
    let delivered_at_kill = up.received().len();
    let queued_at_kill = acked_at_kill.saturating_sub(delivered_at_kill);
    let in_flight_lost = sh.next.load(Ordering::SeqCst).min(TOTAL) - acked_at_kill;
    assert!(
        acked_at_kill < TOTAL,
        "the kill came too late to test anything"
    );
    assert!(queued_at_kill > 0, "nothing was queued at the kill");

    // Phase 2: restart on the same spool, send the rest.
    let mut p = Proc::spawn(command(&cfg, &["run"]));
    let addr = p
        .smtp
        .unwrap_or_else(|| panic!("no SMTP address:\n{}", p.text()));
    // Numbers taken by clients cut off by the kill are not retried.
    for c in run_clients(addr, &sh).await {
        c.await.unwrap();
    }
    let acked = sh.acked.lock().unwrap().clone();

    let deadline = Instant::now() + Duration::from_secs(60);
    let (counts, missing) = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in up.received() {
            let id = message_id(&r.data).expect("a Message-ID");
            *counts.entry(id).or_default() += 1;
        }
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (counts, missing.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    p.terminate();
    let delivered: usize = counts.values().sum();
    let duplicated = counts.values().filter(|c| **c > 1).count();
    let unacked_delivered = counts.keys().filter(|id| !acked.contains(*id)).count();
    println!(
        "crash test: {} acknowledged ({acked_at_kill} before kill -9, {delivered_at_kill} delivered and {queued_at_kill} queued by then), \
         {in_flight_lost} cut off unacknowledged, {delivered} deliveries, {duplicated} duplicated, \
         {unacked_delivered} unacknowledged but delivered, {missing} missing, {:.1?}",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(missing, 0, "acknowledged messages lost after kill -9");
    assert_eq!(acked.len() + in_flight_lost, TOTAL);
}
