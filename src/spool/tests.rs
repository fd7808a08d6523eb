//! Unit tests of the spool on a temporary directory.

use super::*;
use std::fs;
use store::state_path;

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        account: "test".into(),
        mail_from: "dev@local".into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        client: "127.0.0.1:5000".into(),
        helo: "printer".into(),
        local_user: None,
        smtputf8: false,
        body_8bit: false,
    }
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mailbridge-spool-test-{}", new_id()));
    fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn enqueue_list_read_complete() {
    let dir = tempdir();
    let s = Spool::open(&dir).unwrap();
    let a = s
        .enqueue(&env(&["a@x"]), b"Subject: a\r\n\r\nhi\r\n")
        .await
        .unwrap();
    let b = s
        .enqueue(&env(&["b@x", "c@x"]), b"Subject: b\r\n\r\n.\r\n")
        .await
        .unwrap();
    assert!(a < b);
    let l = s.list().unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].id, a);
    assert_eq!(l[0].state, EntryState::Queued);
    assert_eq!(l[1].remaining, vec!["b@x", "c@x"]);
    assert_eq!(l[1].size, 17);
    assert_eq!(s.read_message(&b).unwrap(), b"Subject: b\r\n\r\n.\r\n");
    // Both were announced to the worker once durable, in order.
    let mut handed = s.handoff().take_receiver().unwrap();
    assert_eq!(handed.try_recv().unwrap().0, a);
    assert_eq!(handed.try_recv().unwrap().0, b);
    assert!(handed.try_recv().is_err());
    assert!(s.handoff().take_receiver().is_none(), "one worker");
    s.complete(&a).unwrap();
    assert_eq!(s.list().unwrap().len(), 1);
    fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn defer_fail_retry_delete() {
    let dir = tempdir();
    let s = Spool::open(&dir).unwrap();
    let a = s.enqueue(&env(&["a@x"]), b"x\r\n").await.unwrap();
    let when = SystemTime::now() + Duration::from_secs(60);
    s.defer(
        &a,
        &Deferral {
            attempts: 1,
            next_attempt: when,
            reason: "451 4.3.0 try later".into(),
            hold: None,
            remaining: None,
        },
    )
    .unwrap();
    let e = s.entry(&a).unwrap();
    assert_eq!(e.state, EntryState::Deferred);
    assert_eq!(e.last_error.as_deref(), Some("451 4.3.0 try later"));
    assert!(e.next_attempt.is_some());
    s.fail(&a, 2, "554 5.7.0 no", None).unwrap();
    let e = s.entry(&a).unwrap();
    assert_eq!(e.state, EntryState::Failed);
    assert_eq!(e.attempts, 2);
    assert!(s.list_queued().unwrap().is_empty());
    let received = e.received_at;
    s.retry(&a).unwrap();
    let e = s.entry(&a).unwrap();
    assert_eq!(e.state, EntryState::Queued);
    assert_eq!(e.next_attempt, None);
    // A retried failed message gets a fresh expiry window, and keeps it
    // across a later deferral.
    assert_eq!(e.received_at, received);
    assert!(e.queued_since >= received);
    let since = e.queued_since;
    s.defer(
        &a,
        &Deferral {
            attempts: 1,
            next_attempt: when,
            reason: "451 again".into(),
            hold: None,
            remaining: None,
        },
    )
    .unwrap();
    assert_eq!(s.entry(&a).unwrap().queued_since, since);
    s.delete(&a).unwrap();
    assert!(matches!(s.entry(&a), Err(SpoolError::NotFound(_))));
    assert!(matches!(
        s.delete(&QueueId("../etc".into())),
        Err(SpoolError::NotFound(_))
    ));
    fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn damaged_entries_are_moved_aside() {
    let dir = tempdir();
    let s = Spool::open(&dir).unwrap();
    let good = s.enqueue(&env(&["a@x"]), b"hello\r\n").await.unwrap();
    let bad = s.enqueue(&env(&["a@x"]), b"hello world\r\n").await.unwrap();
    let p = msg_path(&dir.join("queue"), &bad.0);
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    fs::write(dir.join("queue/0123abcd.msg"), b"garbage").unwrap();
    let l = s.list_queued().unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].id, good);
    assert!(dir.join("corrupt").join(format!("{bad}.msg")).exists());
    assert!(dir.join("corrupt/0123abcd.msg").exists());
    fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn partial_failures_are_recorded() {
    let dir = tempdir();
    let s = Spool::open(&dir).unwrap();
    let id = s
        .record_failed(
            &env(&["a@x", "b@x"]),
            b"m\r\n",
            &[("b@x".into(), "550 5.1.1 unknown".into())],
        )
        .unwrap();
    let e = s.entry(&id).unwrap();
    assert_eq!(e.state, EntryState::Failed);
    assert_eq!(e.envelope.recipients, vec!["b@x"]);
    assert!(e.last_error.unwrap().contains("550 5.1.1"));
    assert_eq!(s.read_message(&id).unwrap(), b"m\r\n");
    fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_directory_syncs() {
    let dir = tempdir();
    let s = std::sync::Arc::new(Spool::open(&dir).unwrap());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.enqueue(&env(&["a@x"]), format!("m{i}\r\n").as_bytes())
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(s.list_queued().unwrap().len(), 40);
    fs::remove_dir_all(dir).unwrap();
}

/// A `.msg` file (valid name) whose header line claims another id: loading
/// it moves it aside, and the worker's later `complete`/`fail`/`defer` with
/// such an id never touch a path outside the spool.
#[tokio::test]
async fn an_id_from_a_crafted_header_never_names_a_path() {
    let top = tempdir();
    let dir = top.join("spool");
    let s = Spool::open(&dir).unwrap();
    let victim = top.join("victim.msg");
    fs::write(&victim, b"not spool data").unwrap();
    let evil = "../../victim";
    let body = b"Subject: x\r\n\r\nhi\r\n";
    let header = serde_json::json!({
        "v": 1, "id": evil, "received_at_ms": 1, "size": body.len(),
        "envelope": serde_json::to_value(env(&["a@x"])).unwrap(),
    });
    let name = "0123456789abcdef";
    let mut file = serde_json::to_vec(&header).unwrap();
    file.push(b'\n');
    file.extend_from_slice(body);
    fs::write(dir.join("queue").join(format!("{name}.msg")), &file).unwrap();

    let loaded = s.load_queued(&QueueId(name.into()));
    assert!(
        matches!(loaded, Err(SpoolError::Corrupt { .. })),
        "{:?}",
        loaded.map(|(e, _)| e.id)
    );
    assert!(dir.join("corrupt").join(format!("{name}.msg")).exists());
    assert!(s.list().unwrap().is_empty());

    let evil = QueueId(evil.into());
    assert!(matches!(s.complete(&evil), Err(SpoolError::NotFound(_))));
    assert!(matches!(
        s.fail(&evil, 1, "554 no", None),
        Err(SpoolError::NotFound(_))
    ));
    let d = Deferral {
        attempts: 1,
        next_attempt: SystemTime::now(),
        reason: "451".into(),
        hold: None,
        remaining: None,
    };
    assert!(matches!(s.defer(&evil, &d), Err(SpoolError::NotFound(_))));
    assert_eq!(fs::read(&victim).unwrap(), b"not spool data");
    assert!(!top.join("victim.state").exists());
    fs::remove_dir_all(top).unwrap();
}

/// A spool left by an older version (directories 0755, files 0644) is made
/// private when opened and recovered.
#[cfg(unix)]
#[test]
fn an_existing_spool_is_made_private_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    for sub in ["queue", "failed", "corrupt", "tmp"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
        set(&dir.join(sub), 0o755);
    }
    set(&dir, 0o755);
    let old = dir.join("queue/0123abcd.state");
    fs::write(&old, b"{}").unwrap();
    set(&old, 0o644);
    let s = Spool::open(&dir).unwrap();
    s.recover();
    for d in ["", "queue", "failed", "corrupt", "tmp"] {
        assert_eq!(mode(&dir.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&old), 0o600);
    fs::remove_dir_all(dir).unwrap();
}

/// State files written by older versions: each of their three hold shapes
/// loads as the typed hold, and `queue list` shows the same state as before.
#[tokio::test]
async fn old_hold_shapes_load_as_typed_holds() {
    let dir = tempdir();
    let s = Spool::open(&dir).unwrap();
    let cases: &[(&str, EntryState, Option<HoldReason>)] = &[
        (
            r#"{"attempts":0,"next_attempt_ms":1900000000000,"last_error":"account \"gmail\" has no usable password: not configured","held":"account \"gmail\" has no usable password: not configured","remaining":["a@x"],"failed_at_ms":null}"#,
            EntryState::Held,
            Some(HoldReason::Config {
                reason: "account \"gmail\" has no usable password: not configured".into(),
            }),
        ),
        (
            r#"{"attempts":2,"next_attempt_ms":1900000000000,"last_error":"daily limit (3 in 24h), next slot at 2030-03-17T17:46:40Z","held":"daily limit (3 in 24h), next slot at 2030-03-17T17:46:40Z","remaining":null,"failed_at_ms":null}"#,
            EntryState::Held,
            Some(HoldReason::DailyLimit {
                until_ms: 1_900_000_000_000,
            }),
        ),
        (
            r#"{"attempts":1,"next_attempt_ms":0,"last_error":"451 later","held":null,"remaining":null,"failed_at_ms":null,"on_hold":true}"#,
            EntryState::OnHold,
            Some(HoldReason::Admin),
        ),
        (
            r#"{"attempts":1,"next_attempt_ms":0,"last_error":"no password","held":"no password","on_hold":true}"#,
            EntryState::OnHold,
            Some(HoldReason::Admin),
        ),
        (
            r#"{"attempts":1,"next_attempt_ms":5,"last_error":"451 later","held":null}"#,
            EntryState::Deferred,
            None,
        ),
    ];
    for (json, state, hold) in cases {
        let id = s.enqueue(&env(&["a@x"]), b"x\r\n").await.unwrap();
        fs::write(state_path(&s.queue, &id.0), json).unwrap();
        let e = s.entry(&id).unwrap();
        assert_eq!((&e.state, &e.hold), (state, hold), "{json}");
        // Written back in the new shape, it reads the same.
        s.retry(&id).unwrap();
        let again = s.entry(&id).unwrap();
        if hold.as_ref().is_some_and(HoldReason::is_admin) {
            assert_eq!(again.hold, Some(HoldReason::Admin));
        } else {
            assert_eq!(again.hold, None, "retry looks at a worker's hold again");
        }
        let text = fs::read_to_string(state_path(&s.queue, &id.0)).unwrap();
        assert!(
            !text.contains("\"held\"") && !text.contains("on_hold"),
            "{text}"
        );
    }
    fs::remove_dir_all(dir).unwrap();
}

/// The new shape, including the OAuth2 one nothing writes yet, survives a round trip.
#[tokio::test]
async fn typed_holds_are_persisted() {
    let dir = tempdir();
    let s = Spool::open(&dir).unwrap();
    for hold in [
        HoldReason::Config { reason: "x".into() },
        HoldReason::DailyLimit { until_ms: 42 },
        HoldReason::NeedsReauthorization {
            account: "gmail".into(),
            reason: "invalid_grant".into(),
        },
    ] {
        let id = s.enqueue(&env(&["a@x"]), b"x\r\n").await.unwrap();
        let d = Deferral {
            attempts: 0,
            next_attempt: SystemTime::now(),
            reason: "why".into(),
            hold: Some(hold.clone()),
            remaining: None,
        };
        s.defer(&id, &d).unwrap();
        let e = s.entry(&id).unwrap();
        assert_eq!((e.state, e.hold), (EntryState::Held, Some(hold)));
        // The admin's hold wins over the worker's, and release clears only it.
        s.hold(&id).unwrap();
        assert_eq!(s.entry(&id).unwrap().state, EntryState::OnHold);
        s.defer(&id, &d).unwrap();
        assert_eq!(s.entry(&id).unwrap().state, EntryState::OnHold);
        s.release(&id).unwrap();
        assert_eq!(s.entry(&id).unwrap().state, EntryState::Queued);
    }
    fs::remove_dir_all(dir).unwrap();
}

/// A message waiting for room in the memory budget is read from the file
/// opened before the wait: a `queue delete` or `queue hold` meanwhile must
/// still keep it from being sent.
#[tokio::test]
async fn delete_or_hold_while_waiting_for_room_is_seen() {
    let dir = tempdir();
    let s = Arc::new(Spool::open(&dir).unwrap().with_memory_budget(1024));
    let body = vec![b'x'; 600];
    for change in ["delete", "hold"] {
        let id = s.enqueue(&env(&["a@example.org"]), &body).await.unwrap();
        let room = s.memory().claim(1024).await;
        let load = tokio::spawn({
            let (s, id) = (s.clone(), id.clone());
            async move { s.load_for_delivery(&id).await }
        });
        // Wait until the load is queued for room, then change the entry.
        while s.memory().waiting() == 0 && !load.is_finished() {
            tokio::task::yield_now().await;
        }
        match change {
            "delete" => s.delete(&id).unwrap(),
            _ => s.hold(&id).unwrap(),
        }
        drop(room);
        let got = load.await.unwrap();
        match change {
            "delete" => assert!(matches!(got, Err(SpoolError::NotFound(_))), "{change}"),
            _ => assert!(
                matches!(&got, Ok((e, None)) if e.state == EntryState::OnHold),
                "{change}"
            ),
        }
    }
    fs::remove_dir_all(dir).unwrap();
}

/// The names of the files in `dir`, sorted (for the spool's unit tests).
pub(super) fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
