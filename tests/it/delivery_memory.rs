//! The memory budget of messages in flight (`delivery.message_buffer_budget`),
//! over real sockets: the upstream holds every end-of-DATA reply until the
//! test lets it go, so the test sees how many messages the daemon has in
//! flight at once. Messages that do not fit the budget together go one at a
//! time (the others wait for room, counted by the budget), in spool and in
//! direct mode; small ones are delivered side by side; all arrive whole.

use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::{start, TestDaemon};
use crate::support::delivery::{config, Opts, PASSWORD, USER};
use crate::support::smtp::{assert_ok, Client};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::wait::poll_until;

const WAIT: Duration = Duration::from_secs(30);
/// The budget under test: 256 KiB.
const BUDGET: usize = 256 * 1024;
const LARGE: usize = 200 * 1024;
const SMALL: usize = 50 * 1024;

/// A message of about `size` bytes (no line needs dot-stuffing).
fn body(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!("From: scanner@local\r\nTo: a@example.org\r\nSubject: scan {n}\r\n\r\n")
        .into_bytes();
    while m.len() < size {
        m.extend_from_slice(&[b'a' + (n % 26) as u8; 78]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

async fn setup(smtp_extra: &str) -> (TestCa, SmtpUpstream, TestDaemon) {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    up.script().hold_replies = true;
    let budget = format!("concurrency = 4\nmessage_buffer_budget = {BUDGET}");
    let mut o = Opts::new(up.port(), "implicit", &ca.ca_file);
    o.smtp_extra = smtp_extra;
    o.delivery_extra = &budget;
    let d = start(&config(&o)).await;
    assert_eq!(d.daemon.context.spool.memory().total(), BUDGET);
    (ca, up, d)
}

/// Sends `bodies` over one connection (spool mode: each reply is the queue's 250).
async fn submit(d: &TestDaemon, bodies: &[Vec<u8>]) {
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO dev").await, "250");
    for b in bodies {
        assert_ok(
            &c.send_mail("scanner@local", &["a@example.org"], b).await,
            "250",
        );
    }
}

/// Lets the held messages go one by one, checking at each step that exactly
/// one is in flight upstream while the rest wait for the budget.
async fn one_at_a_time(up: &SmtpUpstream, d: &TestDaemon, n: usize) {
    let budget = d.daemon.context.spool.memory();
    for delivered in 0..n {
        let waiting = n - delivered - 1;
        poll_until(
            "one message upstream, the rest waiting for memory",
            WAIT,
            || up.received().len() == delivered && up.held() == 1 && budget.waiting() == waiting,
        )
        .await;
        assert!(
            budget.in_use() <= BUDGET,
            "{} bytes claimed",
            budget.in_use()
        );
        assert!(
            budget.in_use() >= LARGE,
            "the one in flight paid for its bytes"
        );
        up.release(1);
    }
    up.wait_for(n, WAIT).await;
    assert_eq!(up.most_held(), 1, "never two large messages in flight");
}

#[tokio::test]
async fn large_messages_are_delivered_one_at_a_time_within_the_budget() {
    let (_ca, up, d) = setup("").await;
    let bodies: Vec<_> = (0..3).map(|n| body(n, LARGE)).collect();
    submit(&d, &bodies).await;
    let budget = d.daemon.context.spool.memory();
    // Every message is either upstream or waiting for room: with four
    // deliveries allowed at once, only the budget keeps them apart.
    poll_until("all three in flight or waiting", WAIT, || {
        up.held() + budget.waiting() == 3
    })
    .await;
    assert_eq!(
        (up.held(), budget.waiting()),
        (1, 2),
        "one 200 KiB message in flight within 256 KiB"
    );
    one_at_a_time(&up, &d, 3).await;
    let got = up.received();
    for b in &bodies {
        assert!(
            got.iter()
                .any(|r| r.data.ends_with(&[&b[..], b"\r\n"].concat())),
            "a message arrived changed"
        );
    }
    poll_until("all claims given back", WAIT, || budget.in_use() == 0).await;
    d.stop().await;
}

#[tokio::test]
async fn small_messages_are_delivered_side_by_side() {
    let (_ca, up, d) = setup("").await;
    let bodies: Vec<_> = (0..3).map(|n| body(n, SMALL)).collect();
    submit(&d, &bodies).await;
    let budget = d.daemon.context.spool.memory();
    poll_until("three small messages upstream at once", WAIT, || {
        up.held() == 3
    })
    .await;
    assert_eq!(budget.waiting(), 0);
    assert!(budget.in_use() >= 3 * SMALL && budget.in_use() <= BUDGET);
    up.release(3);
    up.wait_for(3, WAIT).await;
    poll_until("all claims given back", WAIT, || budget.in_use() == 0).await;
    d.stop().await;
}

#[tokio::test]
async fn direct_mode_shares_the_budget() {
    let (_ca, up, d) = setup("mode = \"direct\"").await;
    let addr = d.smtp_addr();
    let clients: Vec<_> = (0..2)
        .map(|n| {
            tokio::spawn(async move {
                let (mut c, _) = Client::connect(addr).await;
                assert_ok(&c.cmd("EHLO dev").await, "250");
                c.send_mail("scanner@local", &["a@example.org"], &body(n, LARGE))
                    .await
            })
        })
        .collect();
    let budget = d.daemon.context.spool.memory();
    poll_until("both in flight or waiting", WAIT, || {
        up.held() + budget.waiting() == 2
    })
    .await;
    assert_eq!((up.held(), budget.waiting()), (1, 1));
    one_at_a_time(&up, &d, 2).await;
    for c in clients {
        assert_ok(&c.await.unwrap(), "250");
    }
    poll_until("all claims given back", WAIT, || budget.in_use() == 0).await;
    d.stop().await;
}
