"""POP3 through mailbridge's proxy to a real Dovecot (dovecot-pop3d) over TLS,
with Python poplib, a raw socket client, curl and fetchmail; every result is
compared with the same commands sent straight to Dovecot over TLS."""

import os
import poplib
import socket
import subprocess

import pytest

import harness as h
from mailgen import maildir_messages

N_MAIN = 12  # includes the ~300 KB attachment (message 10) and 8-bit bodies


@pytest.fixture(scope="module")
def pop3_env(workdir, ca, hashes):
    dv = h.Dovecot(workdir / "dovecot-pop3", ca, {h.ACCOUNT: h.APP_PASSWORD, h.ALT_ACCOUNT: h.ALT_APP_PASSWORD},
                   pop3=True)
    dv.populate(h.ACCOUNT, maildir_messages(N_MAIN))
    dv.populate(h.ALT_ACCOUNT, maildir_messages(3, seed=11))
    dv.start()
    smtp_port, imap_port, pop3_port = h.free_port(), h.free_port(), h.free_port()
    accounts = [
        {"name": "main", "username": h.ACCOUNT, "password": h.APP_PASSWORD_SHOWN, "ca": ca.ca,
         "smtp": (1, "implicit"), "imap": (dv.port, "implicit"), "pop3": (dv.pop3_port, "implicit")},
        {"name": "alt", "username": h.ALT_ACCOUNT, "password": h.ALT_APP_PASSWORD_SHOWN, "ca": ca.ca,
         "smtp": (1, "implicit"), "imap": (dv.port, "implicit"), "pop3": (dv.pop3_port, "implicit")},
    ]
    users = [{"name": h.DEVICE_USER, "hash": hashes[h.DEVICE_USER], "account": "main"},
             {"name": h.ALT_USER, "hash": hashes[h.ALT_USER], "account": "alt"}]
    text = h.bridge_config(smtp_port, imap_port, accounts, users, pop3=f'listen = ["127.0.0.1:{pop3_port}"]')
    mb = h.MailBridge(workdir / "bridge-pop3", text, smtp_port, imap_port).start()
    h.wait_port(pop3_port, 20, mb.proc, "mailbridge POP3 listener")
    mb.pop3_port = pop3_port
    yield dv, mb
    rc = mb.stop()
    dv.stop()
    log = mb.log_text()
    assert rc == 0, f"mailbridge did not exit 0 (rc={rc}); log tail:\n{log[-2000:]}"
    leaked = [s for s in h.SECRETS if s in log]
    assert not leaked, f"secrets found in mailbridge's log ({len(leaked)} of them); see {mb.log_path}"


def proxy(mb, user=h.DEVICE_USER, password=h.DEVICE_PASSWORD):
    p = poplib.POP3("127.0.0.1", mb.pop3_port, timeout=20)
    p.user(user)
    p.pass_(password)
    return p


def direct(dv, user=h.ACCOUNT, password=h.APP_PASSWORD):
    p = poplib.POP3_SSL("127.0.0.1", dv.pop3_port, context=dv.ca.ssl_context(), timeout=20)
    p.user(user)
    p.pass_(password)
    return p


class RawPop3:
    """Reads replies as raw bytes, so RETR can be compared byte for byte."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buf[:200])
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multi(self, text):
        first = self.cmd(text)
        assert first.startswith(b"+OK"), first
        while b"\r\n.\r\n" not in self.buf:
            self._fill()
        body, _, self.buf = self.buf.partition(b"\r\n.\r\n")
        return body + b"\r\n.\r\n"


def raw_proxy(mb):
    s = socket.create_connection(("127.0.0.1", mb.pop3_port), timeout=20)
    r = RawPop3(s)
    assert r.line().startswith(b"+OK")
    assert r.cmd(f"USER {h.DEVICE_USER}").startswith(b"+OK")
    assert r.cmd(f"PASS {h.DEVICE_PASSWORD}") == b"+OK Logged in\r\n"
    return r


def raw_direct(dv):
    s = dv.ca.ssl_context().wrap_socket(socket.create_connection(("127.0.0.1", dv.pop3_port), timeout=20),
                                        server_hostname="localhost")
    r = RawPop3(s)
    assert r.line().startswith(b"+OK")
    assert r.cmd(f"USER {h.ACCOUNT}").startswith(b"+OK")
    assert r.cmd(f"PASS {h.APP_PASSWORD}").startswith(b"+OK")
    return r


def test_retr_of_every_message_is_byte_identical_with_direct(pop3_env):
    dv, mb = pop3_env
    via, straight = raw_proxy(mb), raw_direct(dv)
    for n in range(1, N_MAIN + 1):
        a, b = via.multi(f"RETR {n}"), straight.multi(f"RETR {n}")
        assert a == b, f"RETR {n}: {len(a)} bytes through the proxy, {len(b)} direct"
    assert via.cmd("QUIT").startswith(b"+OK")
    straight.cmd("QUIT")


def test_poplib_stat_list_uidl_top_retr_match_direct(pop3_env):
    dv, mb = pop3_env
    via, straight = proxy(mb), direct(dv)
    assert via.stat() == straight.stat() == (N_MAIN, sum(len(m) for m in maildir_messages(N_MAIN)))
    assert via.list()[1] == straight.list()[1]
    assert via.uidl()[1] == straight.uidl()[1]
    for n in (1, 3, 10):
        assert via.top(n, 5)[1] == straight.top(n, 5)[1]
        assert via.retr(n)[1:] == straight.retr(n)[1:]
    via.quit()
    straight.quit()


def test_wrong_local_password_is_refused_and_capa_has_no_apop(pop3_env):
    dv, mb = pop3_env
    p = poplib.POP3("127.0.0.1", mb.pop3_port, timeout=20)
    caps = p.capa()
    assert "USER" in caps and "SASL" in caps and caps["SASL"] == ["PLAIN"], caps
    assert "APOP" not in caps
    p.user(h.DEVICE_USER)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong password")
    p.quit()


def curl(*args):
    r = h.run(["curl", "-sS", "--max-time", "30", *args], timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


def test_curl_retr_and_list_match_direct(pop3_env):
    dv, mb = pop3_env
    for n in (1, 10):
        via = curl(f"pop3://127.0.0.1:{mb.pop3_port}/{n}", "-u", f"{h.DEVICE_USER}:{h.DEVICE_PASSWORD}")
        straight = curl(f"pop3s://127.0.0.1:{dv.pop3_port}/{n}", "--cacert", str(dv.ca.ca),
                        "-u", f"{h.ACCOUNT}:{h.APP_PASSWORD}")
        assert via == straight and len(via) > 100, n
    via = curl(f"pop3://127.0.0.1:{mb.pop3_port}/", "-u", f"{h.DEVICE_USER}:{h.DEVICE_PASSWORD}")
    straight = curl(f"pop3s://127.0.0.1:{dv.pop3_port}/", "--cacert", str(dv.ca.ca),
                    "-u", f"{h.ACCOUNT}:{h.APP_PASSWORD}")
    assert via == straight and via.count(b"\r\n") == N_MAIN


def mutt_quoted(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_mutt_reads_the_mailbox_through_the_proxy(pop3_env, tmp_path):
    """mutt's own POP client (in a terminal under tmux) opens the mailbox through
    the proxy with the device's login, lists every message with the subjects
    Dovecot has, and quits without changing anything."""
    dv, mb = pop3_env
    d = direct(dv)
    count = len(d.list()[1])
    subjects = []
    for i in range(1, count + 1):
        head = b"\n".join(d.top(i, 0)[1]).decode(errors="replace")
        subjects += [ln[len("Subject: "):] for ln in head.splitlines() if ln.startswith("Subject: ")]
    d.quit()
    url = f"pop://127.0.0.1:{mb.pop3_port}/"
    rc = tmp_path / "muttrc"
    rc.write_text("\n".join([
        f"set pop_user={mutt_quoted(h.DEVICE_USER)}",
        f"set pop_pass={mutt_quoted(h.DEVICE_PASSWORD)}",
        f'set folder="{tmp_path}"', f'set spoolfile="{url}"',  # folder: a local dir mutt checks at start
        "set ssl_starttls=no", "set ssl_force_tls=no",
        'set header_cache=""', 'set message_cachedir=""',
        'set status_format="MBSTATUS msgs=%m"', 'set index_format="MBIDX %s"',
        "set quit=yes", "set move=no", "set delete=no", "set sort=date-sent", "",
    ]))
    session = f"mutt-{os.getpid()}"
    env = dict(os.environ, HOME=str(tmp_path), TERM="xterm", LANG="C.UTF-8")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", str(count + 10),
                    f"mutt -n -F {rc} -f {url}"], env=env, check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], env=env,
                                  capture_output=True, text=True).stdout
        try:
            h.poll(lambda: f"MBSTATUS msgs={count}" in screen(), 30, "mutt to list the POP3 mailbox")
        except AssertionError as e:
            raise AssertionError(f"{e}; mutt's screen:\n{screen()}") from None
        shown = screen()
        missing = [s for s in subjects if f"MBIDX {s}" not in shown]
        assert not missing, f"mutt did not list {missing}:\n{shown}"
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], env=env, check=True)
        h.poll(lambda: subprocess.run(["tmux", "has-session", "-t", session], env=env,
                                      capture_output=True).returncode != 0, 20, "mutt to quit")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], env=env, capture_output=True)
    d = direct(dv)
    assert len(d.list()[1]) == count, "mutt changed the mailbox"
    d.quit()


def fetchmail(tmp_path, mb, keep, user, password):
    out = tmp_path / ("kept" if keep else "fetched")
    out.mkdir()
    mda = tmp_path / "deliver.sh"
    mda.write_text(f'#!/bin/sh\nexec cat > "{out}/$(date +%s%N).$$.eml"\n')
    mda.chmod(0o755)
    rc_file = tmp_path / "fetchmailrc"
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    rc_file.write_text(
        f'poll 127.0.0.1 port {mb.pop3_port} protocol pop3 auth password\n'
        f'  user "{user}" password "{quoted}" {"keep" if keep else "nokeep"} fetchall\n'
        f'  mda "{mda}"\n'
        # fetchmail 6.4 tries STLS even when CAPA does not list it; plaintext on loopback is the point here.
        "  sslproto ''\n")
    rc_file.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-N", "-d0", "-v", "-f", str(rc_file), "-i", str(tmp_path / "ids"),
                        "--nosyslog"], env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-3000:]
    return sorted(p.read_bytes() for p in out.iterdir())


def bodies(messages):
    """Each message's body with LF line ends (fetchmail adds a Received:
    header on top and hands the MDA LF-terminated lines)."""
    return sorted(m.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1] for m in messages)


def test_fetchmail_keep_then_dele_and_delete(pop3_env, tmp_path):
    dv, mb = pop3_env
    originals = maildir_messages(3, seed=11)
    # keep: every message arrives, the mailbox is unchanged.
    (tmp_path / "k").mkdir()
    kept = fetchmail(tmp_path / "k", mb, True, h.ALT_USER, h.ALT_PASSWORD)
    assert len(kept) == 3
    assert bodies(kept) == bodies(originals)
    d = direct(dv, h.ALT_ACCOUNT, h.ALT_APP_PASSWORD)
    assert d.stat()[0] == 3
    uidls = d.uidl()[1]
    d.quit()
    # DELE + QUIT through the proxy with poplib: gone upstream, as directly.
    p = proxy(mb, h.ALT_USER, h.ALT_PASSWORD)
    p.dele(1)
    p.quit()
    d = direct(dv, h.ALT_ACCOUNT, h.ALT_APP_PASSWORD)
    assert d.stat()[0] == 2
    assert [u.split()[1] for u in d.uidl()[1]] == [u.split()[1] for u in uidls[1:]]
    d.quit()
    # nokeep: fetchmail fetches the other two and deletes them.
    (tmp_path / "d").mkdir()
    fetched = fetchmail(tmp_path / "d", mb, False, h.ALT_USER, h.ALT_PASSWORD)
    assert len(fetched) == 2
    d = direct(dv, h.ALT_ACCOUNT, h.ALT_APP_PASSWORD)
    assert d.stat()[0] == 0
    d.quit()
