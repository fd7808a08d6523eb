"""Pytest fixtures for the OAuth 2.0 peers, session-wide like conftest.py's, which
imports them (once for all modules: imported into two test modules, each would start
its own peers in the same directory); they use conftest's `workdir` and `ca`. Tests
that stop or reconfigure a peer start their own instead.
"""

import pytest

import harness as h
from mailgen import maildir_messages

from .peers import OAuthDovecot, OAuthServer, XOAuth2SmtpUpstream

__all__ = ["oauth_server", "oauth_dovecot", "oauth_smtp", "oauth_smtp_starttls"]


@pytest.fixture(scope="session")
def oauth_server(workdir, ca):
    """The authorization server: .url, .token_url, .device_url, client ids/secrets in peers,
    .approve_device(), .drive_code_flow(), .revoke(), .revoke_account(), .introspections()."""
    srv = OAuthServer(workdir / "oauth2-server", ca).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def oauth_dovecot(workdir, ca, oauth_server):
    """IMAP (.port) and POP3 (.pop3_port), implicit TLS, XOAUTH2/OAUTHBEARER only."""
    dv = OAuthDovecot(workdir / "oauth2-dovecot", ca, oauth_server)
    dv.populate(h.ACCOUNT, maildir_messages(5))
    dv.start()
    yield dv
    dv.stop()


@pytest.fixture(scope="session")
def oauth_smtp(workdir, ca, oauth_server):
    """The Gmail-like XOAUTH2 SMTP sink, implicit TLS (.port, .messages(), .wait_rcpts())."""
    up = XOAuth2SmtpUpstream(workdir / "oauth2-smtp", ca, oauth_server, tls="implicit",
                             reject=["nobody@reject.test"]).start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def oauth_smtp_starttls(workdir, ca, oauth_server):
    up = XOAuth2SmtpUpstream(workdir / "oauth2-smtp-starttls", ca, oauth_server, tls="starttls").start()
    yield up
    up.stop()
