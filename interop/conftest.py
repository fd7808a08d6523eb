"""Session-wide peers for the interop suite: one test CA, two aiosmtpd upstreams
(implicit TLS and STARTTLS), one Dovecot, and one mailbridge wired to them.
Tests that stop a peer start their own pair instead of touching these.
"""

import os
import tempfile
from pathlib import Path

import pytest

import harness as h
from mailgen import maildir_messages
# The OAuth 2.0 peers' session fixtures, here so that every module shares one
# instance (imported into two modules, each would start its own in the same directory).
from oauth2.fixtures import *  # noqa: E402,F401,F403


def pytest_configure(config):
    assert h.BINARY.exists(), f"{h.BINARY} is missing: run `cargo build --release` first"


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="mailbridge-interop-"))
    os.chmod(d, 0o755)  # Dovecot's mail user must reach the Maildir below it
    yield d
    if os.environ.get("INTEROP_KEEP"):
        print(f"\ninterop work dir kept: {d}")
    else:
        h.remove_tree(d)


@pytest.fixture(scope="session")
def ca(workdir):
    return h.TestCA(workdir / "ca")


@pytest.fixture(scope="session")
def hashes():
    return {h.DEVICE_USER: h.hash_password(h.DEVICE_PASSWORD), h.ALT_USER: h.hash_password(h.ALT_PASSWORD)}


@pytest.fixture(scope="session")
def smtp_upstream(workdir, ca):
    up = h.SmtpUpstream(workdir / "smtp-implicit", ca, h.ACCOUNT, h.APP_PASSWORD, tls="implicit",
                        reject=["nobody@reject.test"]).start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def smtp_upstream_starttls(workdir, ca):
    up = h.SmtpUpstream(workdir / "smtp-starttls", ca, h.ALT_ACCOUNT, h.ALT_APP_PASSWORD, tls="starttls").start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def dovecot(workdir, ca):
    dv = h.Dovecot(workdir / "dovecot", ca, {h.ACCOUNT: h.APP_PASSWORD, h.ALT_ACCOUNT: h.ALT_APP_PASSWORD})
    dv.populate(h.ACCOUNT, maildir_messages(50))
    dv.populate(h.ALT_ACCOUNT, maildir_messages(3))
    dv.start()
    yield dv
    dv.stop()


@pytest.fixture(scope="session")
def users(hashes):
    return [{"name": h.DEVICE_USER, "hash": hashes[h.DEVICE_USER], "account": "main"},
            {"name": h.ALT_USER, "hash": hashes[h.ALT_USER], "account": "alt"}]


@pytest.fixture(scope="session")
def bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users):
    smtp_port, imap_port = h.free_port(), h.free_port()
    text = h.bridge_config(smtp_port, imap_port,
                           h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port), users)
    mb = h.MailBridge(workdir / "bridge", text, smtp_port, imap_port).start()
    yield mb
    rc = mb.stop()
    log = mb.log_text()
    assert rc == 0, f"mailbridge did not exit 0 within 15 s of SIGTERM (rc={rc}); log tail:\n{log[-2000:]}"
    leaked = [s for s in h.SECRETS if s in log]
    assert not leaked, f"secrets found in mailbridge's log ({len(leaked)} of them); see {mb.log_path}"
