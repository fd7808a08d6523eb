//! Unit tests of the sent_copy filter: parsing and the byte state machine.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Feeds `input` in chunks of `step` bytes; returns (upstream bytes, our replies).
fn run(input: &[u8], step: usize, learned: &Learned) -> (Vec<u8>, Vec<u8>) {
    let mut c = ClientSide::new();
    let (mut out, mut inject) = (Vec::new(), Vec::new());
    for chunk in input.chunks(step) {
        c.feed(chunk, learned, &mut out, &mut inject);
    }
    c.finish(&mut out);
    (out, inject)
}

fn every_step(input: &[u8], learned: &Learned, want_out: &[u8], want_inject: &[u8]) {
    for step in [1, 2, 3, 7, 64, 100_000] {
        let (out, inject) = run(input, step, learned);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(want_out),
            "step {step}"
        );
        assert_eq!(
            String::from_utf8_lossy(&inject),
            String::from_utf8_lossy(want_inject),
            "step {step}"
        );
    }
}

fn ok(tag: &str) -> Vec<u8> {
    responses::append_to_sent_skipped(tag)
}

#[test]
fn literals_are_recognised() {
    assert_eq!(trailing_literal(b"a APPEND x {12}\r\n"), Some((12, true)));
    assert_eq!(
        trailing_literal(b"a APPEND x ~{12+}\r\n"),
        Some((12, false))
    );
    assert_eq!(trailing_literal(b"a APPEND x {}\r\n"), None);
    assert_eq!(trailing_literal(b"a NOOP\r\n"), None);
}

#[test]
fn append_to_sent_is_answered_and_dropped() {
    let l = Learned::default();
    let input = b"a1 APPEND \"[Gmail]/Sent Mail\" (\\Seen) {5}\r\nhello\r\na2 NOOP\r\n";
    let mut want_inject = responses::LITERAL_READY.to_vec();
    want_inject.extend(ok("a1"));
    every_step(input, &l, b"a2 NOOP\r\n", &want_inject);
    // Non-synchronising: no continuation.
    let input = b"a1 append Sent {5+}\r\nhello\r\n";
    every_step(input, &l, b"", &ok("a1"));
}

#[test]
fn other_mailboxes_and_commands_pass_unchanged() {
    let l = Learned::default();
    let input: &[u8] = b"a1 APPEND INBOX {5}\r\nhello\r\na2 SELECT \"[Gmail]/Sent Mail\"\r\n";
    every_step(input, &l, input, b"");
    // A literal of another command holds the text of an APPEND to Sent.
    let input: &[u8] =
        b"a3 SEARCH TEXT {41}\r\na4 APPEND \"[Gmail]/Sent Mail\" {5}\r\n\r\na5 NOOP\r\n";
    every_step(input, &l, input, b"");
    // CATENATE is not ours to interpret.
    let input: &[u8] = b"a6 APPEND Sent CATENATE (TEXT {5}\r\nhello)\r\n";
    every_step(input, &l, input, b"");
}

#[test]
fn learned_sent_name_replaces_the_fallbacks() {
    let mut l = Learned::default();
    l.observe(b"* LIST (\\HasNoChildren \\Sent) \"/\" \"[Gmail]/Gesendet\"\r\n");
    l.observe(b"* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n");
    assert!(l.is_sent(b"[Gmail]/Gesendet"));
    assert!(!l.is_sent(b"[Gmail]/Sent Mail"));
    every_step(
        b"x APPEND \"[Gmail]/Gesendet\" {3+}\r\nabc\r\n",
        &l,
        b"",
        &ok("x"),
    );
    let input: &[u8] = b"x APPEND Sent {3+}\r\nabc\r\n";
    every_step(input, &l, input, b"");
}

#[test]
fn literal_mailbox_names_and_multiappend() {
    let l = Learned::default();
    // The name as a literal: Sent is skipped, both messages of a MULTIAPPEND.
    let input = b"m APPEND {17}\r\n[Gmail]/Sent Mail {2}\r\nab {3+}\r\nxyz\r\n";
    let mut want = responses::LITERAL_READY.to_vec();
    want.extend_from_slice(responses::LITERAL_READY);
    want.extend(ok("m"));
    every_step(input, &l, b"", &want);
    // Another mailbox as a literal goes upstream as a quoted string.
    let input = b"m APPEND {7}\r\nArchiv\" {2}\r\nab\r\n";
    every_step(
        input,
        &l,
        b"m APPEND \"Archiv\\\"\" {2}\r\nab\r\n",
        responses::LITERAL_READY,
    );
}

#[test]
fn long_lines_pass_without_being_held() {
    let l = Learned::default();
    let mut input = b"z SEARCH TEXT \"".to_vec();
    input.extend(vec![b'q'; MAX_LINE * 2]);
    input.extend_from_slice(b"\" {5}\r\nAPPEN\r\nz2 NOOP\r\n");
    every_step(&input, &l, &input, b"");
}

#[test]
fn server_side_finds_boundaries_across_literals() {
    let mut s = ServerSide::default();
    let mut c = ClientSide::new();
    assert!(s.at_boundary());
    s.feed(b"* 1 FETCH (BODY[] {6}\r\nab\r\n", &mut c);
    assert!(!s.at_boundary());
    s.feed(b"cd)\r\n", &mut c);
    assert!(s.at_boundary());
    s.feed(b"* LIST (\\Sent) \"/\" Sent-Items\r\n* OK", &mut c);
    assert!(!s.at_boundary());
    assert!(s.learned.is_sent(b"Sent-Items"));
}

#[tokio::test]
async fn filter_stream_replies_between_upstream_responses() {
    let (mut client_far, mut client) = tokio::io::duplex(64 * 1024);
    let (mut up_far, mut up) = tokio::io::duplex(64 * 1024);
    let pump = tokio::spawn(async move {
        let mut f = SentCopyFilter::new(&mut client);
        tokio::io::copy_bidirectional(&mut f, &mut up).await
    });
    // The upstream is in the middle of a response when the APPEND arrives.
    up_far
        .write_all(b"* 1 FETCH (BODY[] {4}\r\nab")
        .await
        .unwrap();
    let mut got = vec![0u8; 25];
    client_far.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"* 1 FETCH (BODY[] {4}\r\nab");
    client_far
        .write_all(b"t APPEND \"[Gmail]/Sent Mail\" {3}\r\n")
        .await
        .unwrap();
    up_far.write_all(b"cd)\r\n").await.unwrap();
    // Our continuation comes after the end of that response, not inside it.
    let mut got = vec![0u8; 5 + responses::LITERAL_READY.len()];
    client_far.read_exact(&mut got).await.unwrap();
    let mut want = b"cd)\r\n".to_vec();
    want.extend_from_slice(responses::LITERAL_READY);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    client_far.write_all(b"xyz\r\nu NOOP\r\n").await.unwrap();
    let skipped = ok("t");
    let mut got = vec![0u8; skipped.len()];
    client_far.read_exact(&mut got).await.unwrap();
    assert_eq!(got, skipped);
    let mut got = vec![0u8; 8];
    up_far.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"u NOOP\r\n", "the APPEND never reaches the upstream");
    drop(client_far);
    drop(up_far);
    let _ = pump.await.unwrap();
}

#[test]
fn a_refused_synchronising_literal_is_not_expected() {
    let l = Learned::default();
    let mut c = ClientSide::new();
    let mut s = ServerSide::default();
    let (mut out, mut inject) = (Vec::new(), Vec::new());
    c.feed(b"d APPEND Drafts {99999}\r\n", &l, &mut out, &mut inject);
    s.feed(b"* 3 EXISTS\r\nd NO [TOOBIG] too big\r\n", &mut c);
    // The client never sends the literal: its next command is parsed.
    c.feed(b"e APPEND Sent {1+}\r\nx\r\n", &l, &mut out, &mut inject);
    assert_eq!(out, b"d APPEND Drafts {99999}\r\n");
    assert_eq!(inject, ok("e"));
    // A continuation means the literal comes.
    let (mut out, mut inject) = (Vec::new(), Vec::new());
    c.feed(b"f APPEND Drafts {20}\r\n", &l, &mut out, &mut inject);
    s.feed(b"+ go ahead\r\nf NO later\r\n", &mut c);
    let lit: &[u8] = b"g APPEND Sent {1+}\r\n";
    c.feed(lit, &l, &mut out, &mut inject);
    assert!(out.ends_with(lit) && inject.is_empty());
}
