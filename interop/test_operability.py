"""Operating features against real peers: Prometheus metrics scraped with
curl, SIGHUP reload checked with swaks, the daily send cap and the
permanent-failure notice seen at the aiosmtpd upstream, and sent_copy = "skip"
seen in Dovecot."""

import imaplib
import json
import signal
import smtplib
import time

import harness as h
from mailgen import message, token


def private_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users, name,
                   account_extra="", top_extra="", tail=""):
    d = workdir / f"{name}-{token()}"
    smtp_port, imap_port = h.free_port(), h.free_port()
    text = h.bridge_config(smtp_port, imap_port,
                           h.accounts_for(ca, smtp_upstream.port, dovecot.port, smtp_upstream_starttls.port), users,
                           extra_top=top_extra)
    if account_extra:
        # Extra keys for the first account ("main").
        text = text.replace('name = "main"\n', f'name = "main"\n{account_extra}\n', 1)
    return h.MailBridge(d, text + "\n" + tail, smtp_port, imap_port)


def send(port, tok, rcpts, subject="ops"):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("erp@erp.lan", rcpts, message(tok, subject=subject))


def test_metrics_and_healthz_with_curl(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users):
    mport = h.free_port()
    mb = private_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users, "metrics",
                        tail=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n').start()
    try:
        h.wait_port(mport, 10, mb.proc, "metrics listener")
        tok = token()
        send(mb.smtp_port, tok, ["m1@example.net"])
        smtp_upstream.wait_rcpts(tok, ["m1@example.net"])

        def scraped():
            r = h.run(["curl", "-sS", "-f", "--max-time", "10", f"http://127.0.0.1:{mport}/metrics"])
            text = r.stdout.decode()
            return text if r.returncode == 0 and 'mailbridge_messages_accepted_total{account="main"} 1' in text \
                and 'mailbridge_upstream_latency_seconds_count{account="main"}' in text else None

        text = h.poll(scraped, 10, "metrics to count the accepted and delivered message", interval=0.1)
        assert "# TYPE" in text
        r = h.run(["curl", "-sS", "--max-time", "10", "-w", "%{http_code}", "-o", "-",
                   f"http://127.0.0.1:{mport}/healthz"])
        body, code = r.stdout[:-3], r.stdout[-3:]
        assert code == b"200", r.stdout
        json.loads(body)
        assert not [s for s in h.SECRETS if s in text or s in body.decode()]
        # DNS rebinding: a page whose name now points at 127.0.0.1 sends its own Host.
        r = h.run(["curl", "-sS", "--max-time", "10", "-w", "%{http_code}", "-o", "-",
                   "-H", "Host: evil.example", f"http://127.0.0.1:{mport}/metrics"])
        assert r.stdout[-3:] == b"421", r.stdout
        assert b"mailbridge_" not in r.stdout
    finally:
        assert mb.stop() == 0


def test_sighup_reload_adds_a_user_and_keeps_old_config_on_error(workdir, ca, smtp_upstream,
                                                                   smtp_upstream_starttls, dovecot, users):
    mb = private_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users[:1], "reload").start()
    try:
        def swaks_auth(user, password):
            return h.run(["swaks", "--server", "127.0.0.1", "--port", mb.smtp_port, "--auth", "PLAIN",
                          "--auth-user", user, "--auth-password", password, "--quit-after", "AUTH",
                          "--timeout", "20"], timeout=60).returncode

        assert swaks_auth(h.ALT_USER, h.ALT_PASSWORD) == 28, "unknown user accepted before reload"
        good = mb.config.read_text()
        new_user = f'\n[[users]]\nname = "{h.ALT_USER}"\npassword_hash = {h.toml_str(users[1]["hash"])}\naccount = "alt"\n'
        mb.config.write_text(good + new_user)
        mb.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: swaks_auth(h.ALT_USER, h.ALT_PASSWORD) == 0, 15, "the reloaded user to log in", interval=0.2)

        mb.config.write_text(good + new_user + "\nthis is = not [valid toml\n")
        seen = len(mb.log_text())
        mb.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "reload" in mb.log_text()[seen:].lower(), 10, "a log line about the rejected reload")
        assert mb.proc.poll() is None, "a bad config on SIGHUP stopped the daemon"
        assert swaks_auth(h.ALT_USER, h.ALT_PASSWORD) == 0, "the previous config was not kept"
        assert swaks_auth(h.DEVICE_USER, h.DEVICE_PASSWORD) == 0
    finally:
        assert mb.stop() == 0


def test_daily_limit_holds_the_excess(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users):
    mb = private_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users, "daily",
                        account_extra="daily_limit = 2").start()
    try:
        toks = [token() for _ in range(3)]
        for i, tok in enumerate(toks):
            send(mb.smtp_port, tok, [f"d{i}@example.net"], subject="daily")
            if i < 2:
                smtp_upstream.wait_rcpts(tok, [f"d{i}@example.net"])

        def held():
            return [e for e in h.queue_json(mb) if "d2@example.net" in e["recipients"]
                    and "daily limit" in (e["last_error"] or "")]

        [e] = h.poll(held, 15, "the third message held for the daily limit", interval=0.1)
        assert e["state"] == "held", e
        assert not smtp_upstream.find(toks[2]), "sent past the daily limit"
    finally:
        assert mb.stop() == 0


def test_permanent_failure_notice_reaches_the_admin(workdir, ca, smtp_upstream, smtp_upstream_starttls,
                                                    dovecot, users):
    mb = private_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users, "notify",
                        account_extra='notify = "admin@example.net"').start()
    try:
        tok = token()
        send(mb.smtp_port, tok, ["nobody@reject.test"], subject="will bounce")
        [n] = smtp_upstream.wait_rcpts(tok, ["admin@example.net"])
        assert n["mail_from"] == h.ACCOUNT
        assert b"550" in n["data"], "the notice does not carry the upstream's reply"
    finally:
        assert mb.stop() == 0


def test_sent_copy_skip_does_not_duplicate_in_sent(workdir, ca, smtp_upstream, smtp_upstream_starttls,
                                                   dovecot, users):
    direct = dovecot.client()
    direct.login(h.ACCOUNT, h.APP_PASSWORD)
    direct.create("Sent")
    direct.subscribe("Sent")

    def count(box):
        typ, data = direct.status(box, "(MESSAGES)")
        return int(data[0].decode().rsplit("MESSAGES", 1)[1].strip(" )"))

    before_sent, before_inbox = count("Sent"), count("INBOX")
    mb = private_bridge(workdir, ca, smtp_upstream, smtp_upstream_starttls, dovecot, users, "sentcopy",
                        account_extra='sent_copy = "skip"').start()
    try:
        c = imaplib.IMAP4("127.0.0.1", mb.imap_port, timeout=20)
        c.login(h.DEVICE_USER, h.DEVICE_PASSWORD)
        typ, data = c.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(time.time()),
                             message(token(), subject="sent copy"))
        assert typ == "OK", data
        tok = token()
        typ, data = c.append("INBOX", None, imaplib.Time2Internaldate(time.time()), message(tok, subject="inbox"))
        assert typ == "OK", data
        c.logout()
        assert count("Sent") == before_sent, "APPEND to Sent reached Dovecot despite sent_copy = skip"
        assert count("INBOX") == before_inbox + 1, "APPEND to INBOX was not forwarded"
    finally:
        direct.select("INBOX")
        typ, data = direct.search(None, "HEADER", "X-Interop-Token", "tok-")
        for n in data[0].split():
            direct.store(n, "+FLAGS", "\\Deleted")
        direct.expunge()
        direct.logout()
        assert mb.stop() == 0
