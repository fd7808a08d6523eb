"""The binary's commands and life cycle against real peers: `check`, `queue`
during an upstream outage, restart, untrusted upstream certificate, direct
mode, `init` certificates, and the start-up and connect-time access rules."""

import re
import smtplib
import socket
import subprocess

import pytest

import harness as h
from mailgen import message, token


def test_check_succeeds_against_good_upstreams(bridge):
    r = bridge.cli("check", timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, f"check failed:\n{out}"
    for name, user in (("main", h.ACCOUNT), ("alt", h.ALT_ACCOUNT)):
        assert user in out or re.search(rf"\b{name}\b", out), f"check says nothing about account {name}:\n{out}"
    leaked = [s for s in h.SECRETS if s in out]
    assert not leaked, "check printed a password"


def test_check_fails_clearly_with_wrong_password(bridge, workdir, ca, smtp_upstream, smtp_upstream_starttls,
                                                 dovecot, users):
    wrong = "bad0 bad1 bad2 bad3"
    d = workdir / "check-wrong"
    d.mkdir(exist_ok=True)
    cfg = d / "relay.toml"
    cfg.write_text(h.bridge_config(h.free_port(), h.free_port(),
                                   h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port,
                                                password=wrong), users))
    cfg.chmod(0o600)
    r = bridge.cli("check", config=cfg, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    print(out)
    assert r.returncode != 0, f"check exited 0 with a wrong password:\n{out}"
    assert re.search(r"auth|login|password|credential|535", out, re.I), f"no clear reason given:\n{out}"
    assert "main" in out or h.ACCOUNT in out, f"the failing account is not named:\n{out}"
    for s in [wrong, wrong.replace(" ", "")] + h.SECRETS:
        assert s not in out, "check printed a password"


@pytest.fixture
def outage_pair(workdir, ca, dovecot, smtp_upstream_starttls, users):
    """A private upstream and mailbridge, so stopping the upstream affects no other test."""
    d = workdir / f"outage-{token()}"
    up = h.SmtpUpstream(d / "up", ca, h.ACCOUNT, h.APP_PASSWORD).start()
    smtp_port, imap_port = h.free_port(), h.free_port()
    text = h.bridge_config(smtp_port, imap_port,
                           h.accounts_for(ca, up.port, dovecot.port, smtp_upstream_starttls.port), users)
    mb = h.MailBridge(d / "bridge", text, smtp_port, imap_port).start()
    yield up, mb
    up.stop()
    rc = mb.stop()
    assert rc == 0, f"mailbridge exit {rc} after SIGTERM; log:\n{mb.log_text()[-2000:]}"


def test_upstream_down_message_kept_then_delivered(outage_pair):
    up, mb = outage_pair
    up.stop()  # same port later
    assert not h.port_answers(up.port)
    tok = token()
    rcpt = f"later-{tok}@example.net"
    with smtplib.SMTP("127.0.0.1", mb.smtp_port, timeout=30) as s:
        s.sendmail("erp@erp.lan", [rcpt], message(tok, subject="outage"))

    def listed():
        r = mb.cli("queue", "list", timeout=30)
        out = (r.stdout + r.stderr).decode(errors="replace")
        return out if r.returncode == 0 and rcpt in out else None

    h.poll(listed, 15, f"`mailbridge queue list` to show the message for {rcpt}", interval=0.2)

    up.start()  # back on the same port
    up.wait_rcpts(tok, [rcpt], timeout=30)

    def gone():
        r = mb.cli("queue", "list", timeout=30)
        return r.returncode == 0 and rcpt not in (r.stdout + r.stderr).decode(errors="replace")

    h.poll(gone, 15, "the delivered message to leave `queue list`", interval=0.2)
    assert len(up.find(tok)) == 1, "delivered more than once"


def test_restart_resumes_delivery(outage_pair):
    """A message accepted while the upstream is down survives a daemon restart."""
    up, mb = outage_pair
    up.stop()
    tok = token()
    rcpt = f"restart-{tok}@example.net"
    with smtplib.SMTP("127.0.0.1", mb.smtp_port, timeout=30) as s:
        s.sendmail("erp@erp.lan", [rcpt], message(tok, subject="restart"))
    assert mb.stop() == 0, "mailbridge did not exit 0 on SIGTERM"
    assert any(rcpt in e["recipients"] for e in h.queue_json(mb)), "message not in the spool after stop"
    up.start()
    mb.start()
    up.wait_rcpts(tok, [rcpt], timeout=30)


def test_untrusted_upstream_certificate_defers_and_check_fails(workdir, ca, smtp_upstream,
                                                                smtp_upstream_starttls, dovecot, users):
    """An account whose ca_file does not match the upstream: nothing is sent, the reason is visible."""
    d = workdir / f"wrong-ca-{token()}"
    other = h.TestCA(d / "other-ca", name="some other CA")
    accounts = h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port)
    for a in accounts:
        a["ca"] = other.ca
    smtp_port, imap_port = h.free_port(), h.free_port()
    mb = h.MailBridge(d / "bridge", h.bridge_config(smtp_port, imap_port, accounts, users),
                      smtp_port, imap_port).start()
    try:
        tok = token()
        rcpt = f"ca-{tok}@example.net"
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.sendmail("erp@erp.lan", [rcpt], message(tok, subject="wrong ca"))

        def deferred():
            return [e for e in h.queue_json(mb) if rcpt in e["recipients"] and e["attempts"] >= 1
                    and e["last_error"]]

        [e] = h.poll(deferred, 15, "a deferred attempt with a reason", interval=0.1)
        assert re.search(r"certificate|tls|issuer|trust", e["last_error"], re.I), e["last_error"]
        assert e["state"] != "failed", "a TLS failure must be retried, not failed"
        assert not smtp_upstream.find(tok), "delivered despite an untrusted certificate"

        r = mb.cli("check", timeout=60)
        out = (r.stdout + r.stderr).decode(errors="replace")
        assert r.returncode != 0, f"check exited 0 with an untrusted upstream certificate:\n{out}"
        assert re.search(r"certificate|tls|issuer|trust", out, re.I), out
    finally:
        assert mb.stop() == 0


@pytest.fixture
def direct_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users):
    d = workdir / f"direct-{token()}"
    smtp_port, imap_port = h.free_port(), h.free_port()
    text = h.bridge_config(smtp_port, imap_port,
                           h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port),
                           users).replace('[smtp]\n', '[smtp]\nmode = "direct"\n', 1)
    mb = h.MailBridge(d / "bridge", text, smtp_port, imap_port).start()
    yield mb
    assert mb.stop() == 0


def test_direct_mode_replies_after_the_upstream(direct_bridge, smtp_upstream):
    tok = token()
    with smtplib.SMTP("127.0.0.1", direct_bridge.smtp_port, timeout=30) as s:
        s.sendmail("erp@erp.lan", ["direct@example.net"], message(tok, subject="direct"))
    # No polling: in direct mode the 250 comes after the upstream's 250.
    assert [m["rcpt_tos"] for m in smtp_upstream.find(tok)] == [["direct@example.net"]]

    tok = token()
    with smtplib.SMTP("127.0.0.1", direct_bridge.smtp_port, timeout=30) as s:
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)) as e:
            s.sendmail("erp@erp.lan", ["nobody@reject.test"], message(tok, subject="direct reject"))
    code = e.value.smtp_code if isinstance(e.value, smtplib.SMTPDataError) else \
        list(e.value.recipients.values())[0][0]
    assert 500 <= code < 600, e.value
    assert not smtp_upstream.find(tok)


def test_init_certificates_verify_with_openssl_and_swaks(tmp_path):
    site = tmp_path / "site"
    r = h.run([h.BINARY, "init", "--dir", site], cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    ca, cert, key, cfg = (site / "certs/ca.pem", site / "certs/localhost.pem", site / "certs/localhost.key",
                          site / "relay.toml")
    for f in (ca, cert, key, cfg):
        assert f.exists(), f"init did not write {f}"
    assert key.stat().st_mode & 0o077 == 0, "private key readable by others"

    v = h.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", ca, cert])
    assert v.returncode == 0 and b": OK" in v.stdout, (v.stdout + v.stderr).decode(errors="replace")
    sans = h.run(["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"]).stdout.decode()
    assert "DNS:localhost" in sans and "IP Address:127.0.0.1" in sans, sans

    before = {f: f.read_bytes() for f in (ca, cert, key, cfg)}
    again = h.run([h.BINARY, "init", "--dir", site], cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert again.returncode != 0, "init overwrote existing files without --force"
    assert before == {f: f.read_bytes() for f in before}, "init changed files without --force"

    # The starter config runs as is (on free ports) and swaks verifies its STARTTLS certificate.
    smtp_port, imap_port = h.free_port(), h.free_port()
    text = cfg.read_text().replace("127.0.0.1:2525", f"127.0.0.1:{smtp_port}") \
        .replace("127.0.0.1:1143", f"127.0.0.1:{imap_port}") \
        .replace("127.0.0.1:9925", f"127.0.0.1:{h.free_port()}")
    mb = h.MailBridge(site, text, smtp_port, imap_port).start()
    try:
        s = h.run(["swaks", "--server", "127.0.0.1", "--port", smtp_port, "--tls", "--tls-verify",
                   "--tls-ca-path", ca, "--quit-after", "TLS", "--timeout", "20"], timeout=60)
        out = s.stdout.decode(errors="replace")
        assert s.returncode == 0 and "TLS started" in out, out[-1500:]
    finally:
        assert mb.stop() == 0


def test_queue_hold_and_release(outage_pair):
    up, mb = outage_pair
    up.stop()
    held_tok, control_tok = token(), token()
    held_rcpt = f"held-{held_tok}@example.net"
    with smtplib.SMTP("127.0.0.1", mb.smtp_port, timeout=30) as s:
        s.sendmail("erp@erp.lan", [held_rcpt], message(held_tok, subject="hold me"))

    def entry():
        return [e for e in h.queue_json(mb) if held_rcpt in e["recipients"]]

    [e] = h.poll(entry, 15, "the message in the queue", interval=0.1)
    r = mb.cli("queue", "hold", e["id"])
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    [e] = entry()
    assert e["state"] == "on-hold", e

    up.start()
    with smtplib.SMTP("127.0.0.1", mb.smtp_port, timeout=30) as s:
        s.sendmail("erp@erp.lan", ["control@example.net"], message(control_tok, subject="control"))
    up.wait_rcpts(control_tok, ["control@example.net"], timeout=30)
    assert not up.find(held_tok), "a held message was delivered"

    r = mb.cli("queue", "release", e["id"])
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    up.wait_rcpts(held_tok, [held_rcpt], timeout=30)


def test_open_relay_config_is_refused_at_start(tmp_path, ca, users):
    port = h.free_port()
    text = h.bridge_config(port, h.free_port(), h.accounts_for(ca, 1, 2, 3), users,
                           extra_smtp='allowed_networks = ["0.0.0.0/0"]').replace(
        f'listen = ["127.0.0.1:{port}"]', f'listen = ["0.0.0.0:{port}"]')
    cfg = tmp_path / "relay.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    r = h.run([h.BINARY, "-c", cfg, "run"], timeout=30, stdin=subprocess.DEVNULL)
    err = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 2, f"exit {r.returncode}, want 2 (configuration error):\n{err}"
    assert "smtp.allowed_networks" in err and "open relay" in err, err
    assert not h.port_answers(port)


def test_client_outside_allowed_networks_is_refused(workdir, ca, smtp_upstream, smtp_upstream_starttls,
                                                   dovecot, users):
    d = workdir / f"allowed-{token()}"
    smtp_port, imap_port = h.free_port(), h.free_port()
    text = h.bridge_config(smtp_port, imap_port,
                           h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port), users,
                           extra_smtp='allowed_networks = ["127.0.0.1/32"]',
                           extra_imap='allowed_networks = ["127.0.0.1/32"]')
    mb = h.MailBridge(d, text, smtp_port, imap_port).start()
    try:
        with pytest.raises(smtplib.SMTPConnectError) as e:
            smtplib.SMTP("127.0.0.1", smtp_port, timeout=10, source_address=("127.0.0.2", 0))
        assert e.value.smtp_code == 554, e.value
        tok = token()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10, source_address=("127.0.0.1", 0)) as s:
            s.sendmail("erp@erp.lan", ["allowed@example.net"], message(tok, subject="allowed"))
        smtp_upstream.wait_rcpts(tok, ["allowed@example.net"])

        with socket.create_connection(("127.0.0.1", imap_port), timeout=10, source_address=("127.0.0.2", 0)) as c:
            data = b""
            while True:
                chunk = c.recv(1024)
                if not chunk:
                    break
                data += chunk
        assert not data.startswith(b"* OK"), f"IMAP greeted a client outside allowed_networks: {data!r}"
    finally:
        assert mb.stop() == 0
