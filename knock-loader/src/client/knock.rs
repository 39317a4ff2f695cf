//! `xknock knock`: sends a knock sequence. Unprivileged: a TCP knock is the SYN of a
//! non-blocking connect that is abandoned, a UDP knock one empty datagram.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use knock_common::PROTO_UDP;
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
