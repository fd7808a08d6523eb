//! The status page as HTML: pure functions from a [`Snapshot`] to a
//! `String` (one page, inline CSS and SVG, no script, a meta refresh).
//! Every string that came from a client, a provider or the spool goes
//! through [`escape`].

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::events::{hour_of, HourCounts};
use super::{AccountView, Event, ListenerView, Snapshot};
use crate::text::Printable;

/// Text made safe inside HTML text and quoted attributes: control and bidi
/// characters shown as `\x1b`-style escapes (as in the logs), then `&`,
/// `<`, `>`, `"` and `'` as character references.
pub fn escape(s: &str) -> String {
    let shown = Printable(s).to_string();
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light dark;--ok:#2e7d32;--warn:#b26a00;--bad:#c62828;--line:#8884}\
*{box-sizing:border-box}\
body{font:16px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;padding:.75rem;max-width:60rem}\
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.4rem 0 .5rem}h3{font-size:1.05rem;margin:0 0 .4rem}\
.muted{opacity:.7;font-size:.9rem;margin:.1rem 0}\
.card{border:1px solid var(--line);border-left:.35rem solid var(--line);border-radius:.4rem;padding:.6rem .75rem;margin:.6rem 0}\
.card.ok{border-left-color:var(--ok)}.card.error{border-left-color:var(--bad)}.card.warn{border-left-color:var(--warn)}\
.badge{font-size:.8rem;padding:.05rem .45rem;border-radius:1rem;border:1px solid currentColor;margin-left:.4rem;vertical-align:middle;font-weight:normal}\
.ok .badge{color:var(--ok)}.error .badge{color:var(--bad)}.warn .badge{color:var(--warn)}\
dl{display:grid;grid-template-columns:minmax(6.5rem,max-content) 1fr;gap:.25rem .75rem;margin:0}\
dt{font-weight:600}dd{margin:0;min-width:0;overflow-wrap:anywhere}\
code{font-size:.9em;overflow-wrap:anywhere;white-space:pre-wrap}\
.hint{margin-top:.2rem;font-size:.9rem}.hint::before{content:'Hint: ';font-weight:600}\
.counts span{display:inline-block;margin-right:.8rem}\
ul.held{margin:.2rem 0;padding-left:1.1rem}\
meter{width:100%;max-width:20rem;height:1rem;display:block}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid var(--line)}\
svg{width:100%;height:auto;max-width:40rem;display:block}\
.legend span{margin-right:1rem;font-size:.9rem}.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:-.1rem}\
ol.events{list-style:none;padding:0;margin:0}\
ol.events li{border-bottom:1px solid var(--line);padding:.4rem 0;overflow-wrap:anywhere}\
.kind{font-weight:600;text-transform:uppercase;font-size:.8rem;margin-right:.4rem}\
.k-delivered .kind{color:var(--ok)}.k-deferred .kind{color:var(--warn)}.k-failed .kind{color:var(--bad)}\
.banner{background:#c6282822;border:1px solid var(--bad);padding:.5rem;border-radius:.4rem}";

const COLORS: [(&str, &str); 3] = [
    ("delivered", "#2e7d32"),
    ("deferred", "#f2a900"),
    ("failed", "#c62828"),
];

/// The whole page.
pub fn page(s: &Snapshot) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{}\">\
         <title>mailbridge status</title><style>{STYLE}</style></head><body>\n\
         <header><h1>mailbridge status</h1><p class=\"muted\">version {} &middot; {} &middot; refreshes every {} s</p></header>\n",
        s.refresh_secs,
        escape(&s.version),
        clock(s.now),
        s.refresh_secs
    );
    if let Some(e) = &s.spool_error {
        let _ = writeln!(
            h,
            "<p class=\"banner\" id=\"spool-error\">The spool cannot be read: {}</p>",
            escape(e)
        );
    }
    h.push_str("<section id=\"accounts\"><h2>Accounts</h2>\n");
    if s.accounts.is_empty() {
        h.push_str("<p>No accounts configured.</p>\n");
    }
    for a in &s.accounts {
        account(&mut h, a, s.now);
    }
    h.push_str("</section>\n");
    listeners(&mut h, &s.listeners);
    let _ = write!(
        h,
        "<section id=\"chart\"><h2>Last 24 hours</h2>{}<p class=\"legend\">",
        chart_svg(&s.hourly, hour_of(s.now))
    );
    for (name, color) in COLORS {
        let _ = write!(h, "<span><i style=\"background:{color}\"></i>{name}</span>");
    }
    h.push_str("</p></section>\n");
    events(&mut h, &s.events, s.now);
    h.push_str("</body></html>\n");
    h
}

/// (CSS class, label) for an account's state.
pub fn account_state(a: &AccountView) -> (&'static str, &'static str) {
    let error_at = a.last_error.as_ref().map(|(t, _)| *t);
    let ok_at = a.last_delivered.as_ref().map(|(t, _)| *t);
    let unreachable = a.upstream.as_ref().is_some_and(|u| !u.reachable);
    let error_is_latest = error_at.is_some_and(|e| ok_at.is_none_or(|o| e > o));
    if !a.configured {
        ("warn", "not in the config")
    } else if unreachable || (error_is_latest && a.last_error_temporary) {
        // Mail waits: the account (or its server) is what needs fixing.
        ("error", "problem")
    } else if error_is_latest || a.queue.held_total() > 0 || a.queue.failed > 0 {
        ("warn", "needs attention")
    } else if ok_at.is_some() {
        ("ok", "mail is flowing")
    } else {
        ("", "no delivery yet")
    }
}

fn account(h: &mut String, a: &AccountView, now: SystemTime) {
    let (class, label) = account_state(a);
    let name = escape(&a.name);
    let _ = writeln!(
        h,
        "<article class=\"card account {class}\" data-account=\"{name}\"><h3>{name}<span class=\"badge\">{label}</span></h3><dl>"
    );
    h.push_str("<dt>Last delivery</dt><dd class=\"last-delivery\">");
    match &a.last_delivered {
        Some((t, reply)) => {
            let _ = write!(h, "{} <code>{}</code>", when(*t, now), escape(reply));
        }
        None => h.push_str("none since start"),
    }
    h.push_str("</dd>\n");
    if let Some(u) = &a.upstream {
        let same_as_error = a.last_error.as_ref().is_some_and(|(_, e)| *e == u.detail);
        let _ = if u.reachable {
            writeln!(
                h,
                "<dt>Upstream</dt><dd class=\"upstream\">login ok at {}</dd>",
                escape(&short_time(&u.at))
            )
        } else if same_as_error {
            writeln!(
                h,
                "<dt>Upstream</dt><dd class=\"upstream\">unreachable at {} (see last error)</dd>",
                escape(&short_time(&u.at))
            )
        } else {
            writeln!(
                h,
                "<dt>Upstream</dt><dd class=\"upstream\">unreachable at {}: <code>{}</code></dd>",
                escape(&short_time(&u.at)),
                escape(&u.detail)
            )
        };
    }
    if let Some((t, reply)) = &a.last_error {
        let _ = write!(
            h,
            "<dt>Last error</dt><dd class=\"last-error\">{} <code>{}</code>",
            when(*t, now),
            escape(reply)
        );
        hint(h, a.hint, reply);
        h.push_str("</dd>\n");
    } else if let Some(u) = a.upstream.as_ref().filter(|u| !u.reachable) {
        h.push_str("<dt>Last error</dt><dd class=\"last-error\">see upstream");
        hint(h, a.hint, &u.detail);
        h.push_str("</dd>\n");
    }
    let q = &a.queue;
    let _ = write!(
        h,
        "<dt>Queue</dt><dd class=\"counts\"><span data-state=\"queued\">{} queued</span>\
         <span data-state=\"deferred\">{} deferred</span><span data-state=\"held\">{} held</span>\
         <span data-state=\"failed\">{} failed</span>",
        q.queued,
        q.deferred,
        q.held_total(),
        q.failed
    );
    if !q.held.is_empty() {
        h.push_str("<ul class=\"held\">");
        for (reason, n) in &q.held {
            let _ = write!(h, "<li>{n} held: <code>{}</code></li>", escape(reason));
        }
        h.push_str("</ul>");
    }
    h.push_str("</dd>\n");
    let _ = writeln!(
        h,
        "<dt>Oldest</dt><dd class=\"oldest\">{}</dd>",
        q.oldest.map_or_else(|| "nothing waiting".to_string(), age)
    );
    h.push_str("<dt>Daily limit</dt><dd class=\"daily\">");
    match a.daily {
        Some((used, limit)) => {
            let high = limit - limit / 10;
            let _ = write!(
                h,
                "{used} / {limit} recipients in 24 h<meter min=\"0\" max=\"{limit}\" low=\"{}\" high=\"{high}\" optimum=\"0\" value=\"{used}\">{used} / {limit}</meter>",
                limit / 2
            );
        }
        None => h.push_str("no limit set"),
    }
    h.push_str("</dd>\n</dl></article>\n");
}

/// The hint, unless the error text already carries it.
fn hint(h: &mut String, hint: Option<&str>, text: &str) {
    if let Some(hint) = hint.filter(|x| !text.contains(x)) {
        let _ = write!(h, "<div class=\"hint\">{}</div>", escape(hint));
    }
}

fn listeners(h: &mut String, list: &[ListenerView]) {
    h.push_str("<section id=\"listeners\"><h2>Listeners</h2>");
    if list.is_empty() {
        h.push_str("<p>No listeners.</p></section>\n");
        return;
    }
    h.push_str("<table><thead><tr><th>Listener</th><th>Address</th><th>Sessions now</th></tr></thead><tbody>");
    for l in list {
        let _ = write!(
            h,
            "<tr data-listener=\"{}\"><td>{}</td><td>{}</td><td class=\"sessions\">{}</td></tr>",
            escape(&l.name),
            escape(&l.name),
            escape(&l.addr),
            l.sessions
        );
    }
    h.push_str("</tbody></table></section>\n");
}

fn events(h: &mut String, list: &[Event], now: SystemTime) {
    h.push_str("<section id=\"events\"><h2>Recent events</h2>\n");
    if list.is_empty() {
        h.push_str("<p class=\"no-events\">No events since the daemon started.</p></section>\n");
        return;
    }
    h.push_str("<ol class=\"events\">\n");
    for e in list {
        let kind = e.kind.as_str();
        let times = match e.repeats {
            0 | 1 => String::new(),
            n => format!("<span class=\"repeats\">{n} times, last</span> "),
        };
        let _ = write!(
            h,
            "<li class=\"k-{kind}\" data-kind=\"{kind}\"><span class=\"kind\">{kind}</span>{times}{} \
             <code class=\"qid\">{}</code> {} &rarr; <span class=\"rcpts\">{}",
            when(e.at, now),
            escape(&e.queue_id),
            escape(&e.account),
            escape(&e.recipients.join(", "))
        );
        if e.more_recipients > 0 {
            let _ = write!(h, " and {} more", e.more_recipients);
        }
        h.push_str("</span>");
        if !e.reply.is_empty() {
            let _ = write!(
                h,
                "<div><code class=\"reply\">{}</code></div>",
                escape(&e.reply)
            );
        }
        h.push_str("</li>\n");
    }
    h.push_str("</ol></section>\n");
}

/// Grouped bars (delivered, deferred, failed) per hour, oldest at the left;
/// `now_hour` is the hour (since the epoch) of the last bucket.
pub fn chart_svg(hours: &[HourCounts], now_hour: u64) -> String {
    const W: usize = 480;
    const H: usize = 150;
    const TOP: usize = 14;
    const BASE: usize = 126;
    let n = hours.len().max(1);
    let slot = (W - 30) / n;
    let bar = (slot.saturating_sub(2) / 3).max(1);
    let max = hours.iter().map(HourCounts::max).max().unwrap_or(0).max(1);
    let total: u32 = hours
        .iter()
        .map(|c| c.delivered + c.deferred + c.failed)
        .sum();
    let mut s = String::with_capacity(8 * 1024);
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"delivered, deferred and failed per hour over the last {n} hours ({total} in all)\">\
         <line x1=\"28\" y1=\"{BASE}\" x2=\"{W}\" y2=\"{BASE}\" stroke=\"currentColor\" stroke-opacity=\".4\"/>\
         <text x=\"24\" y=\"{}\" font-size=\"12\" text-anchor=\"end\" fill=\"currentColor\">{max}</text>\
         <text x=\"24\" y=\"{BASE}\" font-size=\"12\" text-anchor=\"end\" fill=\"currentColor\">0</text>",
        TOP + 4
    );
    let first = now_hour.saturating_sub(n as u64 - 1);
    for (i, c) in hours.iter().enumerate() {
        let x0 = 30 + i * slot;
        let hour_of_day = (first + i as u64) % 24;
        let _ = write!(
            s,
            "<g class=\"hour\"><title>{hour_of_day:02}:00 UTC: {} delivered, {} deferred, {} failed</title>",
            c.delivered, c.deferred, c.failed
        );
        for (j, (v, (_, color))) in [c.delivered, c.deferred, c.failed]
            .into_iter()
            .zip(COLORS)
            .enumerate()
        {
            if v == 0 {
                continue;
            }
            let height = ((v as usize * (BASE - TOP)) / max as usize).max(1);
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{height}\" fill=\"{color}\"/>",
                x0 + j * bar,
                BASE - height
            );
        }
        s.push_str("</g>");
        if i % 6 == 0 || i + 1 == n {
            let label = if i + 1 == n {
                "now".to_string()
            } else {
                format!("{hour_of_day:02}:00")
            };
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"currentColor\">{label}</text>",
                x0,
                BASE + 14
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// `2026-12-01 10:42:07 UTC (3m 20s ago)`.
fn when(t: SystemTime, now: SystemTime) -> String {
    format!(
        "<time>{}</time> <span class=\"muted\">({} ago)</span>",
        clock(t),
        age(now.duration_since(t).unwrap_or_default())
    )
}

/// An RFC 3339 time (`2026-12-01T10:45:15.658Z`) as [`clock`] shows times.
fn short_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(day), Some(time)) if rfc3339.ends_with('Z') => format!("{day} {time} UTC"),
        _ => rfc3339.to_string(),
    }
}

fn clock(t: SystemTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from(t)
        .format(&format)
        .unwrap_or_else(|_| "?".into())
}

/// A duration in whole seconds, readable (`1h 2m 3s`).
fn age(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::events::{EventKind, HOURS};
    use super::super::QueueCounts;
    use super::*;
    use crate::metrics::UpstreamStatus;

    const HOSTILE: &str = "<script>alert(\"x\")</script> & 'q' \u{1b}[31m\r\n\u{202e}evil";

    fn empty(now: SystemTime) -> Snapshot {
        Snapshot {
            now,
            version: "1.2.3".into(),
            accounts: Vec::new(),
            listeners: Vec::new(),
            events: Vec::new(),
            hourly: vec![HourCounts::default(); HOURS],
            spool_error: None,
            refresh_secs: 10,
        }
    }

    /// No raw markup or control character from `hostile` anywhere in `page`.
    fn assert_inert(page: &str) {
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert(\"x\")"), "{page}");
        assert!(!page.contains("'q'"), "{page}");
        assert!(!page.contains('\u{1b}') && !page.contains('\r') && !page.contains('\u{202e}'));
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39; \\x1b[31m\\x0d\\x0a\\u{202e}evil"), "{page}");
    }

    #[test]
    fn escape_covers_markup_quotes_ampersands_and_controls() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(escape("x\u{7}\u{9b}y"), "x\\x07\\u{9b}y");
        assert_eq!(escape("ünïcode\ttab"), "ünïcode\ttab");
    }

    #[test]
    fn empty_state_renders_a_whole_page() {
        let page = page(&empty(SystemTime::now()));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(page.contains("name=\"viewport\""));
        assert!(page.contains("No accounts configured."));
        assert!(page.contains("No events since the daemon started."));
        assert!(page.contains("<svg") && page.contains("</svg>"));
        assert!(page.trim_end().ends_with("</html>"));
        // No external assets, no script.
        assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
    }

    #[test]
    fn hostile_recipients_replies_and_reasons_are_escaped() {
        let now = SystemTime::now();
        let mut s = empty(now);
        let hostile = HOSTILE.to_string();
        s.accounts.push(AccountView {
            name: hostile.clone(),
            configured: true,
            last_delivered: Some((now, hostile.clone())),
            last_error: Some((now, hostile.clone())),
            last_error_temporary: true,
            hint: Some("check smtp.port"),
            upstream: Some(UpstreamStatus {
                reachable: false,
                at: hostile.clone(),
                detail: hostile.clone(),
            }),
            queue: QueueCounts {
                held: vec![(hostile.clone(), 2)],
                ..Default::default()
            },
            daily: Some((12, 500)),
        });
        s.listeners.push(ListenerView {
            name: "smtp".into(),
            addr: "127.0.0.1:2525".into(),
            sessions: 3,
        });
        s.events.push(Event::new(
            now,
            EventKind::Failed,
            &hostile,
            &hostile,
            &[hostile.clone(), "ok@example.org".into()],
            &hostile,
        ));
        s.events[0].repeats = 4;
        s.spool_error = Some(hostile.clone());
        let page = page(&s);
        assert_inert(&page);
        assert!(page.contains("12 / 500 recipients in 24 h"), "{page}");
        assert!(page.contains("<meter min=\"0\" max=\"500\""));
        assert!(page.contains("<div class=\"hint\">check smtp.port</div>"));
        assert_eq!(
            short_time("2026-12-01T10:45:15.6587Z"),
            "2026-12-01 10:45:15 UTC"
        );
        assert_eq!(short_time("garbage"), "garbage");
        assert!(page.contains("2 held"));
        assert!(page.contains("<td class=\"sessions\">3</td>"));
        assert!(page.contains("data-kind=\"failed\""));
        assert!(
            page.contains("<span class=\"repeats\">4 times, last</span>"),
            "{page}"
        );
        assert!(page.contains("ok@example.org"));
    }

    #[test]
    fn account_state_follows_the_latest_outcome() {
        let now = SystemTime::now();
        let earlier = now - Duration::from_secs(60);
        let mut a = AccountView {
            name: "a".into(),
            configured: true,
            ..Default::default()
        };
        assert_eq!(account_state(&a).1, "no delivery yet");
        a.last_error = Some((earlier, "550 no such user".into()));
        assert_eq!(
            account_state(&a).1,
            "needs attention",
            "a refused recipient is not an account problem"
        );
        a.last_error_temporary = true;
        assert_eq!(account_state(&a).0, "error");
        a.last_delivered = Some((now, "250".into()));
        assert_eq!(account_state(&a).0, "ok");
        a.queue.failed = 1;
        assert_eq!(account_state(&a).0, "warn");
        a.configured = false;
        assert_eq!(account_state(&a).1, "not in the config");
    }

    #[test]
    fn chart_has_one_group_per_hour_scaled_to_the_busiest() {
        let mut hours = vec![HourCounts::default(); HOURS];
        hours[0].failed = 1;
        hours[23] = HourCounts {
            delivered: 10,
            deferred: 5,
            failed: 0,
        };
        let svg = chart_svg(&hours, 48 + 10);
        assert_eq!(svg.matches("<g class=\"hour\">").count(), HOURS);
        assert_eq!(svg.matches("<rect").count(), 3);
        // The busiest bar is full height (112 = 126 - 14), half of it 56.
        assert!(svg.contains("height=\"112\" fill=\"#2e7d32\""), "{svg}");
        assert!(svg.contains("height=\"56\" fill=\"#f2a900\""), "{svg}");
        assert!(
            svg.contains("<title>11:00 UTC: 0 delivered, 0 deferred, 1 failed</title>"),
            "{svg}"
        );
        assert!(svg.contains(">now</text>"));
        assert!(svg.contains("(16 in all)"));
        // Empty: no bars, still a valid axis.
        let svg = chart_svg(&vec![HourCounts::default(); HOURS], 0);
        assert_eq!(svg.matches("<rect").count(), 0);
        assert!(svg.ends_with("</svg>"));
    }
}
