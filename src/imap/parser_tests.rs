//! Tests of the pre-login grammar ([`super`]).

use super::*;

#[test]
fn maximal_id_parses_in_every_form() {
    for form in [IdForm::Escaped, IdForm::Literal, IdForm::LiteralPlus] {
        let cmd = maximal_id("t9", form);
        let p = parse_command(&cmd).unwrap_or_else(|e| panic!("{form:?}: {e:?}"));
        assert_eq!((p.tag.as_str(), p.command), ("t9", Command::Id), "{form:?}");
    }
    let escaped = maximal_id("t9", IdForm::Escaped);
    assert_eq!(
        escaped.len(),
        "t9 ".len() + super::super::framing::ID_MAX_ENCODED + 2
    );
}

fn login(input: &[u8]) -> (String, String) {
    match parse_command(input).unwrap().command {
        Command::Login { user, password } => (user, password.expose().to_string()),
        c => panic!("not a login: {c:?}"),
    }
}

#[test]
fn simple_commands() {
    let p = parse_command(b"a1 capability\r\n").unwrap();
    assert_eq!(
        p,
        Parsed {
            tag: "a1".into(),
            command: Command::Capability
        }
    );
    assert_eq!(parse_command(b"x NOOP\r\n").unwrap().command, Command::Noop);
    assert_eq!(
        parse_command(b"x LOGOUT\r\n").unwrap().command,
        Command::Logout
    );
    assert_eq!(
        parse_command(b"x STARTTLS\r\n").unwrap().command,
        Command::StartTls
    );
    assert_eq!(parse_command(b"x ID NIL\r\n").unwrap().command, Command::Id);
    assert_eq!(
        parse_command(b"x ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n")
            .unwrap()
            .command,
        Command::Id
    );
    assert_eq!(parse_command(b"x ID ()\r\n").unwrap().command, Command::Id);
    assert_eq!(
        parse_command(b"x select INBOX\r\n").unwrap().command,
        Command::NotBeforeLogin("SELECT".into())
    );
    assert_eq!(
        parse_command(b"x FROB\r\n").unwrap().command,
        Command::Unknown
    );
}

#[test]
fn login_argument_forms() {
    assert_eq!(
        login(b"a LOGIN joe secret\r\n"),
        ("joe".into(), "secret".into())
    );
    assert_eq!(
        login(b"a LOGIN \"joe\" \"a b\\\"c\\\\d{\"\r\n"),
        ("joe".into(), "a b\"c\\d{".into())
    );
    assert_eq!(
        login(b"a LOGIN {3}\r\njoe {5}\r\np w\"d\r\n"),
        ("joe".into(), "p w\"d".into())
    );
    assert_eq!(
        login(b"a LOGIN joe {5+}\r\np\xc3\xa4ss\r\n"),
        ("joe".into(), "p\u{e4}ss".into())
    );
    assert_eq!(login(b"a LOGIN \"\" \"\"\r\n"), ("".into(), "".into()));
    assert_eq!(
        login("a LOGIN jo\u{e9} \"p\u{e4}\"\r\n".as_bytes()).1,
        "p\u{e4}"
    );
}

#[test]
fn bad_input_is_syntax_error_with_tag() {
    let e = |i: &[u8]| parse_command(i).unwrap_err();
    assert_eq!(e(b"\r\n"), ParseError::NoTag);
    assert_eq!(e(b"\x00\x01\x02\r\n"), ParseError::NoTag);
    assert!(matches!(e(b"a LOGIN joe\r\n"), ParseError::Syntax { tag, .. } if tag == "a"));
    assert!(matches!(
        e(b"a LOGIN joe \"unterminated\r\n"),
        ParseError::Syntax { .. }
    ));
    assert!(matches!(
        e(b"a LOGIN joe p\x00w\r\n"),
        ParseError::Syntax { .. }
    ));
    assert!(matches!(
        e(b"a LOGIN joe {5}\r\nab\r\n"),
        ParseError::Syntax { .. }
    ));
    assert!(matches!(e(b"a NOOP extra\r\n"), ParseError::Syntax { .. }));
    assert!(matches!(e(b"a NOOP\n"), ParseError::Syntax { .. }));
    assert!(matches!(
        e(b"a LOGIN joe \"bad\\x\"\r\n"),
        ParseError::Syntax { .. }
    ));
    assert!(matches!(
        e(b"a LOGIN joe {3}\r\n\xff\xfe\xfd\r\n"),
        ParseError::Syntax { .. }
    ));
}

#[test]
fn authenticate_forms() {
    let p = parse_command(b"a AUTHENTICATE plain AGpvZQBzZWNyZXQ=\r\n").unwrap();
    assert_eq!(
        p.command,
        Command::Authenticate {
            mechanism: "PLAIN".into(),
            initial: Some(b"AGpvZQBzZWNyZXQ=".to_vec())
        }
    );
    let p = parse_command(b"a AUTHENTICATE PLAIN\r\n").unwrap();
    assert_eq!(
        p.command,
        Command::Authenticate {
            mechanism: "PLAIN".into(),
            initial: None
        }
    );
    let p = parse_command(b"a AUTHENTICATE PLAIN =\r\n").unwrap();
    assert_eq!(
        p.command,
        Command::Authenticate {
            mechanism: "PLAIN".into(),
            initial: Some(b"=".to_vec())
        }
    );
    assert_eq!(parse_sasl_response(b"*"), Ok(None));
    assert_eq!(parse_sasl_response(b"="), Ok(Some(vec![])));
    assert!(parse_sasl_response(b"!!").is_err());
    let (z, c, p) = split_plain(b"\0joe\0secret").unwrap();
    assert_eq!((z.as_str(), c.as_str(), p.expose()), ("", "joe", "secret"));
    assert!(split_plain(b"joe\0secret").is_none());
}

/// Random and mutated inputs never panic, and every result is a reply-able outcome.
#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pieces: &[&[u8]] = &[
        b"a",
        b" ",
        b"LOGIN",
        b"AUTHENTICATE",
        b"PLAIN",
        b"ID",
        b"(",
        b")",
        b"\"",
        b"\\",
        b"{",
        b"}",
        b"{3}\r\n",
        b"{99999999999}\r\n",
        b"+",
        b"=",
        b"*",
        b"NIL",
        b"\r\n",
        b"\n",
        b"\0",
        b"\xff",
        b"]",
    ];
    for _ in 0..20_000 {
        let mut input = Vec::new();
        for _ in 0..rng.gen_range(0..12) {
            if rng.gen_bool(0.8) {
                input.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            } else {
                input.push(rng.gen());
            }
        }
        if rng.gen_bool(0.7) {
            input.extend_from_slice(b"\r\n");
        }
        let _ = parse_command(&input);
        let _ = tag_of(&input);
        let _ = parse_sasl_response(&input);
        let _ = split_plain(&input);
    }
}

#[test]
fn tag_of_finds_tags() {
    assert_eq!(tag_of(b"a1 LOGIN {99999}\r\n").as_deref(), Some("a1"));
    assert_eq!(tag_of(b"+x LOGIN"), None);
}
