"""Ports, polling against a deadline, reading a child's READY line, and
running a command with a timeout."""

import selectors
import socket
import subprocess
import time


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
    """Until 127.0.0.1:port accepts a connection; fails early if `proc` exits first."""
    d = Deadline(timeout)
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        if port_answers(port):
            return
        if d.passed():
            raise AssertionError(f"{what}: 127.0.0.1:{port} did not answer within {timeout}s")
        time.sleep(0.02)


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


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    return subprocess.run([str(c) for c in cmd], **kw)


def ok(cmd, **kw):
    """run(), and an error with the tail of stderr and stdout unless it exits 0."""
    r = run(cmd, **kw)
    if r.returncode != 0:
        out = (r.stderr or b"").decode(errors="replace")[-2000:] + (r.stdout or b"").decode(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {out}")
    return r
