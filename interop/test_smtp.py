"""SMTP through mailbridge with real clients (swaks, curl, smtplib) into a real
TLS + AUTH upstream (aiosmtpd). Each message is found at the upstream by a
unique token and compared with what the client sent."""

import email
import email.policy
import os
import re
import smtplib

import harness as h
from mailgen import header_values, message, split, token


def check_relayed(sent, msgs, rcpts, account=h.ACCOUNT, exact_headers=True):
    """The upstream copies of `sent`: envelope, added headers, body bytes."""
    assert msgs, "no message at the upstream"
    got = [r for m in msgs for r in m["rcpt_tos"]]
    assert sorted(got) == sorted(rcpts), f"recipients differ: sent {len(rcpts)}, upstream saw {len(got)}"
    sent_lines, sent_body = split(sent)
    for m in msgs:
        data = m["data"]
        assert m["mail_from"] == account, f"envelope sender {m['mail_from']!r}, want the account address {account!r}"
        assert m["auth_user"] == account, "upstream was not authenticated as the account"
        assert m["tls"], "upstream connection was not TLS"
        assert not re.search(rb"(?<!\r)\n", data), "bare LF reached the upstream"
        assert not re.search(rb"\r(?!\n)", data), "bare CR reached the upstream"
        lines, body = split(data)
        assert body == sent_body, "body bytes changed on the way"
        received = header_values(lines, "Received")
        assert received, "no Received header added"
        assert any(b"mailbridge.interop" in r for r in received), f"Received does not name our hostname: {received[:1]}"
        mids = header_values(lines, "Message-ID")
        assert len(mids) == 1, f"want exactly one Message-ID, got {mids}"
        assert header_values(lines, "Date"), "no Date header"
        if exact_headers:
            # Every header the client sent is still there, unchanged and in order.
            it = iter(lines)
            missing = [s for s in sent_lines if not any(s == x for x in it)]
            assert not missing, f"client headers changed or lost: {missing[:3]}"
    return msgs


def write(path, data):
    path.write_bytes(data)
    return path


def write_for_swaks(path, data):
    """swaks always sends CRLF "." after --data: give it the message minus its last CRLF."""
    assert data.endswith(b"\r\n")
    return write(path, data[:-2])


# ---------------------------------------------------------------------------
# swaks


def swaks(bridge, *args):
    return h.run(["swaks", "--server", "127.0.0.1", "--port", bridge.smtp_port, "--helo", "printer.lan",
                  "--timeout", "30", *args], timeout=60)


def test_swaks_plain_8bit_body(bridge, smtp_upstream, tmp_path):
    tok = token()
    body = f"Grüße aus dem Drucker — 8-bit body, ünïcödé.\r\n.leading dot\r\ntoken {tok}\r\n".encode()
    sent = message(tok, subject="swaks 8bit", body=body.decode(), extra_headers=[
        "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"])
    f = write_for_swaks(tmp_path / "m.eml", sent)
    rcpts = ["one@example.net", "two@example.net"]
    r = swaks(bridge, "--from", "device@printer.lan", "--to", ",".join(rcpts), "--data", f"@{f}")
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    check_relayed(sent, smtp_upstream.wait_rcpts(tok, rcpts), rcpts)


def test_swaks_attachment(bridge, smtp_upstream, tmp_path):
    tok = token()
    blob = os.urandom(200_000)
    att = write(tmp_path / "scan.pdf", blob)
    text = f"Scan attached. Grüße. token {tok}\n"
    bodyf = write(tmp_path / "body.txt", text.encode())
    r = swaks(bridge, "--from", "scanner@printer.lan", "--to", "office@example.net",
              "--header", f"Subject: scan {tok}", "--body", f"@{bodyf}", "--attach-type", "application/pdf",
              "--attach", f"@{att}")
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    [m] = smtp_upstream.wait_rcpts(tok, ["office@example.net"])
    assert m["mail_from"] == h.ACCOUNT
    msg = email.message_from_bytes(m["data"], policy=email.policy.default)
    parts = [p for p in msg.walk() if not p.is_multipart()]
    payloads = [p.get_payload(decode=True) for p in parts]
    assert blob in payloads, "attachment bytes differ after relaying"
    # swaks labels the 8-bit part text/plain without a charset: compare raw bytes.
    texts = [p.get_payload(decode=True).replace(b"\r\n", b"\n") for p in parts
             if p.get_content_type() == "text/plain"]
    assert text.encode() in texts, f"8-bit text part differs after relaying: {texts}"
    assert msg["Message-ID"] and msg["Received"]


def test_swaks_auth_plain_as_local_user(bridge, smtp_upstream, tmp_path):
    tok = token()
    sent = message(tok, subject="swaks auth plain")
    f = write_for_swaks(tmp_path / "m.eml", sent)
    r = swaks(bridge, "--from", "device@printer.lan", "--to", "boss@example.net", "--auth", "PLAIN",
              "--auth-user", h.DEVICE_USER, "--auth-password", h.DEVICE_PASSWORD, "--data", f"@{f}")
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    check_relayed(sent, smtp_upstream.wait_rcpts(tok, ["boss@example.net"]), ["boss@example.net"])


def test_swaks_auth_login_routes_to_the_users_account(bridge, smtp_upstream_starttls, tmp_path):
    """altdev belongs to the account whose upstream speaks STARTTLS on a plain port."""
    tok = token()
    sent = message(tok, subject="swaks auth login starttls upstream")
    f = write_for_swaks(tmp_path / "m.eml", sent)
    r = swaks(bridge, "--from", "device@printer.lan", "--to", "alt-rcpt@example.net", "--auth", "LOGIN",
              "--auth-user", h.ALT_USER, "--auth-password", h.ALT_PASSWORD, "--data", f"@{f}")
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    msgs = smtp_upstream_starttls.wait_rcpts(tok, ["alt-rcpt@example.net"])
    check_relayed(sent, msgs, ["alt-rcpt@example.net"], account=h.ALT_ACCOUNT)


def test_swaks_wrong_local_password_is_refused(bridge, smtp_upstream):
    r = swaks(bridge, "--from", "device@printer.lan", "--to", "boss@example.net", "--auth", "PLAIN",
              "--auth-user", h.DEVICE_USER, "--auth-password", "not the password")
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 28, f"swaks exit {r.returncode}, want 28 (AUTH failed):\n{out[-1500:]}"
    assert re.search(r"<\*\*\s+535", out), out[-1500:]


# ---------------------------------------------------------------------------
# curl


def curl_smtp(bridge, f, sender, rcpts, *extra):
    args = ["curl", "-sS", "--max-time", "30", f"smtp://127.0.0.1:{bridge.smtp_port}", "--mail-from", sender]
    for r in rcpts:
        args += ["--mail-rcpt", r]
    return h.run(args + ["--upload-file", f, *extra], timeout=60)


def test_curl_smtp_upload(bridge, smtp_upstream, tmp_path):
    tok = token()
    sent = message(tok, subject="curl upload")
    f = write(tmp_path / "m.eml", sent)
    rcpts = ["a@example.net", "b@example.net", "c@example.org"]
    r = curl_smtp(bridge, f, "printer@printer.lan", rcpts)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    msgs = check_relayed(sent, smtp_upstream.wait_rcpts(tok, rcpts), rcpts)
    # The client's own Message-ID is kept, not replaced.
    lines, _ = split(msgs[0]["data"])
    assert header_values(lines, "Message-ID") == [f"<{tok}@printer.lan>".encode()]


def test_curl_smtp_bare_lf_and_no_message_id(bridge, smtp_upstream, tmp_path):
    """A legacy client sending bare LF and no Message-ID/Date: upstream gets CRLF and the added headers."""
    tok = token()
    # Bare LF everywhere but the last line (curl adds CRLF "." itself when the upload does not end in CRLF).
    sent_lf = (f"From: old@printer.lan\nTo: x@example.net\nSubject: bare lf {tok}\n\n"
               f"line one\nline two {tok}\r\n").encode()
    f = write(tmp_path / "m.eml", sent_lf)
    r = curl_smtp(bridge, f, "old@printer.lan", ["x@example.net"])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    [m] = smtp_upstream.wait_rcpts(tok, ["x@example.net"])
    check_relayed(sent_lf.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), [m], ["x@example.net"])


# ---------------------------------------------------------------------------
# smtplib


def test_smtplib_dot_lines_and_150_recipients(bridge, smtp_upstream):
    tok = token()
    body = (f"first line\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\nnot the end\r\n"
            f"token {tok}\r\n")
    sent = message(tok, subject="smtplib 150", body=body)
    rcpts = [f"r{i:03d}@example.net" for i in range(150)]
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, local_hostname="erp.lan", timeout=30) as s:
        refused = s.sendmail("erp@erp.lan", rcpts, sent)
        assert refused == {}
    msgs = smtp_upstream.wait_rcpts(tok, rcpts)
    assert all(len(m["rcpt_tos"]) <= 100 for m in msgs), "more than 100 recipients in one upstream transaction"
    assert len(msgs) >= 2
    check_relayed(sent, msgs, rcpts)


def test_smtplib_auth_login_and_8bitmime(bridge, smtp_upstream):
    tok = token()
    sent = message(tok, subject="smtplib auth", body=f"Ça marche — ünïcödé {tok}\r\n",
                   extra_headers=["Content-Type: text/plain; charset=utf-8"])
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as s:
        s.ehlo("erp.lan")
        assert s.has_extn("8bitmime") and s.has_extn("pipelining") and s.has_extn("size")
        assert "PLAIN" in s.esmtp_features.get("auth", "") and "LOGIN" in s.esmtp_features.get("auth", "")
        s.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
        s.sendmail("erp@erp.lan", ["u8@example.net"], sent, mail_options=["BODY=8BITMIME"])
    check_relayed(sent, smtp_upstream.wait_rcpts(tok, ["u8@example.net"]), ["u8@example.net"])


def test_upstream_rejects_one_recipient_others_arrive(bridge, smtp_upstream):
    tok = token()
    sent = message(tok, subject="one bad rcpt")
    good = ["good1@example.net", "good2@example.net"]
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as s:
        s.sendmail("erp@erp.lan", [good[0], "nobody@reject.test", good[1]], sent)
    msgs = smtp_upstream.wait_rcpts(tok, good)
    check_relayed(sent, msgs, good)

    # The rejected recipient is kept in the failed area with the upstream's reply.
    def failed_entry():
        return [e for e in h.queue_json(bridge)
                if e["state"] == "failed" and "nobody@reject.test" in e["recipients"] + e["remaining"]]

    [e] = h.poll(failed_entry, 15, "the rejected recipient in the failed area", interval=0.1)
    assert "550" in (e["last_error"] or ""), e
    assert "good1@example.net" not in e["remaining"]


def test_swaks_pipelining(bridge, smtp_upstream, tmp_path):
    tok = token()
    sent = message(tok, subject="swaks pipeline")
    f = write_for_swaks(tmp_path / "m.eml", sent)
    rcpts = ["p1@example.net", "p2@example.net", "p3@example.net"]
    r = swaks(bridge, "--pipeline", "--from", "device@printer.lan", "--to", ",".join(rcpts), "--data", f"@{f}")
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    check_relayed(sent, smtp_upstream.wait_rcpts(tok, rcpts), rcpts)


def test_curl_smtp_auth_as_local_user(bridge, smtp_upstream, tmp_path):
    tok = token()
    sent = message(tok, subject="curl auth")
    f = write(tmp_path / "m.eml", sent)
    r = curl_smtp(bridge, f, "printer@printer.lan", ["auth-rcpt@example.net"],
                  "-u", f"{h.DEVICE_USER}:{h.DEVICE_PASSWORD}")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    check_relayed(sent, smtp_upstream.wait_rcpts(tok, ["auth-rcpt@example.net"]), ["auth-rcpt@example.net"])


def test_smtplib_large_message_byte_exact(bridge, smtp_upstream):
    tok = token()
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-=+/0123456789\r\n"
    body = line * (8 * 1024 * 1024 // len(line)) + f"token {tok}\r\n"
    sent = message(tok, subject="8 MB", body=body)
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=60) as s:
        s.sendmail("erp@erp.lan", ["big@example.net"], sent)
    check_relayed(sent, smtp_upstream.wait_rcpts(tok, ["big@example.net"], timeout=60), ["big@example.net"])


def test_smtplib_declared_size_over_limit_is_refused(bridge):
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as s:
        s.ehlo("erp.lan")
        code, msg = s.mail("erp@erp.lan", ["SIZE=%d" % (30 * 1024 * 1024)])
        assert code == 552, (code, msg)
        assert s.noop()[0] == 250, "session unusable after the 552"


def test_smtplib_smtputf8_recipient(bridge, smtp_upstream):
    from email.message import EmailMessage

    tok = token()
    rcpt = "δοκιμή@example.net"
    m = EmailMessage()
    m["From"] = "erp@erp.lan"
    m["To"] = rcpt
    m["Subject"] = f"smtputf8 {tok}"
    m.set_content(f"Unicode address. token {tok}\n")
    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as s:
        s.send_message(m)  # uses SMTPUTF8 because the address is not ASCII
    [got] = smtp_upstream.wait_rcpts(tok, [rcpt])
    assert got["mail_from"] == h.ACCOUNT
    assert "SMTPUTF8" in [o.upper() for o in got["mail_options"]], got["mail_options"]
