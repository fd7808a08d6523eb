#!/usr/bin/python3
"""A TLS + AUTH SMTP upstream for the interop suite, built on Debian's aiosmtpd.

Plays the part of smtp.gmail.com: implicit TLS (465 style) or STARTTLS (587
style), AUTH PLAIN/LOGIN only inside TLS and only for one username and
password, and every accepted message written to --outdir as
``<n>.eml`` (the DATA bytes, dot-unstuffed) plus ``<n>.json`` (the envelope),
the JSON written last and atomically so a reader that sees it sees both.

Prints ``READY <port>`` on stdout once it listens (``--port 0`` picks a port).
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class UpstreamSMTP(SMTP):
    """aiosmtpd answers 555 to MAIL parameters it does not know; accept AUTH=<...>."""

    def _getparams(self, params):
        result = super()._getparams(params)
        if result is not None:
            result.pop("AUTH", None)
        return result


class Handler:
    def __init__(self, outdir, reject, tempfail):
        self.outdir = outdir
        self.reject = {r.lower() for r in reject}
        self.tempfail = {r.lower() for r in tempfail}
        self.counter = itertools.count(1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        if address.lower() in self.reject:
            return "550 5.1.1 The email account that you tried to reach does not exist"
        if address.lower() in self.tempfail:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        base = os.path.join(self.outdir, f"{os.getpid()}-{n:06d}")
        with open(base + ".eml", "wb") as f:
            f.write(envelope.content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "auth_user": session.auth_data.login.decode("utf-8", "replace")
            if isinstance(session.auth_data, LoginPassword)
            else None,
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 OK queued as %d" % n


def common_args():
    """The options every SMTP sink here takes: listener, TLS, where messages go, bad recipients."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", choices=["implicit", "starttls"], default="implicit")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--reject", action="append", default=[], help="recipient answered with 550")
    ap.add_argument("--tempfail", action="append", default=[], help="recipient answered with 451")
    return ap


def main():
    ap = common_args()
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    args = ap.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    handler = Handler(args.outdir, args.reject, args.tempfail)
    user = args.user.encode()
    password = args.password.encode()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user
            and auth_data.password == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def factory():
        if args.tls == "implicit":
            # The listening socket does TLS itself; aiosmtpd does not see it as
            # STARTTLS, so "AUTH only inside TLS" holds because every byte is TLS.
            return UpstreamSMTP(
                handler,
                hostname="upstream.test",
                authenticator=authenticator,
                auth_required=True,
                auth_require_tls=False,
                enable_SMTPUTF8=True,
                loop=loop,
            )
        return UpstreamSMTP(
            handler,
            hostname="upstream.test",
            tls_context=ctx,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=True,
            enable_SMTPUTF8=True,
            loop=loop,
        )

    return serve(loop, factory, args.port, ctx if args.tls == "implicit" else None)


def serve(loop, factory, port, ssl_ctx):
    """Listens on 127.0.0.1:port (implicit TLS with ssl_ctx), says READY <port>, serves until SIGTERM."""
    server = loop.run_until_complete(
        loop.create_server(
            factory,
            host="127.0.0.1",
            port=port,
            ssl=ssl_ctx,
            reuse_address=True,
        )
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(stop.wait())
    server.close()
    loop.run_until_complete(server.wait_closed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
