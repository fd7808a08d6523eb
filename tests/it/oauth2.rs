//! OAuth2: `mailbridge auth` (the real binary) against an in-process HTTPS
//! token endpoint whose certificate comes from a CA made at test time (see
//! `oauth2_support`): the device flow (pending, slow_down, approval;
//! declined; expired), client credentials, authorization code + PKCE with
//! the redirect pasted on stdin or sent to the loopback listener, `--status`
//! and `--forget`, the token file's mode, no token in any output at trace
//! level; the token manager's refresh over HTTPS; IMAP and POP3 XOAUTH2
//! against the in-process upstreams.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::ca::TestCa;
use crate::support::token_endpoint::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn write_config(dir: &Path, ca: &TestCa, port: u16) {
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let custom = |name: &str, client: &str, flow: &str, extra: &str| {
        format!(
            "[[accounts]]\nname = \"{name}\"\nprovider = \"custom\"\nusername = \"{name}@example.com\"\nauth = \"oauth2\"\nca_file = \"{}\"\n\
             smtp = {{ host = \"localhost\", port = 465, tls = \"implicit\" }}\nimap = {{ host = \"localhost\", port = 993, tls = \"implicit\" }}\n\
             [accounts.oauth2]\nprovider = \"custom\"\nclient_id = \"{client}\"\nflow = \"{flow}\"\nscopes = [\"mail\", \"offline\"]\n\
             token_url = \"{}\"\ndevice_url = \"{}\"\nauthorize_url = \"https://login.example/authorize\"\n{extra}\n",
            ca.ca_file.display(),
            url("/token"),
            url("/device"),
        )
    };
    let text = format!(
        "default_account = \"dev\"\n[smtp]\nspool_dir = \"{}\"\n\n{}{}{}{}{}\
         [[accounts]]\nname = \"plain\"\nusername = \"p@gmail.com\"\npassword = \"app-password\"\n",
        dir.join("spool").display(),
        custom("dev", "dev-ok", "device", ""),
        custom("deny", "dev-deny", "device", ""),
        custom("late", "dev-expire", "device", ""),
        custom(
            "app",
            "cc",
            "client_credentials",
            &format!("client_secret = \"{CLIENT_SECRET}\"")
        ),
        custom("code", "pkce", "authorization_code", ""),
    );
    std::fs::write(dir.join("relay.toml"), text).unwrap();
}

async fn auth(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("-c")
        .arg(dir.join("relay.toml"))
        .arg("auth")
        .args(args)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_secret(all: &str) {
    for s in [
        DEVICE_AT,
        DEVICE_RT,
        CC_AT,
        CODE_AT,
        CODE_RT,
        DEVICE_CODE,
        AUTH_CODE,
        CLIENT_SECRET,
    ] {
        assert!(!all.contains(s), "{s} leaked into the output:\n{all}");
    }
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn stored(dir: &Path, account: &str) -> serde_json::Value {
    let raw = std::fs::read(dir.join("spool/oauth2").join(format!("{account}.json"))).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_polls_honours_slow_down_and_stores_the_token_privately() {
    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);

    let o = auth(dir.path(), &["dev"]).await;
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("https://login.example/device"), "{all}");
    assert!(all.contains("WDJB-MJHT"), "the user code is shown: {all}");
    assert_no_secret(&all);

    let polls = server.seen.lock().unwrap().polls["dev-ok"].clone();
    assert_eq!(polls.len(), 3, "pending, slow_down, approved");
    assert!(
        polls[1] - polls[0] >= Duration::from_millis(950),
        "{:?}",
        polls[1] - polls[0]
    );
    assert!(
        polls[2] - polls[1] >= Duration::from_millis(5900),
        "slow_down adds 5 s: {:?}",
        polls[2] - polls[1]
    );

    let v = stored(dir.path(), "dev");
    assert_eq!(v["access_token"], DEVICE_AT);
    assert_eq!(v["refresh_token"], DEVICE_RT);
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir.path().join("spool/oauth2/dev.json")), 0o600);
        assert_eq!(mode(&dir.path().join("spool/oauth2")), 0o700);
    }

    let o = auth(dir.path(), &["--status"]).await;
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let dev = all
        .lines()
        .find(|l| l.starts_with("dev\t"))
        .unwrap_or_default();
    assert!(dev.contains("valid, expires"), "{all}");
    assert!(dev.contains("refresh token stored"), "{all}");
    let app = all
        .lines()
        .find(|l| l.starts_with("app\t"))
        .unwrap_or_default();
    assert!(app.contains("no token"), "{all}");
    assert!(
        !all.contains("plain"),
        "password accounts are not listed: {all}"
    );
    assert_no_secret(&all);

    let o = auth(dir.path(), &["--forget", "dev"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.path().join("spool/oauth2/dev.json").exists());
    let o = auth(dir.path(), &["--status"]).await;
    let all = text(&o);
    let dev = all
        .lines()
        .find(|l| l.starts_with("dev\t"))
        .unwrap_or_default();
    assert!(dev.contains("no token"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_says_when_declined_or_expired() {
    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);

    let o = auth(dir.path(), &["deny"]).await;
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("declined"), "{all}");
    assert!(!dir.path().join("spool/oauth2/deny.json").exists());

    let o = auth(dir.path(), &["late"]).await;
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("expired"), "{all}");
    assert_no_secret(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_need_no_person() {
    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);

    let o = auth(dir.path(), &["app"]).await;
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert_no_secret(&all);
    assert_eq!(server.seen.lock().unwrap().cc_requests, 1);
    let v = stored(dir.path(), "app");
    assert_eq!(v["access_token"], CC_AT);
    assert!(v.get("refresh_token").is_none());
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("spool/oauth2/app.json")), 0o600);
}

/// How the redirect comes back in the authorization-code test.
#[derive(Clone, Copy, PartialEq)]
enum Back {
    /// `--no-browser`: pasted on stdin.
    Pasted,
    /// The browser follows it to the loopback listener (after a favicon request).
    Browser,
}

async fn authorization_code_flow(back: Back) {
    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);

    let mut args = vec!["auth", "code"];
    if back == Back::Pasted {
        args.push("--no-browser");
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .arg("-c")
        .arg(dir.path().join("relay.toml"))
        .args(&args)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut shown = String::new();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the binary prints the authorize URL")
            .unwrap()
            .expect("stdout open");
        shown.push_str(&line);
        shown.push('\n');
        if line.starts_with("https://login.example/authorize") {
            break reqwest::Url::parse(&line).unwrap();
        }
    };
    let q: HashMap<String, String> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["scope"], "mail offline");
    let redirect = q["redirect_uri"].clone();
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    server.seen.lock().unwrap().challenge = Some(q["code_challenge"].clone());

    let target = format!("/?code={AUTH_CODE}&state={}", q["state"]);
    let mut stdin = child.stdin.take().unwrap();
    match back {
        Back::Pasted => {
            let pasted = format!("{}{target}\n", redirect.trim_end_matches('/'));
            stdin.write_all(pasted.as_bytes()).await.unwrap();
        }
        Back::Browser => {
            let addr = redirect
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let get = |path: String| {
                let addr = addr.clone();
                async move {
                    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut page = String::new();
                    c.read_to_string(&mut page).await.unwrap();
                    page
                }
            };
            assert!(get("/favicon.ico".into()).await.starts_with("HTTP/1.1 404"));
            let page = get(target.clone()).await;
            assert!(page.starts_with("HTTP/1.1 200"), "{page}");
            assert!(page.contains("you can close this window"), "{page}");
        }
    }
    drop(stdin);
    let mut rest = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let status = child.wait().await.unwrap();
    let all = format!("{shown}{rest}{err}");
    assert!(status.success(), "{all}");
    assert_no_secret(&all);

    let exchanges = &server.seen.lock().unwrap().code_exchanges;
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0]["redirect_uri"], redirect);
    let v = stored(dir.path(), "code");
    assert_eq!(v["access_token"], CODE_AT);
    assert_eq!(v["refresh_token"], CODE_RT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_with_pkce_takes_the_pasted_redirect() {
    authorization_code_flow(Back::Pasted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_with_pkce_takes_the_browsers_loopback_redirect() {
    authorization_code_flow(Back::Browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_unknown_password_and_escaped_names() {
    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);

    let o = auth(dir.path(), &["nosuch\x1b[2J"]).await;
    let all = text(&o);
    assert!(!o.status.success());
    assert!(all.contains("no [[accounts]] entry"), "{all}");
    assert!(!all.contains('\x1b'), "escaped: {all:?}");
    assert!(
        all.contains("OAuth2 accounts: dev, deny, late, app, code"),
        "{all}"
    );

    let o = auth(dir.path(), &["plain"]).await;
    let all = text(&o);
    assert!(!o.status.success());
    assert!(all.contains("logs in with a password"), "{all}");
    assert!(!all.contains("app-password"), "{all}");

    let o = auth(dir.path(), &["--forget", "plain"]).await;
    assert!(!o.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoints_are_verified_https_only() {
    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);
    // Without the test CA as ca_file the endpoint's certificate is not trusted.
    let other = TestCa::named("some other CA");
    let cfg = std::fs::read_to_string(dir.path().join("relay.toml"))
        .unwrap()
        .replace(
            &ca.ca_file.display().to_string(),
            &other.ca_file.display().to_string(),
        );
    std::fs::write(dir.path().join("relay.toml"), cfg).unwrap();
    let o = auth(dir.path(), &["app"]).await;
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("cannot reach the token endpoint"), "{all}");
    assert_eq!(server.seen.lock().unwrap().cc_requests, 0);
    assert_no_secret(&all);

    // An http:// endpoint is a configuration error, before anything is sent.
    let cfg = std::fs::read_to_string(dir.path().join("relay.toml"))
        .unwrap()
        .replace(
            &format!("https://localhost:{}/token", server.port),
            "http://localhost:1/token",
        );
    std::fs::write(dir.path().join("relay.toml"), cfg).unwrap();
    let o = auth(dir.path(), &["app"]).await;
    let all = text(&o);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains("oauth2.token_url"), "{all}");
    assert!(all.contains("https"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_manager_refreshes_over_https_saves_the_rotated_token_and_flags_a_revoked_grant()
{
    use mailbridge::oauth2::manager::{ProviderSource, TokenError, TokenManager};
    use mailbridge::oauth2::store::{now_ms, StoredToken, TokenStore};
    use mailbridge::secret::Secret;

    let ca = TestCa::new();
    let server = TokenServer::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &ca, server.port);
    let config = mailbridge::config::Config::load(&dir.path().join("relay.toml")).unwrap();
    let account = config.account("dev").unwrap();
    let source = ProviderSource {
        settings: account.oauth2.clone().unwrap(),
        http: mailbridge::oauth2::http::client(
            account.ca_file.as_deref(),
            mailbridge::oauth2::http::REQUEST_TIMEOUT,
        )
        .unwrap(),
    };
    let store = TokenStore::new(&config.smtp.spool_dir);
    let expired = |rt: &str| StoredToken {
        access_token: Secret::new(DEVICE_AT),
        refresh_token: Some(Secret::new(rt)),
        expires_at_ms: Some(now_ms().saturating_sub(1000)),
        scopes: vec!["mail".into()],
        obtained_at_ms: 0,
    };
    store.save("dev", &expired(DEVICE_RT)).unwrap();
    let manager = TokenManager::new("dev", store.clone(), Arc::new(source));

    assert_eq!(manager.access_token().await.unwrap().expose(), REFRESHED_AT);
    let saved = store.load("dev").unwrap().unwrap();
    assert_eq!(
        saved.refresh_token.unwrap().expose(),
        ROTATED_RT,
        "rotation persisted"
    );
    {
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.refreshes.len(), 1);
        assert_eq!(seen.refreshes[0]["refresh_token"], DEVICE_RT);
        assert_eq!(seen.refreshes[0]["scope"], "mail offline");
    }

    // A revoked grant, written as `mailbridge auth` would: picked up, refused for good.
    store.save("dev", &expired("RT-revoked")).unwrap();
    let e = manager.access_token().await.unwrap_err();
    assert!(
        matches!(e, TokenError::NeedsReauthorization { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("invalid_grant") && text.contains("AADSTS70000"),
        "{text}"
    );
    assert!(
        !text.contains("RT-revoked") && !text.contains(DEVICE_AT),
        "{text}"
    );
    assert_eq!(server.seen.lock().unwrap().refreshes.len(), 2);
}

/// An implicit-TLS endpoint on localhost and the verified client config for `ca`.
fn local_upstream(
    ca: &TestCa,
    port: u16,
) -> (mailbridge::config::Endpoint, Arc<rustls::ClientConfig>) {
    let ep = mailbridge::config::Endpoint {
        host: "localhost".into(),
        port,
        tls: mailbridge::config::TlsMode::Implicit,
    };
    (
        ep,
        mailbridge::tls::upstream_client_config(Some(&ca.ca_file)).unwrap(),
    )
}

mod imap_xoauth2 {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::support::ca::TestCa;
    use crate::support::imap_upstream::ImapUpstream;
    use mailbridge::imap::upstream::{authenticate_xoauth2, connect, UpstreamError};
    use mailbridge::secret::Secret;

    const USER: &str = "me@example.com";
    const TOKEN: &str = "ya29.imap-access-token";
    const T: Duration = Duration::from_secs(10);

    async fn login(up: &ImapUpstream, ca: &TestCa, token: &str) -> Result<(), UpstreamError> {
        let (ep, tls) = super::local_upstream(ca, up.port());
        let mut conn = connect(&ep, &tls, T).await?;
        authenticate_xoauth2(&mut conn, USER, &Secret::new(token), T)
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn authenticate_xoauth2_after_the_continuation_without_sasl_ir() {
        let ca = TestCa::new();
        let up = ImapUpstream::start(&ca.server_cert(), USER, TOKEN).await;
        login(&up, &ca, TOKEN).await.unwrap();
        assert_eq!(up.logins(), vec![b"L1 AUTHENTICATE XOAUTH2\r\n".to_vec()]);
    }

    #[tokio::test]
    async fn authenticate_xoauth2_inline_when_sasl_ir_is_offered() {
        let ca = TestCa::new();
        let up = ImapUpstream::start(&ca.server_cert(), USER, TOKEN).await;
        up.shared.sasl_ir.store(true, Ordering::SeqCst);
        login(&up, &ca, TOKEN).await.unwrap();
        let ir = mailbridge::oauth2::sasl::initial_response(USER, &Secret::new(TOKEN)).unwrap();
        assert_eq!(
            up.logins(),
            vec![format!("L1 AUTHENTICATE XOAUTH2 {}\r\n", ir.expose()).into_bytes()]
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_typed_with_the_providers_challenge() {
        let ca = TestCa::new();
        let up = ImapUpstream::start(&ca.server_cert(), USER, TOKEN).await;
        up.shared.sasl_ir.store(true, Ordering::SeqCst);
        let e = login(&up, &ca, "ya29.expired-token").await.unwrap_err();
        let UpstreamError::TokenRejected { text, failure } = &e else {
            panic!("{e:?}");
        };
        assert!(text.contains("AUTHENTICATIONFAILED"), "{text}");
        let f = failure.as_ref().expect("challenge decoded");
        assert!(f.token_rejected());
        assert_eq!(f.scope.as_deref(), Some("https://mail.google.com/"));
        assert!(!e.to_string().contains("expired-token"), "{e}");
        assert!(!format!("{e:?}").contains("expired-token"), "{e:?}");
    }
}

mod pop3_xoauth2 {
    use std::time::Duration;

    use crate::support::ca::TestCa;
    use crate::support::pop3_upstream::{Mode, Pop3Upstream};
    use mailbridge::pop3::upstream::{authenticate_xoauth2, connect, UpstreamError};
    use mailbridge::secret::Secret;

    const USER: &str = "me@outlook.com";
    const TOKEN: &str = "EwBIA-pop3-access-token";
    const T: Duration = Duration::from_secs(10);

    async fn login(up: &Pop3Upstream, ca: &TestCa, token: &str) -> Result<(), UpstreamError> {
        let (ep, tls) = super::local_upstream(ca, up.port());
        let mut conn = connect(&ep, &tls, T).await?;
        authenticate_xoauth2(&mut conn, USER, &Secret::new(token), T).await
    }

    #[tokio::test]
    async fn auth_xoauth2_logs_in_with_the_token() {
        let ca = TestCa::new();
        let up = Pop3Upstream::start(&ca.server_cert(), USER, TOKEN, Mode::Implicit).await;
        login(&up, &ca, TOKEN).await.unwrap();
        let ir = mailbridge::oauth2::sasl::initial_response(USER, &Secret::new(TOKEN)).unwrap();
        assert_eq!(
            up.lines(),
            vec![
                b"AUTH XOAUTH2\r\n".to_vec(),
                format!("{}\r\n", ir.expose()).into_bytes()
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_typed_with_the_providers_challenge() {
        let ca = TestCa::new();
        let up = Pop3Upstream::start(&ca.server_cert(), USER, TOKEN, Mode::Implicit).await;
        let e = login(&up, &ca, "EwBIA-expired").await.unwrap_err();
        let UpstreamError::TokenRejected { text, failure } = &e else {
            panic!("{e:?}");
        };
        assert!(text.contains("Authentication failed"), "{text}");
        assert!(failure.as_ref().is_some_and(|f| f.token_rejected()));
        assert!(!e.to_string().contains("EwBIA-expired"), "{e}");
        // The challenge was answered with an empty line (ending the exchange).
        assert_eq!(up.lines().last().map(Vec::as_slice), Some(&b"\r\n"[..]));
    }
}
