//! Address facts every part of userspace agrees on: which sources are martians (never
//! authorized), how IPv6 bans group addresses by prefix, and the host's ephemeral
//! port range.

use std::net::{IpAddr, Ipv6Addr};

/// Loopback, unspecified, multicast and broadcast addresses, and IPv4 0.0.0.0/8: no
/// peer sends from there, so none is ever authorized (the kernel ignores their knocks,
/// `allow` refuses them and no command sees one as `%IP%`). IPv4-mapped IPv6
/// addresses are judged as the IPv4 address they stand for.
pub fn is_martian(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(a) => a.octets()[0] == 0 || a.is_loopback() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    }
}

/// The kernel's ban key for a 16-byte source: IPv4-mapped addresses whole, IPv6
/// addresses cut to their first `prefix` bits (as the kernel's `ban_key` does), the
/// rest zero.
pub fn ban_key(addr: [u8; 16], prefix: u8) -> [u8; 16] {
    let v6 = Ipv6Addr::from(addr);
    if v6.to_ipv4_mapped().is_some() {
        return addr;
    }
    // 0 (unset) counts as 128, as in the kernel.
    let bits = if prefix == 0 {
        128
    } else {
        u32::from(prefix.min(128))
    };
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    (u128::from(v6) & mask).to_be_bytes()
}

/// Where the kernel picks local ports for outgoing connections, from
/// /proc/sys/net/ipv4/ip_local_port_range (both families use it); Linux's default
/// when it cannot be read.
pub fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or((32768, 60999))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (words.next()?.ok()?, words.next()?.ok()?);
    (low <= high).then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn martians_are_loopback_unspecified_multicast_and_broadcast() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "224.0.0.1",
            "239.255.255.255",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "ff0e::5",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_martian(a.parse().unwrap()), "{a} is a martian");
        }
        for a in [
            "1.0.0.0",
            "198.18.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "223.255.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "fd00::1",
            "::2",
            "fe80::1",
            "2001:db8::1",
            "::ffff:198.18.0.1",
        ] {
            assert!(!is_martian(a.parse().unwrap()), "{a} is not a martian");
        }
    }

    #[test]
    fn ban_keys_cut_ipv6_to_the_prefix_and_keep_ipv4_whole() {
        let key =
            |a: &str, p| Ipv6Addr::from(ban_key(crate::maps::mapped(a.parse().unwrap()), p)).to_string();
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 64), "fd00:1:2:3::");
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 128), "fd00:1:2:3:4:5:6:7");
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 48), "fd00:1:2::");
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 1), "8000::");
        assert_eq!(key("198.18.0.9", 64), "::ffff:198.18.0.9");
    }

    #[test]
    fn the_port_range_is_two_ports_in_order() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 1024"), Some((1024, 1024)));
        assert_eq!(parse_port_range("5000 4000"), None);
        assert_eq!(parse_port_range("x"), None);
        let (low, high) = local_port_range();
        assert!(low <= high);
    }
}
