//! `xknock spa`: seals one request with the client's key and sends it in one UDP
//! datagram from an ordinary socket (no privileges). Nothing ever comes back.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    config::is_plain_name,
    net::Knock,
    spa::{
        keys::ClientKey,
        packet::{self, Access, Request, unix_ms},
    },
};

/// The request for `access` (empty: everything the key may open), timestamped `now`.
/// `open_for` is rounded up to whole seconds; `None` leaves the choice to the server.
pub fn request(
    access: Vec<Access>,
    open_for: Option<Duration>,
    addr: Option<std::net::IpAddr>,
    now: SystemTime,
) -> Result<Request> {
    let open_for_s = match open_for {
        None => 0,
        Some(d) if d.is_zero() => bail!("--for must be longer than zero"),
        Some(d) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            u32::try_from(secs).context("--for is too long")?
        }
    };
    Ok(Request {
        timestamp_ms: unix_ms(now),
        open_for_s,
        addr,
        access,
    })
}

/// Seals `request` with `key` and a fresh nonce (16 random bytes and their check
/// value): the datagram to send.
pub fn seal(key: &ClientKey, request: &Request) -> Result<Vec<u8>> {
    let mut random = [0; 16];
    getrandom::fill(&mut random).context("the OS random number generator failed")?;
    let nonce = packet::checked_nonce(key.key_id, &key.key, random);
    packet::seal(key.key_id, &key.key, nonce, request)
}

/// Sends `datagram` to `target` from an ephemeral UDP socket.
pub fn send(target: SocketAddr, datagram: &[u8]) -> Result<()> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any).context("cannot open a UDP socket")?;
    let sent = sock
        .send_to(datagram, target)
        .with_context(|| format!("cannot send the SPA request to {target}"))?;
    if sent != datagram.len() {
        bail!(
            "sent only {sent} of the request's {} bytes to {target}",
            datagram.len()
        );
    }
    Ok(())
}

/// `--open`: `PORT`, `PORT/tcp` or `PORT/udp` is a protected port; anything else names
/// a sequence.
pub fn parse_access(s: &str) -> Result<Access, String> {
    if s.contains('/') || s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<Knock>().map(Access::Port);
    }
    if !is_plain_name(s) {
        return Err(format!(
            "{s:?} is neither a sequence name nor PORT, PORT/tcp or PORT/udp"
        ));
    }
    Ok(Access::Sequence(s.to_string()))
}

#[cfg(test)]
mod tests {
    use knock_common::{PROTO_TCP, PROTO_UDP};

    use super::*;

    #[test]
    fn open_takes_ports_and_sequence_names() {
        let port = |port, proto| Ok(Access::Port(Knock { port, proto }));
        assert_eq!(parse_access("22"), port(22, PROTO_TCP));
        assert_eq!(parse_access("53/udp"), port(53, PROTO_UDP));
        assert_eq!(parse_access("ssh"), Ok(Access::Sequence("ssh".into())));
        assert_eq!(parse_access("db-2"), Ok(Access::Sequence("db-2".into())));
        assert!(parse_access("22/sctp").is_err());
        assert!(parse_access("0").is_err());
        assert!(parse_access("two words").is_err());
        assert!(parse_access("").is_err());
    }

    #[test]
    fn for_rounds_up_to_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let r = request(vec![], Some(Duration::from_millis(1500)), None, t).expect("valid");
        assert_eq!((r.timestamp_ms, r.open_for_s), (1_790_000_000_123, 2));
        assert_eq!(request(vec![], None, None, t).expect("valid").open_for_s, 0);
        assert!(request(vec![], Some(Duration::ZERO), None, t).is_err());
        assert!(request(vec![], Some(Duration::from_secs(1 << 33)), None, t).is_err());
    }
}
