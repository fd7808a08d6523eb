#!/usr/bin/env python3
"""Peak memory of the mailbridge daemon under large DATA (issue 10).

Two scenarios, each on a fresh daemon process (VmHWM is a peak since start),
against the Rust upstream sink of bench/tools:

  send  CLIENTS clients each send one SIZE-byte message at the same time; the
        peak is read once every message was accepted and delivered to the sink.
  hold  CLIENTS clients each send HOLD bytes of DATA and never the final ".";
        the peak is read while they hang (once the daemon has read all of it).

Prints VmHWM (peak RSS, /proc/PID/status) per round and the median.

usage: bench/memory.py [--rounds N] [--before BIN] [--concurrency N]
  The build measured is target/release/mailbridge (or $MAILBRIDGE_BIN);
  --before BIN measures another binary too (e.g. a build of main).
  $BENCH_TOOLS: the directory holding the `sink` binary, if not bench/tools'.
"""

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import CA, WORK, MailBridge, Procs, Sink, poll, raise_nofile, run  # noqa: E402

CLIENTS = 10
SIZE = 20_000_000
HOLD = 24 * 1024 * 1024
LINE = b"x" * 76 + b"\r\n"


def body(size):
    head = b"From: bench@local.test\r\nTo: sink@example.org\r\nSubject: memory\r\n\r\n"
    return head + LINE * ((size - len(head)) // len(LINE) + 1)


def status_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def all_read(port, n):
    """True once the n connections to `port` have nothing in flight: the
    daemon's receive queues and the clients' send queues are empty
    (/proc/net/tcp), i.e. the daemon has read every byte sent."""
    server, client = [], []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, queues = f[1], f[2], f[3], f[4]
            if state != "01":  # ESTABLISHED
                continue
            tx, rx = (int(q, 16) for q in queues.split(":"))
            if int(local.rsplit(":", 1)[1], 16) == port:
                server.append(rx)
            elif int(remote.rsplit(":", 1)[1], 16) == port:
                client.append(tx)
    return len(server) >= n and not any(server) and not any(client)


def expect(f, code):
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    if not line.startswith(code):
        raise RuntimeError(f"expected {code!r}, got {line!r}")


def open_data(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=300)
    f = s.makefile("rb")
    expect(f, b"220")
    for cmd, code in ((b"EHLO bench", b"250"), (b"MAIL FROM:<bench@local.test>", b"250"),
                      (b"RCPT TO:<sink@example.org>", b"250"), (b"DATA", b"354")):
        s.sendall(cmd + b"\r\n")
        expect(f, code)
    return s, f


def all_at_once(fn, n):
    """Runs fn(i) in n threads started together; re-raises the first error."""
    errors, start = [], threading.Barrier(n)

    def run_one(i):
        try:
            start.wait()
            fn(i)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=run_one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def send_round(mb, sink, msg):
    def one(_):
        s, f = open_data(mb.smtp_port)
        s.sendall(msg + b".\r\n")
        expect(f, b"250")
        s.sendall(b"QUIT\r\n")
        s.close()

    sink.reset()
    all_at_once(one, CLIENTS)
    sink.wait_count(CLIENTS, timeout=600)
    return status_kib(mb.proc.pid, "VmHWM")


def hold_round(mb, msg):
    socks = []
    lock = threading.Lock()

    def one(_):
        s, _f = open_data(mb.smtp_port)
        s.sendall(msg)
        with lock:
            socks.append(s)

    all_at_once(one, CLIENTS)
    poll(lambda: all_read(mb.smtp_port, CLIENTS), 300, "the daemon to read every DATA")
    hwm = status_kib(mb.proc.pid, "VmHWM")
    for s in socks:
        s.close()
    return hwm


def measure(label, binary, ca, sink, rounds, concurrency):
    os.environ["MAILBRIDGE_BIN"] = str(binary)
    msg, held = body(SIZE), body(HOLD)[:HOLD]
    out = {"send": [], "hold": []}
    for r in range(rounds):
        for scenario in ("send", "hold"):
            mb = MailBridge(WORK / f"{label}-{scenario}-{r}", sink.port, 1, ca,
                            delivery_concurrency=concurrency).start()
            try:
                kib = send_round(mb, sink, msg) if scenario == "send" else hold_round(mb, held)
            finally:
                mb.stop()
            out[scenario].append(kib / 1024)
            print(f"{label:8} {scenario:5} round {r + 1}: VmHWM {kib / 1024:.1f} MiB", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", help="another mailbridge binary to measure (the old code)")
    p.add_argument("--concurrency", type=int, help="delivery.concurrency (default: the daemon's)")
    a = p.parse_args()
    if os.environ.get("BENCH_TOOLS"):
        benchlib.TOOLS = Path(os.environ["BENCH_TOOLS"])
    raise_nofile(4096)
    current = Path(os.environ.get("MAILBRIDGE_BIN", benchlib.ROOT / "target" / "release" / "mailbridge"))
    targets = ([("before", Path(a.before))] if a.before else []) + [("after", current)]
    try:
        if WORK.exists():
            run(["rm", "-rf", WORK])
        WORK.mkdir(parents=True)
        ca = CA(WORK / "ca")
        sink = Sink(WORK / "sink", ca)
        results = {label: measure(label, b, ca, sink, a.rounds, a.concurrency) for label, b in targets}
    finally:
        Procs.cleanup()
    conc = a.concurrency or "default"
    print(f"\npeak RSS (VmHWM), median of {a.rounds} rounds, {CLIENTS} clients, delivery.concurrency {conc}:")
    print(f"{'':8} {'send ' + str(SIZE // 1_000_000) + ' MB each':>20} {'hold ' + str(HOLD >> 20) + ' MiB each':>20}")
    for label, r in results.items():
        print(f"{label:8} {statistics.median(r['send']):17.1f} MiB {statistics.median(r['hold']):17.1f} MiB")


if __name__ == "__main__":
    main()
