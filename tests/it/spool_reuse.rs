//! Spent message files reused (`src/spool/spares.rs`): a delivered
//! message's file becomes the next message's, emptied in between, so no
//! delivered mail stays readable in the spool; a restart starts afresh.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::daemon::{start, start_in};
use crate::support::delivery::{config, eventually, Opts, PASSWORD, USER};
use crate::support::smtp::{assert_ok, queue_id, Client};
use crate::support::smtp_upstream::{Mode, SmtpUpstream};
use crate::support::wait::poll_until;

const WAIT: Duration = Duration::from_secs(10);

/// (name, size, inode) of every file in `dir`.
fn files(dir: &Path) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.ino(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

#[tokio::test]
async fn a_delivered_messages_file_is_emptied_and_becomes_the_next_message() {
    let ca = TestCa::new();
    let up = SmtpUpstream::start(&ca.server_cert(), Mode::Implicit, USER, PASSWORD).await;
    let toml = config(&Opts::new(up.port(), "implicit", &ca.ca_file));
    let d = start(&toml).await;
    let (tmp, queue) = (d.spool_dir().join("tmp"), d.spool_dir().join("queue"));
    let spool = d.daemon.context.spool.clone();
    let (mut c, _) = Client::connect(d.smtp_addr()).await;
    assert_ok(&c.cmd("EHLO scanner").await, "250");
    let first = b"Subject: one\r\n\r\nFIRST-BODY-7f3a9";
    c.send_mail("scanner@local", &["a@example.org"], first)
        .await;
    up.wait_for(1, WAIT).await;
    eventually("queue empty", WAIT, || async {
        spool.list_queued().unwrap().is_empty().then_some(())
    })
    .await;
    let spares = files(&tmp);
    assert_eq!(spares.len(), 1, "one spare kept: {spares:?}");
    let (name, size, inode) = spares[0].clone();
    assert!(name.starts_with("spare-") && size == 0, "{spares:?}");
    assert!(files(&queue).is_empty(), "{:?}", files(&queue));
    let everything = all_bytes(&d.spool_dir());
    assert!(
        !everything.windows(16).any(|w| w == b"FIRST-BODY-7f3a9"),
        "delivered mail still readable in the spool"
    );

    // The next message is written into that file, and is whole.
    up.script().data_451 = 1_000_000;
    let second = b"Subject: two\r\n\r\nsecond body";
    let id = queue_id(
        &c.send_mail("scanner@local", &["b@example.org"], second)
            .await,
    );
    let queued = files(&queue);
    let msg = queued
        .iter()
        .find(|(n, _, _)| n == &format!("{id}.msg"))
        .unwrap_or_else(|| panic!("{queued:?}"));
    assert_eq!(msg.2, inode, "the spare's inode holds the new message");
    assert!(files(&tmp).is_empty(), "{:?}", files(&tmp));
    let stored = spool.read_message(&id).unwrap();
    assert!(
        stored.ends_with(&[&second[..], b"\r\n"].concat()),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    drop(c);

    // A restart forgets the pool and removes its files.
    up.script().data_451 = 0;
    let spool_dir = d.spool_dir();
    let dir = d.stop().await;
    std::fs::write(spool_dir.join("tmp").join("spare-left-by-a-crash"), b"").unwrap();
    let d = start_in(&toml, dir).await;
    up.wait_for(2, WAIT).await;
    let tmp = d.spool_dir().join("tmp");
    poll_until("the old spare removed at start-up", WAIT, || {
        !files(&tmp)
            .iter()
            .any(|(n, _, _)| n == "spare-left-by-a-crash")
    })
    .await;
    d.stop().await;
}
