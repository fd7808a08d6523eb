#!/usr/bin/python3
"""An SMTP upstream that takes AUTH XOAUTH2 as smtp.gmail.com does, for the interop suite.

The password sink of interop/aiosmtpd_upstream.py (same envelope records in
--outdir, same TLS modes) with one difference: the credential is a bearer
token, checked by RFC 7662 introspection at the authorization server
(--introspect URL, with this resource server's client id and secret). A token
that is inactive, for another user or without a mail scope gets Gmail's
answer: ``334 `` + base64 of
``{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}``,
then, after the client's empty line, ``535-5.7.8 Username and Password not
accepted...``. PLAIN and LOGIN are offered, as Gmail offers them, and always
refused (there is no password here).

Prints ``READY <port>`` on stdout once it listens.
"""

import asyncio
import base64
import json
import os
import ssl
import sys
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword  # noqa: E402

from aiosmtpd_upstream import Handler, UpstreamSMTP, common_args, serve  # noqa: E402

GMAIL_CHALLENGE = json.dumps({"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"},
                             separators=(",", ":"))
GMAIL_535 = ("535-5.7.8 Username and Password not accepted. For more information, go to\r\n"
             "535 5.7.8  https://support.google.com/mail/?p=BadCredentials interop - gsmtp")


def parse_xoauth2(blob):
    """(user, token) from `user=U^Aauth=Bearer T^A^A`, or None."""
    try:
        parts = blob.decode("utf-8").split("\x01")
    except UnicodeDecodeError:
        return None
    fields = dict(p.split("=", 1) for p in parts if "=" in p)
    auth = fields.get("auth", "")
    if "user" not in fields or not auth.lower().startswith("bearer "):
        return None
    return fields["user"], auth[7:]


class Introspector:
    def __init__(self, url, client_id, secret, ca_file, scopes):
        self.url, self.scopes = url, set(scopes)
        self.auth = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        self.ctx = ssl.create_default_context(cafile=ca_file)

    def check(self, user, token):
        """True when the server says the token is active, for `user`, with a mail scope."""
        req = urllib.request.Request(self.url, data=urllib.parse.urlencode({"token": token}).encode(),
                                     headers={"Authorization": self.auth})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            info = json.load(r)
        return (info.get("active") is True and info.get("username") == user
                and bool(self.scopes & set(info.get("scope", "").split())))


class XOAuth2Handler(Handler):
    def __init__(self, outdir, reject, tempfail, introspector):
        super().__init__(outdir, reject, tempfail)
        self.introspector = introspector

    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot Decode response")
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        parsed = parse_xoauth2(blob)
        ok = False
        if parsed is not None:
            ok = await asyncio.get_running_loop().run_in_executor(None, self.introspector.check, *parsed)
        if ok:
            # The record's auth_user, as for a password login.
            return AuthResult(success=True, auth_data=LoginPassword(parsed[0].encode(), b""))
        if await server.challenge_auth(GMAIL_CHALLENGE) is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=GMAIL_535)


def main():
    ap = common_args()
    ap.add_argument("--introspect", required=True, help="the authorization server's introspection URL")
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--client-secret", required=True)
    ap.add_argument("--ca-file", required=True, help="trust for the introspection endpoint")
    ap.add_argument("--scope", action="append", default=[], help="a scope that allows sending")
    args = ap.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    introspector = Introspector(args.introspect, args.client_id, args.client_secret, args.ca_file,
                                args.scope or ["https://mail.google.com/"])
    handler = XOAuth2Handler(args.outdir, args.reject, args.tempfail, introspector)

    def refuse_passwords(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    implicit = args.tls == "implicit"

    def factory():
        return UpstreamSMTP(handler, hostname="upstream.test", authenticator=refuse_passwords, auth_required=True,
                            auth_require_tls=not implicit, tls_context=None if implicit else ctx,
                            require_starttls=not implicit, enable_SMTPUTF8=True, loop=loop)

    return serve(loop, factory, args.port, ctx if implicit else None)


if __name__ == "__main__":
    sys.exit(main())
