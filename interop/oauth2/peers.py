"""The OAuth 2.0 peers of the interop suite on 127.0.0.1: oidc-provider as the
authorization server (server.mjs, HTTPS with the test CA), Dovecot whose
`oauth2` passdb checks XOAUTH2 / OAUTHBEARER by introspection at it, and the
aiosmtpd sink taking XOAUTH2 as Gmail does. Built on interop/harness.py (CA,
ports, readiness, the password Dovecot and aiosmtpd); see README.md here.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import harness as h

from . import browser

HERE = Path(__file__).resolve().parent
SERVER_JS = HERE / "server.mjs"
SMTP_SCRIPT = HERE / "smtp_xoauth2_upstream.py"
NODE = os.environ.get("MAILBRIDGE_NODE", "node")

# Clients registered at the server. The public and confidential ones are what a
# user registers for `mailbridge auth` (device and code + PKCE flows); the app is
# an admin-consented app-only client (client credentials); the resource servers
# are Dovecot and the SMTP sink, which introspect.
PUBLIC_CLIENT = "mailbridge-public"
CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET = "mailbridge-confidential", "confidential-client-secret-7f3a"
SHORT_CLIENT = "mailbridge-short"  # public, with `short_ttl` access tokens, for expiry cases
APP_CLIENT, APP_SECRET = "mailbridge-app", "app-only-client-secret-91c2"
DOVECOT_RS, DOVECOT_RS_SECRET = "dovecot", "dovecot-introspection-secret"
SMTP_RS, SMTP_RS_SECRET = "smtp-sink", "smtp-introspection-secret"
CLIENT_SECRETS = [CONFIDENTIAL_SECRET, APP_SECRET, DOVECOT_RS_SECRET, SMTP_RS_SECRET]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GOOGLE_SCOPE = "https://mail.google.com/"
MS_SCOPES = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/POP.AccessAsUser.All",
             "https://outlook.office.com/SMTP.Send", "offline_access"]
APP_SCOPE = "https://outlook.office365.com/.default"
MAIL_SCOPES = [GOOGLE_SCOPE, "https://outlook.office.com/IMAP.AccessAsUser.All",
               "https://outlook.office.com/POP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", APP_SCOPE]

# Loopback redirect URIs (RFC 8252 7.3): any port is accepted at request time, the path must match one of these.
REDIRECT_PATHS = ["/", "/callback", "/oauth2/callback", "/redirect"]


def pkce_pair():
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def xoauth2(user, token):
    """The SASL XOAUTH2 initial response, raw (callers base64 it as the protocol needs)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user, token):
    """The SASL OAUTHBEARER (RFC 7628) initial response, raw."""
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()


class OAuthServer:
    """oidc-provider (server.mjs) over HTTPS on 127.0.0.1 with the test CA's leaf certificate."""

    def __init__(self, directory, ca, access_ttl=20, short_ttl=5, device_interval=1, app_mailbox=h.ACCOUNT,
                 redirect_paths=REDIRECT_PATHS):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        self.port = h.free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.authorize_url = self.url + "/auth"
        self.token_url = self.url + "/token"
        self.device_url = self.url + "/device/auth"
        self.introspection_url = self.url + "/token/introspection"
        self.revocation_url = self.url + "/token/revocation"
        self.admin_key = secrets.token_hex(16)
        self.access_ttl, self.short_ttl = access_ttl, short_ttl
        redirects = [f"http://127.0.0.1{p}" for p in redirect_paths]
        user_grants = ["authorization_code", "refresh_token", DEVICE_GRANT]
        native = {"application_type": "native", "grant_types": user_grants, "response_types": ["code"],
                  "redirect_uris": redirects}
        resource_server = {"grant_types": [], "response_types": [], "redirect_uris": []}
        self.config = {
            "port": self.port, "cert": str(ca.cert), "key": str(ca.key), "access_ttl": access_ttl,
            "device_interval": device_interval, "admin_key": self.admin_key,
            "mailbox_for_app": {APP_CLIENT: app_mailbox},
            "clients": [
                {"client_id": PUBLIC_CLIENT, "token_endpoint_auth_method": "none", **native},
                {"client_id": SHORT_CLIENT, "token_endpoint_auth_method": "none", "access_ttl": short_ttl, **native},
                {"client_id": CONFIDENTIAL_CLIENT, "client_secret": CONFIDENTIAL_SECRET,
                 "token_endpoint_auth_method": "client_secret_basic", **native},
                {"client_id": APP_CLIENT, "client_secret": APP_SECRET, "grant_types": ["client_credentials"],
                 "response_types": [], "redirect_uris": []},
                {"client_id": DOVECOT_RS, "client_secret": DOVECOT_RS_SECRET, **resource_server},
                {"client_id": SMTP_RS, "client_secret": SMTP_RS_SECRET, **resource_server},
            ],
        }
        self.proc = None

    def start(self):
        conf = self.dir / "server.json"
        conf.write_text(json.dumps(self.config, indent=1))
        self.log = open(self.dir / "oidc-provider.log", "ab")
        self.proc = subprocess.Popen([NODE, str(SERVER_JS), str(conf)], cwd=HERE, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.log)
        line = ""
        while not line.startswith("READY"):
            line = h.read_line(self.proc, 20)
            assert line, f"oidc-provider exited ({self.proc.poll()}); see {self.dir / 'oidc-provider.log'}"
        h.wait_port(self.port, 10, self.proc, "oidc-provider")
        return self

    # The same process handling as the SMTP sink: SIGTERM, a kill after 10 s, pipes closed.
    stop = h.SmtpUpstream.stop

    # -- plain HTTP, as any OAuth client or resource server speaks it

    def _request(self, url, data=None, headers=None, method=None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(self.ca.ca)),
                                        timeout=15) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw.startswith(b"{") else raw.decode(errors="replace")

    def post(self, url, data, client=None):
        """POST a form; `client` (id, secret) goes in HTTP Basic (RFC 6749 2.3.1), a public
        client's id in the form. Returns (status, JSON body)."""
        headers = {}
        data = dict(data)
        if isinstance(client, tuple):
            cred = base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {cred}"
        elif client:
            data["client_id"] = client
        return self._request(url, data, headers)

    def token(self, data, client=PUBLIC_CLIENT):
        return self.post(self.token_url, data, client)

    def introspect(self, token, rs=(DOVECOT_RS, DOVECOT_RS_SECRET)):
        status, body = self.post(self.introspection_url, {"token": token}, rs)
        assert status == 200, body
        return body

    def revoke(self, token, client=PUBLIC_CLIENT, hint=None):
        """RFC 7009 revocation. Revoking a refresh token revokes its whole grant (so refreshing
        then gets invalid_grant); revoking an access token revokes only that token."""
        data = {"token": token, **({"token_type_hint": hint} if hint else {})}
        status, body = self.post(self.revocation_url, data, client)
        assert status == 200, body

    def authorization_url(self, redirect_uri, challenge, client=PUBLIC_CLIENT, scope=f"offline_access {GOOGLE_SCOPE}",
                          state="interop-state"):
        return self.authorize_url + "?" + urllib.parse.urlencode({
            "client_id": client, "response_type": "code", "redirect_uri": redirect_uri, "scope": scope,
            "code_challenge": challenge, "code_challenge_method": "S256", "state": state})

    # -- the user at a browser

    def approve_device(self, verification_uri, user_code, login=h.ACCOUNT, deny=False):
        return browser.approve_device(self.ca.ca, verification_uri, user_code, login, deny=deny)

    def drive_code_flow(self, authorize_url, login=h.ACCOUNT, follow=True, deny=False):
        return browser.drive_code_flow(self.ca.ca, authorize_url, login, follow=follow, deny=deny)

    # -- test-only endpoints (server.mjs)

    def _admin(self, path, method="GET"):
        status, body = self._request(self.url + path, {} if method == "POST" else None,
                                     {"x-admin-key": self.admin_key}, method)
        assert status == 200, body
        return body

    def stats(self):
        """Requests per path, and `introspection:<client id>` per resource server."""
        return self._admin("/_test/stats")

    def introspections(self, rs=None):
        s = self.stats()
        return s.get(f"introspection:{rs}", 0) if rs else s.get("/token/introspection", 0)

    def token_requests(self):
        return self.stats().get("/token", 0)

    def issued(self):
        """Every access token, refresh token, device code and authorization code issued so far."""
        return [t["value"] for t in self._admin("/_test/issued")]

    def revoke_account(self, account=h.ACCOUNT):
        """Revokes every grant of `account` (the user removing the app's access): its access
        tokens stop working and refreshing gets invalid_grant. Returns the number of grants."""
        return self._admin("/_test/revoke?" + urllib.parse.urlencode({"account": account}), "POST")["revoked_grants"]


class OAuthDovecot(h.Dovecot):
    """harness.Dovecot with XOAUTH2 and OAUTHBEARER checked by its `oauth2` passdb against
    the OAuthServer's introspection endpoint (POST, HTTP Basic, TLS verified with the test CA).
    IMAP on `port`, POP3 (pop3=True) on `pop3_port`, both implicit TLS."""

    def __init__(self, directory, ca, oauth, pop3=True):
        super().__init__(directory, ca, {}, pop3=pop3)
        self.oauth = oauth

    def write_config(self):
        super().write_config()
        ext = self.dir / "dovecot-oauth2.conf.ext"
        url = oauth_url_with_credentials(self.oauth.introspection_url, DOVECOT_RS, DOVECOT_RS_SECRET)
        ext.write_text(f"""introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
tls_ca_cert_file = {self.ca.ca}
""")
        os.chmod(ext, 0o644)
        text = self.conf.read_text()
        text, n_mech = re.subn(r"(?m)^auth_mechanisms = .*$", "auth_mechanisms = xoauth2 oauthbearer", text)
        text, n_passdb = re.subn(r"(?s)passdb \{.*?\n\}", f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                                                          f"  args = {ext}\n}}", text, count=1)
        assert n_mech == 1 and n_passdb == 1, "harness.Dovecot's config changed shape: update OAuthDovecot"
        # No auth penalty (Dovecot's documented switch): otherwise after failed logins (revoked,
        # expired tokens) the next one from 127.0.0.1 waits 2, 4, 8... s, and a short token expires.
        self.conf.write_text(text + "\nservice anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}\n")


def oauth_url_with_credentials(url, user, password):
    u = urllib.parse.urlsplit(url)
    netloc = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{u.netloc}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


class XOAuth2SmtpUpstream(h.SmtpUpstream):
    """harness.SmtpUpstream (same message records) taking AUTH XOAUTH2 with tokens introspected
    at the OAuthServer, answering a bad one as Gmail does (smtp_xoauth2_upstream.py)."""

    def __init__(self, directory, ca, oauth, tls="implicit", reject=(), tempfail=(), scopes=MAIL_SCOPES):
        super().__init__(directory, ca, None, None, tls=tls, reject=reject, tempfail=tempfail)
        self.oauth, self.scopes = oauth, list(scopes)

    def start(self):
        cmd = [h.PYTHON, SMTP_SCRIPT, "--port", self.port, "--tls", self.tls, "--cert", self.ca.cert,
               "--key", self.ca.key, "--outdir", self.outdir, "--introspect", self.oauth.introspection_url,
               "--client-id", SMTP_RS, "--client-secret", SMTP_RS_SECRET, "--ca-file", self.ca.ca]
        cmd += [a for s in self.scopes for a in ("--scope", s)]
        cmd += [a for r in self.reject for a in ("--reject", r)]
        cmd += [a for r in self.tempfail for a in ("--tempfail", r)]
        self.log = open(self.dir / "aiosmtpd.log", "ab")
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=self.log)
        m = re.match(r"READY (\d+)", h.read_line(self.proc, 15))
        assert m, f"XOAUTH2 SMTP upstream did not start; see {self.dir / 'aiosmtpd.log'}"
        self.port = int(m.group(1))
        h.wait_port(self.port, 10, self.proc, "XOAUTH2 SMTP upstream")
        return self
