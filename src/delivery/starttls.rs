//! The plaintext start of an upstream STARTTLS connection (greeting, EHLO,
//! STARTTLS), done here rather than by lettre: lettre upgrades its socket
//! under a buffered reader, so bytes the server (or a man in the middle)
//! sends after its `220` would later be read as if they came over TLS.
//! Replies are read line by line; anything buffered after the `220` is
//! refused and the connection dropped. The TLS handshake and everything after
//! it are the caller's ([`super::transport`], then lettre).

use std::io;
use std::str::FromStr;

use lettre::transport::smtp::commands::{Ehlo, Quit, Starttls};
use lettre::transport::smtp::extension::{ClientId, Extension, ServerInfo};
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::outcome::{describe_text, ConnectFailure};
use super::reply::{Reply, Stage};
use crate::config::Endpoint;
use crate::imap::framing::{FrameError, LineBuffer};

/// Longest reply line we read (RFC 5321 allows 512 bytes; lettre takes 1000).
const MAX_LINE: usize = 1024;
/// Largest whole reply (a long EHLO list).
const MAX_REPLY: usize = 64 * 1024;

/// The plaintext reply being waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Ehlo,
    Starttls,
}

/// What to do after a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    SendEhlo,
    SendStarttls,
    /// Start the TLS handshake: nothing is buffered.
    Handshake,
}

#[derive(Debug, thiserror::Error)]
pub enum StarttlsError {
    /// A negative reply, e.g. `421 4.7.0 try again later`.
    #[error("{0}")]
    Refused(Reply),
    #[error("the server does not offer STARTTLS; refusing to send credentials in plaintext")]
    NotOffered,
    #[error(
        "the server sent data after accepting STARTTLS (possibly replies forged by a \
         man in the middle); dropped the connection before AUTH"
    )]
    DataAfterStarttls,
    #[error("incomplete response")]
    Closed,
    #[error("SMTP response too long")]
    TooLong,
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for StarttlsError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed => StarttlsError::Closed,
            FrameError::Io(e) => StarttlsError::Io(e),
            FrameError::TooLong { .. } | FrameError::LiteralTooLarge { .. } => {
                StarttlsError::TooLong
            }
        }
    }
}

/// Checks one reply line (CRLF included) and says whether it is the last
/// line of its reply (`250 x`, or a bare `250`) or more follow (`250-x`).
pub fn is_last_line(line: &[u8]) -> Result<bool, StarttlsError> {
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(StarttlsError::Malformed("line does not end in CRLF".into()));
    };
    if body.len() < 3 || !body[..3].iter().all(u8::is_ascii_digit) {
        return Err(StarttlsError::Malformed("no reply code".into()));
    }
    match body.get(3) {
        None | Some(b' ') => Ok(true),
        Some(b'-') => Ok(false),
        Some(_) => Err(StarttlsError::Malformed(
            "no space after the reply code".into(),
        )),
    }
}

/// Parses a complete reply (every line, CRLF-terminated) with lettre's parser.
pub fn parse_reply(text: &str) -> Result<Response, StarttlsError> {
    Response::from_str(text).map_err(|e| StarttlsError::Malformed(e.to_string()))
}

/// The decision after the reply to `phase`. `buffered`: bytes were read
/// beyond the reply. After the `220` to STARTTLS they would be taken as TLS
/// data, so any is a protocol error (before that they are plaintext replies
/// read next, as any SMTP client would).
pub fn after_reply(phase: Phase, reply: &Response, buffered: bool) -> Result<Next, StarttlsError> {
    if !reply.is_positive() {
        return Err(StarttlsError::Refused(Reply::from_response(reply)));
    }
    match phase {
        Phase::Greeting => Ok(Next::SendEhlo),
        Phase::Ehlo => {
            let info = ServerInfo::from_response(reply)
                .map_err(|e| StarttlsError::Malformed(e.to_string()))?;
            if info.supports_feature(Extension::StartTls) {
                Ok(Next::SendStarttls)
            } else {
                Err(StarttlsError::NotOffered)
            }
        }
        Phase::Starttls if buffered => Err(StarttlsError::DataAfterStarttls),
        Phase::Starttls => Ok(Next::Handshake),
    }
}

/// The connect failure for `e` during `phase` with `ep`, in the words the
/// lettre-driven code used before (same stages, same hints).
pub fn failure(ep: &Endpoint, phase: Phase, e: &StarttlsError) -> ConnectFailure {
    let stage = match phase {
        Phase::Greeting | Phase::Ehlo => format!("greeting/EHLO from {ep}"),
        Phase::Starttls => format!("STARTTLS with {ep}"),
    };
    match e {
        StarttlsError::NotOffered => ConnectFailure::Config(format!("{ep}: {e}")),
        StarttlsError::Refused(r) => ConnectFailure::Answered {
            stage: match phase {
                Phase::Greeting => Stage::Greeting,
                Phase::Ehlo => Stage::Ehlo,
                Phase::Starttls => Stage::Starttls,
            },
            reason: format!("{stage}: {r}"),
            reply: r.clone(),
        },
        _ => ConnectFailure::Temporary(describe_text(&e.to_string(), &stage)),
    }
}

/// Reads one whole reply without reading past it more than the socket
/// delivered in the same segment (what is left stays in `buf`).
async fn read_reply<S: AsyncRead + Unpin>(
    buf: &mut LineBuffer,
    s: &mut S,
) -> Result<Response, StarttlsError> {
    let mut text = String::new();
    loop {
        let line = buf.read_line(s, MAX_LINE).await?;
        let last = is_last_line(&line)?;
        let line = std::str::from_utf8(&line)
            .map_err(|_| StarttlsError::Malformed("reply is not UTF-8".into()))?;
        if line.len() == 5 {
            // A bare `250`: lettre's parser wants the space RFC 5321 makes optional.
            text.push_str(&line[..3]);
            text.push_str(" \r\n");
        } else {
            text.push_str(line);
        }
        if text.len() > MAX_REPLY {
            return Err(StarttlsError::TooLong);
        }
        if last {
            return parse_reply(&text);
        }
    }
}

/// Greeting, EHLO as `hello`, STARTTLS, on a plaintext stream. `Ok` means
/// the server accepted STARTTLS and sent nothing more: the TLS handshake
/// may start on `s`. Nothing but EHLO, STARTTLS (and QUIT when the server
/// refuses) is ever sent here.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hello: &ClientId,
) -> Result<(), (Phase, StarttlsError)> {
    let mut buf = LineBuffer::default();
    let mut phase = Phase::Greeting;
    loop {
        let step = match read_reply(&mut buf, s).await {
            Ok(reply) => after_reply(phase, &reply, !buf.is_empty()),
            Err(e) => Err(e),
        };
        let command = match step {
            Ok(Next::SendEhlo) => Ehlo::new(hello.clone()).to_string(),
            Ok(Next::SendStarttls) => Starttls.to_string(),
            Ok(Next::Handshake) => return Ok(()),
            Err(e) => {
                if matches!(e, StarttlsError::NotOffered | StarttlsError::Refused(_)) {
                    // The server speaks SMTP and answered: say goodbye.
                    let _ = s.write_all(Quit.to_string().as_bytes()).await;
                }
                return Err((phase, e));
            }
        };
        let sent = async {
            s.write_all(command.as_bytes()).await?;
            s.flush().await
        };
        sent.await.map_err(|e| (phase, StarttlsError::Io(e)))?;
        phase = match phase {
            Phase::Greeting => Phase::Ehlo,
            Phase::Ehlo | Phase::Starttls => Phase::Starttls,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Response {
        parse_reply(text).unwrap()
    }

    #[test]
    fn reply_lines() {
        assert!(is_last_line(b"220 ready\r\n").unwrap());
        assert!(is_last_line(b"250\r\n").unwrap());
        assert!(!is_last_line(b"250-STARTTLS\r\n").unwrap());
        for bad in [&b"220 ready\n"[..], b"22 x\r\n", b"abc x\r\n", b"220x\r\n"] {
            assert!(is_last_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ehlo_without_starttls_is_refused() {
        let r = reply("250-upstream.test\r\n250 8BITMIME\r\n");
        assert!(matches!(
            after_reply(Phase::Ehlo, &r, false),
            Err(StarttlsError::NotOffered)
        ));
        let r = reply("250-upstream.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
        assert_eq!(
            after_reply(Phase::Ehlo, &r, false).unwrap(),
            Next::SendStarttls
        );
    }

    #[test]
    fn any_byte_after_the_220_to_starttls_is_refused() {
        let r = reply("220 2.0.0 go ahead\r\n");
        assert_eq!(
            after_reply(Phase::Starttls, &r, false).unwrap(),
            Next::Handshake
        );
        assert!(matches!(
            after_reply(Phase::Starttls, &r, true),
            Err(StarttlsError::DataAfterStarttls)
        ));
    }

    #[test]
    fn negative_replies_keep_their_code() {
        let r = reply("421-4.7.0 try\r\n421 4.7.0 again later\r\n");
        match after_reply(Phase::Greeting, &r, false) {
            Err(StarttlsError::Refused(t)) => {
                assert_eq!(t.to_string(), "421 4.7.0 try 4.7.0 again later")
            }
            other => panic!("{other:?}"),
        }
        let r = reply("454 4.7.0 TLS not available\r\n");
        assert!(matches!(
            after_reply(Phase::Starttls, &r, false),
            Err(StarttlsError::Refused(_))
        ));
        // Lines with different codes are not one reply.
        assert!(parse_reply("250-a\r\n220 b\r\n").is_err());
    }

    #[tokio::test]
    async fn negotiate_reads_exactly_up_to_the_220() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let hello = ClientId::Domain("relay.local".into());
        let srv = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            server
                .write_all(b"220-upstream.test\r\n220 ESMTP\r\n")
                .await
                .unwrap();
            let mut got = vec![0; 64];
            let n = server.read(&mut got).await.unwrap();
            assert_eq!(&got[..n], b"EHLO relay.local\r\n");
            server
                .write_all(b"250-upstream.test\r\n250 STARTTLS\r\n")
                .await
                .unwrap();
            let n = server.read(&mut got).await.unwrap();
            assert_eq!(&got[..n], b"STARTTLS\r\n");
            server.write_all(b"220 go ahead\r\n").await.unwrap();
            server
        });
        negotiate(&mut client, &hello).await.unwrap();
        drop(srv.await.unwrap());
    }

    #[tokio::test]
    async fn negotiate_refuses_bytes_after_the_220() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let hello = ClientId::Domain("relay.local".into());
        server
            .write_all(b"220 hi\r\n250-x\r\n250 STARTTLS\r\n220 go ahead\r\n250 forged\r\n")
            .await
            .unwrap();
        let r = negotiate(&mut client, &hello).await;
        assert!(
            matches!(r, Err((Phase::Starttls, StarttlsError::DataAfterStarttls))),
            "{r:?}"
        );
    }

    #[test]
    fn a_refused_greeting_is_a_typed_temporary_failure() {
        let ep = Endpoint {
            host: "smtp.example.com".into(),
            port: 587,
            tls: crate::config::TlsMode::Starttls,
        };
        let refused = StarttlsError::Refused(Reply::from_parts(421, "4.3.2 down"));
        match failure(&ep, Phase::Greeting, &refused) {
            f @ ConnectFailure::Answered {
                stage: Stage::Greeting,
                ..
            } => {
                assert!(!f.is_config());
                assert_eq!(
                    f.reason(),
                    "greeting/EHLO from smtp.example.com:587 (starttls TLS): 421 4.3.2 down"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
