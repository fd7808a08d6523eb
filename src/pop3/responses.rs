//! Every POP3 response text mailbridge itself sends (greeting, pre-login
//! replies, login outcomes, sign-offs). Nothing else in `pop3` writes
//! protocol text. Codes in brackets are RFC 2449/3206 response codes
//! (`RESP-CODES`, `AUTH-RESP-CODE` in CAPA).

/// No APOP timestamp (`<...>`) in the greeting: APOP needs the plaintext
/// password on our side, and we only store an argon2 hash.
pub const GREETING: &[u8] = b"+OK mailbridge POP3 ready\r\n";
pub const NOT_ALLOWED: &[u8] = b"-ERR Your address is not allowed to use this server\r\n";
pub const SHUTTING_DOWN: &[u8] = b"-ERR [SYS/TEMP] mailbridge shutting down\r\n";
pub const LOGIN_TIMEOUT: &[u8] = b"-ERR Autologout; no login in time\r\n";
pub const IDLE_TIMEOUT: &[u8] = b"-ERR Autologout; idle for too long\r\n";
pub const QUIT: &[u8] = b"+OK mailbridge signing off\r\n";
/// The continuation for AUTH PLAIN without an initial response (empty challenge).
pub const SASL_CONTINUE: &[u8] = b"+ \r\n";
pub const USER_OK: &[u8] = b"+OK Send PASS\r\n";
pub const LOGGED_IN: &[u8] = b"+OK Logged in\r\n";
pub const STLS_OK: &[u8] = b"+OK Begin TLS negotiation now\r\n";
pub const STLS_ACTIVE: &[u8] = b"-ERR TLS is already active\r\n";
pub const STLS_UNAVAILABLE: &[u8] =
    b"-ERR STLS is not offered here (no local TLS configured); log in without it\r\n";
/// `AUTH` without a mechanism: the mechanism list (a common pre-RFC 5034 probe).
pub const AUTH_LIST: &[u8] = b"+OK\r\nPLAIN\r\n.\r\n";
pub const MECHANISM_UNSUPPORTED: &[u8] = b"-ERR Unsupported mechanism; use AUTH PLAIN\r\n";
pub const AUTH_CANCELLED: &[u8] = b"-ERR AUTH cancelled\r\n";
pub const SASL_MALFORMED: &[u8] = b"-ERR Malformed AUTH PLAIN response (bad base64 or layout)\r\n";
pub const AUTHZID_REFUSED: &[u8] =
    b"-ERR [AUTH] Authorization identity must be empty or equal the user name\r\n";
pub const APOP_REFUSED: &[u8] = b"-ERR APOP is not supported (mailbridge stores no plaintext passwords); use USER/PASS or AUTH PLAIN\r\n";
pub const USER_FIRST: &[u8] = b"-ERR Send USER first\r\n";
pub const USER_MISSING: &[u8] = b"-ERR USER needs a user name\r\n";
/// RFC 1939 section 5: NOOP belongs to the TRANSACTION state.
pub const NOOP_BEFORE_LOGIN: &[u8] = b"-ERR NOOP is only valid after login\r\n";
pub const LOGIN_FIRST: &[u8] = b"-ERR Log in first (USER/PASS or AUTH PLAIN)\r\n";
pub const UNKNOWN_COMMAND: &[u8] = b"-ERR Unknown command\r\n";
pub const BAD_LINE: &[u8] = b"-ERR Invalid command line (control characters or not UTF-8)\r\n";
pub const LINE_TOO_LONG: &[u8] = b"-ERR Line too long; closing\r\n";
pub const TOO_MANY_ERRORS: &[u8] = b"-ERR Too many errors; closing\r\n";
pub const AUTH_FAILED: &[u8] = b"-ERR [AUTH] Wrong user name or password\r\n";
/// Over the per-address cap of logins in progress (temporary, RFC 3206).
pub const LOGIN_BUSY: &[u8] =
    b"-ERR [SYS/TEMP] Too many logins in progress from this address; try again shortly\r\n";
pub const AUTH_BLOCKED: &[u8] =
    b"-ERR [AUTH] Too many failed logins from your address; try again later\r\n";
pub const NO_ACCOUNT: &[u8] = b"-ERR [SYS/PERM] No upstream account configured for this login\r\n";
pub const ACCOUNT_UNUSABLE: &[u8] =
    b"-ERR [SYS/PERM] The upstream account has no usable password; see the mailbridge log\r\n";
pub const NO_POP3: &[u8] = b"-ERR [SYS/PERM] The upstream account has no POP3 server; use IMAP\r\n";
pub const TOO_MANY_CONNECTIONS: &[u8] =
    b"-ERR [IN-USE] Too many POP3 sessions for this account; try again later\r\n";
pub const UPSTREAM_UNAVAILABLE: &[u8] =
    b"-ERR [SYS/TEMP] Upstream POP3 server unavailable; try again later\r\n";
/// The upstream refused the account's own credentials: not the device's fault.
pub const UPSTREAM_AUTH_FAILED: &[u8] = b"-ERR [SYS/PERM] The upstream server refused the account's credentials; check the app password and that POP is enabled in the provider's settings (run `mailbridge check`)\r\n";
/// An OAuth2 account whose grant is gone: temporary (it works again once
/// the administrator has run `mailbridge auth`).
pub const NEEDS_REAUTHORIZATION: &[u8] = b"-ERR [SYS/TEMP] The account's OAuth2 authorization must be renewed; the administrator should run mailbridge auth (see the mailbridge log)\r\n";
/// The provider refused the account's OAuth2 token, even a fresh one.
pub const UPSTREAM_TOKEN_REFUSED: &[u8] = b"-ERR [SYS/PERM] The upstream server refused the account's OAuth2 token; the administrator should run mailbridge check\r\n";
/// The hint `mailbridge check` prints after an upstream `-ERR` to PASS.
pub const CHECK_AUTH_HINT: &str = "the server refused the user name or app password; check them, and that POP is enabled in the provider's settings (Gmail: Settings > Forwarding and POP/IMAP)";

/// CAPA before login (RFC 2449). No APOP; no TOP/UIDL promises (those are
/// the upstream's to make, after login).
pub fn capa(stls: bool) -> Vec<u8> {
    let mut v =
        b"+OK Capability list follows\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            .to_vec();
    if stls {
        v.extend_from_slice(b"STLS\r\n");
    }
    v.extend_from_slice(b"IMPLEMENTATION mailbridge\r\n.\r\n");
    v
}
