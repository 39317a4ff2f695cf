//! Verifying fwknop's requests, in fwknopd's order where it matters and stricter
//! where fwknopd is weak: the HMAC first (each client's key in turn, quietly), then
//! decryption, the inner digest and the fields; the timestamp within `[spa] window`;
//! the address (`0.0.0.0` is the packet's source, IPv4 or IPv6; another only with
//! `behind_nat`); the ports, each of which must be protected by a sequence the
//! client may open; the replay cache last, keyed on the HMAC tag.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::Result;

use super::{
    Grant, Nonce, Rejection,
    verify::{Verifier, address},
};
use crate::{
    config::FwknopClient,
    spa::{
        KeyId,
        fwknop::{self, Keys, Message, Refusal},
        packet::{NONCE_LEN, unix_ms},
    },
};

/// The replay cache's key id for fwknop's requests: their tags are unique to them.
const REPLAY_KEY_ID: KeyId = KeyId(*b"fwknop\0\0");

/// One `[[spa.fwknop]]` client, as the verifier holds it.
pub(crate) struct Client {
    name: String,
    keys: Keys,
    /// Indices of the sequences it may open, ascending.
    sequences: Vec<u8>,
    max_open: Duration,
    behind_nat: bool,
}

impl Client {
    pub(super) fn new(c: &FwknopClient, index: impl Fn(&str) -> Result<u8>) -> Result<Client> {
        let mut sequences = c.sequences.iter().map(|s| index(s)).collect::<Result<Vec<_>>>()?;
        sequences.sort_unstable();
        sequences.dedup();
        Ok(Client {
            name: c.name.clone(),
            keys: c.keys.clone(),
            sequences,
            max_open: c.max_open,
            behind_nat: c.behind_nat,
        })
    }
}

impl Verifier {
    /// Verifies a datagram shaped like fwknop's.
    pub(super) fn verify_fwknop(
        &mut self,
        source: IpAddr,
        payload: &[u8],
        now: SystemTime,
    ) -> Result<Grant, Rejection> {
        let mut malformed = None;
        let found =
            self.fwknop
                .iter()
                .enumerate()
                .find_map(|(i, c)| match fwknop::authenticate(payload, &c.keys) {
                    Ok(authentic) => Some((i, authentic)),
                    Err(Refusal::Malformed(why)) => {
                        malformed.get_or_insert(why);
                        None
                    }
                    Err(_) => None,
                });
        let Some((i, authentic)) = found else {
            return Err(match malformed {
                // Malformed for every digest length: not a request at all.
                Some(why) if self.fwknop.len() == 1 => Rejection::FwknopMalformed { why },
                _ => Rejection::BadHmac,
            });
        };
        let client = &self.fwknop[i];
        let message = fwknop::decrypt(&authentic.blob, &client.keys.key)
            .and_then(|plain| fwknop::parse(&plain))
            .map_err(|r| match r {
                Refusal::Unsupported(what) => Rejection::Unsupported { what },
                // Only the HMAC check makes the other two.
                Refusal::Malformed(why) | Refusal::BadPlaintext(why) => Rejection::BadPlaintext { why },
                Refusal::BadHmac => Rejection::BadHmac,
            })?;
        let now_ms = unix_ms(now);
        let ts = message.timestamp.saturating_mul(1000);
        self.in_window(ts, now_ms)?;
        let requested = (!message.addr.is_unspecified()).then_some(message.addr);
        let addr = address(source, requested, client.behind_nat)?;
        let (sequences, open_for) = self.fwknop_access(&self.fwknop[i], &message)?;
        let name = self.fwknop[i].name.clone();
        let mut nonce = [0; NONCE_LEN];
        let n = authentic.tag.len().min(NONCE_LEN);
        nonce[..n].copy_from_slice(&authentic.tag[..n]);
        self.record(REPLAY_KEY_ID, nonce, ts, now_ms)?;
        Ok(Grant {
            client: name,
            addr,
            sequences,
            open_for,
            nonce: Nonce {
                key_id: REPLAY_KEY_ID.0,
                nonce,
            },
        })
    }

    /// The client's sequences that protect the ports asked for (every port must be
    /// one), and how long: the client's timeout, or the shortest `open_for` of those
    /// sequences, at most the client's `max_open`.
    fn fwknop_access(&self, client: &Client, message: &Message) -> Result<(Vec<u8>, Duration), Rejection> {
        let mut granted = Vec::new();
        for port in &message.access {
            let before = granted.len();
            granted.extend(
                client
                    .sequences
                    .iter()
                    .filter(|i| self.sequence(**i).is_some_and(|s| s.protect.contains(port))),
            );
            if granted.len() == before {
                return Err(Rejection::NotAllowed {
                    what: format!("no sequence {} may open protects {port}", client.name),
                });
            }
        }
        granted.sort_unstable();
        granted.dedup();
        let open_for = match message.timeout {
            Some(t) => Duration::from_secs(u64::from(t)),
            None => granted
                .iter()
                .filter_map(|i| self.sequence(*i).map(|s| s.open_for))
                .min()
                .unwrap_or(client.max_open),
        };
        Ok((granted, open_for.min(client.max_open)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use knock_common::PROTO_TCP;

    use super::*;
    use crate::{config::Config, net::Knock};

    const PACKET: &str = "9ERSijh/iFZUNB8EaUGAdKaDMQePTCIHDhfGSBaP1ABcmo/LzOsTHeK076Jfj81YSuGFHJiQRT7qvhqpnqjLSTPn3coulLhRy3JquXTq6Ez7UnLELJO+Ft2crwfd6qQsntn9wtqW8RQRyPK52mjcSjzR8avrM0HAMKwrJ6jKCDA0FkEdgIrmoYZsKyZtqYQzPIm3iiOGfavFLGvxCxC4JeMRelDf68Qlo";
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const HMAC_KEY: &str =
        "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+fw==";
    /// The test vector's timestamp.
    const SENT: u64 = 1_796_152_510;

    fn verifier(dir: &Path, extra: &str) -> Verifier {
        let text = format!(
            "[[sequence]]\nname = \"ssh\"\nknocks = []\nprotect = [\"22/tcp\"]\nopen_for = \"30s\"\n\
             [[sequence]]\nname = \"web\"\nknocks = [\"7000\", \"8000\"]\nprotect = [\"443/tcp\"]\n\
             [spa]\nwindow = \"120s\"\nreplay_file = \"{}\"\n\
             [[spa.fwknop]]\nname = \"bob\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\n\
             sequences = [\"ssh\"]\nmax_open = \"1h\"\n{extra}",
            dir.join("replay").display()
        );
        let config = Config::parse(Path::new("/etc/xknock/test.toml"), &text).expect("valid config");
        Verifier::new_at(&config, at(SENT))
            .expect("loads")
            .expect("[spa]")
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn keys() -> Keys {
        Keys {
            key: fwknop::decode_key(KEY).expect("key"),
            hmac_key: fwknop::decode_key(HMAC_KEY).expect("key"),
            digest: fwknop::HmacDigest::Sha256,
        }
    }

    fn message(addr: &str, port: u16, timeout: Option<u32>) -> Message {
        Message {
            user: "bob".into(),
            timestamp: SENT,
            addr: addr.parse().expect("addr"),
            access: vec![Knock {
                port,
                proto: PROTO_TCP,
            }],
            timeout,
        }
    }

    #[test]
    fn the_real_packet_opens_once_for_its_source() {
        let dir = tempfile::tempdir().expect("dir");
        let mut v = verifier(dir.path(), "");
        let source = "198.18.0.1".parse().expect("addr");
        let grant = v
            .verify(source, PACKET.as_bytes(), at(SENT + 1))
            .expect("granted");
        assert_eq!(
            (grant.client.as_str(), grant.addr, grant.sequences, grant.open_for),
            ("bob", source, vec![0], Duration::from_secs(30))
        );
        assert_eq!(
            v.verify(source, PACKET.as_bytes(), at(SENT + 2)),
            Err(Rejection::Replayed)
        );
        // And after a restart: the replay cache is on disk.
        let mut again = verifier(dir.path(), "");
        assert_eq!(
            again.verify(source, PACKET.as_bytes(), at(SENT + 3)),
            Err(Rejection::Replayed)
        );
    }

    #[test]
    fn another_source_an_old_request_or_another_key_opens_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let mut v = verifier(dir.path(), "");
        let other = "198.18.0.9".parse().expect("addr");
        assert_eq!(
            v.verify(other, PACKET.as_bytes(), at(SENT)),
            Err(Rejection::AddressMismatch {
                requested: "198.18.0.1".parse().expect("addr")
            })
        );
        let source = "198.18.0.1".parse().expect("addr");
        let e = v
            .verify(source, PACKET.as_bytes(), at(SENT + 300))
            .expect_err("stale");
        assert_eq!(e.reason(), "stale");
        assert!(e.to_string().contains("5m behind"), "{e}");
        let mut wrong = keys();
        wrong.hmac_key[3] ^= 0xff;
        let packet = fwknop::seal(&wrong, &message("0.0.0.0", 22, None), 1, [1; 8]);
        assert_eq!(v.verify(source, &packet, at(SENT)), Err(Rejection::BadHmac));
    }

    #[test]
    fn zero_means_the_source_in_either_family_and_ports_map_to_sequences() {
        let dir = tempfile::tempdir().expect("dir");
        let mut v = verifier(dir.path(), "");
        let v6: IpAddr = "fd00::2".parse().expect("addr");
        let packet = fwknop::seal(&keys(), &message("0.0.0.0", 22, Some(7200)), 2, [2; 8]);
        let grant = v.verify(v6, &packet, at(SENT)).expect("granted");
        assert_eq!(grant.addr, v6);
        assert_eq!(grant.open_for, Duration::from_secs(3600), "clamped to max_open");
        // 443 is protected, but by a sequence bob may not open.
        let packet = fwknop::seal(&keys(), &message("0.0.0.0", 443, None), 3, [3; 8]);
        assert_eq!(
            v.verify(v6, &packet, at(SENT)).map_err(|e| e.reason()),
            Err("not_allowed")
        );
    }

    #[test]
    fn behind_nat_opens_the_address_named() {
        let dir = tempfile::tempdir().expect("dir");
        let mut v = verifier(dir.path(), "behind_nat = true\n");
        let packet = fwknop::seal(&keys(), &message("198.18.0.77", 22, None), 4, [4; 8]);
        let grant = v
            .verify("198.18.0.1".parse().expect("addr"), &packet, at(SENT))
            .expect("granted");
        assert_eq!(grant.addr, "198.18.0.77".parse::<IpAddr>().expect("addr"));
    }
}
