//! Unit tests of the login throttle: the pure ledger with an injected clock,
//! and the async edge ([`Throttle`], [`Attempt`]).

use super::*;

fn key(ip: &str, user: &str) -> PairKey {
    PairKey::new(ip.parse().unwrap(), user)
}

fn go(a: Admission) -> Duration {
    match a {
        Admission::Go { delay } => delay,
        other => panic!("not admitted: {other:?}"),
    }
}

#[test]
fn failures_grow_the_delay_before_verifying_then_block_the_pair() {
    let mut l = Ledger::default();
    let k = key("127.0.0.9", "dev");
    let t0 = Instant::now();
    let mut last = Duration::ZERO;
    for i in 0..FAILURES_BEFORE_BLOCK - 1 {
        let d = go(l.admit(k, t0));
        assert!(d >= last, "attempt {i}: {d:?} < {last:?}");
        last = d;
        assert_eq!(l.fail(k, t0), Denied::Failed);
    }
    assert_eq!(last, MAX_DELAY);
    go(l.admit(k, t0));
    assert_eq!(l.fail(k, t0), Denied::Blocked { now: true });
    // Blocked: nothing more is let through to verification, until the
    // block expires.
    assert_eq!(l.admit(k, t0), Admission::Blocked);
    assert_eq!(
        l.admit(k, t0 + BLOCK_FOR - Duration::from_secs(1)),
        Admission::Blocked
    );
    let after = t0 + BLOCK_FOR + Duration::from_secs(1);
    assert!(matches!(l.admit(k, after), Admission::Go { .. }));
}

#[test]
fn first_attempt_is_not_delayed_and_failures_leave_the_window() {
    let mut l = Ledger::default();
    let k = key("127.0.0.9", "dev");
    let t0 = Instant::now();
    assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
    l.fail(k, t0);
    assert_eq!(go(l.admit(k, t0)), FIRST_DELAY);
    l.fail(k, t0);
    let later = t0 + FAILURE_WINDOW + Duration::from_secs(1);
    assert_eq!(go(l.admit(k, later)), Duration::ZERO);
}

fn wait(a: Admission) -> Ticket {
    match a {
        Admission::Wait(t) => t,
        other => panic!("not queued: {other:?}"),
    }
}

#[test]
fn parallel_attempts_are_served_in_order_and_never_exceed_the_limit() {
    let mut l = Ledger::default();
    let k = key("127.0.0.1", "dev");
    let t0 = Instant::now();
    // 200 attempts at once: two start, the rest queue in arrival order.
    let mut queued = Vec::new();
    let mut running = Vec::new();
    for i in 0..200 {
        match l.admit(k, t0) {
            Admission::Go { .. } => running.push(i),
            Admission::Wait(t) => queued.push((i, t)),
            other => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(running, [0, 1]);
    let mut verified = Vec::new();
    let mut refused = Vec::new();
    while let Some(i) = running.pop() {
        verified.push(i);
        l.fail(k, t0);
        // Every waiter looks again when an attempt ends.
        queued.retain(|&(j, t)| match l.retry(t, t0) {
            Admission::Go { .. } => {
                running.push(j);
                false
            }
            Admission::Wait(_) => true,
            Admission::Blocked => {
                refused.push(j);
                false
            }
            Admission::Full => panic!("{j} lost its place"),
        });
        assert!(running.len() as u32 <= MAX_IN_FLIGHT_PER_ADDRESS);
    }
    verified.sort();
    assert_eq!(verified, (0..FAILURES_BEFORE_BLOCK).collect::<Vec<_>>());
    assert!(queued.is_empty());
    assert_eq!(refused.len(), 200 - FAILURES_BEFORE_BLOCK as usize);
    assert!(refused.contains(&100), "the 100th is refused unverified");
    assert_eq!(l.admit(k, t0), Admission::Blocked);
    // Another address is not held up.
    assert_eq!(go(l.admit(key("127.0.0.2", "dev"), t0)), Duration::ZERO);
}

#[test]
fn a_waiter_whose_pair_must_wait_does_not_hold_up_other_users() {
    let mut l = Ledger::default();
    let (dev, other) = (key("127.0.0.1", "dev"), key("127.0.0.1", "other"));
    let t0 = Instant::now();
    for _ in 0..FAILURES_BEFORE_BLOCK - 1 {
        go(l.admit(dev, t0));
        l.fail(dev, t0);
    }
    // dev's last allowed guess is in flight; the next dev attempt waits
    // for its outcome, but "other" behind it takes the free place.
    go(l.admit(dev, t0));
    let dev_waiting = wait(l.admit(dev, t0));
    assert!(matches!(l.admit(other, t0), Admission::Go { .. }));
    assert_eq!(l.retry(dev_waiting, t0), Admission::Wait(dev_waiting));
    assert_eq!(l.fail(dev, t0), Denied::Blocked { now: true });
    assert_eq!(l.retry(dev_waiting, t0), Admission::Blocked);
}

#[test]
fn a_full_queue_refuses_for_now_and_leaving_it_lets_the_next_move_up() {
    let mut l = Ledger::default();
    let t0 = Instant::now();
    let k = key("127.0.0.1", "dev");
    go(l.admit(k, t0));
    go(l.admit(k, t0));
    let first = wait(l.admit(k, t0));
    let second = wait(l.admit(key("127.0.0.1", "b"), t0));
    for i in 2..MAX_QUEUE_PER_ADDRESS {
        wait(l.admit(key("127.0.0.1", &format!("u{i}")), t0));
    }
    assert_eq!(l.admit(k, t0), Admission::Full);
    l.abandon(k);
    l.give_up(first);
    assert!(matches!(l.retry(second, t0), Admission::Go { .. }));
}

#[test]
fn in_flight_attempts_count_as_failures_until_they_end() {
    let mut l = Ledger::default();
    let k = key("127.0.0.1", "dev");
    let t0 = Instant::now();
    for _ in 0..FAILURES_BEFORE_BLOCK - 1 {
        go(l.admit(k, t0));
        l.fail(k, t0);
    }
    // One place left before the block: the second waits for the first.
    go(l.admit(k, t0));
    let t = wait(l.admit(k, t0));
    l.succeed(k, t0);
    assert_eq!(go(l.retry(t, t0)), Duration::ZERO);
}

#[test]
fn abandoned_attempt_frees_its_place_and_counts_nothing() {
    let mut l = Ledger::default();
    let k = key("127.0.0.1", "dev");
    let t0 = Instant::now();
    go(l.admit(k, t0));
    go(l.admit(k, t0));
    let t = wait(l.admit(k, t0));
    l.abandon(k);
    assert_eq!(go(l.retry(t, t0)), FIRST_DELAY, "one still in flight");
    l.abandon(k);
    l.abandon(k);
    assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
}

#[test]
fn success_for_one_user_keeps_the_failures_of_another() {
    let mut l = Ledger::default();
    let (dev, victim) = (key("127.0.0.1", "dev"), key("127.0.0.1", "victim"));
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..FAILURES_BEFORE_BLOCK {
        go(l.admit(dev, t0));
        l.succeed(dev, t0);
        go(l.admit(victim, t0));
        last = Some(l.fail(victim, t0));
    }
    assert_eq!(last, Some(Denied::Blocked { now: true }));
    assert_eq!(l.admit(victim, t0), Admission::Blocked);
    // The address is slowed, not refused: dev still logs in.
    assert_eq!(go(l.admit(dev, t0)), FIRST_DELAY);
    l.succeed(dev, t0);
}

#[test]
fn success_clears_only_its_own_pair() {
    let mut l = Ledger::default();
    let k = key("127.0.0.1", "dev");
    let t0 = Instant::now();
    for _ in 0..3 {
        go(l.admit(k, t0));
        l.fail(k, t0);
    }
    go(l.admit(k, t0));
    l.succeed(k, t0);
    assert_eq!(go(l.admit(k, t0)), Duration::ZERO);
}

#[test]
fn a_spray_of_user_names_slows_the_address_but_blocks_no_new_name() {
    let mut l = Ledger::default();
    let t0 = Instant::now();
    for i in 0..100 {
        let k = key("127.0.0.1", &format!("user{i}"));
        go(l.admit(k, t0));
        assert_eq!(l.fail(k, t0), Denied::Failed);
    }
    let fresh = key("127.0.0.1", "dev");
    assert_eq!(go(l.admit(fresh, t0)), MAX_DELAY);
    l.succeed(fresh, t0);
    assert_eq!(go(l.admit(key("127.0.0.2", "dev"), t0)), Duration::ZERO);
}

#[test]
fn verdicts_say_whether_a_password_was_checked() {
    assert!(Denied::Failed.was_verified());
    assert!(Denied::Blocked { now: true }.was_verified());
    assert!(!Denied::Blocked { now: false }.was_verified());
    assert!(!Denied::Busy.was_verified());
}

#[tokio::test(start_paused = true)]
async fn waiting_attempts_take_freed_places_or_give_up_after_max_wait() {
    let t = Arc::new(Throttle::default());
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let a = t.admit(ip, "dev").await.unwrap();
    let b = t.admit(ip, "other").await.unwrap();
    // Third waits; the first ending lets it in.
    let waiting = tokio::spawn({
        let t = t.clone();
        async move { t.admit(ip, "third").await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    a.succeeded();
    assert_eq!(waiting.await.unwrap(), Ok(()));
    // Nothing ends: after MAX_WAIT a temporary refusal.
    let c = t.admit(ip, "c").await.unwrap();
    let started = Instant::now();
    assert_eq!(t.admit(ip, "d").await.map(drop), Err(Denied::Busy));
    assert!(started.elapsed() >= MAX_WAIT);
    drop((b, c));
    assert!(t.admit(ip, "d").await.is_ok());
}
