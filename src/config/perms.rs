//! Whether a relay.toml that holds a password is open to other users. World
//! bits always are; group bits are not when the group is a service's own
//! (the Debian package's root:mailbridge 0640): no members listed in
//! /etc/group and the primary group of at most one account in /etc/passwd.

/// True when `mode` lets someone besides the owner (and a private group) in.
pub(crate) fn open_to_others(mode: u32, group_is_private: bool) -> bool {
    mode & 0o007 != 0 || (mode & 0o070 != 0 && !group_is_private)
}

/// True when only one account can hold group `gid`, judged from the texts
/// of /etc/group and /etc/passwd. A group not found there (NSS, LDAP) is
/// not private: better a needless warning than a missed one.
pub(crate) fn group_is_private(gid: u32, group: &str, passwd: &str) -> bool {
    let gid_field = |line: &str, i: usize| line.split(':').nth(i)?.trim().parse::<u32>().ok();
    let Some(entry) = group.lines().find(|l| gid_field(l, 2) == Some(gid)) else {
        return false;
    };
    let members = entry.split(':').nth(3).unwrap_or("").trim();
    members.is_empty()
        && passwd
            .lines()
            .filter(|l| gid_field(l, 3) == Some(gid))
            .count()
            <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "root:x:0:\nusers:x:100:ann,bob\nmailbridge:x:107:\nstaff:x:50:\n";
    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        mailbridge:x:105:107::/var/lib/mailbridge:/usr/sbin/nologin\n\
        ann:x:1000:50::/home/ann:/bin/bash\nbob:x:1001:50::/home/bob:/bin/bash\n";

    #[test]
    fn a_service_group_is_private_a_shared_one_is_not() {
        assert!(group_is_private(107, GROUP, PASSWD));
        assert!(group_is_private(0, GROUP, PASSWD));
        assert!(!group_is_private(100, GROUP, PASSWD), "members listed");
        assert!(
            !group_is_private(50, GROUP, PASSWD),
            "primary group of two accounts"
        );
        assert!(!group_is_private(4242, GROUP, PASSWD), "unknown group");
        assert!(!group_is_private(107, "", ""), "unreadable files");
    }

    #[test]
    fn world_bits_always_count_group_bits_only_for_a_shared_group() {
        assert!(!open_to_others(0o600, false));
        assert!(!open_to_others(0o640, true));
        assert!(open_to_others(0o640, false));
        assert!(open_to_others(0o644, true));
        assert!(open_to_others(0o604, true));
    }
}
