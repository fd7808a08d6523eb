//! Which `Host` header the metrics listener answers (no I/O). A browser on
//! this machine can be pointed at a page whose DNS name is then rebound to
//! 127.0.0.1; its requests still name that page's host, so only IP literals,
//! `localhost` and the names in `metrics.allowed_hosts` are served.

use std::net::{Ipv4Addr, Ipv6Addr};

/// What to do with a request, judged by its `Host` header(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVerdict {
    /// Serve it.
    Allowed,
    /// HTTP/1.1 without `Host`, or several `Host` headers: `400 Bad Request`.
    Bad,
    /// A host we do not answer for: `421 Misdirected Request`.
    Misdirected,
}

/// Judges the `Host` header values of one request. HTTP/1.0 may omit the
/// header (no browser does); HTTP/1.1 must send exactly one (RFC 9112 3.2).
/// `allowed` holds lower-case names without a trailing dot.
pub fn judge(hosts: &[&str], http11: bool, allowed: &[String]) -> HostVerdict {
    match hosts {
        [] if http11 => HostVerdict::Bad,
        [] => HostVerdict::Allowed,
        [one] if host_allowed(one, allowed) => HostVerdict::Allowed,
        [_] => HostVerdict::Misdirected,
        _ => HostVerdict::Bad,
    }
}

/// `host[:port]` where host is an IPv4 literal, `[IPv6]`, `localhost` or an
/// allowed name (names compare case-insensitively, one trailing dot ignored).
fn host_allowed(value: &str, allowed: &[String]) -> bool {
    let value = value.trim_matches([' ', '\t']);
    if let Some(rest) = value.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port = after.strip_prefix(':');
        return ip.parse::<Ipv6Addr>().is_ok() && (after.is_empty() || port.is_some_and(port_ok));
    }
    let (name, port) = match value.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (value, None),
    };
    if !port.is_none_or(port_ok) {
        return false;
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    !name.is_empty() && (name == "localhost" || allowed.contains(&name))
}

/// A decimal port number (digits only: no sign, no spaces).
fn port_ok(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str) -> HostVerdict {
        judge(&[h], true, &["mailbridge.lan".to_string()])
    }

    #[test]
    fn ip_literals_and_localhost_with_or_without_port_are_served() {
        for h in [
            "127.0.0.1",
            "127.0.0.1:9925",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9925",
            "[fe80::1]:1",
            "localhost",
            "LocalHost:9925",
            "localhost.",
            "localhost.:9925",
            " 127.0.0.1 ",
        ] {
            assert_eq!(one(h), HostVerdict::Allowed, "{h:?}");
        }
    }

    #[test]
    fn configured_names_are_served_case_insensitively() {
        assert_eq!(one("mailbridge.lan"), HostVerdict::Allowed);
        assert_eq!(one("MailBridge.LAN:9925"), HostVerdict::Allowed);
        assert_eq!(one("mailbridge.lan."), HostVerdict::Allowed);
        assert_eq!(
            judge(&["mailbridge.lan"], true, &[]),
            HostVerdict::Misdirected
        );
    }

    #[test]
    fn other_names_and_malformed_values_are_misdirected() {
        for h in [
            "evil.example",
            "evil.example:9925",
            "localhost.evil.example",
            "evil.localhost",
            "127.0.0.1.evil.example",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "127.0.0.1:80:80",
            "127.0.0.1:+80",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[evil]",
            "user@127.0.0.1",
            "",
            ".",
            "localhost:9925/x",
        ] {
            assert_eq!(one(h), HostVerdict::Misdirected, "{h:?}");
        }
    }

    #[test]
    fn missing_or_repeated_host_is_bad_on_http11() {
        assert_eq!(judge(&[], true, &[]), HostVerdict::Bad);
        assert_eq!(judge(&[], false, &[]), HostVerdict::Allowed);
        assert_eq!(
            judge(&["localhost", "localhost"], true, &[]),
            HostVerdict::Bad
        );
        assert_eq!(
            judge(&["localhost", "evil.example"], false, &[]),
            HostVerdict::Bad
        );
    }
}
