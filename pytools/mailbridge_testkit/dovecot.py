"""Dovecot from a private config dir: IMAP (and optionally POP3) with
implicit TLS on 127.0.0.1, passwd-file users, Maildirs owned by `mail`."""

import os
import pwd
import signal
import subprocess
from pathlib import Path

from .wait import free_port, poll, run, wait_port

# Where dovecot-pop3d's `pop3` and `pop3-login` live (override for a machine
# where they were unpacked elsewhere).
DOVECOT_POP3_DIR = Path(os.environ.get("MAILBRIDGE_DOVECOT_POP3_DIR", "/usr/lib/dovecot"))

# Limits raised for thousands of logged-in connections (the benchmarks).
MANY_SESSIONS_TOP = """
default_process_limit = 6000
default_client_limit = 20000
default_vsz_limit = 1G
"""
MANY_SESSIONS_LOGIN = """
  service_count = 0
  process_min_avail = 2
  client_limit = 6000
"""
MANY_SESSIONS_SERVICES = """
service imap {
  process_limit = 6000
}
service anvil {
  client_limit = 20000
}
service auth {
  client_limit = 20000
}
"""


class Dovecot:
    """Dovecot from a private config dir: implicit TLS on `port`, plaintext with
    STARTTLS on `plain_port` (unless plain=False), passwd-file users. With pop3=True also POP3
    (dovecot-pop3d) with implicit TLS on `pop3_port`. many_sessions=True raises
    the process and client limits for thousands of connections."""

    def __init__(self, directory, ca, users, pop3=False, many_sessions=False, plain=True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.ca = ca
        self.users = users  # {username: password}
        self.port = free_port()
        # Plaintext with STARTTLS, for comparing local STARTTLS with Dovecot's own.
        self.plain_port = free_port() if plain else None
        self.conf = self.dir / "dovecot.conf"
        self.base = self.dir / "run"
        self.maildirs = {}
        self.pop3 = pop3
        self.pop3_port = free_port() if pop3 else None
        self.many_sessions = many_sessions

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
        many = self.many_sessions
        plain = f"address = 127.0.0.1\n    port = {self.plain_port}" if self.plain_port else "port = 0"
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
mail_max_userip_connections = {20000 if many else 200}
{MANY_SESSIONS_TOP if many else ""}
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
    {plain}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
{MANY_SESSIONS_LOGIN if many else ""}
}}
{MANY_SESSIONS_SERVICES if many else ""}
""" + self._pop3_config())

    def populate(self, user, messages, host="interop", flags="", size_in_name=False):
        """Writes messages straight into the user's Maildir cur/, owned by mail.
        size_in_name adds `,S=<size>` to each file name so Dovecot need not stat it."""
        md = self.dir / "mail" / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        total = 0
        for i, data in enumerate(messages, 1):
            size = f",S={len(data)}" if size_in_name else ""
            (md / "cur" / f"{1700000000 + i}.M{i}P{i}.{host}{size}:2,{flags}").write_bytes(data)
            total += len(data)
        mail = pwd.getpwnam("mail")
        for root, dirs, files in os.walk(self.dir / "mail"):
            for name in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.chown(name, mail.pw_uid, mail.pw_gid)
        self.maildirs[user] = md
        return total

    def start(self):
        self.write_config()
        # The master daemonises and its children inherit stdout/stderr: use a file, not a pipe.
        out = self.dir / "dovecot.stderr"
        with open(out, "wb") as f:
            r = run(["dovecot", "-c", self.conf], stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                    capture_output=False, timeout=30)
        assert r.returncode == 0, f"dovecot did not start: {out.read_text(errors='replace')}"
        try:
            wait_port(self.port, 20, what="dovecot")
            if self.pop3:
                wait_port(self.pop3_port, 20, what="dovecot pop3s")
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

        poll(gone, 30, "dovecot to stop")

    def client(self):
        import imaplib

        return imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.ca.ssl_context(), timeout=15)
