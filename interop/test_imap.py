"""IMAP through mailbridge's proxy to a real Dovecot over TLS, with Python
imaplib, curl and a raw socket client; results compared byte for byte with
the same commands sent straight to Dovecot."""

import base64
import imaplib
import socket
import time

import pytest

import fetchmail_client as fm
import harness as h
import imap_compat as ic
from mailgen import message, token

FETCH_ITEMS = "(UID RFC822.SIZE BODY.PEEK[])"


def proxy_client(bridge):
    return imaplib.IMAP4("127.0.0.1", bridge.imap_port, timeout=20)


def fetch_all(c):
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK", data
    typ, data = c.fetch("1:*", FETCH_ITEMS)
    assert typ == "OK", data
    return data


class RawImap:
    """A line-level client for what imaplib cannot do (IDLE, literals by hand)."""

    def __init__(self, port, timeout=15):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.n = 0

    def readline(self, timeout=15):
        d = h.Deadline(timeout)
        while b"\r\n" not in self.buf:
            self.sock.settimeout(max(0.05, d.left()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"no complete line within {timeout}s; have {self.buf[:200]!r}")
            if not chunk:
                raise EOFError(f"connection closed; have {self.buf[:200]!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def send(self, data):
        self.sock.sendall(data)

    def command(self, text, timeout=15):
        """Sends a tagged command; returns (untagged lines, tagged line)."""
        self.n += 1
        tag = f"r{self.n}".encode()
        self.send(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.readline(timeout)
            if line.startswith(tag + b" "):
                return lines, line
            lines.append(line)

    def close(self):
        self.sock.close()


def test_greeting_and_capability_are_mailbridges(bridge):
    c = RawImap(bridge.imap_port)
    greeting = c.readline()
    assert greeting.startswith(b"* OK"), greeting
    lines, done = c.command("CAPABILITY")
    assert done.split()[1] == b"OK", done
    caps = b" ".join(lines).upper()
    for cap in (b"IMAP4REV1", b"AUTH=PLAIN", b"SASL-IR", b"LITERAL+"):
        assert cap in caps, f"{cap} missing from {caps!r}"
    assert b"LOGINDISABLED" not in caps
    c.command("LOGOUT")
    c.close()


def test_imaplib_login_and_full_fetch_identical_to_direct(bridge, dovecot):
    direct = dovecot.client()
    direct.login(h.ACCOUNT, h.APP_PASSWORD)
    via = proxy_client(bridge)
    typ, data = via.login(h.DEVICE_USER, h.DEVICE_PASSWORD)  # space, quote and backslash in it
    assert typ == "OK", data
    want = fetch_all(direct)
    got = fetch_all(via)
    assert len([x for x in want if isinstance(x, tuple)]) >= 50
    assert got == want, "FETCH through mailbridge differs from FETCH straight from Dovecot"
    assert via.logout()[0] == "BYE"
    direct.logout()


def test_login_response_carries_upstream_capabilities(bridge):
    c = RawImap(bridge.imap_port)
    c.readline()
    pw = h.DEVICE_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    lines, done = c.command(f'LOGIN {h.DEVICE_USER} "{pw}"')
    assert done.split()[1] == b"OK", done
    # Dovecot's post-login capabilities reach the client (in the OK code or untagged).
    caps = (done + b" " + b" ".join(lines)).upper()
    assert b"IDLE" in caps, f"no post-login CAPABILITY from upstream: {done!r}"
    c.command("LOGOUT")
    c.close()


def test_login_with_synchronising_literal(bridge):
    c = RawImap(bridge.imap_port)
    c.readline()
    pw = h.DEVICE_PASSWORD.encode()
    c.send(b"L1 LOGIN " + h.DEVICE_USER.encode() + b" {" + str(len(pw)).encode() + b"}\r\n")
    cont = c.readline()
    assert cont.startswith(b"+"), cont
    c.send(pw + b"\r\n")
    line = c.readline()
    while not line.startswith(b"L1 "):
        line = c.readline()
    assert line.split()[1] == b"OK", line
    lines, done = c.command("SELECT INBOX")
    assert done.split()[1] == b"OK", done
    assert any(x.endswith(b"EXISTS") for x in lines)
    c.close()


def test_imaplib_authenticate_plain(bridge):
    c = proxy_client(bridge)
    creds = f"\0{h.DEVICE_USER}\0{h.DEVICE_PASSWORD}".encode()
    typ, data = c.authenticate("PLAIN", lambda _: creds)
    assert typ == "OK", data
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK" and int(data[0]) >= 50
    c.logout()


def test_imaplib_wrong_password(bridge):
    c = proxy_client(bridge)
    with pytest.raises(imaplib.IMAP4.error) as e:
        c.login(h.DEVICE_USER, "wrong password")
    assert "AUTHENTICATIONFAILED" in str(e.value).upper(), e.value
    # The connection stays usable for another try.
    typ, _ = c.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
    assert typ == "OK"
    c.logout()


def curl_imap(bridge, path, user, password, *extra):
    return h.run(["curl", "-sS", "--max-time", "30", f"imap://127.0.0.1:{bridge.imap_port}/{path}",
                  "-u", f"{user}:{password}", *extra], timeout=60)


def test_curl_imap_list_and_fetch(bridge, dovecot):
    r = curl_imap(bridge, "", h.DEVICE_USER, h.DEVICE_PASSWORD)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"INBOX" in r.stdout, r.stdout[:500]

    direct = dovecot.client()
    direct.login(h.ACCOUNT, h.APP_PASSWORD)
    direct.select("INBOX", readonly=True)
    typ, data = direct.uid("FETCH", "3", "(BODY.PEEK[])")
    direct.logout()
    want = data[0][1]
    r = curl_imap(bridge, "INBOX;UID=3", h.DEVICE_USER, h.DEVICE_PASSWORD)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == want, "curl's fetch through mailbridge differs from Dovecot's message"


def test_curl_imap_wrong_local_password_exit_67(bridge):
    r = curl_imap(bridge, "", h.DEVICE_USER, "wrong")
    assert r.returncode == 67, f"curl exit {r.returncode}, want 67 (login denied): {r.stderr!r}"


def test_idle_sees_message_appended_by_second_client(bridge):
    watcher = RawImap(bridge.imap_port, timeout=20)
    watcher.readline()
    pw = h.DEVICE_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    _, done = watcher.command(f'LOGIN {h.DEVICE_USER} "{pw}"')
    assert done.split()[1] == b"OK", done
    lines, done = watcher.command("SELECT INBOX")
    assert done.split()[1] == b"OK", done
    exists = [int(x.split()[1]) for x in lines if x.endswith(b"EXISTS")][-1]
    watcher.n += 1
    watcher.send(b"i1 IDLE\r\n")
    assert watcher.readline().startswith(b"+"), "no IDLE continuation"

    tok = token()
    writer = proxy_client(bridge)
    writer.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
    typ, data = writer.append("INBOX", None, imaplib.Time2Internaldate(time.time()),
                              message(tok, subject="appended during IDLE"))
    assert typ == "OK", data

    def seen():
        line = watcher.readline(timeout=10)
        return line if line.endswith(b"EXISTS") and int(line.split()[1]) > exists else None

    h.poll(seen, 15, "IDLE to report the APPENDed message", interval=0)
    watcher.send(b"DONE\r\n")
    line = watcher.readline()
    while not line.startswith(b"i1 "):
        line = watcher.readline()
    assert line.split()[1] == b"OK", line
    _, done = watcher.command("LOGOUT")
    assert done.split()[1] == b"OK"
    watcher.close()

    writer.select("INBOX")
    typ, data = writer.search(None, "HEADER", "X-Interop-Token", tok)
    assert typ == "OK" and data[0].split(), "appended message not found"
    writer.store(data[0].split()[0], "+FLAGS", "\\Deleted")
    writer.expunge()
    writer.logout()


def test_logout_closes_the_connection(bridge):
    c = RawImap(bridge.imap_port)
    c.readline()
    pw = h.DEVICE_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    c.command(f'LOGIN {h.DEVICE_USER} "{pw}"')
    lines, done = c.command("LOGOUT")
    assert any(x.startswith(b"* BYE") for x in lines), lines
    assert done.split()[1] == b"OK"
    c.sock.settimeout(10)
    assert c.sock.recv(100) == b"", "connection not closed after LOGOUT"
    c.close()


def test_real_credentials_are_not_passed_through_by_default(bridge):
    """passthrough = false: the account's own app password is not a local login."""
    c = proxy_client(bridge)
    with pytest.raises(imaplib.IMAP4.error) as e:
        c.login(h.ACCOUNT, h.APP_PASSWORD)
    assert "AUTHENTICATIONFAILED" in str(e.value).upper(), e.value
    c.shutdown()


def test_async_imap_client_fetch_matches_direct(bridge, dovecot):
    """async-imap (Rust, examples/imap_digest.rs) through the proxy sees the
    same mailbox, byte for byte, as imaplib straight to Dovecot."""
    import hashlib
    import subprocess

    direct = dovecot.client()
    direct.login(h.ACCOUNT, h.APP_PASSWORD)
    typ, _ = direct.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = direct.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    bodies = [x[1] for x in data if isinstance(x, tuple)]
    direct.logout()
    want = hashlib.sha256(b"".join(bodies)).hexdigest()

    out = subprocess.run(
        [h.EXAMPLE_IMAP_DIGEST, f"127.0.0.1:{bridge.imap_port}", h.DEVICE_USER, h.DEVICE_PASSWORD],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(l.split(" ", 1) for l in out.stdout.splitlines())
    assert int(lines["fetched"]) == len(bodies) >= 50
    assert lines["sha256"] == want


# ---------------------------------------------------------------------------
# Issue 12: every command Dovecot accepts directly also works through the
# proxy, before and after login. The same script runs against Dovecot (its
# own account credentials, implicit TLS) and against mailbridge (a device
# login, plaintext); the result classes (OK/NO/BAD/CLOSED) must match.

def _peers(bridge, dovecot):
    direct = (lambda: ic.Conn(dovecot.port, dovecot.ca.ssl_context()), h.ACCOUNT, h.APP_PASSWORD)
    via = (lambda: ic.Conn(bridge.imap_port), h.DEVICE_USER, h.DEVICE_PASSWORD)
    return direct, via


def _pre_login_steps(user, password):
    plain = base64.b64encode(f"\0{user}\0{password}".encode())
    cmd = lambda args, cont=None: (lambda c: c.command(args, cont))  # noqa: E731
    return [
        (">CAPABILITY", cmd("CAPABILITY")),
        ("NOOP", cmd("NOOP")),
        ("ID NIL", cmd("ID NIL")),
        ("ID short", cmd('ID ("name" "interop" "version" "1.0")')),
        ("ID RFC 2971 max, quoted", cmd(b"ID " + ic.maximal_id("plain"))),
        ("ID RFC 2971 max, {n}", cmd(b"ID " + ic.maximal_id("literal"))),
        ("ID RFC 2971 max, {n+}", cmd(b"ID " + ic.maximal_id("literal+"))),
        # Dovecot: TLS already active; mailbridge: no local TLS here. Both BAD.
        ("STARTTLS", cmd("STARTTLS")),
        # Dovecot closes after a third bad command before login: two only.
        ("SELECT before login", cmd("SELECT INBOX")),
        (">LOGIN with literals", cmd(b"LOGIN " + ic.literal(user) + b" " + ic.literal(password))),
        ("LOGOUT", cmd("LOGOUT")),
        (">LOGIN quoted", cmd(f"LOGIN {ic.quote(user)} {ic.quote(password)}")),
        (">AUTHENTICATE PLAIN SASL-IR", cmd(b"AUTHENTICATE PLAIN " + plain)),
        (">AUTHENTICATE PLAIN + response", cmd("AUTHENTICATE PLAIN", plain)),
        (">LOGOUT before login", cmd("LOGOUT")),
    ]


def _post_login_steps(user, password):
    cmd = lambda args: (lambda c: c.command(args))  # noqa: E731
    return [
        (">LOGIN", cmd(f"LOGIN {ic.quote(user)} {ic.quote(password)}")),
        ("CAPABILITY", cmd("CAPABILITY")),
        ("NOOP", cmd("NOOP")),
        ("ID NIL", cmd("ID NIL")),
        ("ENABLE CONDSTORE", cmd("ENABLE CONDSTORE")),
        ("NAMESPACE", cmd("NAMESPACE")),
        ("LIST", cmd('LIST "" "*"')),
        ("LSUB", cmd('LSUB "" "*"')),
        ("STATUS", cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")),
        ("CREATE", cmd("CREATE compat-tmp")),
        ("SUBSCRIBE", cmd("SUBSCRIBE compat-tmp")),
        ("UNSUBSCRIBE", cmd("UNSUBSCRIBE compat-tmp")),
        ("DELETE", cmd("DELETE compat-tmp")),
        ("EXAMINE", cmd("EXAMINE INBOX")),
        ("SELECT", cmd("SELECT INBOX")),
        ("FETCH", cmd("FETCH 1:3 (FLAGS UID RFC822.SIZE INTERNALDATE)")),
        ("FETCH header fields", cmd("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")),
        ("UID FETCH", cmd("UID FETCH 1:* (UID FLAGS)")),
        ("UID SEARCH", cmd("UID SEARCH ALL")),
        ("SEARCH", cmd("SEARCH UNDELETED SINCE 1-Jan-2000")),
        ("IDLE", lambda c: c.idle()),
        ("CHECK", cmd("CHECK")),
        ("UNSELECT", cmd("UNSELECT")),
        ("SELECT again", cmd("SELECT INBOX")),
        ("CLOSE", cmd("CLOSE")),
        ("GETQUOTAROOT", cmd("GETQUOTAROOT INBOX")),
        # Dovecot here has no zlib plugin: refused directly, and the same through us.
        ("COMPRESS DEFLATE", cmd("COMPRESS DEFLATE")),
        ("unknown command", cmd("XYZZY")),
        ("LOGOUT", cmd("LOGOUT")),
    ]


def test_pre_login_commands_match_dovecot(bridge, dovecot):
    (dc, du, dp), (vc, vu, vp) = _peers(bridge, dovecot)
    direct = ic.run_script(dc, _pre_login_steps(du, dp))
    via = ic.run_script(vc, _pre_login_steps(vu, vp))
    ic.compare(direct, via)
    # The script is meaningful: the big IDs and the logins did succeed.
    assert all(cls == "OK" for name, cls, _ in via if name.startswith(("ID", "LOGIN", "AUTH"))), via


def test_post_login_commands_match_dovecot(bridge, dovecot):
    (dc, du, dp), (vc, vu, vp) = _peers(bridge, dovecot)
    direct = ic.run_script(dc, _post_login_steps(du, dp))
    via = ic.run_script(vc, _post_login_steps(vu, vp))
    ic.compare(direct, via)
    assert sum(cls == "OK" for _, cls, _ in via) >= 20, via


def test_maximal_id_with_every_octet_escaped_is_answered(bridge):
    """The longest line RFC 2971 and the grammar allow (~62 KiB). Dovecot
    2.3 itself closes on it ("Input buffer full"); mailbridge answers it."""
    c = ic.Conn(bridge.imap_port)
    cls, lines, done = c.command(b"ID " + ic.maximal_id("escaped"))
    assert cls == "OK" and lines and lines[0].startswith(b"* ID "), (lines, done)
    cls, _, done = c.command(f"LOGIN {ic.quote(h.DEVICE_USER)} {ic.quote(h.DEVICE_PASSWORD)}")
    assert cls == "OK", done
    c.close()


def test_fetchmail_plaintext_with_documented_settings(bridge, dovecot, tmp_path):
    """fetchmail 6.4 tries STARTTLS by default; with the README's plaintext
    setting (sslproto '') it fetches every message of the account."""
    ids = fm.alt_message_ids(dovecot)
    # Without it, fetchmail insists on STARTTLS, which is not offered here.
    fm.fetchmailrc(tmp_path / "default-rc", bridge.imap_port, tmp_path / "not-used", tls_lines=())
    r = fm.run(tmp_path / "default-rc", tmp_path)
    assert r.returncode != 0 and "upgrade to TLS failed" in r.stderr, r.stderr[-2000:]
    mbox = tmp_path / "delivered.mbox"
    rc = tmp_path / "fetchmailrc"
    fm.fetchmailrc(rc, bridge.imap_port, mbox)
    r = fm.run(rc, tmp_path)
    assert r.returncode == 0, f"fetchmail exit {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    got = mbox.read_text(errors="replace")
    missing = [i for i in ids if i not in got]
    assert not missing, f"not delivered by fetchmail: {missing}\n{r.stderr[-2000:]}"
