"""Processes and measurements for bench/bench.py: the Rust sink, mailbridge,
a private Postfix instance, Dovecot, stunnel, and memory sampling (RSS, and
PSS summed over a process tree from /proc/PID/smaps_rollup). The test CA,
Dovecot, the daemon's start and stop, ports and polling come from the shared
pytools/mailbridge_testkit (also used by interop/). Everything listens on
127.0.0.1 only; every process started here is stopped by its own pid (see
Procs)."""

import json
import os
import pwd
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pytools"))
import mailbridge_testkit as kit  # noqa: E402
from mailbridge_testkit import BINARY, ROOT, TestCA, free_port, ok, poll, read_line, run, wait_port  # noqa: E402,F401
# BENCH_TOOLS: another build of bench/tools (e.g. another checkout's, already built).
TOOLS = Path(os.environ.get("BENCH_TOOLS", ROOT / "bench" / "tools" / "target" / "release"))
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/mailbridge-bench"))
RESULTS = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results"))

SINK_USER, SINK_PASS = "relay@example.com", "sinkpassword123"
# The same account logs in to the SMTP sink and to Dovecot (as with Gmail).
IMAP_USER, IMAP_PASS = SINK_USER, SINK_PASS
LOCAL_USER, LOCAL_PASS = "device", "device-secret"


def raise_nofile(n=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(n, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Procs:
    """Every process we start, so all can be stopped (by pid) on exit."""
    started = []
    stoppers = []

    @classmethod
    def stop_later(cls, stop):
        cls.stoppers.append(stop)

    @classmethod
    def stopped(cls, stop):
        try:
            cls.stoppers.remove(stop)
        except ValueError:
            pass

    @classmethod
    def popen(cls, cmd, **kw):
        p = subprocess.Popen([str(c) for c in cmd], **kw)
        cls.started.append(p)
        return p

    @classmethod
    def cleanup(cls):
        for f in reversed(list(cls.stoppers)):  # each stop() removes itself
            try:
                f()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup: {e}")
        cls.stoppers.clear()
        for p in cls.started:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        cls.started.clear()


# ---------------------------------------------------------------------------
# memory


def mem_of(pid):
    """(rss_kib, pss_kib) of one process, or (0, 0) if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    rss = pss = 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def cpu_secs(pids):
    """User + system CPU seconds used so far by `pids` (/proc/PID/stat), summed."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def vm_kib(pid, key):
    """A /proc/PID/status value in KiB (VmHWM: peak RSS over the lifetime, VmRSS: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class MemSampler:
    """Samples the summed RSS and PSS of pids_fn() every `interval` s; keeps peaks."""

    def __init__(self, pids_fn, interval=0.2):
        self.pids_fn, self.interval = pids_fn, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def sample(self):
        pids = self.pids_fn()
        rss = pss = 0
        for p in pids:
            r, s = mem_of(p)
            rss, pss = rss + r, pss + s
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        return rss, pss

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self.sample()


# ---------------------------------------------------------------------------
# CA


def CA(d):
    """The shared test CA (a CA and a separate leaf for 127.0.0.1 / localhost)."""
    return TestCA(d, name="bench CA")


# ---------------------------------------------------------------------------
# the Rust sink


class Sink:
    def __init__(self, d, ca):
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.log = open(d / "sink.log", "wb")
        self.proc = Procs.popen([TOOLS / "sink", "--cert", ca.cert, "--key", ca.key, "--user", SINK_USER,
                                 "--pass", SINK_PASS], stdout=subprocess.PIPE, stderr=self.log)
        m = re.match(r"READY (\d+) (\d+)", read_line(self.proc, 30))
        if not m:
            raise RuntimeError("sink did not start")
        self.port, self.ctl_port = int(m.group(1)), int(m.group(2))

    def ctl(self, cmd):
        with socket.create_connection(("127.0.0.1", self.ctl_port), timeout=30) as s:
            s.sendall(cmd.encode() + b"\n")
            return s.makefile().readline().strip()

    def count(self):
        return int(self.ctl("COUNT").split()[0])

    def sessions(self):
        """TLS sessions the sink accepted since the last reset."""
        f = self.ctl("COUNT").split()
        return int(f[2]) if len(f) > 2 else 0

    def reset(self):
        self.ctl("RESET")

    def receipts(self):
        p = self.dir / "receipts.txt"
        self.ctl(f"DUMP {p}")
        return dict(line.split() for line in p.read_text().splitlines())

    def wait_count(self, n, timeout=180):
        return poll(lambda: self.count() >= n, timeout, f"{n} messages at the sink", 0.02)


# ---------------------------------------------------------------------------
# mailbridge


class Tracked:
    """For a peer class with start() and stop(): while it runs, Procs.cleanup() stops it too."""

    def start(self):
        super().start()
        Procs.stop_later(self.stop)
        return self

    def stop(self, *args, **kw):
        Procs.stopped(self.stop)
        return super().stop(*args, **kw)


class MailBridge(Tracked, kit.MailBridge):
    """A copy of the binary with a relay.toml for one account (the sink, and Dovecot on imap_port)."""

    def __init__(self, d, sink_port, imap_port, ca, delivery_concurrency=None, extra_env=None, pop3_port=None,
                 source=None):
        d.mkdir(parents=True, exist_ok=True)
        # A copy, since others may rebuild target/ meanwhile; MAILBRIDGE_BIN picks another build,
        # `source` another binary for this one instance (BENCH_BASE_BIN: the build to compare with).
        binary = d / "mailbridge"
        shutil.copy2(source or BINARY, binary)
        smtp_port, local_imap_port = free_port(), free_port()
        self.metrics_port = free_port()
        self.pop3_port = free_port() if pop3_port else None
        account = {"name": "bench", "username": SINK_USER, "password": SINK_PASS, "ca": ca.ca,
                   "smtp": (sink_port, "implicit"), "imap": (imap_port, "implicit")}
        if pop3_port:
            account["pop3"] = (pop3_port, "implicit")
        user = {"name": LOCAL_USER, "hash": kit.hash_password(LOCAL_PASS, binary), "account": "bench"}
        delivery = {"retry_initial": "1s", "retry_max": "5s", "timeout": "60s"}
        if delivery_concurrency:
            delivery["concurrency"] = delivery_concurrency
        text = kit.relay_toml(
            smtp_port, local_imap_port, [account], [user], hostname="mailbridge.bench", delivery=delivery,
            extra_top=f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"',
            extra_smtp='mode = "spool"\nmax_connections = 5000\nmax_message_size = 31457280',
            extra_imap="max_connections = 5000\nmax_connections_per_account = 5000",
            pop3=f'listen = ["127.0.0.1:{self.pop3_port}"]\nmax_connections_per_account = 100' if pop3_port else "")
        super().__init__(d, text, smtp_port, local_imap_port, binary=binary,
                         rust_log=os.environ.get("BENCH_RUST_LOG", "info"), extra_env=extra_env)

    def stop(self):
        return super().stop(timeout=20)

    def metric(self, name):
        """One unlabelled value from /metrics (e.g. mailbridge_spool_flushes_total); None if absent."""
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                f = line.split()
                if len(f) == 2 and f[0] == name:
                    return float(f[1])
        return None

    def commit_counts(self):
        """(flushes, commits) of the spool's group commit so far, from /metrics."""
        return (self.metric("mailbridge_spool_flushes_total") or 0,
                self.metric("mailbridge_spool_commits_total") or 0)


# ---------------------------------------------------------------------------
# Postfix (private instance)


class Postfix:
    """`postfix -c DIR/etc start`: own config, queue and data directories, relayhost = the sink
    over implicit TLS with SASL, fsync as shipped."""

    def __init__(self, d, sink_port, ca):
        if d.exists():
            shutil.rmtree(d)
        self.dir = d
        self.etc, self.queue, self.data = d / "etc", d / "queue", d / "data"
        for x in (self.etc, self.queue, self.data):
            x.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        master = Path("/etc/postfix/master.cf").read_text()
        master = re.sub(r"(?m)^smtp\s+inet\s.*$", f"127.0.0.1:{self.port} inet n - n - - smtpd", master)
        (self.etc / "master.cf").write_text(master)
        (self.etc / "sasl_passwd").write_text(f"[127.0.0.1]:{sink_port} {SINK_USER}:{SINK_PASS}\n")
        os.chmod(self.etc / "sasl_passwd", 0o600)
        (self.etc / "main.cf").write_text(f"""
compatibility_level = 3.6
config_directory = {self.etc}
queue_directory = {self.queue}
data_directory = {self.data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydomain = bench
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_wrappermode = yes
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca.ca}
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = hash:{self.etc}/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
message_size_limit = 31457280
biff = no
smtputf8_enable = no
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
""")
        ok(["postconf", "-c", self.etc, "-F", "*/*/chroot = n"])
        ok(["postmap", "-c", self.etc, f"hash:{self.etc}/sasl_passwd"])

    def start(self):
        ok(["postfix", "-c", self.etc, "start"], stdin=subprocess.DEVNULL, timeout=60)
        Procs.stop_later(self.stop)
        wait_port(self.port, 20, what="postfix smtpd")
        return self

    def master_pid(self):
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self):
        m = self.master_pid()
        return tree(m) if m else []

    def queue_empty(self):
        for sub in ("incoming", "active", "deferred", "maildrop"):
            q = self.queue / sub
            if q.exists() and any(True for _ in q.rglob("*") if _.is_file()):
                return False
        return True

    def stop(self):
        if self.master_pid():
            run(["postfix", "-c", self.etc, "stop"], timeout=60)
        Procs.stopped(self.stop)


# ---------------------------------------------------------------------------
# Dovecot and stunnel


class Dovecot(Tracked, kit.Dovecot):
    """The shared Dovecot with one passwd-file user (the account the sink also
    knows) and limits raised for thousands of logged-in connections."""

    def __init__(self, d, ca, pop3=False):
        super().__init__(d, ca, {IMAP_USER: IMAP_PASS}, pop3=pop3, many_sessions=True, plain=False)

    def populate(self, n=1000, size=25000):
        """n messages of about `size` bytes in the user's Maildir (replacing what was there); returns their
        total size."""
        shutil.rmtree(self.dir / "mail" / IMAP_USER / "Maildir", ignore_errors=True)
        return super().populate(IMAP_USER, bench_messages(n, size), host="bench", flags="S", size_in_name=True)


def bench_messages(n, size):
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    for i in range(1, n + 1):
        head = (f"From: sender{i}@example.org\r\nTo: {IMAP_USER}\r\nSubject: message {i}\r\n"
                f"Message-ID: <{i}@bench>\r\nDate: Thu, 26 Nov 2026 05:00:00 +0000\r\n\r\n").encode()
        yield head + line * ((size - len(head)) // len(line))


class Child:
    """A peer that is one child process (self.proc), stopped with SIGTERM."""

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class SmtpSink(Child):
    """Postfix's smtp-sink: answers SMTP and throws the mail away (no queue, no fsync): the
    ceiling of an SMTP server on this machine, the peer of the accept-path goal (issue 15)."""

    def __init__(self):
        self.port = free_port()

    def start(self):
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root otherwise
        self.proc = Procs.popen(["smtp-sink", *user, f"127.0.0.1:{self.port}", "1024"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 20, what="smtp-sink")
        return self


class MailServe(Child):
    """bench/tools mailserve: a fast IMAPS and POP3S upstream (one user, `messages` x 25 KB in memory,
    every answer pre-encoded), so that the proxy in front of it is the bottleneck: its own ceiling."""

    def __init__(self, d, ca, messages=1000, size=25000):
        d.mkdir(parents=True, exist_ok=True)
        self.log = open(d / "mailserve.log", "wb")
        self.proc = Procs.popen([TOOLS / "mailserve", "--cert", ca.cert, "--key", ca.key, "--user", IMAP_USER,
                                 "--pass", IMAP_PASS, "--messages", messages, "--size", size],
                                stdout=subprocess.PIPE, stderr=self.log)
        m = re.match(r"READY (\d+) (\d+)", read_line(self.proc, 30))
        if not m:
            raise RuntimeError("mailserve did not start")
        self.port, self.pop3_port = int(m.group(1)), int(m.group(2))
        # The same messages as Dovecot's mailbox (bench_messages).
        self.size = sum(len(x) for x in bench_messages(messages, size))


class Stunnel(Child):
    """stunnel in client mode: plaintext on a loopback port, verified TLS to Dovecot."""

    def __init__(self, d, dovecot_port, ca, service="imap"):
        d.mkdir(parents=True, exist_ok=True)
        self.dir, self.port = d, free_port()
        (d / "stunnel.conf").write_text(f"""
foreground = yes
pid =
output = {d}/stunnel.log
debug = 4
[{service}]
client = yes
accept = 127.0.0.1:{self.port}
connect = 127.0.0.1:{dovecot_port}
verifyChain = yes
CAfile = {ca.ca}
checkHost = localhost
""")

    def start(self):
        self.proc = Procs.popen(["stunnel4" if shutil.which("stunnel4") else "stunnel", self.dir / "stunnel.conf"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 20, what="stunnel")
        return self


def tool(name, *args, **kw):
    kw.setdefault("timeout", 300)
    return ok([TOOLS / name, *args], **kw).stdout.decode()


def kv(line):
    """'RESULT a=1 b=2.5' -> {'a': 1.0, 'b': 2.5}"""
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def save(name, data, table):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def percentile_ms(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    i = round(p / 100.0 * (len(sorted_vals) - 1))
    return sorted_vals[min(i, len(sorted_vals) - 1)]
