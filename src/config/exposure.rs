//! Who can reach a listener: the judgement of the address space an
//! `allowed_networks` list covers (does it include any globally routable
//! address?) and the start-up refusal built on it, shared by every listener
//! that would hand a stranger the upstream account without a local login
//! (SMTP without `require_auth`: an open relay; IMAP with `passthrough`: an
//! open login proxy; any later one).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use ipnet::IpNet;

use super::ConfigError;

/// Address space that is never reachable from the Internet as the source of
/// a TCP connection: loopback, private (RFC 1918, ULA), link-local, shared
/// (CGNAT), "this network", documentation, benchmarking, multicast and
/// reserved ranges (IANA special-purpose registries, entries marked "not
/// globally reachable" as a whole). Blocks that mix reachable and
/// unreachable addresses (192.0.0.0/24, 2001::/23) are left out on purpose:
/// when in doubt, an address counts as global.
const NOT_GLOBAL: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "100::/64",
    "2001:2::/48",
    "2001:db8::/32",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as the IPv4
/// address they carry: a client of a dual-stack socket appears that way.
const V4_MAPPED: &str = "::ffff:0:0/96";

fn not_global() -> &'static [IpNet] {
    static NETS: OnceLock<Vec<IpNet>> = OnceLock::new();
    NETS.get_or_init(|| NOT_GLOBAL.iter().filter_map(|s| s.parse().ok()).collect())
}

fn v4_mapped() -> Option<ipnet::Ipv6Net> {
    V4_MAPPED.parse().ok()
}

/// Does `net` include at least one globally routable address?
pub fn covers_global(net: &IpNet) -> bool {
    let net = net.trunc();
    if let (IpNet::V6(v6), Some(mapped)) = (net, v4_mapped()) {
        if mapped.contains(&v6) {
            let v4 = v6.network().to_ipv4_mapped().map(|a| {
                ipnet::Ipv4Net::new(a, v6.prefix_len() - mapped.prefix_len()).map(IpNet::V4)
            });
            // Unreachable for a net inside ::ffff:0:0/96; count it as global if it happens.
            return match v4 {
                Some(Ok(v4)) => covers_global(&v4),
                _ => true,
            };
        }
    }
    let special = not_global();
    if special.iter().any(|s| s.contains(&net)) {
        return false;
    }
    // CIDR blocks either nest or are disjoint: with no special block inside
    // `net`, all of it is global; otherwise look at each half.
    if !special.iter().any(|s| net.contains(s)) {
        return true;
    }
    match net.subnets(net.prefix_len() + 1) {
        Ok(mut halves) => halves.any(|h| covers_global(&h)),
        // A single address that is itself a special block was caught above.
        Err(_) => true,
    }
}

/// The first network in `nets` that includes a globally routable address.
pub fn first_global(nets: &[IpNet]) -> Option<&IpNet> {
    nets.iter().find(|n| covers_global(n))
}

/// What a listener would be if strangers could reach it, and how to stop that.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unguarded {
    pub risk: &'static str,
    pub remedy: &'static str,
}

/// SMTP without `require_auth`: anyone allowed in sends mail as the account.
pub(super) const OPEN_RELAY: Unguarded = Unguarded {
    risk: "an open relay",
    remedy: "set require_auth = true",
};

/// A login that matches no local user goes upstream unchanged (IMAP
/// `passthrough`, and later listeners with the same switch).
pub(super) const OPEN_LOGIN_PROXY: Unguarded = Unguarded {
    risk:
        "an open login proxy (passthrough lets anyone try passwords against the account's server)",
    remedy: "set passthrough = false",
};

/// The listen address and the network that would expose an unguarded
/// listener, if any: a non-loopback bind whose allowlist covers global space.
pub fn exposure<'a>(
    listen: &[SocketAddr],
    allowed: &'a [IpNet],
) -> Option<(SocketAddr, &'a IpNet)> {
    let bind = listen.iter().find(|a| !a.ip().is_loopback())?;
    Some((*bind, first_global(allowed)?))
}

/// Never an open relay or proxy: a listener reachable from other hosts with
/// no local login in the way (`unguarded` is `Some`) may only admit
/// networks that are not globally routable.
pub(super) fn refuse_open_access(
    path: &Path,
    section: &str,
    listen: &[SocketAddr],
    allowed: &[IpNet],
    unguarded: Option<Unguarded>,
) -> Result<(), ConfigError> {
    let (Some(u), Some((bind, net))) = (unguarded, exposure(listen, allowed)) else {
        return Ok(());
    };
    Err(ConfigError::new(
        path,
        format!("{section}.allowed_networks"),
        format!(
            "listen address {bind} is reachable from other hosts and {net} includes globally routable \
             addresses: that would make {risk}; narrow {section}.allowed_networks to local networks \
             (e.g. [\"192.168.1.0/24\"]) or {remedy} in [{section}]",
            risk = u.risk,
            remedy = u.remedy,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_the_address_space_each_network_covers() {
        let table: &[(&str, bool)] = &[
            ("0.0.0.0/0", true),
            ("0.0.0.0/1", true),
            ("128.0.0.0/1", true),
            ("::/0", true),
            ("::/1", true),
            ("8000::/1", true),
            ("2000::/3", true),
            ("8.8.8.8/32", true),
            ("203.0.114.7/32", true),
            ("2a00:1450::1/128", true),
            ("11.0.0.0/8", true),
            ("10.0.0.0/7", true), // 11/8 is public
            ("172.0.0.0/8", true),
            ("100.0.0.0/8", true),
            ("192.0.0.0/24", true), // mixed block: counted as global
            ("::ffff:0:0/96", true),
            ("::ffff:8.8.8.8/128", true),
            ("64:ff9b::/96", true), // NAT64 carries public IPv4
            ("10.0.0.0/8", false),
            ("10.1.2.3/8", false), // host bits set
            ("172.16.0.0/12", false),
            ("192.168.0.0/16", false),
            ("192.168.1.0/24", false),
            ("100.64.0.0/10", false),
            ("127.0.0.0/8", false),
            ("127.0.0.1/32", false),
            ("169.254.0.0/16", false),
            ("224.0.0.0/3", false), // multicast + reserved, adjacent blocks
            ("::1/128", false),
            ("fc00::/7", false),
            ("fd12:3456::/32", false),
            ("fe80::/10", false),
            ("2001:db8::/32", false),
            ("::ffff:10.0.0.0/104", false),
            ("::ffff:192.168.1.0/120", false),
            ("::ffff:127.0.0.1/128", false),
        ];
        for (net, global) in table {
            let n: IpNet = net.parse().unwrap();
            assert_eq!(covers_global(&n), *global, "{net}");
        }
    }

    #[test]
    fn the_special_table_parses() {
        assert_eq!(not_global().len(), NOT_GLOBAL.len());
        assert!(v4_mapped().is_some());
    }

    #[test]
    fn exposure_needs_a_non_loopback_bind_and_a_global_network() {
        let nets = |l: &[&str]| l.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        let any: SocketAddr = "0.0.0.0:2525".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let pair = nets(&["192.168.1.0/24", "0.0.0.0/1", "128.0.0.0/1"]);
        let (bind, net) = exposure(&[lo, any], &pair).unwrap();
        assert_eq!((bind, net.to_string().as_str()), (any, "0.0.0.0/1"));
        assert!(exposure(&[lo], &pair).is_none());
        assert!(exposure(&[any], &nets(&["10.0.0.0/8", "fd00::/8"])).is_none());
        let e = refuse_open_access(
            Path::new("r.toml"),
            "imap",
            &[any],
            &pair,
            Some(OPEN_LOGIN_PROXY),
        )
        .unwrap_err();
        assert_eq!(e.key, "imap.allowed_networks");
        assert!(e.message.contains("passthrough = false"), "{e}");
        assert!(refuse_open_access(Path::new("r.toml"), "imap", &[any], &pair, None).is_ok());
    }
}
