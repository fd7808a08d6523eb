"""Test messages: Maildir content for Dovecot and raw messages for SMTP clients.
Everything is CRLF unless a test asks for bare LF on purpose."""

import base64
import random
import uuid


def token():
    return "tok-" + uuid.uuid4().hex[:16]


def maildir_messages(n, seed=7):
    """n varied messages: plain ASCII, 8-bit UTF-8, long lines, a ~300 KB attachment."""
    rnd = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        headers = [
            f"From: Sender {i} <sender{i}@example.org>",
            "To: you@example.com",
            f"Subject: interop message {i}",
            f"Date: Mon, 6 Nov 2023 10:{i % 60:02d}:00 +0000",
            f"Message-ID: <interop-{i}@example.org>",
            "MIME-Version: 1.0",
        ]
        if i % 10 == 0:
            blob = base64.encodebytes(rnd.randbytes(300_000)).decode().replace("\n", "\r\n")
            headers.append('Content-Type: multipart/mixed; boundary="b1"')
            body = ("--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n"
                    "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    + blob + "--b1--\r\n")
        elif i % 3 == 0:
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            body = "".join(f"Grüße, čšž, 日本語 line {k}\r\n" for k in range(rnd.randint(1, 200)))
        else:
            headers.append("Content-Type: text/plain; charset=us-ascii")
            body = "".join(f"line {k} " + "x" * rnd.randint(0, 900) + "\r\n" for k in range(rnd.randint(1, 60)))
        out.append(("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8"))
    return out


def message(tok, subject="interop", extra_headers=(), body=None, message_id=True, nl="\r\n"):
    """A raw message carrying `tok` in a header and in the body."""
    headers = [
        "From: Device <device@printer.lan>",
        "To: Someone <someone@example.net>",
        f"Subject: {subject} {tok}",
        "Date: Tue, 7 Nov 2023 09:00:00 +0000",
        f"X-Interop-Token: {tok}",
    ]
    if message_id:
        headers.append(f"Message-ID: <{tok}@printer.lan>")
    headers += list(extra_headers)
    if body is None:
        body = f"Hello from the interop suite.{nl}token {tok}{nl}"
    return (nl.join(headers) + nl + nl + body).encode("utf-8")


def split(data):
    """(header lines, body bytes) of a CRLF message."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "no header/body separator"
    lines = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b"\r\n" + line
        else:
            lines.append(line)
    return lines, body


def header_values(lines, name):
    n = name.lower().encode() + b":"
    return [line[len(n):].strip() for line in lines if line.lower().startswith(n)]
