//! Every IMAP response text mailbridge itself sends (greeting, pre-login
//! replies, login outcomes, BYE). Nothing else in `imap` writes protocol text.

/// What we offer before login. No LOGINDISABLED, ever: clients log in in
/// plaintext on loopback by design.
pub const CAPABILITIES: &str = "IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN";

/// [`CAPABILITIES`], plus STARTTLS on a plaintext connection when local TLS
/// is configured.
fn capabilities(starttls: bool) -> String {
    if starttls {
        format!("{CAPABILITIES} STARTTLS")
    } else {
        CAPABILITIES.to_string()
    }
}

pub fn greeting(starttls: bool) -> Vec<u8> {
    format!(
        "* OK [CAPABILITY {}] mailbridge ready\r\n",
        capabilities(starttls)
    )
    .into_bytes()
}

pub const NOT_ALLOWED: &[u8] = b"* BYE Your address is not allowed to use this server\r\n";
pub const SHUTTING_DOWN: &[u8] = b"* BYE mailbridge shutting down\r\n";
pub const LOGIN_TIMEOUT: &[u8] = b"* BYE Autologout; no login in time\r\n";
pub const IDLE_TIMEOUT: &[u8] = b"* BYE Autologout; idle for too long\r\n";
/// Continuation for a synchronising literal.
pub const LITERAL_READY: &[u8] = b"+ Ready for literal data\r\n";
/// Continuation asking for the AUTHENTICATE PLAIN response (empty challenge).
pub const SASL_CONTINUE: &[u8] = b"+ \r\n";

fn tagged(tag: &str, status: &str, text: &str) -> Vec<u8> {
    format!("{tag} {status} {text}\r\n").into_bytes()
}

pub fn capability(tag: &str, starttls: bool) -> Vec<u8> {
    let mut v = format!("* CAPABILITY {}\r\n", capabilities(starttls)).into_bytes();
    v.extend(tagged(tag, "OK", "CAPABILITY completed"));
    v
}

pub fn noop(tag: &str) -> Vec<u8> {
    tagged(tag, "OK", "NOOP completed")
}

pub fn logout(tag: &str) -> Vec<u8> {
    let mut v = b"* BYE mailbridge logging out\r\n".to_vec();
    v.extend(tagged(tag, "OK", "LOGOUT completed"));
    v
}

pub fn id(tag: &str) -> Vec<u8> {
    let mut v = format!(
        "* ID (\"name\" \"mailbridge\" \"version\" \"{}\")\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    v.extend(tagged(tag, "OK", "ID completed"));
    v
}

pub fn starttls_ok(tag: &str) -> Vec<u8> {
    tagged(tag, "OK", "Begin TLS negotiation now")
}

pub fn tls_already_active(tag: &str) -> Vec<u8> {
    tagged(tag, "BAD", "TLS is already active")
}

pub fn starttls_unavailable(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "BAD",
        "STARTTLS is not offered here (no local TLS configured); log in without it",
    )
}

pub fn login_first(tag: &str, command: &str) -> Vec<u8> {
    tagged(
        tag,
        "BAD",
        &format!(
            "{command} is not allowed before login; log in first (LOGIN or AUTHENTICATE PLAIN)"
        ),
    )
}

pub fn unknown_command(tag: &str) -> Vec<u8> {
    tagged(tag, "BAD", "Unknown command")
}

pub fn syntax_error(tag: &str, what: &str) -> Vec<u8> {
    tagged(tag, "BAD", &format!("Syntax error: {what}"))
}

/// A line we could not even find a valid tag in.
pub fn untagged_bad(what: &str) -> Vec<u8> {
    format!("* BAD {what}\r\n").into_bytes()
}

pub fn line_too_long(tag: &str) -> Vec<u8> {
    tagged(tag, "BAD", "Command line too long; closing")
}

pub fn literal_too_large(tag: &str) -> Vec<u8> {
    tagged(tag, "BAD", "Literal too large before login; closing")
}

pub fn mechanism_unsupported(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "Unsupported authentication mechanism; use AUTHENTICATE PLAIN or LOGIN",
    )
}

pub fn authenticate_cancelled(tag: &str) -> Vec<u8> {
    tagged(tag, "BAD", "AUTHENTICATE cancelled")
}

pub fn sasl_malformed(tag: &str) -> Vec<u8> {
    tagged(tag, "BAD", "Malformed AUTHENTICATE PLAIN response")
}

pub fn authzid_refused(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[AUTHORIZATIONFAILED] Acting as another user is not supported",
    )
}

pub fn auth_failed(tag: &str) -> Vec<u8> {
    tagged(tag, "NO", "[AUTHENTICATIONFAILED] Invalid credentials")
}

pub fn auth_blocked(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[AUTHENTICATIONFAILED] Too many failed logins for this user from your address; try again later",
    )
}

/// Over the per-address cap on logins in progress: temporary, try again.
pub fn login_busy(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[UNAVAILABLE] Too many logins in progress from your address; try again later",
    )
}

pub fn upstream_auth_failed(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[AUTHENTICATIONFAILED] The mail provider refused the account's credentials; the administrator should check the app password (mailbridge check)",
    )
}

pub fn passthrough_auth_failed(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[AUTHENTICATIONFAILED] The mail provider refused these credentials",
    )
}

pub fn upstream_unavailable(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[UNAVAILABLE] The mail provider cannot be reached right now; try again later",
    )
}

pub fn too_many_connections(tag: &str) -> Vec<u8> {
    tagged(tag, "NO", "[UNAVAILABLE] Too many connections for this account; close another mail client and try again")
}

pub fn account_unusable(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[UNAVAILABLE] The account has no usable password configured; ask the administrator",
    )
}

/// An OAuth2 account whose grant is gone: temporary for the device (it
/// works again once the administrator has run `mailbridge auth`).
pub fn needs_reauthorization(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[UNAVAILABLE] The account's OAuth2 authorization must be renewed; the administrator should run mailbridge auth (see the mailbridge log)",
    )
}

/// The provider refused the account's OAuth2 token, even a fresh one.
pub fn upstream_token_refused(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[AUTHENTICATIONFAILED] The mail provider refused the account's OAuth2 token; the administrator should run mailbridge check",
    )
}

pub fn no_account(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "NO",
        "[UNAVAILABLE] No upstream account is configured for this login",
    )
}

/// The client's own tag on the upstream's successful login. `code` is the
/// upstream's response code (e.g. `CAPABILITY ...`), without brackets.
pub fn login_ok(tag: &str, code: Option<&str>) -> Vec<u8> {
    match code {
        Some(c) => tagged(tag, "OK", &format!("[{c}] Logged in")),
        None => tagged(tag, "OK", "Logged in"),
    }
}

/// Text of an upstream refusal given to `mailbridge check` (and logs), never
/// containing what we sent.
pub const CHECK_AUTH_HINT: &str =
    "authentication failed: the provider rejected the username or app password. \
For Gmail use an app password (needs 2-step verification on the Google account), \
with the spaces removed, and the full address as username";

/// `sent_copy = "skip"`: an APPEND to Sent answered without storing it.
pub fn append_to_sent_skipped(tag: &str) -> Vec<u8> {
    tagged(
        tag,
        "OK",
        "APPEND completed (not stored again: the provider files sent mail in Sent itself)",
    )
}
