//! `xknock knock`: sends a knock sequence. Unprivileged: a TCP knock is the SYN of a
//! non-blocking connect that is abandoned, a UDP knock one empty datagram, an ICMP
//! knock one echo request from a ping socket (a raw socket where those are not
//! allowed, which needs CAP_NET_RAW).

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use knock_common::{PROTO_ICMP, PROTO_UDP};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::net::Knock;

/// Which address family to knock over when HOST resolves to both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// Resolves `host` to one address of the wanted family.
pub fn resolve(host: &str, family: Family) -> Result<IpAddr> {
    let addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .map(|a| a.ip())
        .collect();
    let wanted = |a: &&IpAddr| match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    };
    match addrs.iter().find(wanted) {
        Some(a) => Ok(*a),
        None => bail!(
            "{host} has no {} address",
            if family == Family::V6 { "IPv6" } else { "IPv4" }
        ),
    }
}

/// Sends one knock. A TCP knock returns its socket, to be kept until the SYN surely
/// left and then dropped, which sends nothing more.
pub fn knock_once(addr: IpAddr, knock: Knock) -> Result<Option<Socket>> {
    if knock.proto == PROTO_ICMP {
        echo_request(addr, knock.port)
            .with_context(|| format!("cannot send the ICMP knock {knock} to {addr}"))?;
        return Ok(None);
    }
    let target = SockAddr::from(SocketAddr::new(addr, knock.port));
    let domain = Domain::for_address(SocketAddr::new(addr, 0));
    if knock.proto == PROTO_UDP {
        let sock =
            Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).context("cannot open a UDP socket")?;
        sock.send_to(&[], &target)
            .with_context(|| format!("cannot send the UDP knock {knock} to {addr}"))?;
        return Ok(None);
    }
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).context("cannot open a TCP socket")?;
    sock.set_nonblocking(true)?;
    match sock.connect(&target) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot send the TCP knock {knock} to {addr}")),
    }
    Ok(Some(sock))
}

/// Sends an echo request with `size` bytes of data, as `ping -s size` does: from a
/// ping socket (the kernel fills in the identifier and checksum), or where
/// net.ipv4.ping_group_range leaves this user out, from a raw socket.
fn echo_request(addr: IpAddr, size: u16) -> Result<()> {
    let (domain, protocol, echo_type) = match addr {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128),
    };
    let (sock, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(sock) => (sock, false),
        Err(ping) => match Socket::new(domain, Type::RAW, Some(protocol)) {
            Ok(sock) => (sock, true),
            Err(_) => {
                return Err(ping).context(
                    "no ICMP socket: this user's group is outside net.ipv4.ping_group_range and \
                     a raw socket needs CAP_NET_RAW (or knock with `ping -s SIZE HOST`)",
                );
            }
        },
    };
    let mut packet = vec![0u8; 8 + usize::from(size)];
    packet[0] = echo_type;
    // The identifier: the kernel sets a ping socket's; a raw one sends this.
    packet[4..6].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    packet[7] = 1;
    // A ping socket and a raw ICMPv6 one have the kernel compute the checksum.
    if raw && addr.is_ipv4() {
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    sock.send_to(&packet, &SockAddr::from(SocketAddr::new(addr, 0)))?;
    Ok(())
}

/// The Internet checksum (RFC 1071) of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Knocks `knocks` on `addr` in order, `delay` apart, each sent `copies` times. The
/// server ignores a repeat of the knock it just accepted, so copies only make a lost
/// packet harmless. Losses come in bursts (a full receive ring), so the copies are
/// spread over up to half the delay, at most COPY_GAP apart, and all of a knock's
/// copies leave before the next knock.
pub fn knock(addr: IpAddr, knocks: &[Knock], delay: Duration, copies: u32) -> Result<()> {
    let copies = copies.max(1);
    let gap = (delay / (2 * copies)).min(COPY_GAP);
    for (i, k) in knocks.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(delay.saturating_sub(gap * (copies - 1)));
        }
        let mut held = Vec::new();
        for c in 0..copies {
            if c > 0 {
                std::thread::sleep(gap);
            }
            held.extend(knock_once(addr, *k)?);
        }
        if !held.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// The longest pause between two copies of a knock.
const COPY_GAP: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::internet_checksum;

    #[test]
    fn the_checksum_of_a_packet_with_its_checksum_is_zero() {
        // An echo request header with 3 odd bytes of data.
        let mut packet = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xab, 0xcd, 0xef];
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(internet_checksum(&packet), 0);
        // RFC 1071's example: 0x0001 0xf203 0xf4f5 0xf6f7 sums to 0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
