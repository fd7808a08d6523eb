"""Real processes on 127.0.0.1 for the interop suite: a test CA made with
openssl, the aiosmtpd upstream, Dovecot from a private config dir, and the
release `mailbridge` binary. Readiness is always "the port answers" or "the
process said READY", polled against a deadline; nothing waits by sleeping.
"""

import json
import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("MAILBRIDGE_BIN", ROOT / "target" / "release" / "mailbridge"))
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


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def passed(self):
        return time.monotonic() >= self.end


def poll(fn, timeout, what, interval=0.02):
    """Calls fn until it returns something truthy; fails with `what` at the deadline."""
    d = Deadline(timeout)
    last = None
    while True:
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            r, last = None, e
        if r:
            return r
        if d.passed():
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port, timeout=15, proc=None, what="port"):
    def ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        return port_answers(port)

    d = Deadline(timeout)
    while not ready():
        if d.passed():
            raise AssertionError(f"{what}: 127.0.0.1:{port} did not answer within {timeout}s")
        time.sleep(0.02)


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    return subprocess.run([str(c) for c in cmd], **kw)


def toml_str(s):
    return json.dumps(str(s))


# ---------------------------------------------------------------------------
# Certificates


class TestCA:
    """A CA and a separate leaf (SAN IP:127.0.0.1, DNS:localhost, EKU serverAuth)."""

    def __init__(self, directory, name="mailbridge interop CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.cert = self.dir / "leaf.pem"
        self.key = self.dir / "leaf.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._ok(["openssl", "req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                  "-subj", f"/CN={name}",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        csr = self.dir / "leaf.csr"
        self._ok(["openssl", "req", "-new", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=localhost"])
        ext = self.dir / "leaf.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        self._ok(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                  "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", ext])
        for p in (self.ca, self.cert, self.key):
            os.chmod(p, 0o644)

    @staticmethod
    def _ok(cmd):
        r = run(cmd)
        assert r.returncode == 0, f"{cmd[0]} failed: {r.stderr.decode(errors='replace')}"

    def ssl_context(self):
        import ssl

        return ssl.create_default_context(cafile=str(self.ca))


# ---------------------------------------------------------------------------
# SMTP upstream (aiosmtpd)


def read_line(proc, timeout):
    """One line from proc.stdout, or an assertion error at the deadline."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"no output from {proc.args[:3]} within {timeout}s")
        return proc.stdout.readline().decode(errors="replace")
    finally:
        sel.close()


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
# Dovecot


# Where dovecot-pop3d's `pop3` and `pop3-login` live (override for a machine
# where they were unpacked elsewhere).
DOVECOT_POP3_DIR = Path(os.environ.get("MAILBRIDGE_DOVECOT_POP3_DIR", "/usr/lib/dovecot"))


class Dovecot:
    """Dovecot from a private config dir: implicit TLS on one port, passwd-file users.
    With pop3=True also POP3 (dovecot-pop3d) with implicit TLS on `pop3_port`."""

    def __init__(self, directory, ca, users, pop3=False):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.ca = ca
        self.users = users  # {username: password}
        self.port = free_port()
        # Plaintext with STARTTLS, for comparing local STARTTLS with Dovecot's own.
        self.plain_port = free_port()
        self.conf = self.dir / "dovecot.conf"
        self.base = self.dir / "run"
        self.maildirs = {}
        self.pop3 = pop3
        self.pop3_port = free_port() if pop3 else None

    def _pop3_config(self):
        if not self.pop3:
            return ""
        return f"""
pop3_uidl_format = %08Xu%08Xv
service pop3 {{
  executable = {DOVECOT_POP3_DIR}/pop3
}}
service pop3-login {{
  executable = {DOVECOT_POP3_DIR}/pop3-login
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.pop3_port}
    ssl = yes
  }}
}}
"""

    def write_config(self):
        passwd = self.dir / "passwd"
        passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        os.chmod(passwd, 0o644)
        (self.dir / "state").mkdir(exist_ok=True)
        self.conf.write_text(f"""
base_dir = {self.base}
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
info_log_path = {self.dir}/dovecot.log
listen = 127.0.0.1
protocols = imap{" pop3" if self.pop3 else ""}
ssl = yes
ssl_cert = <{self.ca.cert}
ssl_key = <{self.ca.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 8
mail_location = maildir:~/Maildir
mail_max_userip_connections = 200
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={self.dir}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.plain_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
""" + self._pop3_config())

    def populate(self, user, messages):
        """Writes messages straight into the user's Maildir cur/, owned by mail."""
        md = self.dir / "mail" / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(messages, 1):
            (md / "cur" / f"{1700000000 + i}.M{i}P{i}.interop:2,").write_bytes(data)
        mail = pwd.getpwnam("mail")
        for root, dirs, files in os.walk(self.dir / "mail"):
            for name in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.chown(name, mail.pw_uid, mail.pw_gid)
        self.maildirs[user] = md

    def start(self):
        self.write_config()
        # The master daemonises and its children inherit stdout/stderr: use a file, not a pipe.
        out = self.dir / "dovecot.stderr"
        with open(out, "wb") as f:
            r = run(["dovecot", "-c", self.conf], stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                    capture_output=False, timeout=30)
        assert r.returncode == 0, f"dovecot did not start: {out.read_text(errors='replace')}"
        try:
            wait_port(self.port, 15, what="dovecot")
            if self.pop3:
                wait_port(self.pop3_port, 15, what="dovecot pop3s")
        except AssertionError:
            log = (self.dir / "dovecot.log").read_text(errors="replace") if (self.dir / "dovecot.log").exists() else ""
            raise AssertionError(f"dovecot did not listen on {self.port}; log:\n{log[-3000:]}")
        return self

    def stop(self):
        pidfile = self.base / "master.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True

        poll(gone, 15, "dovecot to stop")

    def client(self):
        import imaplib

        return imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.ca.ssl_context(), timeout=15)


# ---------------------------------------------------------------------------
# mailbridge


def hash_password(password):
    r = run([BINARY, "hash-password"], input=password.encode(), timeout=30)
    assert r.returncode == 0, f"hash-password failed: {r.stderr.decode(errors='replace')}"
    h = r.stdout.decode().strip()
    assert h.startswith("$argon2"), h
    return h


class MailBridge:
    """The release binary with a generated relay.toml in its own directory."""

    def __init__(self, directory, config_text, smtp_port, imap_port):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "relay.toml"
        self.config.write_text(config_text)
        os.chmod(self.config, 0o600)
        self.smtp_port, self.imap_port = smtp_port, imap_port
        self.log_path = self.dir / "mailbridge.log"
        self.proc = None

    def env(self):
        e = dict(os.environ)
        e.update(RUST_LOG="mailbridge=trace,info", NO_COLOR="1", RUST_BACKTRACE="1")
        e.pop("MAILBRIDGE_CONFIG", None)
        return e

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BINARY), "-c", str(self.config), "run"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, env=self.env(), cwd=self.dir)
        try:
            wait_port(self.smtp_port, 20, self.proc, "mailbridge SMTP listener")
            wait_port(self.imap_port, 20, self.proc, "mailbridge IMAP listener")
        except Exception as e:
            self.kill()
            raise AssertionError(f"{e}; log:\n{self.log_text()[-3000:]}")
        return self

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout=15):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            rc = None
        self.log.close()
        self.proc = None
        return rc

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            self.log.close()
            self.proc = None

    def cli(self, *args, input=None, timeout=60, config=None):
        return run([BINARY, "-c", config or self.config, *args], input=input, timeout=timeout,
                   env=self.env(), cwd=self.dir, stdin=None if input is not None else subprocess.DEVNULL)


def bridge_config(smtp_port, imap_port, accounts, users, delivery=None, extra_smtp="", extra_imap="", extra_top="",
                  pop3=""):
    """relay.toml text. accounts: dicts with name, username, password, ca, smtp (port, tls), imap (port, tls)."""
    d = {"retry_initial": "200ms", "retry_max": "1s", "timeout": "20s", "expire_after": "1h"}
    d.update(delivery or {})
    out = [f"default_account = {toml_str(accounts[0]['name'])}", extra_top, "",
           "[smtp]", f'listen = ["127.0.0.1:{smtp_port}"]', 'spool_dir = "spool"',
           'hostname = "mailbridge.interop"', extra_smtp, "",
           "[imap]", f'listen = ["127.0.0.1:{imap_port}"]', extra_imap, "",
           "[delivery]"] + [f"{k} = {toml_str(v)}" for k, v in d.items()] + [""]
    if pop3:
        out += ["[pop3]", pop3, ""]
    for a in accounts:
        out += ["[[accounts]]", f"name = {toml_str(a['name'])}", 'provider = "custom"',
                f"username = {toml_str(a['username'])}", f"password = {toml_str(a['password'])}",
                f"ca_file = {toml_str(a['ca'])}",
                f"smtp = {{ host = \"127.0.0.1\", port = {a['smtp'][0]}, tls = \"{a['smtp'][1]}\" }}",
                f"imap = {{ host = \"127.0.0.1\", port = {a['imap'][0]}, tls = \"{a['imap'][1]}\" }}", ""]
        if "pop3" in a:
            out.insert(-1, f"pop3 = {{ host = \"127.0.0.1\", port = {a['pop3'][0]}, tls = \"{a['pop3'][1]}\" }}")
    for u in users:
        out += ["[[users]]", f"name = {toml_str(u['name'])}", f"password_hash = {toml_str(u['hash'])}",
                f"account = {toml_str(u['account'])}", ""]
    return "\n".join(out)


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
