"""The mailbridge binary: its relay.toml, start (until it listens), stop,
CLI calls, and `hash-password`."""

import json
import os
import signal
import subprocess
from pathlib import Path

from .wait import run, wait_port

ROOT = Path(__file__).resolve().parent.parent.parent
# MAILBRIDGE_BIN picks another build (a debug one, or a variant being measured).
BINARY = Path(os.environ.get("MAILBRIDGE_BIN", ROOT / "target" / "release" / "mailbridge"))


def toml_str(s):
    return json.dumps(str(s))


def toml_value(v):
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else toml_str(v)


def hash_password(password, binary=None):
    r = run([binary or BINARY, "hash-password"], input=password.encode(), timeout=30)
    assert r.returncode == 0, f"hash-password failed: {r.stderr.decode(errors='replace')}"
    h = r.stdout.decode().strip()
    assert h.startswith("$argon2"), h
    return h


def _endpoint(a, proto):
    port, tls = a[proto]
    return f"{proto} = {{ host = \"127.0.0.1\", port = {port}, tls = \"{tls}\" }}"


def relay_toml(smtp_port, imap_port, accounts, users, *, hostname, delivery=None, extra_smtp="", extra_imap="",
               extra_top="", pop3=""):
    """relay.toml text. accounts: dicts with name, username, password, ca, smtp (port, tls), imap (port, tls)
    and optionally pop3 (port, tls); users: dicts with name, hash, account. delivery: [delivery] keys
    (ints stay ints); extra_*: raw lines for that section; pop3: the [pop3] section's lines, if any."""
    out = [f"default_account = {toml_str(accounts[0]['name'])}", extra_top, "",
           "[smtp]", f'listen = ["127.0.0.1:{smtp_port}"]', 'spool_dir = "spool"',
           f"hostname = {toml_str(hostname)}", extra_smtp, "",
           "[imap]", f'listen = ["127.0.0.1:{imap_port}"]', extra_imap, "",
           "[delivery]"] + [f"{k} = {toml_value(v)}" for k, v in (delivery or {}).items()] + [""]
    if pop3:
        out += ["[pop3]", pop3, ""]
    for a in accounts:
        out += ["[[accounts]]", f"name = {toml_str(a['name'])}", 'provider = "custom"',
                f"username = {toml_str(a['username'])}", f"password = {toml_str(a['password'])}",
                f"ca_file = {toml_str(a['ca'])}", _endpoint(a, "smtp"), _endpoint(a, "imap")]
        if "pop3" in a:
            out.append(_endpoint(a, "pop3"))
        out.append("")
    for u in users:
        out += ["[[users]]", f"name = {toml_str(u['name'])}", f"password_hash = {toml_str(u['hash'])}",
                f"account = {toml_str(u['account'])}", ""]
    return "\n".join(out)


class MailBridge:
    """The binary with a generated relay.toml in its own directory; `start()`
    returns once the SMTP and IMAP listeners answer."""

    def __init__(self, directory, config_text, smtp_port, imap_port, binary=None, rust_log="mailbridge=trace,info",
                 extra_env=None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin = Path(binary or BINARY)
        self.config = self.dir / "relay.toml"
        self.config.write_text(config_text)
        os.chmod(self.config, 0o600)
        self.smtp_port, self.imap_port = smtp_port, imap_port
        self.rust_log, self.extra_env = rust_log, dict(extra_env or {})
        self.log_path = self.dir / "mailbridge.log"
        self.proc = None

    def env(self):
        e = dict(os.environ)
        e.update(RUST_LOG=self.rust_log, NO_COLOR="1", RUST_BACKTRACE="1")
        e.update(self.extra_env)
        e.pop("MAILBRIDGE_CONFIG", None)
        return e

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(self.bin), "-c", str(self.config), "run"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, env=self.env(), cwd=self.dir)
        try:
            wait_port(self.smtp_port, 20, self.proc, "mailbridge SMTP listener")
            wait_port(self.imap_port, 20, self.proc, "mailbridge IMAP listener")
        except Exception as e:
            self.kill()
            raise AssertionError(f"{e}; log:\n{self.log_text()[-3000:]}")
        return self

    def pids(self):
        return [self.proc.pid] if self.proc else []

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
        return run([self.bin, "-c", config or self.config, *args], input=input, timeout=timeout,
                   env=self.env(), cwd=self.dir, stdin=None if input is not None else subprocess.DEVNULL)
