"""Real processes on 127.0.0.1 for the interop suite: the aiosmtpd upstream,
and the accounts, users and relay.toml the tests share. The test CA,
Dovecot, the `mailbridge` binary, ports and polling come from the shared
pytools/mailbridge_testkit (also used by bench/), re-exported here under
their usual names. Readiness is always "the port answers" or "the process
said READY", polled against a deadline; nothing waits by sleeping.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pytools"))
from mailbridge_testkit import (BINARY, DOVECOT_POP3_DIR, ROOT, Deadline, Dovecot, MailBridge,  # noqa: E402,F401
                                TestCA, free_port, hash_password, poll, port_answers, read_line, relay_toml,
                                run, toml_str, wait_port)

EXAMPLE_IMAP_DIGEST = str(Path(os.environ.get("MAILBRIDGE_EXAMPLES", ROOT / "target" / "release" / "examples")) / "imap_digest")
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "aiosmtpd_upstream.py"
PYTHON = sys.executable

# The account's app password as Google shows it, and as the upstreams expect it.
APP_PASSWORD_SHOWN = "wxyz qrst uvwx mnop"
APP_PASSWORD = APP_PASSWORD_SHOWN.replace(" ", "")
ACCOUNT = "you@example.com"
ALT_APP_PASSWORD_SHOWN = "hgfe dcba zyxw vuts"
ALT_APP_PASSWORD = ALT_APP_PASSWORD_SHOWN.replace(" ", "")
ALT_ACCOUNT = "alt@example.com"
# Local device logins: a password with space, double quote and backslash.
DEVICE_USER = "device"
DEVICE_PASSWORD = 'pa ss"wo\\rd'
ALT_USER = "altdev"
ALT_PASSWORD = "alt-device-secret"

SECRETS = [APP_PASSWORD, APP_PASSWORD_SHOWN, ALT_APP_PASSWORD, ALT_APP_PASSWORD_SHOWN, DEVICE_PASSWORD, ALT_PASSWORD]


# ---------------------------------------------------------------------------
# SMTP upstream (aiosmtpd)


class SmtpUpstream:
    """aiosmtpd with implicit TLS or STARTTLS, AUTH for one user, messages to a directory."""

    def __init__(self, directory, ca, user, password, tls="implicit", reject=(), tempfail=()):
        self.dir = Path(directory)
        self.outdir = self.dir / "messages"
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.ca, self.user, self.password, self.tls = ca, user, password, tls
        self.reject, self.tempfail = list(reject), list(tempfail)
        self.port = 0
        self.proc = None

    def start(self):
        cmd = [PYTHON, UPSTREAM_SCRIPT, "--port", self.port, "--tls", self.tls, "--cert", self.ca.cert,
               "--key", self.ca.key, "--user", self.user, "--password", self.password, "--outdir", self.outdir]
        for r in self.reject:
            cmd += ["--reject", r]
        for r in self.tempfail:
            cmd += ["--tempfail", r]
        self.log = open(self.dir / "aiosmtpd.log", "ab")
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=self.log)
        line = read_line(self.proc, 15)
        m = re.match(r"READY (\d+)", line)
        assert m, f"aiosmtpd upstream did not start: {line!r}; see {self.dir / 'aiosmtpd.log'}"
        self.port = int(m.group(1))
        wait_port(self.port, 10, self.proc, "aiosmtpd upstream")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.proc.stdout.close()
            self.log.close()
        self.proc = None

    def messages(self):
        out = []
        for meta in sorted(self.outdir.glob("*.json")):
            m = json.loads(meta.read_text())
            m["data"] = meta.with_suffix(".eml").read_bytes()
            m["file"] = str(meta)
            out.append(m)
        return out

    def find(self, token):
        t = token.encode() if isinstance(token, str) else token
        return [m for m in self.messages() if t in m["data"]]

    def wait_rcpts(self, token, rcpts, timeout=20):
        """Waits until the messages carrying `token` cover every address in `rcpts`."""
        want = set(rcpts)

        def done():
            msgs = self.find(token)
            got = set(r for m in msgs for r in m["rcpt_tos"])
            return msgs if want <= got else None

        return poll(done, timeout, f"message {token} for {len(want)} recipient(s) at the SMTP upstream")


# ---------------------------------------------------------------------------
# mailbridge configuration


def bridge_config(smtp_port, imap_port, accounts, users, delivery=None, extra_smtp="", extra_imap="", extra_top="",
                  pop3=""):
    """relay.toml text. accounts: dicts with name, username, password, ca, smtp (port, tls), imap (port, tls)."""
    d = {"retry_initial": "200ms", "retry_max": "1s", "timeout": "20s", "expire_after": "1h"}
    d.update(delivery or {})
    return relay_toml(smtp_port, imap_port, accounts, users, hostname="mailbridge.interop", delivery=d,
                      extra_smtp=extra_smtp, extra_imap=extra_imap, extra_top=extra_top, pop3=pop3)


def accounts_for(ca, smtp_port, imap_port, alt_smtp_port, password=APP_PASSWORD_SHOWN):
    return [
        {"name": "main", "username": ACCOUNT, "password": password, "ca": ca.ca,
         "smtp": (smtp_port, "implicit"), "imap": (imap_port, "implicit")},
        {"name": "alt", "username": ALT_ACCOUNT, "password": ALT_APP_PASSWORD_SHOWN, "ca": ca.ca,
         "smtp": (alt_smtp_port, "starttls"), "imap": (imap_port, "implicit")},
    ]


def queue_json(mb):
    """`mailbridge queue list --json` as Python objects."""
    r = mb.cli("queue", "list", "--json", timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
