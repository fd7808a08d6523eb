"""Real fetchmail (IMAP) with the settings the README gives for devices:
a run-control file for one poll that delivers to a file through an MDA."""

import os
import subprocess

import harness as h


def fetchmailrc(path, port, mda_target, tls_lines=("sslproto ''",)):
    """The README's fetchmail settings (device section), for one poll."""
    path.write_text(
        "set no syslog\n"
        f"poll localhost protocol IMAP port {port}\n"
        f'  user "{h.ALT_USER}" password "{h.ALT_PASSWORD}"\n'
        + "".join(f"  {line}\n" for line in tls_lines)
        + f"  keep fetchall mda \"cat >> {mda_target}\"\n")
    os.chmod(path, 0o600)


def run(rc, home):
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    return subprocess.run(["fetchmail", "-f", str(rc), "-v", "--nodetach"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def alt_message_ids(dovecot):
    direct = dovecot.client()
    direct.login(h.ALT_ACCOUNT, h.ALT_APP_PASSWORD)
    direct.select("INBOX", readonly=True)
    typ, data = direct.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    direct.logout()
    assert typ == "OK", data
    ids = [x[1].decode().split(":", 1)[1].strip() for x in data if isinstance(x, tuple)]
    assert len(ids) >= 3, ids
    return ids

