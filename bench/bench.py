#!/usr/bin/env python3
"""mailbridge benchmarks, side by side with the tools people use instead.

    python3 bench/bench.py accept     # 1. SMTP accept rate vs Postfix (smtp-source, 20 sessions, 10 KB)
    python3 bench/bench.py e2e        # 2. SMTP end to end to a TLS+AUTH sink vs Postfix relayhost
    python3 bench/bench.py imap       # 3. IMAP download MB/s and logins/s: mailbridge, direct TLS, stunnel
    python3 bench/bench.py idle       # 4. 2,000 idle logged-in IMAP connections: mailbridge vs stunnel
    python3 bench/bench.py growth     # 5. accept rate/memory at 1..1,000 clients; message size sweep
    python3 bench/bench.py load       # issue 4: 1,000 SMTP + 1,000 idle IMAP sessions at once
    python3 bench/bench.py pop3       # POP3 RETR MB/s and logins/s: mailbridge, direct TLS, stunnel
    python3 bench/bench.py limits     # issue 15: AES-GCM, loopback copy, fsync rate of this machine
    python3 bench/bench.py lifetime   # issue 15: whole-lifetime peak RSS (VmHWM) after IMAP logins vs Postfix PSS
    python3 bench/bench.py all
    python3 bench/bench.py --quick NAME...  # tiny counts, results to $BENCH_WORK-results: a smoke run, not numbers

Needs: bench/setup.sh (packages), `cargo build --release` (mailbridge) and
`cargo build --release --manifest-path bench/tools/Cargo.toml` (sink and clients).
Tables go to stdout and bench/results/NAME.{md,json}. Loopback only.
"""

import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (CA, IMAP_PASS, IMAP_USER, LOCAL_PASS, LOCAL_USER, TOOLS, WORK, Dovecot,  # noqa: E402
                      MailBridge, MemSampler, Postfix, Procs, Sink, SmtpSink, Stunnel, cpu_secs, kv,
                      md_table,
                      percentile_ms, raise_nofile, run, save, tool, vm_kib)
from benchlib import MailServe  # noqa: E402

MIB = 1024.0  # smaps values are KiB


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"


class Env:
    """The shared CA and sink; targets are started on demand."""

    def __init__(self):
        if WORK.exists():
            run(["rm", "-rf", WORK])
        WORK.mkdir(parents=True)
        self.ca = CA(WORK / "ca")
        self.sink = Sink(WORK / "sink", self.ca)
        self.dovecot = None

    def mailbridge(self, name="mailbridge", imap_port=1):
        return MailBridge(WORK / name, self.sink.port, imap_port, self.ca).start()

    def postfix(self):
        return Postfix(WORK / "postfix", self.sink.port, self.ca).start()

    def start_dovecot(self, populate=False, messages=1000):
        """Dovecot, with (populate) `messages` of 25 KB in the mailbox; returns their total size."""
        self.dovecot = Dovecot(WORK / "dovecot", self.ca)
        size = self.dovecot.populate(messages) if populate else 0
        self.dovecot.start()
        return size


def smtp_source(port, sessions, msgs, size, reuse):
    cmd = ["smtp-source", "-s", sessions, "-m", msgs, "-l", size, "-f", "bench@local.test",
           "-t", "sink@example.org"] + (["-d"] if reuse else []) + [f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    r = run(cmd, timeout=600)
    secs = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stderr.decode(errors='replace')[-500:]}")
    return secs


def accept_run(env, target, port, sessions, msgs, size, reuse):
    """smtp-source into `target`; returns (msgs/s, peak rss KiB, peak pss KiB, procs, drain secs)."""
    env.sink.reset()
    counts = getattr(target, "commit_counts", None)  # mailbridge: its group commit's counters
    with MemSampler(target.pids) as mem:
        c0 = counts() if counts else None
        cpu0, sink0 = cpu_secs(target.pids()), cpu_secs([env.sink.proc.pid])
        secs = smtp_source(port, sessions, msgs, size, reuse)
        cpu = cpu_secs(target.pids()) - cpu0  # the accepting part (Postfix: processes alive throughout)
        # The delivery sink runs on the same 2 cores meanwhile (smtp-sink's own runs have no such load).
        sink_cpu = cpu_secs([env.sink.proc.pid]) - sink0
        c1 = counts() if counts else None
        t0 = time.monotonic()
        env.sink.wait_count(msgs, timeout=600)
        drain = time.monotonic() - t0
    out = {"rate": msgs / secs, "secs": secs, "rss": mem.peak_rss, "pss": mem.peak_pss,
           "procs": mem.peak_procs, "drain": drain, "cpu_ms_per_msg": cpu * 1000 / msgs,
           "sink_cpu_ms_per_msg": sink_cpu * 1000 / msgs}
    if c0 and c1 and c1[1] > c0[1]:
        out["flushes_per_msg"] = (c1[0] - c0[0]) / (c1[1] - c0[1])
    return out


def load_run(env, target, port, conns, msgs, size, reuse=False):
    """bench/tools smtpload (holds exactly `conns` sessions) into `target`; like accept_run."""
    env.sink.reset()
    with MemSampler(target.pids) as mem:
        args = ["--addr", f"127.0.0.1:{port}", "--conns", str(conns), "--total", str(msgs), "--size", str(size)]
        res = kv(tool("smtpload", *args + (["--reuse"] if reuse else []), timeout=600).strip().splitlines()[-1])
        t0 = time.monotonic()
        env.sink.wait_count(int(res["sent"]), timeout=600)
        drain = time.monotonic() - t0
    return {"rate": res["rate"], "secs": res["secs"], "errors": res["errors"], "rss": mem.peak_rss,
            "pss": mem.peak_pss, "procs": mem.peak_procs, "drain": drain}


def median_of(runs, key):
    """The run with the median `key`, with every run's value and the peak memory over all runs."""
    runs = sorted(runs, key=lambda r: r[key])
    med = dict(runs[len(runs) // 2])
    med[key + "_runs"] = [round(r[key], 1) for r in runs]
    for k in ("rss", "pss", "procs"):
        if k in med:
            med[k] = max(r[k] for r in runs)
    return med


def spread(r, key):
    v = r[key + "_runs"]
    return f"{r[key]:.0f} ({v[0]:.0f}-{v[-1]:.0f})" if len(v) > 1 else f"{r[key]:.0f}"


def sink_run(target, sessions, msgs, size, reuse):
    """smtp-source into smtp-sink (nothing to wait for after the last message)."""
    return {"rate": msgs / smtp_source(target.port, sessions, msgs, size, reuse)}


def bench_accept(env, msgs=3000, repeats=5, warm=200):
    mb, pf, ss = env.mailbridge(), env.postfix(), SmtpSink().start()
    rows, data = [], {}
    try:
        for reuse in (False, True):
            mode = "reused connections" if reuse else "new connection per message"
            # warm-up so both have their processes/caches up
            accept_run(env, mb, mb.smtp_port, 20, warm, 10240, reuse)
            accept_run(env, pf, pf.port, 20, warm, 10240, reuse)
            ms, ps, ks = [], [], []
            for _ in range(repeats):  # alternate, so a busy moment on the shared machine hits all
                ms.append(accept_run(env, mb, mb.smtp_port, 20, msgs, 10240, reuse))
                ps.append(accept_run(env, pf, pf.port, 20, msgs, 10240, reuse))
                ks.append(sink_run(ss, 20, msgs, 10240, reuse))
            m, p, k = median_of(ms, "rate"), median_of(ps, "rate"), median_of(ks, "rate")
            pairs = sorted(a["rate"] / b["rate"] for a, b in zip(ms, ks))  # per round, same moment
            data[mode] = {"mailbridge": m, "postfix": p, "smtp-sink": k, "mb_over_sink_per_round": pairs}
            rows.append([mode, f"msgs/s, median of {repeats} (min-max)", spread(m, "rate"), spread(p, "rate"),
                         ratio(m["rate"], p["rate"])])
            rows.append([mode, f"Postfix smtp-sink (no queue, no fsync) msgs/s, median of {repeats}; mailbridge/smtp-sink "
                         "per round, median (min-max)", "", spread(k, "rate"),
                         f"{statistics.median(pairs):.2f}x ({pairs[0]:.2f}-{pairs[-1]:.2f})"])
            rows.append([mode, "peak PSS MiB", f"{m['pss'] / MIB:.1f}", f"{p['pss'] / MIB:.1f} ({p['procs']} procs)",
                         ratio(m["pss"], p["pss"])])
            rows.append([mode, "peak RSS MiB", f"{m['rss'] / MIB:.1f}", f"{p['rss'] / MIB:.1f} (summed)",
                         ratio(m["rss"], p["rss"])])
            rows.append([mode, "CPU ms per message (accepting, median run)", f"{m['cpu_ms_per_msg']:.2f}",
                         f"{p['cpu_ms_per_msg']:.2f} (processes alive then)", ratio(m["cpu_ms_per_msg"], p["cpu_ms_per_msg"])])
            # Flushes per message of the timed runs, from the daemon's own counters
            # (mailbridge_spool_flushes_total / mailbridge_spool_commits_total): no strace slowing it.
            fl = sorted(r["flushes_per_msg"] for r in ms if "flushes_per_msg" in r)
            if fl:
                per = statistics.median(fl)
                data[mode]["flushes"] = {"per_msg": per, "min": fl[0], "max": fl[-1]}
                rows.append([mode, "group-commit flushes (fsync+syncfs) per message, median of the runs (min-max)",
                             f"{per:.2f} ({fl[0]:.2f}-{fl[-1]:.2f})", "-", ""])
    finally:
        mb.stop()
        pf.stop()
        ss.stop()
    save("accept", data, "SMTP accept rate: smtp-source, 20 sessions, 10 KB, "
         f"{msgs} messages per run, delivery to the sink running (each run waits until the sink has every "
         "message before the next starts)\n\n"
         + md_table(["load", "metric", "mailbridge", "Postfix", "mailbridge/Postfix"], rows))


def e2e_run(env, port, msgs, reuse, tag):
    env.sink.reset()
    out = WORK / f"accepts-{tag}.txt"
    t0 = time.time()
    args = ["--addr", f"127.0.0.1:{port}", "--conns", "20", "--total", str(msgs), "--size", "10240",
            "--out", str(out), "--prefix", tag] + (["--reuse"] if reuse else [])
    res = kv(tool("smtpload", *args, timeout=600).strip().splitlines()[-1])
    if res["errors"]:
        raise RuntimeError(f"smtpload errors: {res}")
    env.sink.wait_count(msgs, timeout=600)
    sessions = env.sink.sessions()
    rec = env.sink.receipts()
    acc = dict(line.split() for line in out.read_text().splitlines())
    lat = sorted((int(rec[k]) - int(v)) / 1000.0 for k, v in acc.items() if k in rec)
    last = max(int(v) for v in rec.values()) / 1e6
    return {"accept_rate": res["rate"], "e2e_rate": msgs / (last - t0), "p50_ms": percentile_ms(lat, 50),
            "p99_ms": percentile_ms(lat, 99), "matched": len(lat), "upstream_sessions": sessions}


def bench_e2e(env, msgs=2500, repeats=3, warm=200):
    mb, pf = env.mailbridge(), env.postfix()
    rows, data = [], {}
    try:
        for reuse in (False, True):
            mode = "reused connections" if reuse else "new connection per message"
            e2e_run(env, mb.smtp_port, warm, reuse, "warm-mb")
            e2e_run(env, pf.port, warm, reuse, "warm-pf")
            ms, ps = [], []
            for k in range(repeats):
                ms.append(e2e_run(env, mb.smtp_port, msgs, reuse, f"mb-{int(reuse)}-{k}"))
                ps.append(e2e_run(env, pf.port, msgs, reuse, f"pf-{int(reuse)}-{k}"))
            m, p = median_of(ms, "e2e_rate"), median_of(ps, "e2e_rate")
            data[mode] = {"mailbridge": m, "postfix": p}
            rows.append([mode, f"end-to-end msgs/s, median of {repeats} (min-max)", spread(m, "e2e_rate"),
                         spread(p, "e2e_rate"),
                         ratio(m["e2e_rate"], p["e2e_rate"])])
            rows.append([mode, "client accept rate msgs/s", f"{m['accept_rate']:.0f}", f"{p['accept_rate']:.0f}",
                         ratio(m["accept_rate"], p["accept_rate"])])
            rows.append([mode, "accept->upstream p50 ms", f"{m['p50_ms']:.1f}", f"{p['p50_ms']:.1f}",
                         ratio(m["p50_ms"], p["p50_ms"])])
            rows.append([mode, "accept->upstream p99 ms", f"{m['p99_ms']:.1f}", f"{p['p99_ms']:.1f}",
                         ratio(m["p99_ms"], p["p99_ms"])])
            rows.append([mode, "upstream TLS sessions opened during the run", f"{m['upstream_sessions']}",
                         f"{p['upstream_sessions']}", "(mailbridge keeps the ones from the warm-up)"])
    finally:
        mb.stop()
        pf.stop()
    save("e2e", data, f"SMTP end to end: bench/tools smtpload, 20 sessions, 10 KB, {msgs} messages per run, "
         "from the first connect until the Rust TLS+AUTH sink (bench/tools sink: implicit TLS, AUTH PLAIN/LOGIN, "
         "rustls) has every message; latency from the client's 250 to the sink's end of DATA, of the median run. "
         "Lower latency is better.\n\n"
         + md_table(["load", "metric", "mailbridge", "Postfix", "mailbridge/Postfix"], rows))


def imap_paths(env, mb, st):
    ca = str(env.ca.ca)
    return {
        "mailbridge": ["--addr", f"127.0.0.1:{mb.imap_port}", "--user", LOCAL_USER, "--pass", LOCAL_PASS],
        "direct TLS": ["--addr", f"127.0.0.1:{env.dovecot.port}", "--tls", "--ca", ca, "--user", IMAP_USER,
                       "--pass", IMAP_PASS],
        "stunnel": ["--addr", f"127.0.0.1:{st.port}", "--user", IMAP_USER, "--pass", IMAP_PASS],
    }


def imap_rounds(paths, proxies, size, runs, repeat):
    """`runs` rounds of one imapbench session (`repeat` full downloads) per path, round robin, so a
    busy moment on the shared machine hits all; per path MB/s and proxy CPU ms per MB."""
    mbps, msgs = {n: [] for n in paths}, {}
    cpu = {n: [] for n in proxies}
    for _ in range(runs):
        for name, args in paths.items():
            c0 = cpu_secs(proxies[name]()) if name in proxies else 0
            run_ = kv(tool("imapbench", "download", "--runs", "1", "--repeat", str(repeat), *args,
                           timeout=300).strip().splitlines()[-1])
            if name in proxies:  # proxy CPU ms per MB downloaded
                cpu[name].append((cpu_secs(proxies[name]()) - c0) * 1000 / (size * repeat / 1e6))
            mbps[name].append(run_["mbps"])
            msgs[name] = run_["msgs"]
    return {name: {"mbps_median": statistics.median(mbps[name]), "mbps_runs": sorted(mbps[name]),
                   "msgs": msgs[name], "cpu_ms_per_mb": statistics.median(cpu[name]) if name in cpu else None,
                   "cpu_runs": sorted(cpu.get(name, []))} for name in paths}


BASE_BIN = os.environ.get("BENCH_BASE_BIN")  # another mailbridge build, measured in the same rounds


def base_bridge(env, upstream_port, pop3=False):
    """The BENCH_BASE_BIN build of mailbridge in front of `upstream_port`, or None."""
    if not BASE_BIN:
        return None
    if pop3:
        return MailBridge(WORK / "mailbridge-base", env.sink.port, upstream_port, env.ca, pop3_port=upstream_port,
                          source=BASE_BIN).start()
    return MailBridge(WORK / "mailbridge-base", env.sink.port, upstream_port, env.ca, source=BASE_BIN).start()


def ceiling_rows(data, runs, what, peer="stunnel"):
    """Rows for the own-ceiling runs: MB/s and CPU per MB of every mailbridge build vs direct TLS and `peer`."""
    d, s = data["direct TLS"], data[peer]
    rng = lambda r: f"{r['mbps_median']:.0f} ({r['mbps_runs'][0]:.0f}-{r['mbps_runs'][-1]:.0f})"  # noqa: E731
    c = lambda r: f"{r['cpu_ms_per_mb']:.2f} ({r['cpu_runs'][0]:.2f}-{r['cpu_runs'][-1]:.2f})"  # noqa: E731
    rows = []
    for name in [n for n in data if n.startswith("mailbridge")]:
        m = data[name]
        rows.append([f"{name}: {what}; median of {runs}, round robin (min-max)", rng(m), rng(d), rng(s),
                     ratio(m["mbps_median"], d["mbps_median"]), ratio(m["mbps_median"], s["mbps_median"])])
        rows.append([f"{name}: proxy CPU ms per MB downloaded; median of {runs}", c(m), "-", c(s), "",
                     ratio(m["cpu_ms_per_mb"], s["cpu_ms_per_mb"])])
    return rows


def base_and_ceiling_rows(data, base, ceiling, runs, what):
    """The old build's rows (Dovecot upstream, if BENCH_BASE_BIN was measured), then the own-ceiling rows;
    the ceiling's results go into `data` too."""
    rows = []
    if base:
        rows += ceiling_rows({n: data[n] for n in ("mailbridge (base)", "direct TLS", "stunnel")}, runs,
                             "MB/s (Dovecot upstream)")
    data["own ceiling"] = ceiling
    return rows + ceiling_rows(ceiling, runs, what)


def bench_imap_ceiling(env, runs, repeat, mailbox):
    """The same download against bench/tools mailserve (not the bottleneck): the proxies' own ceiling."""
    fs = MailServe(WORK / "mailserve", env.ca, mailbox)
    mb = MailBridge(WORK / "mailbridge-ceiling", env.sink.port, fs.port, env.ca).start()
    base = base_bridge(env, fs.port)
    st = Stunnel(WORK / "stunnel-ceiling", fs.port, env.ca).start()
    try:
        ca = str(env.ca.ca)
        paths = {"mailbridge": ["--addr", f"127.0.0.1:{mb.imap_port}", "--user", LOCAL_USER, "--pass", LOCAL_PASS]}
        proxies = {"mailbridge": mb.pids, "stunnel": st.pids}
        if base:
            paths["mailbridge (base)"] = ["--addr", f"127.0.0.1:{base.imap_port}", "--user", LOCAL_USER,
                                          "--pass", LOCAL_PASS]
            proxies["mailbridge (base)"] = base.pids
        paths["direct TLS"] = ["--addr", f"127.0.0.1:{fs.port}", "--tls", "--ca", ca, "--user", IMAP_USER,
                               "--pass", IMAP_PASS]
        paths["stunnel"] = ["--addr", f"127.0.0.1:{st.port}", "--user", IMAP_USER, "--pass", IMAP_PASS]
        return imap_rounds(paths, proxies, fs.size, runs, repeat)
    finally:
        for x in (mb, base, st, fs):
            if x:
                x.stop()


def bench_imap(env, runs=7, repeat=4, login_secs=5, mailbox=1000):
    size = env.start_dovecot(populate=True, messages=mailbox)
    mb = env.mailbridge(imap_port=env.dovecot.port)
    base = base_bridge(env, env.dovecot.port)
    st = Stunnel(WORK / "stunnel", env.dovecot.port, env.ca).start()
    data = {}
    try:
        paths = imap_paths(env, mb, st)
        proxies = {"mailbridge": mb.pids, "stunnel": st.pids}
        if base:
            paths = {"mailbridge": paths["mailbridge"],
                     "mailbridge (base)": ["--addr", f"127.0.0.1:{base.imap_port}", "--user", LOCAL_USER,
                                           "--pass", LOCAL_PASS],
                     "direct TLS": paths["direct TLS"], "stunnel": paths["stunnel"]}
            proxies["mailbridge (base)"] = base.pids
        tool("imapbench", "download", "--runs", "1", *paths["direct TLS"])  # build Dovecot's index
        data = imap_rounds(paths, proxies, size, runs, repeat)
        logins = {n: [] for n in paths}
        for _ in range(2):
            for name, args in paths.items():
                lg = kv(tool("imapbench", "logins", "--conns", "8", "--secs", str(login_secs), *args,
                             timeout=120).strip().splitlines()[-1])
                logins[name].append(lg)
        for name in paths:
            data[name].update({"logins_per_s": statistics.mean(x["rate"] for x in logins[name]),
                               "logins_runs": [x["rate"] for x in logins[name]],
                               "login_errors": sum(x["errors"] for x in logins[name])})
    finally:
        mb.stop()
        if base:
            base.stop()
        st.stop()
        env.dovecot.stop()
    m, d, s = data["mailbridge"], data["direct TLS"], data["stunnel"]
    rng = lambda r: f"{r['mbps_median']:.0f} ({r['mbps_runs'][0]:.0f}-{r['mbps_runs'][-1]:.0f})"  # noqa: E731
    rows = [[f"MB/s, {repeat} full downloads per session; median of {runs} sessions, round robin (min-max)", rng(m), rng(d), rng(s), ratio(m["mbps_median"], d["mbps_median"]),
             ratio(m["mbps_median"], s["mbps_median"])],
            [f"logins/s (8 clients, connect+LOGIN+LOGOUT, mean of 2 x {login_secs} s)", f"{m['logins_per_s']:.0f}", f"{d['logins_per_s']:.0f}",
             f"{s['logins_per_s']:.0f}", ratio(m["logins_per_s"], d["logins_per_s"]),
             ratio(m["logins_per_s"], s["logins_per_s"])],
            cpu_row(m, s, runs)]
    rows += base_and_ceiling_rows(data, base, bench_imap_ceiling(env, runs, repeat, mailbox), runs,
                                  f"MB/s against mailserve (own ceiling), {repeat} downloads per session")
    save("imap", data, f"IMAP: Dovecot mailbox of {int(m['msgs'])} messages, {size / 1e6:.1f} MB; "
         "client bench/tools imapbench (FETCH 1:* BODY.PEEK[]). Own-ceiling rows: the same mailbox from "
         "bench/tools mailserve (in-memory, pre-encoded answers) instead of Dovecot\n\n"
         + md_table(["metric", "mailbridge", "direct TLS", "stunnel", "mb/direct", "mb/stunnel"], rows))


def cpu_row(m, s, runs):
    c = lambda r: f"{r['cpu_ms_per_mb']:.2f} ({r['cpu_runs'][0]:.2f}-{r['cpu_runs'][-1]:.2f})"  # noqa: E731
    return [f"proxy CPU ms per MB downloaded (user+sys, /proc/PID/stat); median of {runs}", c(m), "-", c(s), "",
            ratio(m["cpu_ms_per_mb"], s["cpu_ms_per_mb"])]


def pop3_session(port, user, password, ca=None, download=True):
    """One POP3 session: login, then (download) RETR of every message, pipelined
    in batches of 16 and read in 256 KiB chunks, so the client is not the limit;
    then QUIT. Returns the bytes of the RETR answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    if ca:
        ctx = ssl.create_default_context(cafile=str(ca))
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    buf = bytearray()

    def until(marker, start=0):
        while True:
            i = buf.find(marker, start)
            if i >= 0:
                return i + len(marker)
            start = max(0, len(buf) - len(marker))
            chunk = sock.recv(262144)
            if not chunk:
                raise RuntimeError("POP3 connection closed early")
            buf.extend(chunk)

    def line():
        end = until(b"\r\n")
        text = bytes(buf[:end])
        del buf[:end]
        if not text.startswith(b"+OK"):
            raise RuntimeError(f"POP3: {text[:80]!r}")
        return text

    line()
    sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
    line()
    line()
    total = 0
    if download:
        sock.sendall(b"STAT\r\n")
        count = int(line().split()[1])
        for first in range(1, count + 1, 16):
            batch = range(first, min(first + 16, count + 1))
            sock.sendall(b"".join(f"RETR {i}\r\n".encode() for i in batch))
            for _ in batch:
                end = until(b"\r\n.\r\n")
                if not buf.startswith(b"+OK"):
                    raise RuntimeError(f"POP3 RETR: {bytes(buf[:80])!r}")
                total += end
                del buf[:end]
    sock.sendall(b"QUIT\r\n")
    line()
    sock.close()
    return total


def pop3_rounds(paths, proxies, runs, repeat=1):
    """`runs` rounds of `repeat` pop3_sessions per path, round robin; per path MB/s and proxy CPU ms per MB
    (CPU time comes in 10 ms ticks: 4 sessions of 25 MB make the step 0.1 ms/MB)."""
    mbps = {n: [] for n in paths}
    cpu = {n: [] for n in proxies}
    nbytes = 0
    for _ in range(runs):  # round robin, so a busy moment on the shared machine hits all
        for name, p in paths.items():
            c0 = cpu_secs(proxies[name]()) if name in proxies else 0
            t0 = time.monotonic()
            nbytes = sum(pop3_session(*p) for _ in range(repeat))
            mbps[name].append(nbytes / 1e6 / (time.monotonic() - t0))
            if name in proxies:
                cpu[name].append((cpu_secs(proxies[name]()) - c0) * 1000 / (nbytes / 1e6))
    return {name: {"mbps_median": statistics.median(mbps[name]), "mbps_runs": sorted(mbps[name]), "bytes": nbytes,
                   "cpu_ms_per_mb": statistics.median(cpu[name]) if name in cpu else None,
                   "cpu_runs": sorted(cpu.get(name, []))} for name in paths}


def pop3_paths(mb, base, direct_port, st, ca):
    paths = {"mailbridge": (mb.pop3_port, LOCAL_USER, LOCAL_PASS, None)}
    proxies = {"mailbridge": mb.pids, "stunnel": st.pids}
    if base:
        paths["mailbridge (base)"] = (base.pop3_port, LOCAL_USER, LOCAL_PASS, None)
        proxies["mailbridge (base)"] = base.pids
    paths["direct TLS"] = (direct_port, IMAP_USER, IMAP_PASS, ca)
    paths["stunnel"] = (st.port, IMAP_USER, IMAP_PASS, None)
    return paths, proxies


def bench_pop3_ceiling(env, runs, mailbox, repeat=4):
    """The same RETR download against bench/tools mailserve (not the bottleneck): the proxies' own ceiling."""
    fs = MailServe(WORK / "mailserve", env.ca, mailbox)
    mb = MailBridge(WORK / "mailbridge-ceiling", env.sink.port, fs.port, env.ca, pop3_port=fs.pop3_port).start()
    base = base_bridge(env, fs.pop3_port, pop3=True)
    st = Stunnel(WORK / "stunnel-ceiling", fs.pop3_port, env.ca, service="pop3").start()
    try:
        paths, proxies = pop3_paths(mb, base, fs.pop3_port, st, env.ca.ca)
        return pop3_rounds(paths, proxies, runs, repeat)
    finally:
        for x in (mb, base, st, fs):
            if x:
                x.stop()


def bench_pop3(env, runs=7, login_secs=3, mailbox=1000, repeat=4):
    env.dovecot = Dovecot(WORK / "dovecot", env.ca, pop3=True)
    size = env.dovecot.populate(mailbox)
    env.dovecot.start()
    mb = MailBridge(WORK / "mailbridge", env.sink.port, env.dovecot.port, env.ca,
                    pop3_port=env.dovecot.pop3_port).start()
    base = base_bridge(env, env.dovecot.pop3_port, pop3=True)
    st = Stunnel(WORK / "stunnel", env.dovecot.pop3_port, env.ca, service="pop3").start()
    paths, proxies = pop3_paths(mb, base, env.dovecot.pop3_port, st, env.ca.ca)
    data = {}
    try:
        pop3_session(*paths["direct TLS"])  # warm Dovecot's index and the page cache
        data = pop3_rounds(paths, proxies, runs, repeat)
        logins = {n: [] for n in paths}
        for _ in range(2):
            for name, p in paths.items():
                t0, n = time.monotonic(), 0
                while time.monotonic() - t0 < login_secs:
                    pop3_session(*p, download=False)
                    n += 1
                logins[name].append(n / (time.monotonic() - t0))
        for name in paths:
            data[name].update({"logins_per_s": statistics.mean(logins[name]), "logins_runs": logins[name]})
    finally:
        mb.stop()
        if base:
            base.stop()
        st.stop()
        env.dovecot.stop()
    m, d, s = data["mailbridge"], data["direct TLS"], data["stunnel"]
    rng = lambda r: f"{r['mbps_median']:.0f} ({r['mbps_runs'][0]:.0f}-{r['mbps_runs'][-1]:.0f})"  # noqa: E731
    rows = [[f"MB/s, {repeat} sessions each RETR of every message; median of {runs}, round robin (min-max)", rng(m), rng(d),
             rng(s), ratio(m["mbps_median"], d["mbps_median"]), ratio(m["mbps_median"], s["mbps_median"])],
            [f"logins/s (one client, connect+USER/PASS+QUIT, mean of 2 x {login_secs} s)", f"{m['logins_per_s']:.0f}",
             f"{d['logins_per_s']:.0f}", f"{s['logins_per_s']:.0f}", ratio(m["logins_per_s"], d["logins_per_s"]),
             ratio(m["logins_per_s"], s["logins_per_s"])],
            cpu_row(m, s, runs)]
    rows += base_and_ceiling_rows(data, base, bench_pop3_ceiling(env, runs, mailbox, repeat), runs,
                                  f"MB/s against mailserve (own ceiling), {repeat} sessions each RETR of every message")
    save("pop3", data, f"POP3: Dovecot (dovecot-pop3d, pop3s) mailbox of {mailbox} messages, {size / 1e6:.1f} MB; "
         "client: bench.py's pipelined RETR reader. Own-ceiling rows: the same mailbox from bench/tools mailserve "
         "(in-memory, pre-encoded answers) instead of Dovecot\n\n"
         + md_table(["metric", "mailbridge", "direct TLS", "stunnel", "mb/direct", "mb/stunnel"], rows))


def hold_idle(args, conns):
    """Starts imapbench idle; returns the process once every session is logged in."""
    p = Procs.popen([TOOLS / "imapbench", "idle", "--conns", conns, *args], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("HELD"):
        raise RuntimeError(f"idle holder failed: {line} {p.stderr.read()[-500:]}")
    return p, kv(line)


def check_idle(p):
    p.stdin.write("CHECK\n")
    p.stdin.flush()
    r = kv(p.stdout.readline())
    p.stdin.write("QUIT\n")
    p.stdin.flush()
    p.wait(60)
    return r


def idle_run(target, args, conns):
    start_rss, _ = MemSampler(target.pids).sample()
    # warm: a few sessions so lazily allocated state (TLS config, caches) exists before the baseline
    w, _ = hold_idle(args, 5)
    check_idle(w)
    time.sleep(1)
    with MemSampler(target.pids) as mem:
        base_rss, base_pss = mem.sample()
        p, held = hold_idle(args, conns)
        time.sleep(2)
        rss, pss = mem.sample()
        chk = check_idle(p)
    per = (rss - base_rss) / max(held["ok"], 1)
    return {"start_rss": start_rss, "held": held["ok"], "errors": held["errors"] + chk["errors"], "noop_ok": chk["ok"],
            "base_rss": base_rss, "rss": rss, "pss": pss, "peak_rss": mem.peak_rss, "per_conn_kib": per}


def bench_idle(env, conns=2000):
    env.start_dovecot()
    mb = env.mailbridge(imap_port=env.dovecot.port)
    st = Stunnel(WORK / "stunnel", env.dovecot.port, env.ca).start()
    data = {}
    try:
        paths = imap_paths(env, mb, st)
        data["mailbridge"] = idle_run(mb, paths["mailbridge"], conns)
        data["stunnel"] = idle_run(st, paths["stunnel"], conns)
    finally:
        mb.stop()
        st.stop()
        env.dovecot.stop()
    m, s = data["mailbridge"], data["stunnel"]
    rows = [["sessions held / errors", f"{m['held']:.0f} / {m['errors']:.0f}", f"{s['held']:.0f} / {s['errors']:.0f}", ""],
            ["RSS at start, MiB", f"{m['start_rss'] / MIB:.1f}", f"{s['start_rss'] / MIB:.1f}", ""],
            ["RSS after 5 warm-up logins (baseline), MiB", f"{m['base_rss'] / MIB:.1f}", f"{s['base_rss'] / MIB:.1f}", ""],
            ["RSS with sessions held, MiB", f"{m['rss'] / MIB:.1f}", f"{s['rss'] / MIB:.1f}", ratio(m["rss"], s["rss"])],
            ["resident KiB per idle connection", f"{m['per_conn_kib']:.1f}", f"{s['per_conn_kib']:.1f}",
             ratio(m["per_conn_kib"], s["per_conn_kib"])]]
    save("idle", data, f"Idle IMAP: {conns} logged-in idle connections (client plaintext, upstream Dovecot over TLS)\n\n"
         + md_table(["metric", "mailbridge", "stunnel", "mailbridge/stunnel"], rows))


GROWTH_SESSIONS = ((1, 300), (10, 2000), (100, 2500), (1000, 3000))
GROWTH_SIZES = ((1024, 2000), (10240, 2000), (102400, 1000), (1048576, 300), (10485760, 40), (20971520, 20))


def bench_growth(env, sessions_msgs=GROWTH_SESSIONS, sizes_msgs=GROWTH_SIZES, warm=100):
    mb, pf = env.mailbridge(), env.postfix()
    conc_rows, size_rows, data = [], [], {"concurrency": {}, "size": {}}
    try:
        accept_run(env, mb, mb.smtp_port, 10, warm, 10240, False)
        accept_run(env, pf, pf.port, 10, warm, 10240, False)
        for sessions, msgs in sessions_msgs:
            m = load_run(env, mb, mb.smtp_port, sessions, msgs, 10240)
            p = load_run(env, pf, pf.port, sessions, msgs, 10240)
            data["concurrency"][sessions] = {"mailbridge": m, "postfix": p}
            conc_rows.append([sessions, f"{m['rate']:.0f} ({m['errors']:.0f} err)", f"{p['rate']:.0f} ({p['errors']:.0f} err)", ratio(m["rate"], p["rate"]),
                              f"{m['rss'] / MIB:.1f} / {m['pss'] / MIB:.1f}", f"{p['pss'] / MIB:.1f} ({p['procs']})",
                              ratio(m["pss"], p["pss"])])
        for size, msgs in sizes_msgs:
            m = accept_run(env, mb, mb.smtp_port, 10, msgs, size, False)
            p = accept_run(env, pf, pf.port, 10, msgs, size, False)
            data["size"][size] = {"mailbridge": m, "postfix": p}
            mbps = lambda r: r["rate"] * size / 1e6  # noqa: E731
            size_rows.append([human(size), f"{m['rate']:.1f} ({mbps(m):.0f} MB/s)", f"{p['rate']:.1f} ({mbps(p):.0f} MB/s)",
                              ratio(m["rate"], p["rate"]), f"{m['rss'] / MIB:.1f}", f"{p['pss'] / MIB:.1f}"])
    finally:
        mb.stop()
        pf.stop()
    save("growth", data, "Cost of growth (new connection per message, delivery to the sink running)\n\n"
         "Concurrency, 10 KB messages, bench/tools smtpload (holds exactly N sessions; smtp-source -s 1000 "
         "keeps only ~130 open here):\n\n"
         + md_table(["clients", "mailbridge msgs/s", "Postfix msgs/s", "ratio", "mailbridge peak RSS / PSS MiB",
                     "Postfix peak PSS MiB (procs)", "PSS ratio"], conc_rows)
         + "\n\nMessage size, 10 clients, smtp-source:\n\n"
         + md_table(["size", "mailbridge msgs/s", "Postfix msgs/s", "ratio", "mailbridge peak RSS MiB",
                     "Postfix peak PSS MiB"], size_rows))


def human(n):
    for unit, div in (("MB", 1048576), ("KB", 1024)):
        if n >= div:
            return f"{n // div} {unit}"
    return f"{n} B"


def load_once(env, smtp_conns, imap_conns, per_conn, extra_env=None):
    mb = MailBridge(WORK / ("mailbridge-tuned" if extra_env else "mailbridge"), env.sink.port, env.dovecot.port,
                    env.ca, extra_env=extra_env).start()
    try:
        env.sink.reset()
        with MemSampler(mb.pids, interval=0.1) as mem:
            idle, held = hold_idle(["--addr", f"127.0.0.1:{mb.imap_port}", "--user", LOCAL_USER,
                                    "--pass", LOCAL_PASS], imap_conns)
            imap_rss = mem.sample()[0]
            out = tool("smtpload", "--addr", f"127.0.0.1:{mb.smtp_port}", "--hold", "--conns", str(smtp_conns),
                       "--per-conn", str(per_conn), "--size", "10240", timeout=600)
            lines = out.strip().splitlines()
            res = kv(lines[-1])
            chk = check_idle(idle)
            env.sink.wait_count(smtp_conns * per_conn, timeout=300)
        return {"imap_held": held["ok"], "imap_errors": held["errors"] + chk["errors"], "imap_noop_ok": chk["ok"],
                "smtp_sessions": kv(lines[0]).get("secs", 0) and smtp_conns, "smtp_sent": res["sent"],
                "smtp_errors": res["errors"], "smtp_rate": res["rate"], "delivered": env.sink.count(),
                "rss_after_imap_logins_kib": imap_rss, "peak_rss_kib": mem.peak_rss, "peak_pss_kib": mem.peak_pss}
    finally:
        mb.stop()


def bench_load(env, smtp_conns=1000, imap_conns=1000, per_conn=5):
    """Held at once: `imap_conns` logged-in idle IMAP sessions (logged in first, 50 at a time, one
    local user, cold credential cache), then `smtp_conns` SMTP sessions opened together, each sending
    `per_conn` 10 KB messages; then NOOP on every IMAP session. Run as shipped, and again with glibc's
    mmap threshold fixed (MALLOC_MMAP_THRESHOLD_) to show what the argon2 buffers cost."""
    env.start_dovecot()
    try:
        d = load_once(env, smtp_conns, imap_conns, per_conn)
        t = load_once(env, smtp_conns, imap_conns, per_conn, {"MALLOC_MMAP_THRESHOLD_": "1048576"})
    finally:
        env.dovecot.stop()
    data = {"as shipped": d, "MALLOC_MMAP_THRESHOLD_=1048576": t}
    rows = [["IMAP sessions logged in and idle (errors)", f"{d['imap_held']:.0f} ({d['imap_errors']:.0f})",
             f"{t['imap_held']:.0f} ({t['imap_errors']:.0f})"],
            ["IMAP NOOP answered after the SMTP load", f"{d['imap_noop_ok']:.0f}", f"{t['imap_noop_ok']:.0f}"],
            ["SMTP sessions open at once", f"{smtp_conns}", f"{smtp_conns}"],
            [f"SMTP messages accepted, {per_conn} per session (errors)", f"{d['smtp_sent']:.0f} ({d['smtp_errors']:.0f})",
             f"{t['smtp_sent']:.0f} ({t['smtp_errors']:.0f})"],
            ["messages at the upstream sink", f"{d['delivered']}", f"{t['delivered']}"],
            ["RSS after the IMAP logins, MiB", f"{d['rss_after_imap_logins_kib'] / MIB:.1f}",
             f"{t['rss_after_imap_logins_kib'] / MIB:.1f}"],
            ["peak RSS, MiB", f"{d['peak_rss_kib'] / MIB:.1f}", f"{t['peak_rss_kib'] / MIB:.1f}"],
            ["peak PSS, MiB", f"{d['peak_pss_kib'] / MIB:.1f}", f"{t['peak_pss_kib'] / MIB:.1f}"]]
    save("load", data, f"Load (issue 4): {imap_conns} idle IMAP + {smtp_conns} concurrent SMTP sessions at once\n\n"
         + md_table(["item", "mailbridge as shipped", "with MALLOC_MMAP_THRESHOLD_=1048576"], rows))
    for x in (d, t):
        if x["imap_errors"] or x["smtp_errors"] or x["delivered"] < smtp_conns * per_conn:
            raise SystemExit("load: errors")


def bench_lifetime(env, logins_secs=3, msgs=3000, repeats=5):
    """Issue 15 section 3: mailbridge's peak RSS over its whole lifetime (VmHWM), first with no
    login at all (the start-up peak), then after IMAP logins (argon2) and `smtp-source -s 20 -m
    MSGS -l 10000`, against Postfix's peak PSS at the same load, interleaved."""
    env.start_dovecot()
    mb, pf = env.mailbridge(imap_port=env.dovecot.port), env.postfix()
    pid = mb.pids()[0]
    try:
        start_hwm = vm_kib(pid, "VmHWM")
        args = ["--addr", f"127.0.0.1:{mb.imap_port}", "--user", LOCAL_USER, "--pass", LOCAL_PASS]
        lg = kv(tool("imapbench", "logins", "--conns", "8", "--secs", str(logins_secs), *args,
                     timeout=120).strip().splitlines()[-1])
        time.sleep(1)
        after_logins = {"VmHWM": vm_kib(pid, "VmHWM"), "VmRSS": vm_kib(pid, "VmRSS")}
        ms, ps = [], []
        for _ in range(repeats):
            ms.append(accept_run(env, mb, mb.smtp_port, 20, msgs, 10000, False))
            ps.append(accept_run(env, pf, pf.port, 20, msgs, 10000, False))
        end = {"VmHWM": vm_kib(pid, "VmHWM"), "VmRSS": vm_kib(pid, "VmRSS")}
    finally:
        mb.stop()
        pf.stop()
        env.dovecot.stop()
    p = median_of(ps, "pss")
    pss_runs = p["pss_runs"]
    data = {"start_hwm_kib": start_hwm, "logins": lg, "after_logins": after_logins, "end": end,
            "postfix_peak_pss_kib_runs": pss_runs, "postfix_pss_median_kib": statistics.median(pss_runs)}
    pf_med = statistics.median(pss_runs)
    rows = [["mailbridge VmHWM right after start-up, MiB", f"{start_hwm / MIB:.1f}", ""],
            [f"IMAP logins (8 clients, {logins_secs} s; errors)", f"{lg['ok']:.0f} ({lg['errors']:.0f})", ""],
            ["mailbridge VmRSS / VmHWM 1 s after the logins, MiB",
             f"{after_logins['VmRSS'] / MIB:.1f} / {after_logins['VmHWM'] / MIB:.1f}", ""],
            [f"mailbridge VmHWM over the whole lifetime (after {repeats} accept runs), MiB", f"{end['VmHWM'] / MIB:.1f}",
             ratio(end["VmHWM"], pf_med) + " of Postfix's median peak PSS"],
            [f"Postfix peak PSS per run, median (min-max) of {repeats}, MiB",
             f"{pf_med / MIB:.1f} ({pss_runs[0] / MIB:.1f}-{pss_runs[-1] / MIB:.1f})", ""]]
    save("lifetime", data, f"Whole-lifetime memory: IMAP logins, then smtp-source -s 20 -m {msgs} -l 10000 "
         "(new connection per message), mailbridge and Postfix interleaved\n\n"
         + md_table(["item", "value", "vs Postfix"], rows))


def fsync_rate(d, secs=3.0, spool_like=False):
    """fsyncs/s of a 10 KB write (spool_like: create, write, fsync, rename, fsync dir, per message)."""
    d.mkdir(parents=True, exist_ok=True)
    dfd = os.open(d, os.O_RDONLY)
    n, t0, data = 0, time.monotonic(), b"x" * 10240
    while time.monotonic() - t0 < secs:
        p = d / f"m{n}.tmp"
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        if spool_like:
            os.rename(p, d / f"m{n}.msg")
            os.fsync(dfd)
        n += 1
    rate = n / (time.monotonic() - t0)
    os.close(dfd)
    run(["rm", "-rf", d])
    return rate


def loopback_copy(total=2 << 30, chunk=1 << 16):
    """MB/s of one TCP stream over 127.0.0.1 (Python sender and receiver, 64 KiB writes/reads)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    import threading
    buf = b"\0" * chunk

    def send():
        left = total
        while left > 0:
            left -= a.send(buf)
        a.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t0 = time.monotonic()
    t.start()
    got, mv = 0, bytearray(chunk)
    while True:
        n = b.recv_into(mv)
        if not n:
            break
        got += n
    t.join()
    secs = time.monotonic() - t0
    for x in (a, b, srv):
        x.close()
    return got / 1e6 / secs


def bench_limits(env, rounds=3):
    """Physical limits of this machine: AES-128-GCM (openssl speed, one core, 16 KiB blocks), one
    loopback TCP stream, the disk's fsync rate (10 KB file) and a per-message spool cycle
    (create, write, fsync, rename, fsync dir). Medians of `rounds`."""
    aes, loop, fs, cycle = [], [], [], []
    for _ in range(rounds):
        out = run(["openssl", "speed", "-seconds", "1", "-bytes", "16384", "-evp", "aes-128-gcm"], timeout=60)
        line = [x for x in out.stdout.decode().splitlines() if x.startswith("AES-128-GCM")][-1]
        aes.append(float(line.split()[-1].rstrip("k")) * 1000 / 1e6)  # openssl prints 1000s of bytes/s
        loop.append(loopback_copy())
        fs.append(fsync_rate(WORK / "fsync"))
        cycle.append(fsync_rate(WORK / "cycle", spool_like=True))
    med = statistics.median
    data = {"aes128gcm_mbps": sorted(aes), "loopback_mbps": sorted(loop), "fsync_per_s": sorted(fs),
            "spool_cycle_per_s": sorted(cycle)}
    rng = lambda v, f="{:.0f}": f"{f.format(med(v))} ({f.format(v[0])}-{f.format(v[-1])})"  # noqa: E731
    rows = [["AES-128-GCM, one core, 16 KiB blocks (openssl speed -evp aes-128-gcm), MB/s", rng(sorted(aes))],
            ["one TCP stream over 127.0.0.1 (Python, 64 KiB send/recv), MB/s", rng(sorted(loop))],
            ["10 KB write + fsync, per s (one thread)", rng(sorted(fs))],
            ["create + write 10 KB + fsync + rename + fsync dir, per s (one thread)", rng(sorted(cycle))]]
    save("limits", data, f"Physical limits of this machine, median (min-max) of {rounds}\n\n"
         + md_table(["limit", "value"], rows))


def note_run(name):
    """Records when each bench ran and how busy the machine was (others share its 2 cores)."""
    import json
    benchlib.RESULTS.mkdir(parents=True, exist_ok=True)
    p = benchlib.RESULTS / "runs.json"
    runs = json.loads(p.read_text()) if p.exists() else {}
    runs[name] = {"utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                  "loadavg_1m_before": float(Path("/proc/loadavg").read_text().split()[0])}
    p.write_text(json.dumps(runs, indent=2))


BENCHES = {"accept": bench_accept, "e2e": bench_e2e, "imap": bench_imap, "idle": bench_idle,
           "growth": bench_growth, "load": bench_load, "pop3": bench_pop3, "lifetime": bench_lifetime,
           "limits": bench_limits}


# --quick: every scenario end to end with tiny counts, to check that it runs.
QUICK = {"accept": dict(msgs=20, repeats=1, warm=5), "e2e": dict(msgs=20, repeats=1, warm=5),
         "imap": dict(runs=1, repeat=1, login_secs=1, mailbox=20), "idle": dict(conns=20),
         "growth": dict(sessions_msgs=((1, 5), (10, 20)), sizes_msgs=((1024, 10), (1048576, 2)), warm=5),
         "load": dict(smtp_conns=10, imap_conns=10, per_conn=2), "pop3": dict(runs=1, login_secs=1, mailbox=20, repeat=1),
         "lifetime": dict(logins_secs=1, msgs=20, repeats=1), "limits": dict(rounds=1)}


def main():
    args = sys.argv[1:]
    quick = "--quick" in args
    names = [a for a in args if a != "--quick"] or ["all"]
    if quick:  # never overwrite the real results with a smoke run's
        benchlib.RESULTS = Path(os.environ.get("BENCH_RESULTS", f"{WORK}-results"))
    if names == ["all"]:
        names = list(BENCHES)
    raise_nofile(200000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so the cleanup below runs
    for n in names:
        if n not in BENCHES:
            raise SystemExit(__doc__)
    failed = []
    try:
        for n in names:
            t0 = time.monotonic()
            note_run(n)
            print(f"== {n}", flush=True)
            try:
                BENCHES[n](Env(), **(QUICK[n] if quick else {}))
            except (Exception, SystemExit) as e:  # noqa: BLE001 - go on with the next benchmark
                print(f"{n} FAILED: {e}", flush=True)
                failed.append(n)
            finally:
                Procs.cleanup()
            print(f"({n}: {time.monotonic() - t0:.0f} s)\n", flush=True)
    finally:
        Procs.cleanup()
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
