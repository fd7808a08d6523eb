"""Runs the same IMAP command script straight against Dovecot and through
mailbridge and reduces each answer to its class (OK/NO/BAD, or CLOSED when
the server dropped the connection), so the two can be compared."""

import re
import socket

import harness as h

# RFC 2971 3.3: at most 30 field/value pairs, fields up to 30 octets, values up to 1024.
ID_PAIRS, ID_FIELD, ID_VALUE = 30, 30, 1024

LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n")


def maximal_id(form):
    """The argument of an RFC 2971 maximum ID: `plain` quoted (~32 KiB),
    `literal` ({n}, each waits for a continuation), `literal+` ({n+}), or
    `escaped` (quoted, every octet escaped: ~62 KiB, the longest the grammar allows)."""
    def string(n, what):
        if form == "plain":
            return b'"' + what * n + b'"'
        if form == "escaped":
            return b'"' + b"".join(b'\\"' if k % 2 == 0 else b"\\\\" for k in range(n)) + b'"'
        plus = b"+" if form == "literal+" else b""
        return b"{%d%s}\r\n" % (n, plus) + bytes(b"(){}\" x*%"[k % 9] for k in range(n))
    pairs = [string(ID_FIELD, b"f") + b" " + string(ID_VALUE, b"v") for _ in range(ID_PAIRS)]
    return b"(" + b" ".join(pairs) + b")"


class Closed(Exception):
    pass


class Conn:
    """One IMAP connection, plaintext or TLS, that sends commands (waiting
    for `+` before each synchronising literal, as a client must) and returns
    the class of the tagged answer."""

    def __init__(self, port, ssl_context=None, timeout=20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock, self.buf, self.n, self.timeout = sock, b"", 0, timeout
        self.greeting = self.readline()

    def readline(self):
        d = h.Deadline(self.timeout)
        while b"\r\n" not in self.buf:
            if d.passed():
                raise AssertionError(f"no complete line within {self.timeout}s; have {self.buf[:200]!r}")
            try:
                chunk = self.sock.recv(65536)
            except OSError as e:
                raise Closed(repr(e))
            if not chunk:
                raise Closed("EOF")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Closed(repr(e))

    def tagged(self, tag):
        lines = []
        while True:
            line = self.readline()
            if line.startswith(tag + b" "):
                return lines, line
            lines.append(line)

    def command(self, args, continuation=None):
        """Sends `TAG args` CRLF; `continuation` (bytes) answers one `+`.
        Returns (class, untagged lines, tagged line)."""
        self.n += 1
        tag = b"c%d" % self.n
        data = tag + b" " + (args if isinstance(args, bytes) else args.encode()) + b"\r\n"
        try:
            pos = 0
            for m in LITERAL.finditer(data):
                if m.group(2):  # LITERAL+: no wait
                    continue
                self.send(data[pos:m.end()])
                pos = m.end()
                line = self.readline()
                if not line.startswith(b"+"):
                    return status(line, tag), [], line
            self.send(data[pos:])
            if continuation is not None:
                line = self.readline()
                if not line.startswith(b"+"):
                    return status(line, tag), [], line
                self.send(continuation + b"\r\n")
            lines, done = self.tagged(tag)
            return status(done, tag), lines, done
        except Closed as e:
            return "CLOSED", [], str(e).encode()

    def idle(self):
        """IDLE, then DONE once the continuation came."""
        self.n += 1
        tag = b"c%d" % self.n
        try:
            self.send(tag + b" IDLE\r\n")
            line = self.readline()
            if not line.startswith(b"+"):
                return status(line, tag), [], line
            self.send(b"DONE\r\n")
            lines, done = self.tagged(tag)
            return status(done, tag), lines, done
        except Closed as e:
            return "CLOSED", [], str(e).encode()

    def starttls(self, ssl_context):
        """STARTTLS; on OK the connection continues over verified TLS."""
        cls, lines, done = self.command("STARTTLS")
        if cls == "OK":
            assert not self.buf, f"bytes after the STARTTLS OK: {self.buf[:100]!r}"
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        return cls, lines, done

    def close(self):
        self.sock.close()


def status(line, tag):
    parts = line.split(b" ", 2)
    if len(parts) >= 2 and parts[0] == tag and parts[1].upper() in (b"OK", b"NO", b"BAD"):
        return parts[1].upper().decode()
    return f"UNTAGGED({line[:60]!r})"


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(s):
    b = s.encode()
    return b"{%d}\r\n" % len(b) + b


def run_script(connect, steps):
    """Runs `steps` ((name, fn(conn)) pairs; fn returns command()'s triple)
    on connections from `connect()`; a step named with a leading `>` opens a
    new connection first. Returns [(name, class, tagged line)]."""
    out, conn = [], None
    for name, fn in steps:
        if conn is None or name.startswith(">"):
            if conn is not None:
                conn.close()
            conn = connect()
        cls, _, done = fn(conn)
        out.append((name.lstrip(">"), cls, done))
    if conn is not None:
        conn.close()
    return out


def compare(direct, via):
    """Asserts the classes match step by step, with a readable table if not."""
    rows = [f"{d[0]:<28} direct {d[1]:<8} proxy {v[1]:<8} {'' if d[1] == v[1] else '<-- ' + repr(v[2][:90])}"
            for d, v in zip(direct, via)]
    assert [x[1] for x in direct] == [x[1] for x in via], "\n" + "\n".join(rows)
