//! Table-driven malformed IMAP pre-login input against the real daemon: each
//! case runs on a fresh connection, must get exactly the listed lines (tagged
//! BAD/NO or untagged BAD), and then either still answer a NOOP or close;
//! afterwards a good client is still served and nothing reached upstream.
//! (Cases already in imap_bad_input.rs are not repeated.)

use crate::support::imap::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mailbridge::imap::framing::MAX_LINE;

/// A line: exact text (CRLF stripped), or with `*` at the end, a prefix.
type Expect = &'static str;

const NO_TAG: Expect = "* BAD Invalid command: expected a tag and a command";
const NO_NAME: Expect = "a BAD Syntax error: expected a command name after the tag";
const NO_ARGS: Expect = "a BAD Syntax error: this command takes no arguments";
const LOGIN_ARGS: Expect = "a BAD Syntax error: LOGIN needs a user name and a password";
const AUTH_ARGS: Expect = "a BAD Syntax error: AUTHENTICATE needs a mechanism name and optionally a base64 initial response";
const MALFORMED: Expect = "a BAD Malformed AUTHENTICATE PLAIN response";
const TOO_LARGE: Expect = "a BAD Literal too large before login; closing";
const READY: Expect = "+ Ready for literal data";

#[derive(PartialEq)]
enum After {
    /// The session goes on: a NOOP is answered.
    Serves,
    /// The daemon closes the connection.
    Closes,
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    lines: Vec<Expect>,
    after: After,
}

fn case(name: &'static str, input: impl AsRef<[u8]>, lines: &[Expect]) -> Case {
    Case {
        name,
        input: input.as_ref().to_vec(),
        lines: lines.to_vec(),
        after: After::Serves,
    }
}

fn closing(name: &'static str, input: impl AsRef<[u8]>, lines: &[Expect]) -> Case {
    Case {
        after: After::Closes,
        ..case(name, input, lines)
    }
}

fn cases() -> Vec<Case> {
    let b64 = |s: &[u8]| STANDARD.encode(s);
    let line_of = |n: usize| {
        let mut l = b"a NOOP ".to_vec();
        l.resize(n - 2, b'x');
        l.extend_from_slice(b"\r\n");
        l
    };
    vec![
        // --- tags
        case("empty line", "\r\n", &[NO_TAG]),
        case("NUL only", "\0\r\n", &[NO_TAG]),
        case("tag only", "a\r\n", &[NO_NAME]),
        case("star as tag", "* NOOP\r\n", &[NO_TAG]),
        case("plus as tag", "+ NOOP\r\n", &[NO_TAG]),
        case("brace in tag", "a{ NOOP\r\n", &[NO_NAME]),
        case("quote in tag", "a\"b NOOP\r\n", &[NO_NAME]),
        case("TAB after tag", "a\tNOOP\r\n", &[NO_NAME]),
        case("two spaces after tag", "a  NOOP\r\n", &[NO_NAME]),
        case("TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n", &[NO_TAG]),
        case("HTTP request line", "GET / HTTP/1.1\r\n", &["GET BAD Syntax error: expected a command name after the tag"]),
        // --- line endings, NUL, bytes
        case("NUL after command", "a NOOP\0\r\n", &["a BAD Syntax error: NUL byte in command"]),
        case("bare LF", "a NOOP\n", &["a BAD Syntax error: command must end with CRLF"]),
        case("bare CR inside", "a NOOP\rb NOOP\r\n", &[NO_ARGS]),
        case("CR CR LF", "a NOOP\r\r\n", &[NO_ARGS]),
        case("high bytes in command name", b"a N\xffOP\r\n", &["a BAD Unknown command"]),
        case("arguments to NOOP", "a NOOP extra\r\n", &[NO_ARGS]),
        case("arguments to CAPABILITY", "a CAPABILITY IMAP4rev1\r\n", &[NO_ARGS]),
        case("literal to NOOP", "a NOOP {3+}\r\nabc\r\n", &[NO_ARGS]),
        case("lower case is fine", "a noop\r\n", &["a OK NOOP completed"]),
        // --- line length
        case("line at the limit", line_of(MAX_LINE), &[NO_ARGS]),
        closing("line one over the limit", line_of(MAX_LINE + 1), &["a BAD Command line too long; closing"]),
        // --- LOGIN syntax
        case("LOGIN with one argument", "a LOGIN dev\r\n", &[LOGIN_ARGS]),
        case("LOGIN with three arguments", "a LOGIN dev pw more\r\n", &[LOGIN_ARGS]),
        case("LOGIN unterminated quote", "a LOGIN \"dev pw\r\n", &[LOGIN_ARGS]),
        case("LOGIN bad escape in quote", "a LOGIN \"d\\ev\" pw\r\n", &[LOGIN_ARGS]),
        case("LOGIN atom with a paren", b"a LOGIN \xc3\x28 pw\r\n", &[LOGIN_ARGS]),
        case("LOGIN invalid UTF-8 quoted", b"a LOGIN dev \"\xff\xfe\"\r\n", &["a BAD Syntax error: user name and password must be UTF-8"]),
        // --- literals
        case("negative literal", "a LOGIN dev {-1}\r\n", &[LOGIN_ARGS]),
        case("empty literal braces", "a LOGIN dev {}\r\n", &[LOGIN_ARGS]),
        case("literal plus only", "a LOGIN dev {+}\r\n", &[LOGIN_ARGS]),
        case("unterminated literal brace", "a LOGIN dev {3\r\n", &[LOGIN_ARGS]),
        case("garbage after literal brace", "a LOGIN dev {3}x\r\n", &[LOGIN_ARGS]),
        closing("literal one over the limit", "a LOGIN dev {8193}\r\n", &[TOO_LARGE]),
        closing("literal 2^32", "a LOGIN dev {4294967296}\r\n", &[TOO_LARGE]),
        closing("literal with 30 digits", "a LOGIN dev {999999999999999999999999999999}\r\n", &[TOO_LARGE]),
        case("literal shorter than announced data", "a LOGIN dev {3+}\r\nabcdef\r\n", &[LOGIN_ARGS]),
        case("synchronising literal then garbage", "a LOGIN dev {2}\r\nab junk\r\n", &[READY, LOGIN_ARGS]),
        case("literal with NUL", "a LOGIN dev {3+}\r\na\0b\r\n", &["a BAD Syntax error: NUL byte in command"]),
        // --- AUTHENTICATE
        case("AUTHENTICATE without mechanism", "a AUTHENTICATE\r\n", &[AUTH_ARGS]),
        case("AUTHENTICATE unknown mechanism", "a AUTHENTICATE CRAM-MD5\r\n", &["a NO Unsupported authentication mechanism; use AUTHENTICATE PLAIN or LOGIN"]),
        case("AUTHENTICATE non-base64 initial response", "a AUTHENTICATE PLAIN !!!!\r\n", &[AUTH_ARGS]),
        case("AUTHENTICATE base64 without NULs", "a AUTHENTICATE PLAIN YWJj\r\n", &[MALFORMED]),
        case("AUTHENTICATE empty initial response", "a AUTHENTICATE PLAIN =\r\n", &[MALFORMED]),
        case("AUTHENTICATE cancelled", "a AUTHENTICATE PLAIN\r\n*\r\n", &["+ ", "a BAD AUTHENTICATE cancelled"]),
        case("AUTHENTICATE bad base64 response", "a AUTHENTICATE PLAIN\r\n!!!\r\n", &["+ ", MALFORMED]),
        case("AUTHENTICATE response with bare LF", format!("a AUTHENTICATE PLAIN\r\n{}\n", b64(b"\0dev\0x")), &["+ ", MALFORMED]),
        case("AUTHENTICATE as another user", format!("a AUTHENTICATE PLAIN {}\r\n", b64(b"other\0dev\0x")), &["a NO [AUTHORIZATIONFAILED] Acting as another user is not supported"]),
        case("AUTHENTICATE four fields", format!("a AUTHENTICATE PLAIN {}\r\n", b64(b"\0dev\0x\0y")), &[MALFORMED]),
        // --- commands that need a login, and ID
        case("FETCH before login", "a FETCH 1:* (BODY[])\r\n", &["a BAD FETCH is not allowed before login; log in first (LOGIN or AUTHENTICATE PLAIN)"]),
        case("APPEND with literal before login", "a APPEND INBOX {3+}\r\nabc\r\n", &["a BAD APPEND is not allowed before login; log in first (LOGIN or AUTHENTICATE PLAIN)"]),
        case("ID unterminated list", "a ID (\"name\"\r\n", &["a BAD Syntax error: ID takes NIL or a list of field/value strings"]),
        case("ID nested list", "a ID ((\"a\" \"b\"))\r\n", &["a BAD Syntax error: ID takes NIL or a list of field/value strings"]),
    ]
}

fn matches(got: &str, want: Expect) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => got == want,
    }
}

#[tokio::test]
async fn malformed_imap_table() {
    let env = setup(Setup::default()).await;
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut c = env.client().await;
        c.send(&case.input).await;
        let mut got = Vec::new();
        for _ in &case.lines {
            got.push(c.line().await);
        }
        let ok = got.iter().zip(&case.lines).all(|(g, w)| matches(g, w));
        if !ok {
            failures.push(format!(
                "{}:\n   sent {:?}\n   want {:?}\n   got  {:?}",
                case.name,
                String::from_utf8_lossy(&case.input[..case.input.len().min(100)]),
                case.lines,
                got
            ));
            continue;
        }
        match case.after {
            After::Serves => {
                c.send(b"z NOOP\r\n").await;
                let l = c.line().await;
                if l != "z OK NOOP completed" {
                    failures.push(format!("{}: then NOOP got {l:?}", case.name));
                }
            }
            After::Closes => {
                let rest = c.read_to_eof().await;
                if !rest.is_empty() {
                    failures.push(format!(
                        "{}: more before close: {:?}",
                        case.name,
                        String::from_utf8_lossy(&rest)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(env.upstream.connections(), 0, "nothing may reach upstream");
    let mut c = env.logged_in().await;
    c.send(b"n NOOP\r\n").await;
    assert_eq!(c.tagged("n").await.last().unwrap(), "n OK NOOP completed");
}
