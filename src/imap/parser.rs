//! The pre-login command grammar (RFC 3501/9051 subset) in nom 8: tag,
//! CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN with astrings (atom, quoted
//! with escapes, `{n}`/`{n+}` literals) and AUTHENTICATE with SASL-IR.
//! Input is one whole command as framed by [`super::framing`], literals
//! inline, ending in CRLF.

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take, take_while1, take_while_m_n};
use nom::combinator::{all_consuming, map, opt, value};
use nom::sequence::{delimited, preceded, terminated};
use nom::{IResult, Parser};

use crate::secret::Secret;

/// A parsed pre-login command.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub tag: String,
    pub command: Command,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Capability,
    Noop,
    Logout,
    Id,
    StartTls,
    Login {
        user: String,
        password: Secret,
    },
    /// `initial` is the SASL-IR argument as sent (base64 or `=`).
    Authenticate {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    /// A real IMAP command that is only valid after login (upper-cased name).
    NotBeforeLogin(String),
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not even a tag could be found: answer with `* BAD`.
    NoTag,
    /// A tag was found but the rest is wrong.
    Syntax { tag: String, what: &'static str },
}

/// Commands a client may legitimately send once logged in; before login they
/// get a "log in first" instead of "unknown command".
const AFTER_LOGIN: &[&str] = &[
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "STATUS",
    "APPEND",
    "CHECK",
    "CLOSE",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
    "UID",
    "IDLE",
    "ENABLE",
    "NAMESPACE",
    "GETQUOTA",
    "GETQUOTAROOT",
    "GETACL",
    "UNSELECT",
    "COMPRESS",
    "XLIST",
    "SETQUOTA",
    "SETACL",
    "MYRIGHTS",
    "LISTRIGHTS",
    "GETMETADATA",
    "SETMETADATA",
    "SORT",
    "THREAD",
    "ESEARCH",
    "UNAUTHENTICATE",
];

/// Parses one complete command (literals inline, final CRLF included).
pub fn parse_command(input: &[u8]) -> Result<Parsed, ParseError> {
    let Ok((rest, t)) = imap_tag(input) else {
        return Err(ParseError::NoTag);
    };
    let tg = String::from_utf8_lossy(t).into_owned();
    let err = |what| ParseError::Syntax {
        tag: tg.clone(),
        what,
    };
    if input.contains(&0) {
        return Err(err("NUL byte in command"));
    }
    if !input.ends_with(b"\r\n") {
        return Err(err("command must end with CRLF"));
    }
    let Ok((rest, name)) = command_name(rest) else {
        return Err(err("expected a command name after the tag"));
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let no_args = |cmd: Command| match crlf_only(rest) {
        Ok(_) => Ok(cmd),
        Err(_) => Err(err("this command takes no arguments")),
    };
    let command = match name.as_str() {
        "CAPABILITY" => no_args(Command::Capability)?,
        "NOOP" => no_args(Command::Noop)?,
        "LOGOUT" => no_args(Command::Logout)?,
        "STARTTLS" => no_args(Command::StartTls)?,
        "ID" => match all_consuming(terminated(preceded(tag(" "), id_params), tag("\r\n")))
            .parse(rest)
        {
            Ok(_) => Command::Id,
            Err(_) => return Err(err("ID takes NIL or a list of field/value strings")),
        },
        "LOGIN" => {
            let args = all_consuming(terminated(
                (preceded(tag(" "), astring), preceded(tag(" "), astring)),
                tag("\r\n"),
            ))
            .parse(rest);
            let Ok((_, (user, password))) = args else {
                return Err(err("LOGIN needs a user name and a password"));
            };
            let (Ok(user), Ok(password)) = (String::from_utf8(user), String::from_utf8(password))
            else {
                return Err(err("user name and password must be UTF-8"));
            };
            Command::Login {
                user,
                password: Secret::new(password),
            }
        }
        "AUTHENTICATE" => {
            let args = all_consuming(terminated(
                (
                    preceded(tag(" "), take_while1(is_atom_char)),
                    opt(preceded(tag(" "), sasl_initial)),
                ),
                tag("\r\n"),
            ))
            .parse(rest);
            let Ok((_, (mech, initial))) = args else {
                return Err(err(
                    "AUTHENTICATE needs a mechanism name and optionally a base64 initial response",
                ));
            };
            Command::Authenticate {
                mechanism: String::from_utf8_lossy(mech).to_ascii_uppercase(),
                initial: initial.map(<[u8]>::to_vec),
            }
        }
        n if AFTER_LOGIN.contains(&n) => Command::NotBeforeLogin(name),
        _ => Command::Unknown,
    };
    Ok(Parsed { tag: tg, command })
}

/// An AUTHENTICATE response that is not valid base64.
#[derive(Debug, PartialEq, Eq)]
pub struct BadBase64;

/// Decodes one AUTHENTICATE response line (without CRLF): `Ok(None)` is the
/// `*` cancel, `Ok(Some(bytes))` the decoded response (`=` or empty line: empty).
pub fn parse_sasl_response(line: &[u8]) -> Result<Option<Vec<u8>>, BadBase64> {
    use base64::Engine;
    match line {
        b"*" => Ok(None),
        b"" | b"=" => Ok(Some(Vec::new())),
        b => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|_| BadBase64),
    }
}

/// Splits a SASL PLAIN message `authzid NUL authcid NUL password`.
pub fn split_plain(msg: &[u8]) -> Option<(String, String, Secret)> {
    let mut parts = msg.split(|b| *b == 0);
    let authz = parts.next()?;
    let authc = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() || authc.is_empty() {
        return None;
    }
    Some((
        String::from_utf8(authz.to_vec()).ok()?,
        String::from_utf8(authc.to_vec()).ok()?,
        Secret::new(String::from_utf8(pass.to_vec()).ok()?),
    ))
}

/// The tag of a command, if its first token is a valid one (for replies to
/// lines that cannot be parsed further).
pub fn tag_of(input: &[u8]) -> Option<String> {
    let (rest, t) = imap_tag(input).ok()?;
    (rest.first() == Some(&b' ')).then(|| String::from_utf8_lossy(t).into_owned())
}

fn command_name(i: &[u8]) -> IResult<&[u8], &[u8]> {
    preceded(
        tag(" "),
        take_while1(|c: u8| c.is_ascii_alphanumeric() || c == b'-'),
    )
    .parse(i)
}

fn crlf_only(i: &[u8]) -> IResult<&[u8], &[u8]> {
    all_consuming(tag("\r\n")).parse(i)
}

fn is_atom_char(c: u8) -> bool {
    (0x21..0x7f).contains(&c) && !b"(){%*\"\\]".contains(&c)
}

fn is_astring_char(c: u8) -> bool {
    is_atom_char(c) || c == b']'
}

fn is_tag_char(c: u8) -> bool {
    is_astring_char(c) && c != b'+'
}

fn imap_tag(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(is_tag_char).parse(i)
}

/// quoted = DQUOTE *(QUOTED-CHAR / "\" quoted-specials) DQUOTE; 8-bit
/// (UTF-8) text is accepted as RFC 9051 allows.
fn quoted(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    let fail = |i| {
        Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Char,
        )))
    };
    let Some((&b'"', mut rest)) = i.split_first() else {
        return fail(i);
    };
    let mut out = Vec::new();
    loop {
        match rest {
            [b'"', tail @ ..] => return Ok((tail, out)),
            [b'\\', c @ (b'"' | b'\\'), tail @ ..] => {
                out.push(*c);
                rest = tail;
            }
            [b'\\', ..] | [b'\r' | b'\n' | 0, ..] | [] => return fail(rest),
            [c, tail @ ..] => {
                out.push(*c);
                rest = tail;
            }
        }
    }
}

/// literal = "{" number ["+"] "}" CRLF *CHAR8 (the framer already read the data).
fn literal(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    let (i, n) = delimited(
        tag("{"),
        terminated(
            take_while_m_n(1, 10, |c: u8| c.is_ascii_digit()),
            opt(tag("+")),
        ),
        tag("}\r\n"),
    )
    .parse(i)?;
    let n: usize = std::str::from_utf8(n)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Digit)))?;
    let (i, data) = take(n).parse(i)?;
    Ok((i, data.to_vec()))
}

fn string(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    alt((quoted, literal)).parse(i)
}

/// Atoms also take 8-bit bytes: old clients send UTF-8 or Latin-1 user names
/// unquoted, and they are re-encoded before going anywhere.
fn astring(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    alt((
        map(
            take_while1(|c| is_astring_char(c) || c >= 0x80),
            <[u8]>::to_vec,
        ),
        string,
    ))
    .parse(i)
}

fn nstring(i: &[u8]) -> IResult<&[u8], ()> {
    alt((value((), tag_no_case("NIL")), value((), string))).parse(i)
}

/// "NIL" / "(" [string SP nstring *(SP string SP nstring)] ")"
fn id_params(i: &[u8]) -> IResult<&[u8], ()> {
    fn pairs(mut i: &[u8]) -> IResult<&[u8], ()> {
        let mut first = true;
        loop {
            let start = i;
            let step = (
                |x| {
                    if first {
                        Ok((x, ()))
                    } else {
                        value((), tag(" ")).parse(x)
                    }
                },
                string,
                tag(" "),
                nstring,
            )
                .parse(i);
            match step {
                Ok((rest, _)) => {
                    i = rest;
                    first = false;
                }
                Err(_) => return Ok((start, ())),
            }
        }
    }
    alt((
        value((), tag_no_case("NIL")),
        value((), delimited(tag("("), pairs, tag(")"))),
    ))
    .parse(i)
}

fn sasl_initial(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(|c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=').parse(i)
}

/// How [`maximal_id`] encodes its strings.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum IdForm {
    /// Quoted, every octet escaped: the longest line the grammar allows.
    Escaped,
    /// `{n}` literals (each waits for a `+`).
    Literal,
    /// `{n+}` literals (LITERAL+).
    LiteralPlus,
}

/// The RFC 2971 maximum ID command: 30 pairs of 30-octet fields and
/// 1024-octet values.
#[cfg(test)]
pub(crate) fn maximal_id(tag: &str, form: IdForm) -> Vec<u8> {
    use super::framing::{ID_MAX_FIELD, ID_MAX_PAIRS, ID_MAX_VALUE};
    let string = |out: &mut Vec<u8>, n: usize, seed: usize| match form {
        IdForm::Escaped => {
            out.push(b'"');
            for k in 0..n {
                out.extend_from_slice(if (k + seed) % 2 == 0 {
                    b"\\\""
                } else {
                    b"\\\\"
                });
            }
            out.push(b'"');
        }
        IdForm::Literal | IdForm::LiteralPlus => {
            let plus = if matches!(form, IdForm::LiteralPlus) {
                "+"
            } else {
                ""
            };
            out.extend_from_slice(format!("{{{n}{plus}}}\r\n").as_bytes());
            const BYTES: &[u8] = b"(){}\"\\ x*%\xe4";
            out.extend((0..n).map(|k| BYTES[(k + seed) % BYTES.len()]));
        }
    };
    let mut cmd = format!("{tag} ID (").into_bytes();
    for pair in 0..ID_MAX_PAIRS {
        if pair > 0 {
            cmd.push(b' ');
        }
        string(&mut cmd, ID_MAX_FIELD, pair);
        cmd.push(b' ');
        string(&mut cmd, ID_MAX_VALUE, pair);
    }
    cmd.extend_from_slice(b")\r\n");
    cmd
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
