//! Unit tests of the SMTP session state machine (no sockets).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::*;

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_client_recipients: 3,
        require_auth: false,
        auth_offered: true,
        default_account: Some("gmail".into()),
        starttls_offered: false,
        allow_lf_only_clients: true,
    }
}

fn reply(s: &mut Session, line: &str) -> String {
    match s.handle_line(line.as_bytes()) {
        Step::Reply(r) => r,
        other => panic!("{line:?}: expected a reply, got {other:?}"),
    }
}

fn code(s: &mut Session, line: &str) -> String {
    reply(s, line)[..9].to_string()
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

#[test]
fn full_transaction_with_tolerant_syntax() {
    let mut s = Session::new(cfg());
    let ehlo = reply(&mut s, "EHLO printer\r\n");
    assert!(
        ehlo.contains("250-PIPELINING\r\n")
            && ehlo.contains("SIZE 1000")
            && ehlo.contains("AUTH PLAIN LOGIN")
    );
    assert_eq!(
        code(
            &mut s,
            "MAIL FROM: <a@b.c> SIZE=10 BODY=8BITMIME AUTH=<>\r\n"
        ),
        "250 2.1.0"
    );
    assert_eq!(code(&mut s, "RCPT TO: <x@y.z>\r\n"), "250 2.1.5");
    assert_eq!(code(&mut s, "rcpt to:<\u{e9}@y.z>\n"), "250 2.1.5");
    assert_eq!(
        s.handle_line(b"DATA\r\n"),
        Step::Data(replies::START_DATA.into())
    );
    let t = s.take_transaction().unwrap();
    assert_eq!(t.account, "gmail");
    assert_eq!(t.mail_from, "a@b.c");
    assert_eq!(
        t.recipients,
        vec!["x@y.z".to_string(), "\u{e9}@y.z".to_string()]
    );
    assert!(t.body_8bit && t.smtputf8);
    assert_eq!(s.protocol(false), "ESMTP");
    // Ready for the next transaction.
    assert_eq!(code(&mut s, "MAIL FROM:<>\r\n"), "250 2.1.0");
    assert_eq!(s.take_transaction().unwrap().mail_from, "");
}

#[test]
fn simple_commands() {
    let mut s = Session::new(cfg());
    assert_eq!(reply(&mut s, "HELO dev\r\n"), "250 relay.test\r\n");
    assert_eq!(s.protocol(false), "SMTP");
    assert_eq!(code(&mut s, "NOOP\r\n"), "250 2.0.0");
    assert_eq!(code(&mut s, "RSET\r\n"), "250 2.0.0");
    assert_eq!(code(&mut s, "VRFY bob\r\n"), "252 2.5.0");
    assert_eq!(code(&mut s, "HELP\r\n"), "214 2.0.0");
    assert_eq!(code(&mut s, "STARTTLS\r\n"), "454 4.7.0");
    assert_eq!(code(&mut s, "XYZZY\r\n"), "502 5.5.2");
    assert_eq!(s.handle_line(b"QUIT\r\n"), Step::Close(replies::BYE.into()));
}

#[test]
fn sequence_and_syntax_errors() {
    let mut s = Session::new(cfg());
    assert_eq!(code(&mut s, "RCPT TO:<a@b>\r\n"), "503 5.5.1");
    assert_eq!(code(&mut s, "DATA\r\n"), "503 5.5.1");
    assert_eq!(code(&mut s, "MAIL FROM:<a b@c>\r\n"), "501 5.1.7");
    assert_eq!(code(&mut s, "MAIL FROM:a@b\r\n"), "501 5.5.4");
    assert_eq!(code(&mut s, "MAIL FROM:<a@>\r\n"), "501 5.1.7");
    assert_eq!(code(&mut s, "MAIL FROM:<a@b> BODY=9BIT\r\n"), "501 5.5.4");
    assert_eq!(code(&mut s, "MAIL FROM:<a@b> SIZE=abc\r\n"), "501 5.5.4");
    assert_eq!(code(&mut s, "MAIL FROM:<a@b> FOO=BAR\r\n"), "555 5.5.4");
    assert_eq!(code(&mut s, "MAIL FROM:<a@b>\r\n"), "250 2.1.0");
    assert_eq!(code(&mut s, "MAIL FROM:<a@b>\r\n"), "503 5.5.1");
    assert_eq!(code(&mut s, "DATA\r\n"), "503 5.5.1");
    assert_eq!(code(&mut s, "RCPT TO:<postmaster>\r\n"), "501 5.1.3");
    assert_eq!(code(&mut s, "RCPT TO:<a@>\r\n"), "501 5.1.3");
    assert_eq!(code(&mut s, "EHLO\r\n"), "501 5.5.4");
    // RSET clears the transaction.
    assert_eq!(code(&mut s, "RSET\r\n"), "250 2.0.0");
    assert_eq!(code(&mut s, "RCPT TO:<a@b>\r\n"), "503 5.5.1");
}

#[test]
fn nul_and_invalid_utf8_are_refused() {
    let mut s = Session::new(cfg());
    for bad in [
        &b"NOOP \0\r\n"[..],
        b"MAIL FROM:<\xff@b>\r\n",
        b"\xc3\r\n",
        b"\0\0\0\n",
    ] {
        match s.handle_line(bad) {
            Step::Reply(r) => assert!(r.starts_with("500 5.5.2"), "{bad:?}: {r}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn size_limit_at_mail() {
    let mut s = Session::new(cfg());
    assert_eq!(code(&mut s, "MAIL FROM:<a@b> SIZE=1001\r\n"), "552 5.3.4");
    assert_eq!(
        code(
            &mut s,
            "MAIL FROM:<a@b> size=99999999999999999999999999\r\n"
        ),
        "552 5.3.4"
    );
    assert_eq!(code(&mut s, "MAIL FROM:<a@b> SIZE=1000\r\n"), "250 2.1.0");
}

#[test]
fn recipient_limit() {
    let mut s = Session::new(cfg());
    code(&mut s, "MAIL FROM:<a@b>\r\n");
    for i in 0..3 {
        assert_eq!(code(&mut s, &format!("RCPT TO:<r{i}@b>\r\n")), "250 2.1.5");
    }
    assert_eq!(code(&mut s, "RCPT TO:<r4@b>\r\n"), "452 4.5.3");
    assert_eq!(s.take_transaction().unwrap().recipients.len(), 3);
}

#[test]
fn auth_plain_initial_and_challenge() {
    let mut s = Session::new(cfg());
    let line = format!("AUTH PLAIN {}\r\n", b64("\0scanner\0pw"));
    match s.handle_line(line.as_bytes()) {
        Step::Authenticate { user, password } => {
            assert_eq!(user, "scanner");
            assert_eq!(password.expose(), "pw");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.auth_failed(), Step::Reply(replies::AUTH_FAILED.into()));
    assert_eq!(reply(&mut s, "AUTH PLAIN\r\n"), "334 \r\n");
    assert!(s.in_auth_exchange());
    let resp = format!("{}\r\n", b64("\0scanner\0pw2"));
    assert!(matches!(
        s.handle_line(resp.as_bytes()),
        Step::Authenticate { .. }
    ));
    assert_eq!(
        s.auth_succeeded("scanner".into(), "work".into()),
        Step::Reply(replies::AUTH_OK.into())
    );
    assert_eq!(s.local_user(), Some("scanner"));
    assert_eq!(s.protocol(false), "SMTPA");
    assert_eq!(code(&mut s, "AUTH PLAIN\r\n"), "503 5.5.1");
    code(&mut s, "MAIL FROM:<a@b>\r\n");
    assert_eq!(s.take_transaction().unwrap().account, "work");
}

#[test]
fn auth_login_and_cancel() {
    let mut s = Session::new(cfg());
    assert_eq!(
        reply(&mut s, "AUTH LOGIN\r\n"),
        replies::AUTH_LOGIN_USERNAME
    );
    assert_eq!(
        reply(&mut s, &format!("{}\r\n", b64("scanner"))),
        replies::AUTH_LOGIN_PASSWORD
    );
    match s.handle_line(format!("{}\r\n", b64("secret")).as_bytes()) {
        Step::Authenticate { user, password } => {
            assert_eq!((user.as_str(), password.expose()), ("scanner", "secret"))
        }
        other => panic!("{other:?}"),
    }
    // Initial response carries the user name.
    let line = format!("AUTH LOGIN {}\r\n", b64("scanner"));
    assert_eq!(reply(&mut s, &line), replies::AUTH_LOGIN_PASSWORD);
    assert_eq!(code(&mut s, "*\r\n"), "501 5.7.0");
    assert!(!s.in_auth_exchange());
    assert_eq!(reply(&mut s, "AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(code(&mut s, "!!!notbase64\r\n"), "501 5.5.2");
    assert_eq!(code(&mut s, "AUTH CRAM-MD5\r\n"), "504 5.5.4");
    // A debug print of the step never shows the password.
    let step = s.handle_line(format!("AUTH PLAIN {}\r\n", b64("\0u\0hunter2")).as_bytes());
    assert!(!format!("{step:?}").contains("hunter2"));
}

#[test]
fn require_auth_and_no_account() {
    let mut s = Session::new(SessionConfig {
        require_auth: true,
        ..cfg()
    });
    assert_eq!(code(&mut s, "MAIL FROM:<a@b>\r\n"), "530 5.7.0");
    let mut s = Session::new(SessionConfig {
        default_account: None,
        ..cfg()
    });
    assert_eq!(code(&mut s, "MAIL FROM:<a@b>\r\n"), "530 5.7.0");
    let mut s = Session::new(SessionConfig {
        auth_offered: false,
        ..cfg()
    });
    assert!(!reply(&mut s, "EHLO x\r\n").contains("AUTH"));
    assert_eq!(code(&mut s, "AUTH PLAIN\r\n"), "502 5.5.1");
}

#[test]
fn too_many_errors_closes() {
    let mut s = Session::new(cfg());
    for _ in 0..MAX_ERRORS - 1 {
        code(&mut s, "BOGUS\r\n");
    }
    match s.handle_line(b"BOGUS\r\n") {
        Step::Close(r) => assert!(
            r.ends_with("421 4.7.0 relay.test Error: too many errors\r\n"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn declared_size_parsing() {
    assert_eq!(declared_size(b"MAIL FROM:<a@b>\r\n"), Ok(None));
    assert_eq!(declared_size(b"MAIL FROM:<a@b> SIZE=12\r\n"), Ok(Some(12)));
    assert_eq!(
        declared_size(b"MAIL FROM:<a@b> BODY=7BIT size=12 SMTPUTF8\r\n"),
        Ok(Some(12))
    );
    assert_eq!(
        declared_size(b"MAIL FROM:<a@b> SIZE=99999999999999999999999\r\n"),
        Ok(Some(u64::MAX))
    );
    assert_eq!(declared_size(b"MAIL FROM:<a@b> SIZE=\r\n"), Err(()));
}

#[test]
fn random_lines_never_panic_and_always_get_a_reply() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let words: &[&[u8]] = &[
        b"EHLO",
        b"HELO",
        b"MAIL",
        b"RCPT",
        b"FROM:",
        b"TO:",
        b"<",
        b">",
        b"<>",
        b"@",
        b"DATA",
        b"AUTH",
        b"PLAIN",
        b"LOGIN",
        b"=",
        b"*",
        b"SIZE=",
        b"BODY=",
        b"8BITMIME",
        b"SMTPUTF8",
        b"AUTH=<>",
        b"99999999999999999999",
        b" ",
        b"\r",
        b"\0",
        b"\xff",
        b"\xc3\xa9",
        b"a@b.c",
        b"\"",
        b"\\",
        b"RSET",
        b"QUIT",
        b"BDAT",
        b"AGZvbwBiYXI=",
    ];
    for _ in 0..20_000 {
        let mut s = Session::new(cfg());
        for _ in 0..rng.gen_range(1..6) {
            let mut line = Vec::new();
            for _ in 0..rng.gen_range(0..12) {
                if rng.gen_bool(0.2) {
                    line.push(rng.gen());
                } else {
                    line.extend_from_slice(words[rng.gen_range(0..words.len())]);
                }
            }
            line.retain(|b| *b != b'\n');
            line.extend_from_slice(if rng.gen_bool(0.5) { b"\r\n" } else { b"\n" });
            let reply = match s.handle_line(&line) {
                Step::Reply(r) | Step::Close(r) => r,
                Step::Data(r) => {
                    assert!(s.take_transaction().is_some());
                    r
                }
                Step::StartTls(r) => {
                    s.tls_started();
                    r
                }
                Step::Authenticate { .. } => match s.auth_failed() {
                    Step::Reply(r) | Step::Close(r) => r,
                    other => panic!("{other:?}"),
                },
            };
            assert!(
                reply.len() >= 5 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                "{line:?}: {reply:?}"
            );
            assert!(reply.ends_with("\r\n"));
        }
    }
}

#[test]
fn starttls_offered_once_and_resets_the_session() {
    let mut s = Session::new(SessionConfig {
        starttls_offered: true,
        ..cfg()
    });
    assert!(reply(&mut s, "EHLO dev\r\n").contains("250-STARTTLS\r\n"));
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>\r\n"), "250 2.1.0");
    assert_eq!(
        s.handle_line(b"STARTTLS\r\n"),
        Step::StartTls(replies::STARTTLS_READY.into())
    );
    s.tls_started();
    assert_eq!(s.helo(), "unknown");
    assert!(s.take_transaction().is_none());
    assert!(!reply(&mut s, "EHLO dev\r\n").contains("STARTTLS"));
    assert_eq!(s.protocol(false), "ESMTPS");
    assert_eq!(code(&mut s, "STARTTLS\r\n"), "503 5.5.1");
}

#[test]
fn lf_only_client_gets_answers_and_the_bare_lf_end_of_data() {
    let mut s = Session::new(cfg());
    assert_eq!(code(&mut s, "HELO printer\n"), "250 relay");
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>\n"), "250 2.1.0");
    assert_eq!(code(&mut s, "RCPT TO:<x@y.z>\n"), "250 2.1.5");
    assert_eq!(s.end_of_data(), EndOfData::BareLfAllowed);
    assert_eq!(
        s.handle_line(b"DATA\n"),
        Step::Data(replies::START_DATA.into())
    );
    assert_eq!(s.end_of_data(), EndOfData::BareLfAllowed);
}

#[test]
fn one_crlf_line_makes_the_session_strict_for_good() {
    let mut s = Session::new(cfg());
    assert_eq!(code(&mut s, "EHLO printer\n")[..4], *"250-");
    assert_eq!(code(&mut s, "NOOP\r\n"), "250 2.0.0");
    for line in ["MAIL FROM:<a@b.c>\n", "RCPT TO:<x@y.z>\n", "DATA\n"] {
        s.handle_line(line.as_bytes());
        assert_eq!(s.end_of_data(), EndOfData::CrlfOnly, "{line:?}");
    }
    // Nor does TLS or RSET make it LF-only again.
    s.tls_started();
    s.handle_line(b"RSET\n");
    assert_eq!(s.end_of_data(), EndOfData::CrlfOnly);
    // A session that starts with CRLF is strict from its first line.
    let mut s = Session::new(cfg());
    s.handle_line(b"EHLO x\r\n");
    assert_eq!(s.end_of_data(), EndOfData::CrlfOnly);
}

#[test]
fn lf_only_allowance_can_be_switched_off() {
    let mut s = Session::new(SessionConfig {
        allow_lf_only_clients: false,
        ..cfg()
    });
    assert_eq!(code(&mut s, "HELO printer\n"), "250 relay");
    assert_eq!(s.end_of_data(), EndOfData::CrlfOnly);
}

/// Every control character of the C0 and C1 sets and DEL, as received.
fn controls() -> Vec<char> {
    (0u32..=0x9f)
        .filter_map(char::from_u32)
        .filter(|c| c.is_control() && !matches!(c, '\0' | '\n'))
        .collect()
}

#[test]
fn helo_and_ehlo_names_with_control_characters_are_refused() {
    for c in controls() {
        for verb in ["EHLO", "HELO"] {
            let mut s = Session::new(cfg());
            for line in [
                format!("{verb} dev{c}ice\r\n"),
                format!("{verb} {c}[2J\r\n"),
                format!("{verb} device junk{c}\r\n"),
            ] {
                // TABs separate words; CRs just before the LF end the line.
                let tab_between = c == '\t' && !line.contains("dev\t");
                if tab_between || (c == '\r' && line.ends_with("\r\r\n")) {
                    continue;
                }
                assert_eq!(reply(&mut s, &line), replies::BAD_HELO, "{line:?}");
            }
            assert_eq!(s.helo(), "unknown", "{verb} {c:?}");
        }
    }
    // Spaces and TABs around the name, and UTF-8, are fine.
    let mut s = Session::new(cfg());
    assert_eq!(code(&mut s, "EHLO\tdevice \t\r\n"), "250-relay");
    assert_eq!(s.helo(), "device");
    assert_eq!(code(&mut s, "HELO caf\u{e9}.example\r\n"), "250 relay");
    assert_eq!(s.helo(), "caf\u{e9}.example");
}

#[test]
fn addresses_with_control_characters_get_553() {
    for c in controls() {
        let mut s = Session::new(cfg());
        reply(&mut s, "EHLO d\r\n");
        for from in [
            format!("MAIL FROM:<a{c}b@example.com>\r\n"),
            format!("MAIL FROM:<\"a{c}b\"@example.com>\r\n"),
            format!("MAIL FROM:<a@exa{c}mple.com> SIZE=10\r\n"),
        ] {
            assert_eq!(
                reply(&mut s, &from),
                replies::SENDER_CONTROL_CHARACTERS,
                "{from:?}"
            );
        }
        assert_eq!(code(&mut s, "MAIL FROM:<a@example.com>\r\n"), "250 2.1.0");
        for to in [
            format!("RCPT TO:<a{c}b@example.com>\r\n"),
            format!("RCPT TO:<\"{c}\"@example.com>\r\n"),
            format!("RCPT TO:<@route{c}.example:a@example.com>\r\n"),
        ] {
            assert_eq!(
                reply(&mut s, &to),
                replies::RECIPIENT_CONTROL_CHARACTERS,
                "{to:?}"
            );
        }
        assert_eq!(code(&mut s, "RCPT TO:<b@example.com>\r\n"), "250 2.1.5");
        let t = s.take_transaction().unwrap();
        assert_eq!(t.mail_from, "a@example.com");
        assert_eq!(t.recipients, vec!["b@example.com".to_string()]);
    }
    // Other bad addresses keep their 501.
    let mut s = Session::new(cfg());
    assert_eq!(code(&mut s, "MAIL FROM:<a b@c>\r\n"), "501 5.1.7");
}

#[test]
fn quoted_local_parts_are_kept_exactly_as_received() {
    let mut s = Session::new(cfg());
    assert_eq!(
        code(&mut s, "MAIL FROM:<\"x y\"@example.com>\r\n"),
        "250 2.1.0"
    );
    for to in [
        "RCPT TO:<\"a b\"@example.com>\r\n",
        "RCPT TO:<\"a\\\"b\"@example.com>\r\n",
        "RCPT TO:<\"a>b\"@example.com>\r\n",
    ] {
        assert_eq!(code(&mut s, to), "250 2.1.5", "{to:?}");
    }
    let t = s.take_transaction().unwrap();
    assert_eq!(t.mail_from, "\"x y\"@example.com");
    assert_eq!(
        t.recipients,
        vec![
            "\"a b\"@example.com".to_string(),
            "\"a\\\"b\"@example.com".to_string(),
            "\"a>b\"@example.com".to_string(),
        ]
    );
    // A source route is dropped (RFC 5321 4.1.1.3), the mailbox kept.
    assert_eq!(
        code(&mut s, "MAIL FROM:<@relay.example:\"x y\"@example.com>\r\n"),
        "250 2.1.0"
    );
    assert_eq!(
        code(&mut s, "RCPT TO:<@a.example,@b.example:c@example.com>\r\n"),
        "250 2.1.5"
    );
    let t = s.take_transaction().unwrap();
    assert_eq!(t.mail_from, "\"x y\"@example.com");
    assert_eq!(t.recipients, vec!["c@example.com".to_string()]);
    // Spaces smtp-proto skips before the mailbox are not part of it.
    assert_eq!(code(&mut s, "MAIL FROM:< a@example.com>\r\n"), "250 2.1.0");
    assert_eq!(code(&mut s, "RCPT TO:<  b@example.com>\r\n"), "250 2.1.5");
    let t = s.take_transaction().unwrap();
    assert_eq!(
        (t.mail_from.as_str(), &t.recipients[..]),
        ("a@example.com", &["b@example.com".to_string()][..])
    );
    assert_eq!(code(&mut s, "MAIL FROM:<>\r\n"), "250 2.1.0");
    assert_eq!(s.take_transaction().unwrap().mail_from, "");
}

/// Without quotes or backslashes the path as received is what smtp-proto
/// parsed, so only quoted local parts change what is stored.
#[test]
fn unquoted_paths_as_received_match_smtp_proto() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let parts = [
        "a",
        "b.c",
        ".",
        "@",
        ":",
        ",",
        " ",
        "<",
        ">",
        "-",
        "+",
        "x@y.z",
        "\u{e9}",
        "@r.example",
    ];
    let mut accepted = 0;
    for _ in 0..50_000 {
        let path: String = (0..rng.gen_range(1..7))
            .map(|_| parts[rng.gen_range(0..parts.len())])
            .collect();
        let line = format!("RCPT TO:<{path}>\r\n");
        let Ok(Request::Rcpt { to }) = Request::parse(&mut line.as_bytes().iter()) else {
            continue;
        };
        if to.address.is_empty() {
            continue;
        }
        accepted += 1;
        assert_eq!(
            path::as_received(&line),
            Some(to.address.as_ref()),
            "{line:?}"
        );
    }
    assert!(accepted > 1000, "only {accepted} accepted");
}
