//! `xknock spa`: seals one request with the client's key and sends it in one UDP
//! datagram from an ordinary socket (no privileges). Nothing ever comes back.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::{
    keys::ClientKey,
    packet::{self, Access, Request},
    verify::unix_ms,
};
use crate::config::{Knock, is_plain_name};

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
    fn a_request_sent_over_loopback_is_granted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = ClientKey {
            server: None,
            port: 0,
            key_id: "0123456789abcdef".parse().expect("valid id"),
            key: crate::spa::Key::random().expect("rng"),
        };
        let text = format!(
            "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000\", \"8000\"]\nprotect = [\"22/tcp\"]\n\
             [spa]\nreplay_file = \"{}\"\n{}",
            dir.path().join("replay").display(),
            key.server_stanza("alice", &["ssh".into()])
        );
        let config = crate::config::Config::parse(std::path::Path::new("test.toml"), &text).expect("valid");
        let mut verifier = crate::spa::Verifier::new(&config)
            .expect("loads")
            .expect("[spa] given");

        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let now = SystemTime::now();
        let r = request(
            vec![Access::Sequence("ssh".into())],
            Some(Duration::from_secs(60)),
            None,
            now,
        )
        .expect("valid");
        send(
            server.local_addr().expect("bound"),
            &seal(&key, &r).expect("seals"),
        )
        .expect("sent");
        let mut buf = [0; 2048];
        let (n, from) = server.recv_from(&mut buf).expect("received");
        let grant = verifier.verify(from.ip(), &buf[..n], now).expect("granted");
        assert_eq!(
            (grant.client.as_str(), grant.addr, grant.sequences, grant.open_for),
            ("alice", from.ip(), vec![0], Duration::from_secs(60))
        );
        let twice = seal(&key, &r).expect("seals");
        assert_ne!(twice[9..33], buf[9..33], "every request has a nonce of its own");
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
