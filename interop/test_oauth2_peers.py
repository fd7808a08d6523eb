"""The OAuth 2.0 peers work without mailbridge: tokens by each flow over plain
HTTPS (device, authorization code + PKCE for a public and a confidential
client, client credentials), refresh-token rotation, revocation, and SASL
XOAUTH2 / OAUTHBEARER with those tokens against Dovecot (IMAP, POP3; oauth2
passdb introspecting at the server) and the Gmail-like aiosmtpd sink.
"""

import base64
import email.message
import http.server
import imaplib
import json
import poplib
import smtplib
import threading
import urllib.parse

import pytest

import harness as h
from oauth2 import peers as p

SCOPE = f"offline_access {p.GOOGLE_SCOPE}"


def device_tokens(oauth, client=p.PUBLIC_CLIENT, login=h.ACCOUNT, scope=SCOPE):
    """The device grant (RFC 8628) end to end: start, one pending poll, the user approves, tokens."""
    status, dev = oauth.post(oauth.device_url, {"scope": scope}, client)
    assert status == 200, dev
    status, body = oauth.token({"grant_type": p.DEVICE_GRANT, "device_code": dev["device_code"]}, client)
    assert (status, body["error"]) == (400, "authorization_pending"), body
    oauth.approve_device(dev["verification_uri"], dev["user_code"], login)
    status, tok = oauth.token({"grant_type": p.DEVICE_GRANT, "device_code": dev["device_code"]}, client)
    assert status == 200, tok
    return tok


class Loopback:
    """What `mailbridge auth` runs for the code flow: an HTTP listener on 127.0.0.1, random port."""

    def __init__(self):
        self.paths = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                body = b"authorized, you can close this window"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self.server.server_port}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback():
    lb = Loopback()
    yield lb
    lb.close()


def code_flow(oauth, loopback, client=p.PUBLIC_CLIENT):
    """Authorization code + PKCE through the browser to the loopback listener; returns (code, verifier)."""
    verifier, challenge = p.pkce_pair()
    url = oauth.authorization_url(loopback.redirect_uri, challenge, client=client, state="st-42")
    seen = len(loopback.paths)
    final, page = oauth.drive_code_flow(url)
    assert page.status == 200 and "authorized" in page.body, page
    assert len(loopback.paths) == seen + 1 and final.endswith(loopback.paths[-1]), (final, loopback.paths)
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(final).query)
    assert q["state"] == ["st-42"] and q["iss"] == [oauth.url], q
    return q["code"][0], verifier


# ---------------------------------------------------------------------------
# Tokens by each flow


def test_device_flow_gives_tokens_for_the_approving_user(oauth_server):
    tok = device_tokens(oauth_server)
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == oauth_server.access_ttl
    assert tok["refresh_token"] and p.GOOGLE_SCOPE in tok["scope"].split()
    info = oauth_server.introspect(tok["access_token"])
    assert info["active"] is True and info["username"] == h.ACCOUNT and info["client_id"] == p.PUBLIC_CLIENT


def test_device_flow_declined_by_the_user_is_access_denied(oauth_server):
    status, dev = oauth_server.post(oauth_server.device_url, {"scope": SCOPE}, p.PUBLIC_CLIENT)
    assert status == 200 and dev["interval"] == 1, dev
    oauth_server.approve_device(dev["verification_uri"], dev["user_code"], deny=True)
    status, body = oauth_server.token({"grant_type": p.DEVICE_GRANT, "device_code": dev["device_code"]})
    assert (status, body["error"]) == (400, "access_denied"), body


def test_code_flow_with_pkce_public_client_on_any_loopback_port(oauth_server, loopback):
    code, verifier = code_flow(oauth_server, loopback)
    # The code is bound to the verifier: a wrong one is refused (and spends the code).
    status, body = oauth_server.token({"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": loopback.redirect_uri, "code_verifier": verifier[::-1]})
    assert (status, body["error"]) == (400, "invalid_grant"), body
    code, verifier = code_flow(oauth_server, loopback)
    status, tok = oauth_server.token({"grant_type": "authorization_code", "code": code,
                                      "redirect_uri": loopback.redirect_uri, "code_verifier": verifier})
    assert status == 200 and tok["refresh_token"], tok
    assert oauth_server.introspect(tok["access_token"])["username"] == h.ACCOUNT


def test_code_flow_confidential_client_needs_its_secret(oauth_server, loopback):
    code, verifier = code_flow(oauth_server, loopback, client=p.CONFIDENTIAL_CLIENT)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": loopback.redirect_uri,
            "code_verifier": verifier}
    status, body = oauth_server.token(data, (p.CONFIDENTIAL_CLIENT, "wrong-secret"))
    assert (status, body["error"]) == (401, "invalid_client"), body
    status, tok = oauth_server.token(data, (p.CONFIDENTIAL_CLIENT, p.CONFIDENTIAL_SECRET))
    assert status == 200 and tok["refresh_token"], tok


def test_client_credentials_app_only_token_for_the_granted_mailbox(oauth_server):
    status, tok = oauth_server.token({"grant_type": "client_credentials", "scope": p.APP_SCOPE},
                                     (p.APP_CLIENT, p.APP_SECRET))
    assert status == 200 and tok["scope"] == p.APP_SCOPE and "refresh_token" not in tok, tok
    info = oauth_server.introspect(tok["access_token"])
    assert info["active"] is True and info["username"] == h.ACCOUNT and "sub" not in info, info


def test_refresh_rotates_and_the_old_refresh_token_is_refused(oauth_server):
    first = device_tokens(oauth_server)
    status, second = oauth_server.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert oauth_server.introspect(second["access_token"])["active"] is True
    status, body = oauth_server.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant"), body
    # Reusing a rotated refresh token is taken as theft: oidc-provider revokes the whole grant.
    status, body = oauth_server.token({"grant_type": "refresh_token", "refresh_token": second["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant"), body


def test_revocation_endpoint_and_account_revocation_make_refresh_invalid_grant(oauth_server):
    tok = device_tokens(oauth_server)
    oauth_server.revoke(tok["refresh_token"], hint="refresh_token")
    status, body = oauth_server.token({"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant"), body
    assert oauth_server.introspect(tok["access_token"])["active"] is False  # the grant went with it

    other = device_tokens(oauth_server, login=h.ALT_ACCOUNT)
    tok = device_tokens(oauth_server)
    assert oauth_server.revoke_account(h.ACCOUNT) >= 1
    status, body = oauth_server.token({"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant"), body
    assert oauth_server.introspect(tok["access_token"])["active"] is False
    assert oauth_server.introspect(other["access_token"])["active"] is True  # another account's grant stays


def test_issued_values_are_listed_for_leak_checks(oauth_server):
    tok = device_tokens(oauth_server)
    issued = oauth_server.issued()
    assert tok["access_token"] in issued and tok["refresh_token"] in issued


# ---------------------------------------------------------------------------
# Dovecot: IMAP and POP3 with the oauth2 passdb


def imap_auth(dovecot, mech, initial, refusal=None):
    """AUTHENTICATE mech; returns (ok, server challenges after the first). A refusal's
    text goes to the list `refusal` when given."""
    challenges = []

    def answer(challenge):
        if challenge:
            challenges.append(challenge)
            return b""  # the empty response that ends a failed exchange
        return initial

    c = dovecot.client()
    try:
        typ, _ = c.authenticate(mech, answer)
        assert typ == "OK"
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == 5, data
        return True, challenges
    except imaplib.IMAP4.error as e:
        if refusal is not None:
            refusal.append(str(e))
        return False, challenges
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def test_imap_xoauth2_and_oauthbearer_with_fresh_token_then_revoked(oauth_server, oauth_dovecot):
    tok = device_tokens(oauth_server)
    before = oauth_server.introspections(p.DOVECOT_RS)
    assert imap_auth(oauth_dovecot, "XOAUTH2", p.xoauth2(h.ACCOUNT, tok["access_token"])) == (True, [])
    assert imap_auth(oauth_dovecot, "OAUTHBEARER", p.oauthbearer(h.ACCOUNT, tok["access_token"])) == (True, [])
    assert oauth_server.introspections(p.DOVECOT_RS) == before + 2  # no cache: every login asks the server
    # A token for someone else's mailbox is refused.
    ok, _ = imap_auth(oauth_dovecot, "XOAUTH2", p.xoauth2(h.ALT_ACCOUNT, tok["access_token"]))
    assert not ok
    oauth_server.revoke(tok["access_token"], hint="access_token")
    refusal = []
    ok, challenges = imap_auth(oauth_dovecot, "XOAUTH2", p.xoauth2(h.ACCOUNT, tok["access_token"]), refusal)
    assert not ok and len(challenges) == 1, challenges
    assert json.loads(challenges[0])["status"]  # the JSON error challenge of XOAUTH2
    assert "AUTHENTICATIONFAILED" in refusal[0], refusal


def test_imap_xoauth2_with_an_expired_token_fails(oauth_server, oauth_dovecot):
    tok = device_tokens(oauth_server, client=p.SHORT_CLIENT)
    assert tok["expires_in"] == oauth_server.short_ttl
    assert imap_auth(oauth_dovecot, "XOAUTH2", p.xoauth2(h.ACCOUNT, tok["access_token"]))[0]
    h.poll(lambda: oauth_server.introspect(tok["access_token"])["active"] is False, oauth_server.short_ttl + 10,
           "the short-lived access token to expire", interval=0.25)
    assert not imap_auth(oauth_dovecot, "XOAUTH2", p.xoauth2(h.ACCOUNT, tok["access_token"]))[0]


def pop3_auth(dovecot, initial):
    c = poplib.POP3_SSL("127.0.0.1", dovecot.pop3_port, context=dovecot.ca.ssl_context(), timeout=15)
    try:
        resp = c._shortcmd("AUTH XOAUTH2 " + base64.b64encode(initial).decode())
        if resp.startswith(b"+ "):  # the JSON error challenge: answer with an empty line
            assert json.loads(base64.b64decode(resp[2:]))["status"]
            c._putcmd("")
            c._getresp()
        count, _ = c.stat()
        assert count == 5
        return True
    except poplib.error_proto:
        return False
    finally:
        try:
            c.quit()
        except (poplib.error_proto, OSError):
            pass


def test_pop3_xoauth2_with_fresh_token_then_revoked(oauth_server, oauth_dovecot):
    tok = device_tokens(oauth_server)
    assert pop3_auth(oauth_dovecot, p.xoauth2(h.ACCOUNT, tok["access_token"]))
    oauth_server.revoke(tok["access_token"], hint="access_token")
    assert not pop3_auth(oauth_dovecot, p.xoauth2(h.ACCOUNT, tok["access_token"]))


# ---------------------------------------------------------------------------
# SMTP: the Gmail-like XOAUTH2 sink


def message(tag):
    m = email.message.EmailMessage()
    m["From"], m["To"], m["Subject"] = h.ACCOUNT, "friend@example.org", f"oauth2 {tag}"
    m.set_content(f"body {tag}\n")
    return m


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_smtp_xoauth2_sends_and_a_bad_token_gets_gmails_answer(oauth_server, oauth_smtp, oauth_smtp_starttls, tls):
    up = oauth_smtp if tls == "implicit" else oauth_smtp_starttls
    ctx = oauth_server.ca.ssl_context()

    def connect():
        if tls == "implicit":
            return smtplib.SMTP_SSL("127.0.0.1", up.port, context=ctx, timeout=15)
        s = smtplib.SMTP("127.0.0.1", up.port, timeout=15)
        s.starttls(context=ctx)
        return s

    tok = device_tokens(oauth_server)
    tag = h.free_port()
    with connect() as s:
        s.ehlo()
        assert "XOAUTH2" in s.esmtp_features["auth"].split()
        code, _ = s.auth("XOAUTH2", lambda challenge=None: p.xoauth2(h.ACCOUNT, tok["access_token"]).decode())
        assert code == 235
        s.send_message(message(tag))
    (m,) = up.wait_rcpts(f"body {tag}", ["friend@example.org"])
    assert m["auth_user"] == h.ACCOUNT and m["tls"] is True

    challenges = []

    def bad(challenge=None):
        if challenge is None:
            return p.xoauth2(h.ACCOUNT, "not-a-token").decode()
        challenges.append(challenge)
        return ""

    with connect() as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.auth("XOAUTH2", bad)
    assert challenges == [b'{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}']
    assert e.value.smtp_code == 535 and b"5.7.8 Username and Password not accepted" in e.value.smtp_error


def test_smtp_xoauth2_without_initial_response_and_revoked_token(oauth_server, oauth_smtp):
    tok = device_tokens(oauth_server)
    with smtplib.SMTP_SSL("127.0.0.1", oauth_smtp.port, context=oauth_server.ca.ssl_context(), timeout=15) as s:
        s.ehlo()
        assert s.docmd("AUTH", "XOAUTH2") == (334, b"")
        blob = base64.b64encode(p.xoauth2(h.ACCOUNT, tok["access_token"])).decode()
        assert s.docmd(blob)[0] == 235
    oauth_server.revoke(tok["access_token"], hint="access_token")
    with smtplib.SMTP_SSL("127.0.0.1", oauth_smtp.port, context=oauth_server.ca.ssl_context(), timeout=15) as s:
        s.ehlo()
        blob = base64.b64encode(p.xoauth2(h.ACCOUNT, tok["access_token"])).decode()
        code, challenge = s.docmd("AUTH", "XOAUTH2 " + blob)
        assert code == 334 and json.loads(base64.b64decode(challenge))["status"] == "400"
        code, text = s.docmd("")
        assert code == 535, text
        # Password logins are refused: there is no password here.
        assert s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{h.ACCOUNT}\0{h.APP_PASSWORD}".encode()).decode())[0] == 535


def test_code_flow_declined_by_the_user_redirects_with_access_denied(oauth_server, loopback):
    _, challenge = p.pkce_pair()
    url = oauth_server.authorization_url(loopback.redirect_uri, challenge)
    final = oauth_server.drive_code_flow(url, follow=False, deny=True)
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(final).query)
    assert final.startswith(loopback.redirect_uri) and q["error"] == ["access_denied"], final
    assert loopback.paths == []  # follow=False: the URL a user pastes back, not loaded
