"""Local TLS towards clients that can do some TLS: STARTTLS on the plaintext
SMTP and IMAP ports and implicit-TLS listeners (smtps_listen, imaps_listen),
with a certificate from the test CA that every client here verifies."""

import imaplib
import smtplib
import ssl

import pytest

import fetchmail_client as fm
import harness as h
import imap_compat as ic
from mailgen import message, token


@pytest.fixture(scope="module")
def tls_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users):
    d = workdir / "tls-bridge"
    smtp_port, imap_port, smtps_port, imaps_port = (h.free_port() for _ in range(4))
    text = h.bridge_config(
        smtp_port, imap_port,
        h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port), users,
        extra_top=f"tls_cert = {h.toml_str(ca.cert)}\ntls_key = {h.toml_str(ca.key)}",
        extra_smtp=f'smtps_listen = ["127.0.0.1:{smtps_port}"]',
        extra_imap=f'imaps_listen = ["127.0.0.1:{imaps_port}"]')
    mb = h.MailBridge(d, text, smtp_port, imap_port)
    mb.smtps_port, mb.imaps_port = smtps_port, imaps_port
    mb.start()
    h.wait_port(smtps_port, 10, mb.proc, "mailbridge smtps listener")
    h.wait_port(imaps_port, 10, mb.proc, "mailbridge imaps listener")
    yield mb
    rc = mb.stop()
    assert rc == 0, f"mailbridge exit {rc} after SIGTERM; log:\n{mb.log_text()[-2000:]}"
    log = mb.log_text()
    assert not [s for s in h.SECRETS if s in log], "a password appears in mailbridge's log"


def swaks(bridge, port, *args):
    return h.run(["swaks", "--server", "127.0.0.1", "--port", port, "--helo", "printer.lan", "--timeout", "30",
                  *args], timeout=60)


def test_swaks_starttls_then_auth(tls_bridge, smtp_upstream, ca, tmp_path):
    tok = token()
    sent = message(tok, subject="swaks starttls")
    f = tmp_path / "m.eml"
    f.write_bytes(sent[:-2])  # swaks adds CRLF "." itself
    r = swaks(tls_bridge, tls_bridge.smtp_port, "--tls", "--tls-verify", "--tls-ca-path", ca.ca,
              "--auth", "PLAIN", "--auth-user", h.DEVICE_USER, "--auth-password", h.DEVICE_PASSWORD,
              "--from", "d@printer.lan", "--to", "tls1@example.net", "--data", f"@{f}")
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-2000:]
    assert "STARTTLS" in out and "TLS started" in out, out[-2000:]
    [m] = smtp_upstream.wait_rcpts(tok, ["tls1@example.net"])
    assert m["data"].endswith(sent.split(b"\r\n\r\n", 1)[1])


def test_swaks_implicit_tls(tls_bridge, smtp_upstream, ca):
    tok = token()
    r = swaks(tls_bridge, tls_bridge.smtps_port, "--tls-on-connect", "--tls-verify", "--tls-ca-path", ca.ca,
              "--from", "d@printer.lan", "--to", "tls2@example.net", "--header", f"Subject: smtps {tok}")
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    smtp_upstream.wait_rcpts(tok, ["tls2@example.net"])


def test_curl_smtps_and_starttls(tls_bridge, smtp_upstream, ca, tmp_path):
    for scheme, port, extra, rcpt in (("smtps", tls_bridge.smtps_port, [], "tls3@example.net"),
                                      ("smtp", tls_bridge.smtp_port, ["--ssl-reqd"], "tls4@example.net")):
        tok = token()
        f = tmp_path / f"{scheme}.eml"
        f.write_bytes(message(tok, subject=f"curl {scheme}"))
        r = h.run(["curl", "-sS", "--max-time", "30", "--cacert", ca.ca, f"{scheme}://127.0.0.1:{port}", *extra,
                   "--mail-from", "d@printer.lan", "--mail-rcpt", rcpt, "--upload-file", f], timeout=60)
        assert r.returncode == 0, f"{scheme}: {r.stderr.decode(errors='replace')}"
        smtp_upstream.wait_rcpts(tok, [rcpt])


def test_smtplib_starttls_offered_and_works(tls_bridge, smtp_upstream, ca):
    tok = token()
    with smtplib.SMTP("127.0.0.1", tls_bridge.smtp_port, timeout=30) as s:
        s.ehlo("erp.lan")
        assert s.has_extn("starttls")
        s.starttls(context=ca.ssl_context())
        s.ehlo("erp.lan")
        assert not s.has_extn("starttls")
        s.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
        s.sendmail("erp@erp.lan", ["tls5@example.net"], message(tok, subject="smtplib starttls"))
    smtp_upstream.wait_rcpts(tok, ["tls5@example.net"])


def test_imaps_fetch_identical_to_direct(tls_bridge, dovecot, ca):
    direct = dovecot.client()
    direct.login(h.ACCOUNT, h.APP_PASSWORD)
    direct.select("INBOX", readonly=True)
    want = direct.fetch("1:5", "(UID BODY.PEEK[])")
    direct.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", tls_bridge.imaps_port, ssl_context=ca.ssl_context(), timeout=20)
    c.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
    c.select("INBOX", readonly=True)
    assert c.fetch("1:5", "(UID BODY.PEEK[])") == want
    c.logout()


def test_imap_starttls_on_plain_port(tls_bridge, ca):
    c = imaplib.IMAP4("127.0.0.1", tls_bridge.imap_port, timeout=20)
    assert "STARTTLS" in c.capabilities
    c.starttls(ssl_context=ca.ssl_context())
    assert isinstance(c.sock, ssl.SSLSocket)
    typ, _ = c.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
    assert typ == "OK"
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK" and int(data[0]) >= 50
    c.logout()


def test_curl_imaps(tls_bridge, ca):
    r = h.run(["curl", "-sS", "--max-time", "30", "--cacert", ca.ca,
               f"imaps://127.0.0.1:{tls_bridge.imaps_port}/INBOX;UID=1",
               "-u", f"{h.DEVICE_USER}:{h.DEVICE_PASSWORD}"], timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Message-ID: <interop-" in r.stdout


def test_imap_starttls_matches_dovecot(tls_bridge, dovecot, ca):
    """Local STARTTLS, then a login, answered as Dovecot's own STARTTLS is."""
    def steps(user, password):
        cmd = lambda args: (lambda c: c.command(args))  # noqa: E731
        return [
            (">CAPABILITY", cmd("CAPABILITY")),
            ("NOOP", cmd("NOOP")),
            ("STARTTLS", lambda c: c.starttls(ca.ssl_context())),
            ("CAPABILITY over TLS", cmd("CAPABILITY")),
            ("STARTTLS again", cmd("STARTTLS")),
            ("LOGIN", cmd(f"LOGIN {ic.quote(user)} {ic.quote(password)}")),
            ("SELECT", cmd("SELECT INBOX")),
            ("LOGOUT", cmd("LOGOUT")),
        ]
    direct = ic.run_script(lambda: ic.Conn(dovecot.plain_port), steps(h.ACCOUNT, h.APP_PASSWORD))
    via = ic.run_script(lambda: ic.Conn(tls_bridge.imap_port), steps(h.DEVICE_USER, h.DEVICE_PASSWORD))
    ic.compare(direct, via)
    assert [x[1] for x in via] == ["OK", "OK", "OK", "OK", "BAD", "OK", "OK", "OK"], via


def test_fetchmail_over_local_starttls_with_documented_settings(tls_bridge, dovecot, ca, tmp_path):
    """fetchmail's default (STARTTLS, certificate checked) works once local
    TLS is configured, with the README's settings: the CA file to trust."""
    ids = fm.alt_message_ids(dovecot)
    mbox = tmp_path / "delivered.mbox"
    rc = tmp_path / "fetchmailrc"
    fm.fetchmailrc(rc, tls_bridge.imap_port, mbox,
                   tls_lines=("sslproto 'TLS1.2+'", "sslcertck", f'sslcertfile "{ca.ca}"'))
    r = fm.run(rc, tmp_path)
    assert r.returncode == 0, f"fetchmail exit {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "STARTTLS" in r.stdout, r.stdout[-2000:]
    got = mbox.read_text(errors="replace")
    missing = [i for i in ids if i not in got]
    assert not missing, f"not delivered by fetchmail: {missing}"
