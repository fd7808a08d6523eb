"""The status page in a real browser: the release binary with mail in every
state (delivered and failed at the aiosmtpd upstream, deferred by an account
whose server refuses connections, on hold by `mailbridge queue hold`), loaded
by headless Chromium; the test reads the DOM Chromium built and keeps a
phone-sized screenshot under target/ci-artifacts/ for a human to look at."""

import re
import shutil
import smtplib
import subprocess

import harness as h
from mailgen import message, token

ARTIFACTS = h.ROOT / "target" / "ci-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(workdir, *args):
    """Runs headless Chromium with a throwaway profile; returns its stdout."""
    profile = workdir / f"chromium-{token()}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *args]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=90)
    assert r.returncode == 0, f"chromium exit {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}"
    return r.stdout.decode(errors="replace")


def account_card(dom, name):
    m = re.search(r'<article class="card account[^"]*" data-account="%s">(.*?)</article>' % re.escape(name), dom, re.S)
    assert m, f"no card for account {name} in:\n{dom[:3000]}"
    return m.group(1)


def test_status_page_in_chromium(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users):
    smtp_port, imap_port, mport = h.free_port(), h.free_port(), h.free_port()
    accounts = h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port)
    # An account whose SMTP server is not there: connection refused, mail deferred.
    accounts.append({"name": "down", "username": "down@example.com", "password": h.APP_PASSWORD_SHOWN,
                     "ca": ca.ca, "smtp": (h.free_port(), "implicit"), "imap": (dovecot.port, "implicit")})
    down_user = {"name": "downdev", "hash": users[0]["hash"], "account": "down"}
    text = h.bridge_config(smtp_port, imap_port, accounts, users + [down_user])
    text = text.replace('name = "main"\n', 'name = "main"\ndaily_limit = 500\n', 1)
    text += f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
    mb = h.MailBridge(workdir / f"status-{token()}", text, smtp_port, imap_port).start()
    try:
        h.wait_port(mport, 10, mb.proc, "metrics listener")
        ok, bad, late, held = token(), token(), token(), token()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.sendmail("erp@erp.lan", ["st1@example.net"], message(ok, subject="fine"))
            s.sendmail("erp@erp.lan", ["nobody@reject.test"], message(bad, subject="<script>alert(1)</script>"))
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.login("downdev", h.DEVICE_PASSWORD)
            s.sendmail("erp@erp.lan", ["late@example.net"], message(late, subject="late"))
            s.sendmail("erp@erp.lan", ["held@example.net"], message(held, subject="held"))
        smtp_upstream.wait_rcpts(ok, ["st1@example.net"])

        def late_deferred():
            q = [e for e in h.queue_json(mb) if e["account"] == "down"]
            late_state = [e["state"] for e in q if "late@example.net" in e["recipients"]]
            return q if len(q) == 2 and late_state == ["deferred"] else None

        # (During the outage the other message may wait unattempted, still "queued".)
        q = h.poll(late_deferred, 20, "the first message of account down deferred", interval=0.1)
        hold_id = next(e["id"] for e in q if "held@example.net" in e["recipients"])
        r = mb.cli("queue", "hold", hold_id)
        assert r.returncode == 0, r.stderr.decode(errors="replace")

        def settled():
            states = {(e["account"], e["state"]) for e in h.queue_json(mb)}
            return {("main", "failed"), ("down", "deferred"), ("down", "on-hold")} <= states

        h.poll(settled, 20, "failed, deferred and on-hold messages in the queue listing", interval=0.1)
        url = f"http://127.0.0.1:{mport}/"
        dom = chromium(workdir, "--dump-dom", url)

        assert "<title>mailbridge status</title>" in dom, dom[:2000]
        main = account_card(dom, "main")
        assert '<span data-state="failed">1 failed</span>' in main, main
        assert "250 2.0.0 OK queued as" in main, "last delivery with the provider's reply"
        assert "550" in main, "last error with the provider's reply"
        assert re.search(r"\d+ / 500 recipients in 24 h", main), main
        assert "<meter" in main
        down = account_card(dom, "down")
        assert '<span data-state="deferred">1 deferred</span>' in down, down
        assert '<span data-state="held">1 held</span>' in down, down
        assert "mailbridge queue hold" in down, "the hold reason"
        assert "nothing listens there" in down, "the hint check would give"
        assert "problem" in down
        alt = account_card(dom, "alt")
        assert "no delivery yet" in alt, alt
        # Events, newest first, with queue ids and recipients.
        for kind in ("accepted", "delivered", "deferred", "failed"):
            assert f'data-kind="{kind}"' in dom, f"no {kind} event"
        assert hold_id in dom and "nobody@reject.test" in dom and "late@example.net" in dom
        # Listeners with their session counts; the chart as inline SVG.
        assert f"127.0.0.1:{smtp_port}" in dom and 'class="sessions"' in dom
        assert "<svg" in dom and re.search(r"\d+ delivered, \d+ deferred, [1-9]\d* failed</title>", dom), dom
        # Nothing from the message (subject with markup) turned into an element.
        assert "<script" not in dom

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status.png"
        if shot.exists():
            shot.unlink()
        chromium(workdir, f"--screenshot={shot}", "--window-size=412,900", "--hide-scrollbars", url)
        assert shot.exists() and shot.stat().st_size > 5000, "no screenshot"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # The whole page at phone width (chart and events below the fold).
        chromium(workdir, f"--screenshot={ARTIFACTS / 'status-full.png'}", "--window-size=412,3200",
                 "--hide-scrollbars", url)
        assert not [s for s in h.SECRETS if s in dom]
    finally:
        assert mb.stop() == 0
