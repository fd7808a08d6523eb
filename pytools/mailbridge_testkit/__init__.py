"""Helpers shared by the Python harnesses (interop/harness.py and
bench/benchlib.py): ports and polling against a deadline, a test CA made with
openssl, Dovecot from a private config dir, and the mailbridge binary with a
generated relay.toml. Nothing here waits by sleeping for a fixed time:
readiness is "the port answers" or "the process said READY"."""

from .ca import TestCA
from .daemon import BINARY, ROOT, MailBridge, hash_password, relay_toml, toml_str
from .dovecot import DOVECOT_POP3_DIR, Dovecot
from .wait import Deadline, free_port, ok, poll, port_answers, read_line, run, wait_port

__all__ = ["BINARY", "DOVECOT_POP3_DIR", "ROOT", "Deadline", "Dovecot", "MailBridge", "TestCA", "free_port",
           "hash_password", "ok", "poll", "port_answers", "read_line", "relay_toml", "run", "toml_str", "wait_port"]
