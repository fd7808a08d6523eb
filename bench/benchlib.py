"""Processes and measurements for bench/bench.py: a test CA, the Rust sink,
mailbridge, a private Postfix instance, Dovecot, stunnel, and memory sampling
(RSS, and PSS summed over a process tree from /proc/PID/smaps_rollup).
Everything listens on 127.0.0.1 only; every process started here is stopped
by its own pid (see Procs)."""

import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "bench" / "tools" / "target" / "release"
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/mailbridge-bench"))
RESULTS = ROOT / "bench" / "results"

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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20, what="port"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def poll(fn, timeout, what, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        r = fn()
        if r:
            return r
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], **kw)


class Procs:
    """Every process we start, so all can be stopped (by pid) on exit."""
    started = []
    stoppers = []

    @classmethod
    def popen(cls, cmd, **kw):
        p = subprocess.Popen([str(c) for c in cmd], **kw)
        cls.started.append(p)
        return p

    @classmethod
    def cleanup(cls):
        for f in reversed(cls.stoppers):
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


class CA:
    """A CA and a separate leaf for 127.0.0.1 / localhost, made with openssl."""

    def __init__(self, d):
        d.mkdir(parents=True, exist_ok=True)
        self.ca, self.cert, self.key = d / "ca.pem", d / "leaf.pem", d / "leaf.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ok(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", self.ca, "-days", "2",
            "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        ok(["openssl", "req", "-new", *ec, "-keyout", self.key, "-out", d / "leaf.csr", "-subj", "/CN=localhost"])
        (d / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ok(["openssl", "x509", "-req", "-in", d / "leaf.csr", "-CA", self.ca, "-CAkey", d / "ca.key",
            "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", d / "leaf.ext"])
        for p in (self.ca, self.cert, self.key):
            os.chmod(p, 0o644)


def ok(cmd, **kw):
    r = run(cmd, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}"
                           f"{r.stdout.decode(errors='replace')[-2000:]}")
    return r


# ---------------------------------------------------------------------------
# the Rust sink


class Sink:
    def __init__(self, d, ca):
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.log = open(d / "sink.log", "wb")
        self.proc = Procs.popen([TOOLS / "sink", "--cert", ca.cert, "--key", ca.key, "--user", SINK_USER,
                                 "--pass", SINK_PASS], stdout=subprocess.PIPE, stderr=self.log)
        m = re.match(r"READY (\d+) (\d+)", self.proc.stdout.readline().decode())
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


class MailBridge:
    def __init__(self, d, sink_port, imap_port, ca, delivery_concurrency=None, extra_env=None, pop3_port=None):
        self.extra_env = extra_env or {}
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.bin = d / "mailbridge"
        # A copy, since others may rebuild target/ meanwhile; MAILBRIDGE_BIN picks another build.
        shutil.copy2(os.environ.get("MAILBRIDGE_BIN", ROOT / "target" / "release" / "mailbridge"), self.bin)
        self.smtp_port, self.imap_port = free_port(), free_port()
        self.pop3_port = free_port() if pop3_port else None
        pop3_listen = f"""
[pop3]
listen = ["127.0.0.1:{self.pop3_port}"]
max_connections_per_account = 100
""" if pop3_port else ""
        pop3_account = f'pop3 = {{ host = "127.0.0.1", port = {pop3_port}, tls = "implicit" }}' if pop3_port else ""
        h = ok([self.bin, "hash-password"], input=LOCAL_PASS.encode()).stdout.decode().strip()
        conc = f"concurrency = {delivery_concurrency}" if delivery_concurrency else ""
        (d / "relay.toml").write_text(f"""
default_account = "bench"

[smtp]
listen = ["127.0.0.1:{self.smtp_port}"]
spool_dir = "spool"
mode = "spool"
hostname = "mailbridge.bench"
max_connections = 5000
max_message_size = 31457280

[imap]
listen = ["127.0.0.1:{self.imap_port}"]
max_connections = 5000
max_connections_per_account = 5000
{pop3_listen}
[delivery]
retry_initial = "1s"
retry_max = "5s"
timeout = "60s"
{conc}

[[accounts]]
name = "bench"
provider = "custom"
username = "{SINK_USER}"
password = "{SINK_PASS}"
ca_file = "{ca.ca}"
smtp = {{ host = "127.0.0.1", port = {sink_port}, tls = "implicit" }}
imap = {{ host = "127.0.0.1", port = {imap_port}, tls = "implicit" }}
{pop3_account}

[[users]]
name = "{LOCAL_USER}"
password_hash = "{h}"
account = "bench"
""")
        os.chmod(d / "relay.toml", 0o600)

    def start(self):
        self.log = open(self.dir / "mailbridge.log", "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"), NO_COLOR="1")
        env.update(self.extra_env)
        self.proc = Procs.popen([self.bin, "-c", self.dir / "relay.toml", "run"], stdin=subprocess.DEVNULL,
                                stdout=self.log, stderr=self.log, env=env, cwd=self.dir)
        wait_port(self.smtp_port, what="mailbridge smtp")
        wait_port(self.imap_port, what="mailbridge imap")
        return self

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
        Procs.stoppers.append(self.stop)
        wait_port(self.port, what="postfix smtpd")
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
        try:
            Procs.stoppers.remove(self.stop)
        except ValueError:
            pass


# ---------------------------------------------------------------------------
# Dovecot and stunnel


class Dovecot:
    """Dovecot from a private config dir, implicit TLS, one passwd-file user, limits
    raised for thousands of logged-in connections."""

    def __init__(self, d, ca, pop3=False):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        self.dir, self.port = d, free_port()
        self.pop3_port = free_port() if pop3 else None
        pop3_service = f"""
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.pop3_port}
    ssl = yes
  }}
}}
""" if pop3 else ""
        passwd = d / "passwd"
        passwd.write_text(f"{IMAP_USER}:{{PLAIN}}{IMAP_PASS}::::::\n")
        os.chmod(passwd, 0o644)
        (d / "state").mkdir(exist_ok=True)
        (d / "dovecot.conf").write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap{" pop3" if pop3 else ""}
ssl = yes
ssl_cert = <{ca.cert}
ssl_key = <{ca.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 8
mail_location = maildir:~/Maildir
mail_max_userip_connections = 20000
default_process_limit = 6000
default_client_limit = 20000
default_vsz_limit = 1G
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = 6000
}}
service imap {{
  process_limit = 6000
}}
service anvil {{
  client_limit = 20000
}}
{pop3_service}
service auth {{
  client_limit = 20000
}}
""")

    def populate(self, n=1000, size=25000):
        md = self.dir / "mail" / IMAP_USER / "Maildir"
        if md.exists():
            shutil.rmtree(md)
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
        total = 0
        for i in range(1, n + 1):
            head = (f"From: sender{i}@example.org\r\nTo: {IMAP_USER}\r\nSubject: message {i}\r\n"
                    f"Message-ID: <{i}@bench>\r\nDate: Thu, 26 Nov 2026 05:00:00 +0000\r\n\r\n").encode()
            body = line * ((size - len(head)) // len(line))
            data = head + body
            total += len(data)
            (md / "cur" / f"{1700000000 + i}.M{i}P{i}.bench,S={len(data)}:2,S").write_bytes(data)
        mail = pwd.getpwnam("mail")
        for root, dirs, files in os.walk(self.dir / "mail"):
            for name in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.chown(name, mail.pw_uid, mail.pw_gid)
        return total

    def start(self):
        with open(self.dir / "dovecot.stderr", "wb") as f:
            r = run(["dovecot", "-c", self.dir / "dovecot.conf"], stdout=f, stderr=f, capture_output=False,
                    stdin=subprocess.DEVNULL, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("dovecot: " + (self.dir / "dovecot.stderr").read_text())
        Procs.stoppers.append(self.stop)
        wait_port(self.port, what="dovecot")
        return self

    def stop(self):
        pidfile = self.dir / "run" / "master.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            try:
                os.kill(pid, signal.SIGTERM)
                poll(lambda: not Path(f"/proc/{pid}").exists(), 30, "dovecot to stop")
            except ProcessLookupError:
                pass
        try:
            Procs.stoppers.remove(self.stop)
        except ValueError:
            pass


class Stunnel:
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
        wait_port(self.port, what="stunnel")
        return self

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def tool(name, *args, **kw):
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
