//! Ports, protocols and addresses, and how every part of userspace writes them: a
//! protected port (`PORT/tcp`), a knock (`PORT/udp`, `SIZE/icmp`, `443/tcp:pass`),
//! the kernel's 16-byte address form, which
//! sources are martians (never authorized), how IPv6 bans group addresses by prefix,
//! and the host's ephemeral port range.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use knock_common::{MAX_ICMP_KNOCK_SIZE, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PortProto, SourceKey};

/// A protocol's name as written in configs and shown in events: `tcp`, `udp` or
/// `icmp` (an ICMP knock, either family's echo request).
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "tcp",
    }
}

/// The protocol number of `tcp` or `udp` (a port's protocol).
pub fn parse_proto(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(PROTO_TCP),
        "udp" => Some(PROTO_UDP),
        _ => None,
    }
}

/// A port and protocol, written `PORT/tcp` or `PORT/udp` (`PORT` alone means TCP). As
/// a knock it may also be an ICMP echo request: `proto` PROTO_ICMP, `port` the size
/// of its data, written `SIZE/icmp` ([`KnockSpec`] parses that; this type's `FromStr`
/// takes ports only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Knock {
    pub port: u16,
    pub proto: u8,
}

/// A knock as configs and the client write it: `PORT[/tcp|/udp]` or `SIZE/icmp`, and
/// `:pass` for one that then passes on to whatever serves there (`443/tcp:pass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnockSpec {
    pub knock: Knock,
    pub pass: bool,
}

impl FromStr for KnockSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (knock, pass) = match s.rsplit_once(':') {
            Some((knock, "pass")) => (knock, true),
            Some((_, suffix)) => {
                return Err(format!("{s:?}: unknown suffix {suffix:?}; the only one is :pass"));
            }
            None => (s, false),
        };
        let knock = match knock.strip_suffix("/icmp") {
            Some(size) => match size.parse::<u16>() {
                Ok(size) if size <= MAX_ICMP_KNOCK_SIZE => Knock {
                    port: size,
                    proto: PROTO_ICMP,
                },
                _ => {
                    return Err(format!(
                        "{s:?}: an ICMP knock is SIZE/icmp, the echo's data size (ping -s SIZE) from 0 to \
                         {MAX_ICMP_KNOCK_SIZE}: a larger echo would be fragmented on a 1500-byte link"
                    ));
                }
            },
            None => knock.parse().map_err(|e| format!("{e}, or SIZE/icmp"))?,
        };
        Ok(KnockSpec { knock, pass })
    }
}

impl fmt::Display for KnockSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.knock, if self.pass { ":pass" } else { "" })
    }
}

impl FromStr for Knock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = match s.split_once('/') {
            Some((port, name)) => match parse_proto(name) {
                Some(proto) => (port, proto),
                None => return Err(format!("unknown protocol {name:?} in {s:?}: use tcp or udp")),
            },
            None => (s, PROTO_TCP),
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Knock { port, proto }),
            _ => Err(format!(
                "{s:?} is not PORT/tcp or PORT/udp with PORT from 1 to 65535"
            )),
        }
    }
}

impl fmt::Display for Knock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, proto_name(self.proto))
    }
}

impl From<Knock> for PortProto {
    fn from(k: Knock) -> Self {
        PortProto::new(k.port, k.proto)
    }
}

/// The kernel's 16-byte form of an address: IPv4 as `::ffff:a.b.c.d`.
pub fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a kernel key stands for, IPv4 shown as IPv4.
pub fn unmapped(addr: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(addr).to_canonical()
}

pub fn source_key(addr: IpAddr, seq: u8) -> SourceKey {
    SourceKey {
        addr: mapped(addr),
        seq,
        _pad: [0; 3],
    }
}

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
        let key = |a: &str, p| Ipv6Addr::from(ban_key(mapped(a.parse().unwrap()), p)).to_string();
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 64), "fd00:1:2:3::");
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 128), "fd00:1:2:3:4:5:6:7");
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 48), "fd00:1:2::");
        assert_eq!(key("fd00:1:2:3:4:5:6:7", 1), "8000::");
        assert_eq!(key("198.18.0.9", 64), "::ffff:198.18.0.9");
    }

    #[test]
    fn knocks_are_ports_icmp_sizes_and_may_pass() {
        let spec = |s: &str| s.parse::<KnockSpec>().map(|k| k.to_string());
        assert_eq!(spec("443/tcp:pass").as_deref(), Ok("443/tcp:pass"));
        assert_eq!(spec("9000").as_deref(), Ok("9000/tcp"));
        assert_eq!(spec("53/udp").as_deref(), Ok("53/udp"));
        assert_eq!(spec("0/icmp").as_deref(), Ok("0/icmp"));
        assert_eq!(spec("1452/icmp:pass").as_deref(), Ok("1452/icmp:pass"));
        for bad in [
            "1453/icmp",
            "-1/icmp",
            "/icmp",
            "64/icmp:drop",
            "443/tcp:",
            "0/tcp:pass",
            "64/icmpv6",
        ] {
            assert!(spec(bad).is_err(), "{bad} is refused");
        }
        assert!("64/icmp".parse::<Knock>().is_err(), "a port is TCP or UDP");
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
