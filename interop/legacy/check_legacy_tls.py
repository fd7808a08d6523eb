"""The `legacy` TLS profile with real clients, against a mailbridge built with
`--features legacy-tls` (MAILBRIDGE_BIN): `openssl s_client -tls1` and swaks
forced to TLS 1.0 get through a `tls_profile = "legacy"` listener (SMTP and
IMAP STARTTLS, smtps, imaps) and their mail reaches the aiosmtpd upstream; the same clients
fail against the default profile.

Not part of the default `pytest interop` run (the name does not match
test_*.py, and the default binary has no legacy profile). .ci/run runs it as
    MAILBRIDGE_BIN=... python3 -m pytest -q interop/legacy/check_legacy_tls.py
"""

import pytest

import harness as h
from mailgen import message, token

# What an old printer offers: TLS 1.0 with plain RSA key exchange.
RSA_ONLY = "AES128-SHA:@SECLEVEL=0"


@pytest.fixture(scope="module")
def rsa_cert(workdir):
    """A self-signed RSA certificate: RSA key exchange needs an RSA key."""
    d = workdir / "legacy-rsa"
    d.mkdir(exist_ok=True)
    cert, key = d / "rsa.pem", d / "rsa.key"
    r = h.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
               "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return cert, key


def start_bridge(workdir, name, ca, smtp_upstream, rsa_cert, profile):
    cert, key = rsa_cert
    smtp_port, imap_port, smtps_port, imaps_port = (h.free_port() for _ in range(4))
    line = f'tls_profile = "{profile}"' if profile else ""
    accounts = [{"name": "main", "username": h.ACCOUNT, "password": h.APP_PASSWORD_SHOWN, "ca": ca.ca,
                 "smtp": (smtp_upstream.port, "implicit"), "imap": (h.free_port(), "implicit")}]
    text = h.bridge_config(
        smtp_port, imap_port, accounts, [],
        extra_top=f"tls_cert = {h.toml_str(cert)}\ntls_key = {h.toml_str(key)}",
        extra_smtp=f'smtps_listen = ["127.0.0.1:{smtps_port}"]\n{line}',
        extra_imap=f'imaps_listen = ["127.0.0.1:{imaps_port}"]\n{line}')
    mb = h.MailBridge(workdir / name, text, smtp_port, imap_port)
    mb.smtps_port, mb.imaps_port = smtps_port, imaps_port
    mb.start()
    h.wait_port(smtps_port, 10, mb.proc, "mailbridge smtps listener")
    h.wait_port(imaps_port, 10, mb.proc, "mailbridge imaps listener")
    return mb


def stop_bridge(mb):
    rc = mb.stop()
    assert rc == 0, f"mailbridge exit {rc} after SIGTERM; log:\n{mb.log_text()[-2000:]}"
    log = mb.log_text()
    assert not [s for s in h.SECRETS if s in log], "a password appears in mailbridge's log"
    return log


@pytest.fixture(scope="module")
def legacy(workdir, ca, smtp_upstream, rsa_cert):
    mb = start_bridge(workdir, "legacy-bridge", ca, smtp_upstream, rsa_cert, "legacy")
    yield mb
    log = stop_bridge(mb)
    assert "LEGACY TLS: smtp.tls_profile" in log and "LEGACY TLS: imap.tls_profile" in log, log[-2000:]


@pytest.fixture(scope="module")
def modern(workdir, ca, smtp_upstream, rsa_cert):
    mb = start_bridge(workdir, "modern-bridge", ca, smtp_upstream, rsa_cert, None)
    yield mb
    stop_bridge(mb)


def s_client(port, *args, stdin=b"QUIT\n"):
    """TLS 1.0 s_client; `stdin` must make the server close (-ign_eof waits for that)."""
    r = h.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1", "-brief", "-ign_eof", "-crlf",
               *args], input=stdin, timeout=30)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


@pytest.mark.parametrize("cipher", ["DEFAULT:@SECLEVEL=0", RSA_ONLY])
def test_s_client_tls1_starttls_smtp(legacy, modern, cipher):
    rc, out = s_client(legacy.smtp_port, "-starttls", "smtp", "-cipher", cipher)
    assert rc == 0 and "Protocol version: TLSv1\n" in out, out
    if cipher == RSA_ONLY:
        assert "Ciphersuite: AES128-SHA\n" in out, out
    rc, out = s_client(modern.smtp_port, "-starttls", "smtp", "-cipher", cipher)
    assert rc != 0, out


def test_s_client_tls1_starttls_imap(legacy, modern):
    rc, out = s_client(legacy.imap_port, "-starttls", "imap", "-cipher", RSA_ONLY, stdin=b"a CAPABILITY\nb LOGOUT\n")
    assert rc == 0 and "Protocol version: TLSv1\n" in out and "* CAPABILITY IMAP4rev1" in out, out
    rc, out = s_client(modern.imap_port, "-starttls", "imap", "-cipher", RSA_ONLY, stdin=b"b LOGOUT\n")
    assert rc != 0, out


def test_s_client_tls1_implicit_smtps_and_imaps(legacy, modern):
    rc, out = s_client(legacy.smtps_port, "-cipher", RSA_ONLY)
    assert rc == 0 and "Protocol version: TLSv1\n" in out and "220 mailbridge.interop" in out, out
    rc, out = s_client(legacy.imaps_port, "-cipher", RSA_ONLY, stdin=b"a LOGOUT\n")
    assert rc == 0 and "Protocol version: TLSv1\n" in out and "* OK [CAPABILITY IMAP4rev1" in out, out
    for port in (modern.smtps_port, modern.imaps_port):
        rc, out = s_client(port, "-cipher", RSA_ONLY)
        assert rc != 0, out


def swaks_tls1(port, tok, rcpt, *mode):
    return h.run(["swaks", "--server", "127.0.0.1", "--port", port, "--helo", "printer.lan", "--timeout", "30",
                  *mode, "--tls-protocol", "tlsv1", "--tls-cipher", RSA_ONLY,
                  "--from", "scanner@printer.lan", "--to", rcpt, "--header", f"Subject: legacy {tok}"],
                 timeout=60)


@pytest.mark.parametrize("mode", [["--tls"], ["--tls-on-connect"]], ids=["starttls", "smtps"])
def test_swaks_tls1_gets_250_and_mail_arrives(legacy, modern, smtp_upstream, mode):
    tok = token()
    rcpt = f"legacy-{mode[0][2:]}@example.net"
    port = legacy.smtp_port if mode == ["--tls"] else legacy.smtps_port
    r = swaks_tls1(port, tok, rcpt, *mode)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-3000:]
    assert "TLS started with cipher TLSv1:AES128-SHA" in out, out[-3000:]
    assert "<~  250 2.0.0" in out, out[-3000:]
    smtp_upstream.wait_rcpts(tok, [rcpt])
    # The default profile: the handshake fails, nothing is sent.
    port = modern.smtp_port if mode == ["--tls"] else modern.smtps_port
    r = swaks_tls1(port, token(), rcpt, *mode)
    assert r.returncode != 0, r.stdout.decode(errors="replace")[-3000:]


def test_message_body_unchanged_through_legacy_tls(legacy, smtp_upstream, tmp_path):
    tok = token()
    sent = message(tok, subject="legacy body")
    f = tmp_path / "m.eml"
    f.write_bytes(sent[:-2])  # swaks adds CRLF "." itself
    r = h.run(["swaks", "--server", "127.0.0.1", "--port", legacy.smtp_port, "--helo", "printer.lan",
               "--timeout", "30", "--tls", "--tls-protocol", "tlsv1", "--tls-cipher", RSA_ONLY,
               "--from", "scanner@printer.lan", "--to", "body@example.net", "--data", f"@{f}"], timeout=60)
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-3000:]
    [m] = smtp_upstream.wait_rcpts(tok, ["body@example.net"])
    assert m["data"].endswith(sent.split(b"\r\n\r\n", 1)[1])
