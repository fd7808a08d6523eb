//! An in-process OAuth2 token endpoint over HTTPS (certificate from the
//! test CA) for `tests/oauth2.rs`: device authorization (pending, slow_down,
//! approval, denial, expiry chosen by client id), client credentials (Basic
//! auth checked), authorization code (PKCE S256 checked) and refresh (with
//! rotation; anything but the known refresh token is `invalid_grant`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::ca::TestCa;

pub const DEVICE_AT: &str = "AT-device-7f3a9c1e";
pub const DEVICE_RT: &str = "RT-device-2b8d4e6f";
pub const CC_AT: &str = "AT-client-credentials-91c2";
pub const CODE_AT: &str = "AT-authcode-5d1e";
pub const CODE_RT: &str = "RT-authcode-8a7b";
pub const DEVICE_CODE: &str = "DC-device-code-33aa";
pub const AUTH_CODE: &str = "AC-code-from-browser";
pub const CLIENT_SECRET: &str = "client-secret-4e5f";
pub const REFRESHED_AT: &str = "AT-refreshed-0c0c";
pub const ROTATED_RT: &str = "RT-rotated-1d1d";

/// What the token endpoint saw.
#[derive(Default)]
pub struct Seen {
    /// Poll times of the device-code grant, per client id.
    pub polls: HashMap<String, Vec<Instant>>,
    /// The PKCE challenge from the authorize URL the binary printed.
    pub challenge: Option<String>,
    pub code_exchanges: Vec<HashMap<String, String>>,
    pub cc_requests: usize,
    pub refreshes: Vec<HashMap<String, String>>,
}

pub struct TokenServer {
    pub port: u16,
    pub seen: Arc<Mutex<Seen>>,
}

fn json_reply(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn form(body: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The endpoint's answer; client ids choose the device flow's ending.
fn answer(seen: &Mutex<Seen>, path: &str, head: &str, body: &str) -> String {
    let f = form(body);
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    match (path, get("grant_type").as_str()) {
        ("/device", _) => {
            let expires = if get("client_id") == "dev-expire" {
                2
            } else {
                600
            };
            json_reply(
                "200 OK",
                &format!(
                    r#"{{"device_code":"{DEVICE_CODE}","user_code":"WDJB-MJHT","verification_uri":"https://login.example/device","expires_in":{expires},"interval":1}}"#
                ),
            )
        }
        ("/token", "urn:ietf:params:oauth:grant-type:device_code") => {
            assert_eq!(get("device_code"), DEVICE_CODE);
            let client = get("client_id");
            let n = {
                let mut s = seen.lock().unwrap();
                let polls = s.polls.entry(client.clone()).or_default();
                polls.push(Instant::now());
                polls.len()
            };
            let error = match (client.as_str(), n) {
                ("dev-ok", 1) => Some("authorization_pending"),
                ("dev-ok", 2) => Some("slow_down"),
                ("dev-ok", _) => None,
                ("dev-deny", _) => Some("access_denied"),
                _ => Some("authorization_pending"),
            };
            match error {
                Some(e) => json_reply("400 Bad Request", &format!(r#"{{"error":"{e}"}}"#)),
                None => json_reply(
                    "200 OK",
                    &format!(
                        r#"{{"access_token":"{DEVICE_AT}","token_type":"Bearer","expires_in":3600,"refresh_token":"{DEVICE_RT}","scope":"mail offline"}}"#
                    ),
                ),
            }
        }
        ("/token", "client_credentials") => {
            seen.lock().unwrap().cc_requests += 1;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("cc:{CLIENT_SECRET}"));
            if !head.contains(&format!("authorization: Basic {basic}"))
                && !head.contains(&format!("Authorization: Basic {basic}"))
            {
                return json_reply("401 Unauthorized", r#"{"error":"invalid_client"}"#);
            }
            json_reply(
                "200 OK",
                &format!(r#"{{"access_token":"{CC_AT}","token_type":"Bearer","expires_in":3599}}"#),
            )
        }
        ("/token", "authorization_code") => {
            let challenge = seen.lock().unwrap().challenge.clone().unwrap_or_default();
            let verifier = get("code_verifier");
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            seen.lock().unwrap().code_exchanges.push(f.clone());
            if get("code") != AUTH_CODE || computed != challenge {
                return json_reply(
                    "400 Bad Request",
                    r#"{"error":"invalid_grant","error_description":"PKCE verification failed"}"#,
                );
            }
            json_reply(
                "200 OK",
                &format!(
                    r#"{{"access_token":"{CODE_AT}","token_type":"Bearer","expires_in":3600,"refresh_token":"{CODE_RT}"}}"#
                ),
            )
        }
        ("/token", "refresh_token") => {
            seen.lock().unwrap().refreshes.push(f.clone());
            if get("refresh_token") != DEVICE_RT {
                return json_reply(
                    "400 Bad Request",
                    r#"{"error":"invalid_grant","error_description":"AADSTS70000: the grant was revoked"}"#,
                );
            }
            json_reply(
                "200 OK",
                &format!(
                    r#"{{"access_token":"{REFRESHED_AT}","token_type":"Bearer","expires_in":3600,"refresh_token":"{ROTATED_RT}"}}"#
                ),
            )
        }
        _ => json_reply("400 Bad Request", r#"{"error":"unsupported_grant_type"}"#),
    }
}

impl TokenServer {
    pub async fn start(ca: &TestCa) -> TokenServer {
        let acceptor = ca.server_cert().acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let Ok(n) = tls.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let head = text[..end].to_string();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len])
                                    .into_owned();
                                break (head, body);
                            }
                        }
                    };
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let reply = answer(&seen, &path, &head, &body);
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TokenServer { port, seen }
    }
}
