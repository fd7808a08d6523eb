"""OAuth2 accounts end to end against real peers (issue 11): an account
configured as the README says (provider custom, an [accounts.oauth2] table
pointing at oidc-provider, ca_file the test CA), first authorized with
`mailbridge auth` by each flow the way a user does it (device: the printed
URL and code approved in the browser; authorization_code: --no-browser, the
URL driven, the redirect pasted back; client_credentials), then IMAP and POP3
proxied to Dovecot's oauth2 passdb with XOAUTH2. Expiry and refresh mid-run,
rotation persisted across a restart, a revoked grant answered as a temporary
failure with one loud log line and recovered by `mailbridge auth` without a
restart, one token request per expiry for many sessions, and no token, code
or secret the server issued in any daemon log at RUST_LOG=trace.
"""

import imaplib
import json
import poplib
import queue
import re
import smtplib
import ssl
import subprocess
import threading
import time

import pytest

import harness as h
from oauth2 import peers as p

ACCOUNT_NAME = "ms"


def config_text(oauth, dovecot, smtp_port, imap_port, pop3_port, hashes, smtp_up_port, flow, client, scopes,
                secret_file=None):
    secret = f"client_secret_file = {h.toml_str(secret_file)}\n" if secret_file else ""
    return f"""default_account = "{ACCOUNT_NAME}"

[smtp]
listen = ["127.0.0.1:{smtp_port}"]
spool_dir = "spool"
hostname = "mailbridge.interop"

[imap]
listen = ["127.0.0.1:{imap_port}"]

[pop3]
listen = ["127.0.0.1:{pop3_port}"]

[delivery]
retry_initial = "200ms"
retry_max = "1s"

[[accounts]]
name = "{ACCOUNT_NAME}"
provider = "custom"
username = {h.toml_str(h.ACCOUNT)}
auth = "oauth2"
ca_file = {h.toml_str(oauth.ca.ca)}
smtp = {{ host = "127.0.0.1", port = {smtp_up_port}, tls = "implicit" }}
imap = {{ host = "127.0.0.1", port = {dovecot.port}, tls = "implicit" }}
pop3 = {{ host = "127.0.0.1", port = {dovecot.pop3_port}, tls = "implicit" }}

[accounts.oauth2]
provider = "custom"
client_id = {h.toml_str(client)}
{secret}flow = "{flow}"
scopes = [{", ".join(h.toml_str(s) for s in scopes)}]
authorize_url = {h.toml_str(oauth.authorize_url)}
token_url = {h.toml_str(oauth.token_url)}
device_url = {h.toml_str(oauth.device_url)}

[[users]]
name = {h.toml_str(h.DEVICE_USER)}
password_hash = {h.toml_str(hashes[h.DEVICE_USER])}
account = "{ACCOUNT_NAME}"
"""


class Bridge:
    """mailbridge (the real binary) with one OAuth2 account, its CLI and its token file."""

    def __init__(self, workdir, name, oauth, dovecot, hashes, flow="device", client=p.PUBLIC_CLIENT,
                 scopes=p.MS_SCOPES, secret=None, smtp_upstream=None):
        self.oauth = oauth
        self.smtp_port, self.imap_port, self.pop3_port = h.free_port(), h.free_port(), h.free_port()
        d = workdir / f"oauth2-bridge-{name}"
        d.mkdir(parents=True, exist_ok=True)
        secret_file = None
        if secret:
            secret_file = d / "client-secret"
            secret_file.write_text(secret + "\n")
        smtp_up = smtp_upstream.port if smtp_upstream else h.free_port()
        text = config_text(oauth, dovecot, self.smtp_port, self.imap_port, self.pop3_port, hashes, smtp_up,
                           flow, client, scopes, secret_file)
        self.mb = h.MailBridge(d, text, self.smtp_port, self.imap_port)
        self.token_file = d / "spool" / "oauth2" / f"{ACCOUNT_NAME}.json"
        self.cli_output = []

    def start(self):
        self.mb.start()
        h.wait_port(self.pop3_port, 20, self.mb.proc, "mailbridge POP3 listener")
        return self

    def restart(self):
        assert self.mb.stop() == 0
        return self.start()

    def stored(self):
        return json.loads(self.token_file.read_text())

    def auth_process(self, *args):
        proc = subprocess.Popen([str(self.mb.bin), "-c", str(self.mb.config), "auth", *args], cwd=self.mb.dir,
                                env=self.mb.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # stdout lines through a thread: select() on a buffered pipe misses lines already read ahead.
        proc.lines, proc.out = queue.Queue(), []

        def pump():
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                proc.out.append(line)
                proc.lines.put(line)
            proc.lines.put("")

        proc.reader = threading.Thread(target=pump, daemon=True)
        proc.reader.start()
        return proc

    @staticmethod
    def next_line(proc):
        try:
            return proc.lines.get(timeout=30)
        except queue.Empty:
            raise AssertionError(f"no output from mailbridge auth within 30 s: {''.join(proc.out)}")

    def finish(self, proc):
        proc.wait(60)
        proc.reader.join(10)
        text = "".join(proc.out) + proc.stderr.read().decode(errors="replace")
        self.cli_output.append(text)
        assert proc.returncode == 0, text
        assert "is authorized" in text, text
        return text

    def authorize_device(self):
        """`mailbridge auth ms`: read the URL and code it prints, approve them in the browser."""
        proc = self.auth_process(ACCOUNT_NAME)
        seen = ""
        while True:
            line = self.next_line(proc)
            assert line, f"auth exited early: {seen}{proc.stderr.read().decode(errors='replace')}"
            seen += line
            m = re.search(r"open (\S+) in a browser and enter the code (\S+)", line)
            if m:
                break
        self.oauth.approve_device(m.group(1), m.group(2))
        return self.finish(proc)

    def authorize_code_no_browser(self):
        """`mailbridge auth --no-browser ms`: open the printed URL, paste the redirect back."""
        proc = self.auth_process("--no-browser", ACCOUNT_NAME)
        while True:
            raw = self.next_line(proc)
            assert raw, f"auth exited before printing the URL: {proc.stderr.read().decode(errors='replace')}"
            line = raw.strip()
            if line.startswith(self.oauth.authorize_url):
                url = line
                break
        redirect = self.oauth.drive_code_flow(url, follow=False)
        assert redirect.startswith("http://127.0.0.1:") and "code=" in redirect, redirect
        proc.stdin.write(redirect.encode() + b"\n")
        proc.stdin.flush()
        return self.finish(proc)

    def authorize_client_credentials(self):
        return self.finish(self.auth_process(ACCOUNT_NAME))

    def imap(self):
        c = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        c.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
        return c

    def pop3(self):
        c = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        c.user(h.DEVICE_USER)
        c.pass_(h.DEVICE_PASSWORD)
        return c

    def send(self, tag, rcpt="friend@example.net"):
        msg = f"From: {h.ACCOUNT}\r\nTo: {rcpt}\r\nSubject: {tag}\r\n\r\nbody {tag}\r\n"
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as s:
            s.sendmail(h.ACCOUNT, [rcpt], msg)

    def stop_and_check_logs(self):
        """Stops the daemon; nothing the server issued and no client secret is in its log."""
        rc = self.mb.stop()
        log = self.mb.log_text()
        assert rc == 0, f"mailbridge did not exit 0 (rc={rc}); log tail:\n{log[-2000:]}"
        values = self.oauth.issued() + p.CLIENT_SECRETS
        leaked = [v for v in values if v and v in log]
        assert not leaked, f"{len(leaked)} issued value(s) in mailbridge's log {self.mb.log_path}"
        return log


@pytest.fixture
def bridges(workdir, oauth_server, oauth_dovecot, oauth_smtp, hashes):
    made = []

    def make(name, **kw):
        b = Bridge(workdir, name, oauth_server, oauth_dovecot, hashes, smtp_upstream=oauth_smtp, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        if b.mb.proc is not None:
            b.stop_and_check_logs()


def fetch_all(c):
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK", data
    n = int(data[0])
    typ, data = c.fetch(f"1:{n}", "(BODY.PEEK[])")
    assert typ == "OK", data
    return n, [part[1] for part in data if isinstance(part, tuple)]


def direct_imap(dovecot, token):
    c = imaplib.IMAP4_SSL("127.0.0.1", dovecot.port, ssl_context=dovecot.ca.ssl_context(), timeout=30)
    c.authenticate("XOAUTH2", lambda _: p.xoauth2(h.ACCOUNT, token))
    return c


def direct_pop3(dovecot, token):
    import base64
    c = poplib.POP3_SSL("127.0.0.1", dovecot.pop3_port, context=dovecot.ca.ssl_context(), timeout=30)
    c._shortcmd("AUTH XOAUTH2")
    c._shortcmd(base64.b64encode(p.xoauth2(h.ACCOUNT, token)).decode())
    return c


def imap_refused(bridge):
    with pytest.raises(imaplib.IMAP4.error) as e:
        bridge.imap()
    return str(e.value)


# ---------------------------------------------------------------------------
# First authorization by each flow, then IMAP and POP3 through mailbridge


def test_device_flow_then_imap_and_pop3_proxied_with_xoauth2(bridges, oauth_dovecot):
    b = bridges("device").start()
    out = b.authorize_device()
    assert str(b.token_file) in out
    status = b.mb.cli("auth", "--status")
    assert status.returncode == 0 and re.search(rb"^ms\t.*\tdevice\tvalid, expires .*refresh token stored",
                                                  status.stdout, re.M), status.stdout
    token = b.stored()["access_token"]
    assert token.encode() not in status.stdout + status.stderr

    c = b.imap()
    n, via = fetch_all(c)
    c.logout()
    d = direct_imap(oauth_dovecot, token)
    assert fetch_all(d) == (n, via) and n == 5
    d.logout()

    c = b.pop3()
    count, _ = c.stat()
    via = [b"\r\n".join(c.retr(i)[1]) for i in range(1, count + 1)]
    c.quit()
    d = direct_pop3(oauth_dovecot, token)
    assert d.stat()[0] == count == 5
    assert [b"\r\n".join(d.retr(i)[1]) for i in range(1, count + 1)] == via
    d.quit()

    forgot = b.mb.cli("auth", "--forget", ACCOUNT_NAME)
    assert forgot.returncode == 0 and not b.token_file.exists(), forgot.stdout
    assert "[UNAVAILABLE]" in imap_refused(b)


def test_authorization_code_no_browser_pasted_redirect_then_imap(bridges):
    b = bridges("code", flow="authorization_code").start()
    b.authorize_code_no_browser()
    assert b.stored().get("refresh_token")
    c = b.imap()
    assert fetch_all(c)[0] == 5
    c.logout()


def test_client_credentials_need_no_person_then_imap_and_pop3(bridges):
    b = bridges("app", flow="client_credentials", client=p.APP_CLIENT, scopes=[p.APP_SCOPE],
                secret=p.APP_SECRET).start()
    b.authorize_client_credentials()
    assert "refresh_token" not in b.stored()
    c = b.imap()
    assert fetch_all(c)[0] == 5
    c.logout()
    c = b.pop3()
    assert c.stat()[0] == 5
    c.quit()
    # A revoked app token is simply replaced by a new client-credentials request.
    b.oauth.revoke(b.stored()["access_token"], client=(p.APP_CLIENT, p.APP_SECRET), hint="access_token")
    c = b.imap()
    c.logout()


# ---------------------------------------------------------------------------
# Tokens at run time


def test_expiry_and_refresh_mid_run_without_a_failed_login_or_a_deferred_message(bridges, oauth_server, oauth_smtp):
    b = bridges("short", client=p.SHORT_CLIENT).start()
    b.authorize_device()
    first = b.stored()["access_token"]
    before = oauth_server.token_requests()
    deadline = h.Deadline(60)
    logins = 0
    # Short-lived tokens (5 s): log in and fetch until two refreshes happened; every login works.
    while oauth_server.token_requests() - before < 2:
        assert not deadline.passed(), f"no two refreshes in 60 s ({logins} logins)"
        c = b.imap()
        assert fetch_all(c)[0] == 5
        c.logout()
        b.send(f"short-{logins}")
        logins += 1
    for i in range(logins):
        oauth_smtp.wait_rcpts(f"short-{i}", ["friend@example.net"])
    assert h.queue_json(b.mb) == []
    assert b.stored()["access_token"] != first
    log = b.mb.log_text()
    assert "needs re-authorization" not in log and "deferred" not in log.lower()


def test_rotated_refresh_token_persisted_across_a_restart(bridges, oauth_server):
    b = bridges("rotate").start()
    b.authorize_device()
    rt0 = b.stored()["refresh_token"]
    # The server stops accepting the access token: refresh (rotation) and retry.
    oauth_server.revoke(b.stored()["access_token"], hint="access_token")
    b.imap().logout()
    rt1 = b.stored()["refresh_token"]
    assert rt1 != rt0, "the rotated refresh token is on disk"
    b.restart()
    # After the restart only the rotated token works (presenting rt0 would revoke the grant).
    oauth_server.revoke(b.stored()["access_token"], hint="access_token")
    c = b.imap()
    assert fetch_all(c)[0] == 5
    c.logout()
    assert b.stored()["refresh_token"] not in (rt0, rt1)


def test_revoked_grant_is_a_temporary_failure_logged_once_then_mailbridge_auth_recovers(bridges, oauth_server):
    b = bridges("revoked").start()
    b.authorize_device()
    b.imap().logout()
    assert oauth_server.revoke_account(h.ACCOUNT) >= 1
    for _ in range(3):
        text = imap_refused(b)
        assert "[UNAVAILABLE]" in text and "mailbridge auth" in text, text
    with pytest.raises(poplib.error_proto) as e:
        b.pop3()
    assert "[SYS/TEMP]" in str(e.value), e.value
    loud = [line for line in b.mb.log_text().splitlines()
            if "ERROR" in line and f"mailbridge auth {ACCOUNT_NAME}" in line]
    assert len(loud) == 1, loud
    assert "invalid_grant" in loud[0], loud[0]
    # The administrator runs `mailbridge auth` again; the running daemon picks the token up.
    b.authorize_device()
    c = b.imap()
    assert fetch_all(c)[0] == 5
    c.logout()


def test_one_token_request_per_expiry_however_many_concurrent_sessions(bridges, oauth_server):
    b = bridges("many").start()
    b.authorize_device()
    b.imap().logout()
    t = b.stored()
    # The manager refreshes at half the life of a token shorter-lived than its 60 s margin.
    refresh_at = (t["obtained_at_ms"] + (t["expires_at_ms"] - t["obtained_at_ms"]) / 2) / 1000
    h.poll(lambda: time.time() > refresh_at + 0.2, 30, "the access token to need a refresh")
    before = oauth_server.token_requests()
    errors, results = [], []
    start = threading.Barrier(8)

    def session():
        try:
            start.wait(10)
            c = b.imap()
            results.append(fetch_all(c)[0])
            c.logout()
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=session) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and results == [5] * 8, errors
    assert oauth_server.token_requests() - before == 1


# ---------------------------------------------------------------------------
# SMTP delivery with XOAUTH2 (the aiosmtpd sink introspecting like a provider)


def test_mail_delivered_upstream_with_xoauth2(bridges, oauth_smtp):
    b = bridges("smtp").start()
    b.authorize_device()
    b.send("oauth2-smtp-1", "one@example.net")
    [m] = oauth_smtp.wait_rcpts("oauth2-smtp-1", ["one@example.net"])
    assert m["mail_from"] == h.ACCOUNT, m
    assert h.queue_json(b.mb) == []


def test_revoked_grant_holds_mail_then_mailbridge_auth_releases_it(bridges, oauth_server, oauth_smtp):
    b = bridges("smtp-revoked").start()
    b.authorize_device()
    b.send("oauth2-smtp-before", "two@example.net")
    oauth_smtp.wait_rcpts("oauth2-smtp-before", ["two@example.net"])
    assert oauth_server.revoke_account(h.ACCOUNT) >= 1
    # A pooled SMTP session stays logged in at the provider; a new one must log in again.
    b.restart()
    b.send("oauth2-smtp-held", "three@example.net")

    def held():
        return [e for e in h.queue_json(b.mb)
                if (e.get("hold") or {}).get("kind") == "needs-reauthorization"]

    [e] = h.poll(held, 30, "the message held for re-authorization", interval=0.2)
    assert e["hold"]["account"] == ACCOUNT_NAME, e
    assert not oauth_smtp.find("oauth2-smtp-held")
    loud = [line for line in b.mb.log_text().splitlines()
            if "ERROR" in line and f"mailbridge auth {ACCOUNT_NAME}" in line]
    assert len(loud) == 1, loud
    # Re-authorized while the daemon runs: the held message goes, nothing lost.
    b.authorize_device()
    oauth_smtp.wait_rcpts("oauth2-smtp-held", ["three@example.net"], timeout=30)
    h.poll(lambda: h.queue_json(b.mb) == [], 15, "an empty queue")
