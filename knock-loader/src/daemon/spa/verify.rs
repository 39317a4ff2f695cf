//! From (source address, payload, now) to a grant or a rejection, checking in the
//! order of docs/spa.md, "Verification": format, key id, tag, time, address, access,
//! replay. Nothing about unauthenticated data is told apart beyond "malformed",
//! "unknown key" and "bad tag".

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use chacha20poly1305::XChaCha20Poly1305;

use super::{
    Grant, Nonce, Rejection,
    replay::{RecordError, ReplayCache},
};
use crate::{
    clock::{human, millis},
    config::Config,
    net::Knock,
    spa::{
        keys::KeyId,
        packet::{self, Access, Request, unix_ms},
    },
};

/// Checks SPA requests against the config's `[spa]` clients, remembering nonces in
/// the replay cache (and its file).
pub struct Verifier {
    clients: HashMap<KeyId, Client>,
    /// `[[spa.fwknop]]`'s clients, tried in turn by their HMAC key.
    pub(super) fwknop: Vec<super::fwknop::Client>,
    /// Every configured sequence, by index.
    sequences: Vec<SequenceAccess>,
    window: Duration,
    replay: ReplayCache,
}

struct Client {
    name: String,
    cipher: XChaCha20Poly1305,
    /// Indices of the sequences it may open, ascending.
    sequences: Vec<u8>,
    max_open: Duration,
    behind_nat: bool,
}

pub(super) struct SequenceAccess {
    name: String,
    pub(super) protect: Vec<Knock>,
    pub(super) open_for: Duration,
}

impl Verifier {
    /// The verifier for `config.spa` (`None` without a `[spa]` section). Loads the
    /// replay cache; a corrupt cache file is an error, a missing one an empty cache.
    pub fn new(config: &Config) -> Result<Option<Verifier>> {
        Self::new_at(config, SystemTime::now())
    }

    /// As [`Verifier::new`], with the clock at `now` (cached nonces older than the
    /// window by then are dropped).
    pub fn new_at(config: &Config, now: SystemTime) -> Result<Option<Verifier>> {
        Ok(Self::renewed_at(config, None, now)?.map(|(v, _)| v))
    }

    /// The verifier for a reloaded `config`, taking over the replay cache of the one
    /// in force (`previous`): its nonces are all kept, for the longest window either
    /// config has (a nonce keeps the longest window in force since it was seen), and
    /// a new `replay_file` is written with them at once. The second value is that
    /// write's result: on an error the verifier still works, and each accepted
    /// request tries the file again (refused while it cannot be written).
    pub fn renewed(config: &Config, previous: Option<&Verifier>) -> Result<Option<(Verifier, Result<()>)>> {
        Self::renewed_at(config, previous, SystemTime::now())
    }

    /// As [`Verifier::renewed`], with the clock at `now`.
    pub fn renewed_at(
        config: &Config,
        previous: Option<&Verifier>,
        now: SystemTime,
    ) -> Result<Option<(Verifier, Result<()>)>> {
        let Some(spa) = &config.spa else { return Ok(None) };
        let index = |name: &str| -> Result<u8> {
            let i = config
                .sequences
                .iter()
                .position(|s| s.name == name)
                .with_context(|| format!("[spa]: no sequence named {name:?}"))?;
            u8::try_from(i).context("too many sequences")
        };
        let mut clients = HashMap::new();
        for c in &spa.clients {
            let mut sequences = c.sequences.iter().map(|s| index(s)).collect::<Result<Vec<_>>>()?;
            sequences.sort_unstable();
            sequences.dedup();
            let client = Client {
                name: c.name.clone(),
                cipher: c.key.cipher(),
                sequences,
                max_open: c.max_open,
                behind_nat: c.behind_nat,
            };
            clients.insert(c.key_id, client);
        }
        let fwknop = spa
            .fwknop
            .iter()
            .map(|c| super::fwknop::Client::new(c, index))
            .collect::<Result<Vec<_>>>()?;
        let sequences = config
            .sequences
            .iter()
            .map(|s| SequenceAccess {
                name: s.name.clone(),
                protect: s.protect.clone(),
                open_for: s.open_for,
            })
            .collect();
        let (replay, saved) = match previous {
            Some(p) => p.replay.renewed(&spa.replay_file, spa.window, unix_ms(now))?,
            None => (
                ReplayCache::load(&spa.replay_file, spa.window, unix_ms(now))?,
                Ok(()),
            ),
        };
        let verifier = Verifier {
            clients,
            fwknop,
            sequences,
            window: spa.window,
            replay,
        };
        Ok(Some((verifier, saved)))
    }

    /// Verifies one request's UDP `payload`, sent from `source`, received at `now`.
    /// The nonce is recorded (and the cache file rewritten) last, just before the
    /// grant: a copy of a request that is refused anyway (one raced from another
    /// address by someone who saw it) does not use up the nonce of the real one.
    pub fn verify(&mut self, source: IpAddr, payload: &[u8], now: SystemTime) -> Result<Grant, Rejection> {
        if !self.fwknop.is_empty() && crate::spa::fwknop::looks_like(payload) {
            return self.verify_fwknop(source, payload, now);
        }
        let (header, header_bytes, sealed) = packet::split(payload).ok_or(Rejection::Malformed)?;
        let client = self.clients.get(&header.key_id).ok_or(Rejection::UnknownKey)?;
        let plaintext =
            packet::open(&client.cipher, &header, header_bytes, sealed).ok_or(Rejection::BadTag)?;
        let request = Request::decode(&plaintext).ok_or(Rejection::Malformed)?;

        let now_ms = unix_ms(now);
        let ts = request.timestamp_ms;
        self.in_window(ts, now_ms)?;
        let addr = address(source, request.addr, client.behind_nat)?;
        let (sequences, open_for) = self.access(client, &request)?;
        let name = client.name.clone();
        self.record(header.key_id, header.nonce, ts, now_ms)?;
        Ok(Grant {
            client: name,
            addr,
            sequences,
            open_for,
            nonce: Nonce {
                key_id: header.key_id.0,
                nonce: header.nonce,
            },
        })
    }

    /// Refuses a timestamp (Unix ms) more than the window off `now_ms`, saying by how
    /// much.
    pub(super) fn in_window(&self, ts: u64, now_ms: u64) -> Result<(), Rejection> {
        let window = self.window;
        if now_ms.saturating_sub(ts) > millis(window) {
            let skew = Duration::from_millis(now_ms - ts);
            return Err(Rejection::Stale { skew, window });
        }
        if ts.saturating_sub(now_ms) > millis(window) {
            let skew = Duration::from_millis(ts - now_ms);
            return Err(Rejection::Future { skew, window });
        }
        Ok(())
    }

    /// Records a request in the replay cache (and its file): the last check.
    pub(super) fn record(
        &mut self,
        key_id: KeyId,
        nonce: [u8; packet::NONCE_LEN],
        ts: u64,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        match self.replay.record(key_id, nonce, ts, now_ms) {
            Ok(()) => {}
            Err(RecordError::Replayed) => return Err(Rejection::Replayed),
            Err(RecordError::Full) => return Err(Rejection::ReplayCacheFull),
            Err(RecordError::Forgotten { floor_ms }) => {
                return Err(Rejection::ReplayForgotten {
                    by: Duration::from_millis(floor_ms.saturating_sub(ts)),
                });
            }
            Err(RecordError::Unsaved(e)) => {
                return Err(Rejection::ReplayCacheUnsaved {
                    error: format!("{e:#}"),
                });
            }
        }
        Ok(())
    }

    /// Requests remembered in the replay cache.
    pub fn replay_entries(&self) -> usize {
        self.replay.len()
    }

    /// The sequences a request opens and for how long. No entries: everything the
    /// client may open. `open_for_s` 0: the shortest `open_for` among them, at most
    /// the client's `max_open`.
    fn access(&self, client: &Client, request: &Request) -> Result<(Vec<u8>, Duration), Rejection> {
        let not_allowed = |what: String| Rejection::NotAllowed { what };
        let mut granted = Vec::new();
        if request.access.is_empty() {
            granted.clone_from(&client.sequences);
        }
        for entry in &request.access {
            match entry {
                Access::Sequence(name) => {
                    let i = client
                        .sequences
                        .iter()
                        .find(|i| self.sequence(**i).is_some_and(|s| &s.name == name))
                        .ok_or_else(|| {
                            not_allowed(format!("{} may not open sequence {name:?}", client.name))
                        })?;
                    granted.push(*i);
                }
                Access::Port(port) => {
                    let before = granted.len();
                    granted.extend(
                        client
                            .sequences
                            .iter()
                            .filter(|i| self.sequence(**i).is_some_and(|s| s.protect.contains(port))),
                    );
                    if granted.len() == before {
                        return Err(not_allowed(format!(
                            "no sequence {} may open protects {port}",
                            client.name
                        )));
                    }
                }
            }
        }
        granted.sort_unstable();
        granted.dedup();

        let open_for = if request.open_for_s == 0 {
            granted
                .iter()
                .filter_map(|i| self.sequence(*i).map(|s| s.open_for))
                .min()
                .unwrap_or(client.max_open)
                .min(client.max_open)
        } else {
            let asked = Duration::from_secs(u64::from(request.open_for_s));
            if asked > client.max_open {
                return Err(not_allowed(format!(
                    "opening for {} (the max_open of {} is {})",
                    human(asked),
                    client.name,
                    human(client.max_open)
                )));
            }
            asked
        };
        Ok((granted, open_for))
    }

    pub(super) fn sequence(&self, i: u8) -> Option<&SequenceAccess> {
        self.sequences.get(usize::from(i))
    }
}

/// The address to authorize: the packet's source, or with `behind_nat` the one the
/// request names. IPv4 and IPv4-mapped IPv6 are the same address.
pub(super) fn address(
    source: IpAddr,
    requested: Option<IpAddr>,
    behind_nat: bool,
) -> Result<IpAddr, Rejection> {
    let source = source.to_canonical();
    let addr = match requested.map(|a| a.to_canonical()) {
        None => source,
        Some(r) if r == source || behind_nat => r,
        Some(r) => return Err(Rejection::AddressMismatch { requested: r }),
    };
    let broadcast = matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    if addr.is_unspecified() || addr.is_multicast() || broadcast {
        return Err(Rejection::NotAllowed {
            what: format!("{addr} is not a host address"),
        });
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        path::Path,
        time::UNIX_EPOCH,
    };

    use chacha20poly1305::aead::{Aead as _, Payload};
    use knock_common::{PROTO_TCP, PROTO_UDP, SPA_MAX_PAYLOAD};

    use super::*;
    use crate::spa::{
        Key,
        packet::{HEADER_LEN, NONCE_LEN, VERSION, seal},
    };

    const ALICE_ID: KeyId = KeyId([0xa1; 8]);
    const BOB_ID: KeyId = KeyId([0xb0; 8]);
    const ALICE_KEY: [u8; 32] = [0xaa; 32];
    const BOB_KEY: [u8; 32] = [0xbb; 32];
    const WINDOW: Duration = Duration::from_secs(30);
    const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

    /// Three sequences: ssh (22/tcp, 30s), db (5432/tcp and 22/tcp, 5m), web (443/tcp,
    /// 1m). alice may open ssh and db (max_open 1h); bob web, from behind NAT (10m).
    fn config(dir: &Path) -> Config {
        let text = format!(
            "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000\", \"8000\"]\nprotect = [\"22/tcp\"]\n\
             [[sequence]]\nname = \"db\"\nknocks = [\"7100\", \"8100\"]\nprotect = [\"5432/tcp\", \"22/tcp\"]\nopen_for = \"5m\"\n\
             [[sequence]]\nname = \"web\"\nknocks = [\"7200\", \"8200\"]\nprotect = [\"443/tcp\"]\nopen_for = \"1m\"\n\
             [spa]\nwindow = \"30s\"\nreplay_file = \"{}\"\n\
             [[spa.client]]\nname = \"alice\"\nkey_id = \"{ALICE_ID}\"\nkey = \"{}\"\nsequences = [\"ssh\", \"db\"]\n\
             [[spa.client]]\nname = \"bob\"\nkey_id = \"{BOB_ID}\"\nkey = \"{}\"\nsequences = [\"web\"]\nmax_open = \"10m\"\nbehind_nat = true\n",
            dir.join("spa-replay").display(),
            Key::from_bytes(ALICE_KEY).to_hex(),
            Key::from_bytes(BOB_KEY).to_hex(),
        );
        Config::parse(Path::new("/etc/xknock/test.toml"), &text).expect("valid config")
    }

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    const T0: u64 = 1_790_000_000_000;

    struct Rig {
        dir: tempfile::TempDir,
        config: Config,
        verifier: Verifier,
        nonce: u8,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = config(dir.path());
            let verifier = Verifier::new_at(&config, t(T0))
                .expect("loads")
                .expect("[spa] given");
            Rig {
                dir,
                config,
                verifier,
                nonce: 0,
            }
        }

        /// A request from `id`/`key` with a nonce of its own.
        fn packet(&mut self, id: KeyId, key: [u8; 32], request: &Request) -> Vec<u8> {
            self.nonce += 1;
            seal(id, &Key::from_bytes(key), [self.nonce; NONCE_LEN], request).expect("seals")
        }

        fn alice(&mut self, request: &Request) -> Vec<u8> {
            self.packet(ALICE_ID, ALICE_KEY, request)
        }

        fn verify(&mut self, source: IpAddr, packet: &[u8], now_ms: u64) -> Result<Grant, Rejection> {
            // The nonce is the request's own: what the tests compare is the rest.
            self.verifier.verify(source, packet, t(now_ms)).map(|g| Grant {
                nonce: Nonce::default(),
                ..g
            })
        }
    }

    fn request(access: Vec<Access>) -> Request {
        Request {
            timestamp_ms: T0,
            open_for_s: 0,
            addr: None,
            access,
        }
    }

    fn port(port: u16, proto: u8) -> Access {
        Access::Port(Knock { port, proto })
    }

    fn grant(client: &str, addr: IpAddr, sequences: Vec<u8>, open_for: u64) -> Result<Grant, Rejection> {
        Ok(Grant {
            client: client.into(),
            addr,
            sequences,
            open_for: Duration::from_secs(open_for),
            nonce: Nonce::default(),
        })
    }

    fn not_allowed(r: Result<Grant, Rejection>) -> String {
        match r {
            Err(Rejection::NotAllowed { what }) => what,
            other => panic!("expected NotAllowed, got {other:?}"),
        }
    }

    #[test]
    fn no_spa_section_no_verifier() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = config(dir.path());
        c.spa = None;
        assert!(Verifier::new(&c).expect("nothing to load").is_none());
    }

    #[test]
    fn a_valid_request_is_granted() {
        let mut rig = Rig::new();
        let all = rig.alice(&request(vec![]));
        // Everything alice may open, for the shortest open_for among it (ssh's 30s).
        assert_eq!(
            rig.verify(SOURCE, &all, T0 + 500),
            grant("alice", SOURCE, vec![0, 1], 30)
        );
        let ssh = rig.alice(&request(vec![Access::Sequence("ssh".into())]));
        assert_eq!(rig.verify(SOURCE, &ssh, T0), grant("alice", SOURCE, vec![0], 30));
        let by_port = rig.alice(&Request {
            open_for_s: 600,
            ..request(vec![port(22, PROTO_TCP)])
        });
        assert_eq!(
            rig.verify(SOURCE, &by_port, T0),
            grant("alice", SOURCE, vec![0, 1], 600)
        );
        let db = rig.alice(&request(vec![
            port(5432, PROTO_TCP),
            Access::Sequence("db".into()),
        ]));
        assert_eq!(rig.verify(SOURCE, &db, T0), grant("alice", SOURCE, vec![1], 300));
        assert_eq!(rig.verifier.replay_entries(), 4);
    }

    #[test]
    fn the_address_is_the_source_and_mapped_ipv4_is_ipv4() {
        let mut rig = Rig::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped());
        let p = rig.alice(&Request {
            addr: Some(SOURCE),
            ..request(vec![])
        });
        assert_eq!(rig.verify(mapped, &p, T0), grant("alice", SOURCE, vec![0, 1], 30));
        let p = rig.alice(&Request {
            addr: Some(mapped),
            ..request(vec![])
        });
        assert_eq!(rig.verify(SOURCE, &p, T0), grant("alice", SOURCE, vec![0, 1], 30));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let p = rig.alice(&request(vec![]));
        assert_eq!(rig.verify(v6, &p, T0), grant("alice", v6, vec![0, 1], 30));
    }

    #[test]
    fn another_address_needs_behind_nat() {
        let mut rig = Rig::new();
        let p = rig.alice(&Request {
            addr: Some(OTHER),
            ..request(vec![])
        });
        assert_eq!(
            rig.verify(SOURCE, &p, T0),
            Err(Rejection::AddressMismatch { requested: OTHER })
        );
        let p = rig.packet(
            BOB_ID,
            BOB_KEY,
            &Request {
                addr: Some(OTHER),
                ..request(vec![])
            },
        );
        assert_eq!(rig.verify(SOURCE, &p, T0), grant("bob", OTHER, vec![2], 60));
        let p = rig.packet(BOB_ID, BOB_KEY, &request(vec![]));
        assert_eq!(
            rig.verify(SOURCE, &p, T0),
            grant("bob", SOURCE, vec![2], 60),
            "flag 0: the source"
        );
        let p = rig.packet(
            BOB_ID,
            BOB_KEY,
            &Request {
                addr: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                ..request(vec![])
            },
        );
        assert!(not_allowed(rig.verify(SOURCE, &p, T0)).contains("0.0.0.0"));
    }

    #[test]
    fn a_copy_refused_for_its_address_does_not_use_up_the_nonce() {
        let mut rig = Rig::new();
        let p = rig.alice(&Request {
            addr: Some(SOURCE),
            ..request(vec![])
        });
        assert_eq!(
            rig.verify(OTHER, &p, T0),
            Err(Rejection::AddressMismatch { requested: SOURCE })
        );
        assert_eq!(rig.verifier.replay_entries(), 0);
        assert_eq!(rig.verify(SOURCE, &p, T0), grant("alice", SOURCE, vec![0, 1], 30));
        assert_eq!(rig.verify(SOURCE, &p, T0), Err(Rejection::Replayed));
    }

    #[test]
    fn tampering_anywhere_is_caught() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![Access::Sequence("ssh".into())]));
        for i in 0..p.len() {
            let mut bad = p.clone();
            bad[i] ^= 0x01;
            let want = match i {
                0 => Rejection::Malformed,
                1..=8 => Rejection::UnknownKey,
                _ => Rejection::BadTag,
            };
            assert_eq!(rig.verify(SOURCE, &bad, T0), Err(want), "byte {i} flipped");
        }
        assert_eq!(
            rig.verify(SOURCE, &p[..p.len() - 1], T0),
            Err(Rejection::BadTag),
            "cut short"
        );
        assert_eq!(
            rig.verify(SOURCE, &[p.as_slice(), &[0]].concat(), T0),
            Err(Rejection::BadTag),
            "a byte added"
        );
        assert_eq!(
            rig.verifier.replay_entries(),
            0,
            "nothing unauthenticated is recorded"
        );
        assert!(rig.verify(SOURCE, &p, T0).is_ok(), "the original still passes");
    }

    #[test]
    fn wrong_key_and_unknown_key_id() {
        let mut rig = Rig::new();
        let wrong = rig.packet(ALICE_ID, BOB_KEY, &request(vec![]));
        assert_eq!(rig.verify(SOURCE, &wrong, T0), Err(Rejection::BadTag));
        let unknown = rig.packet(KeyId([0x11; 8]), ALICE_KEY, &request(vec![]));
        assert_eq!(rig.verify(SOURCE, &unknown, T0), Err(Rejection::UnknownKey));
    }

    #[test]
    fn malformed_packets() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![]));
        let mut v2 = p.clone();
        v2[0] = 2;
        assert_eq!(
            rig.verify(SOURCE, &v2, T0),
            Err(Rejection::Malformed),
            "version 2"
        );
        assert_eq!(
            rig.verify(SOURCE, &p[..HEADER_LEN + 29], T0),
            Err(Rejection::Malformed),
            "short"
        );
        let long = [p.as_slice(), &[0; SPA_MAX_PAYLOAD]].concat();
        assert_eq!(
            rig.verify(SOURCE, &long[..=SPA_MAX_PAYLOAD], T0),
            Err(Rejection::Malformed),
            "513 bytes"
        );
        assert_eq!(rig.verify(SOURCE, &[], T0), Err(Rejection::Malformed), "empty");
        // Authentic, but trailing bytes after the entries.
        let mut plaintext = request(vec![]).encode().expect("encodes");
        plaintext.push(0);
        let sealed = raw_seal(ALICE_KEY, ALICE_ID, [0x77; NONCE_LEN], &plaintext);
        assert_eq!(rig.verify(SOURCE, &sealed, T0), Err(Rejection::Malformed));
    }

    #[test]
    fn stale_and_future_requests_say_how_far_off_the_clock_is() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![]));
        let stale = rig.verify(SOURCE, &p, T0 + 42_000);
        assert_eq!(
            stale,
            Err(Rejection::Stale {
                skew: Duration::from_secs(42),
                window: WINDOW
            })
        );
        let text = stale.err().map(|r| r.to_string()).unwrap_or_default();
        assert!(
            text.contains("42s behind") && text.contains("window 30s"),
            "{text}"
        );
        let future = rig.verify(SOURCE, &p, T0 - 31_500);
        assert_eq!(
            future,
            Err(Rejection::Future {
                skew: Duration::from_millis(31_500),
                window: WINDOW
            })
        );
        assert_eq!(
            rig.verifier.replay_entries(),
            0,
            "untimely requests are not recorded"
        );
        assert!(
            rig.verify(SOURCE, &p, T0 + 30_000).is_ok(),
            "exactly the window behind"
        );
        let q = rig.alice(&request(vec![]));
        assert!(
            rig.verify(SOURCE, &q, T0 - 30_000).is_ok(),
            "exactly the window ahead"
        );
    }

    #[test]
    fn replays_are_refused_also_after_a_restart() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![]));
        assert!(rig.verify(SOURCE, &p, T0).is_ok());
        assert_eq!(rig.verify(SOURCE, &p, T0 + 1), Err(Rejection::Replayed));
        assert_eq!(
            rig.verify(OTHER, &p, T0 + 1),
            Err(Rejection::Replayed),
            "from elsewhere too"
        );
        // A restart of run: a new verifier from the same replay file.
        let mut restarted = Verifier::new_at(&rig.config, t(T0 + 2_000))
            .expect("loads")
            .expect("given");
        assert_eq!(restarted.replay_entries(), 1);
        assert_eq!(
            restarted.verify(SOURCE, &p, t(T0 + 2_000)),
            Err(Rejection::Replayed)
        );
        // The same nonce under another key id is another request.
        let b = seal(
            BOB_ID,
            &Key::from_bytes(BOB_KEY),
            [1; NONCE_LEN],
            &request(vec![]),
        )
        .expect("seals");
        assert!(restarted.verify(SOURCE, &b, t(T0 + 2_000)).is_ok());
    }

    #[test]
    fn old_nonces_leave_the_cache_and_their_replays_are_stale() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![]));
        assert!(rig.verify(SOURCE, &p, T0).is_ok());
        let later = T0 + 31_000;
        assert!(matches!(
            rig.verify(SOURCE, &p, later),
            Err(Rejection::Stale { .. })
        ));
        let q = rig.alice(&Request {
            timestamp_ms: later,
            ..request(vec![])
        });
        assert!(rig.verify(SOURCE, &q, later).is_ok());
        assert_eq!(rig.verifier.replay_entries(), 1, "the first nonce was dropped");
        let restarted = Verifier::new_at(&rig.config, t(later + 30_001))
            .expect("loads")
            .expect("given");
        assert_eq!(
            restarted.replay_entries(),
            0,
            "dropped at load once out of the window"
        );
    }

    #[test]
    fn a_reload_keeps_the_nonces_with_a_new_replay_file_and_a_longer_window() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![]));
        assert!(rig.verify(SOURCE, &p, T0).is_ok());
        let mut c = rig.config.clone();
        let moved = rig.dir.path().join("elsewhere/spa-replay");
        if let Some(spa) = c.spa.as_mut() {
            spa.replay_file = moved.clone();
            spa.window = Duration::from_secs(600);
        }
        let (mut reloaded, saved) = Verifier::renewed_at(&c, Some(&rig.verifier), t(T0 + 1_000))
            .expect("loads")
            .expect("given");
        saved.expect("the new file is written");
        assert!(moved.exists(), "carried over to the new file");
        assert_eq!(
            reloaded.verify(SOURCE, &p, t(T0 + 1_000)),
            Err(Rejection::Replayed)
        );
        // Under the longer window the request is not stale a minute on: still a replay.
        assert_eq!(
            reloaded.verify(SOURCE, &p, t(T0 + 60_000)),
            Err(Rejection::Replayed)
        );
        // And a restart reading the new file knows it too.
        let mut restarted = Verifier::new_at(&c, t(T0 + 60_000))
            .expect("loads")
            .expect("given");
        assert_eq!(
            restarted.verify(SOURCE, &p, t(T0 + 60_000)),
            Err(Rejection::Replayed)
        );
    }

    #[test]
    fn after_the_clock_steps_back_a_forgotten_request_is_refused() {
        let mut rig = Rig::new();
        let p = rig.alice(&request(vec![]));
        assert!(rig.verify(SOURCE, &p, T0).is_ok());
        // A minute later another request drops the first nonce.
        let later = T0 + 60_000;
        let q = rig.alice(&Request {
            timestamp_ms: later,
            ..request(vec![])
        });
        assert!(rig.verify(SOURCE, &q, later).is_ok());
        assert_eq!(rig.verifier.replay_entries(), 1);
        // The clock steps back to T0: the first request is timely again.
        let r = rig.verify(SOURCE, &p, T0 + 1);
        assert_eq!(
            r.as_ref().err().map(Rejection::reason),
            Some("replay_forgotten"),
            "{r:?}"
        );
    }

    #[test]
    fn what_the_client_may_not_open() {
        let mut rig = Rig::new();
        let web = rig.alice(&request(vec![Access::Sequence("web".into())]));
        assert!(not_allowed(rig.verify(SOURCE, &web, T0)).contains("alice may not open sequence \"web\""));
        let nope = rig.alice(&request(vec![Access::Sequence("nope".into())]));
        assert!(not_allowed(rig.verify(SOURCE, &nope, T0)).contains("\"nope\""));
        let https = rig.alice(&request(vec![port(443, PROTO_TCP)]));
        assert!(not_allowed(rig.verify(SOURCE, &https, T0)).contains("protects 443/tcp"));
        let udp22 = rig.alice(&request(vec![port(22, PROTO_UDP)]));
        assert!(not_allowed(rig.verify(SOURCE, &udp22, T0)).contains("22/udp"));
        let mixed = rig.alice(&request(vec![
            Access::Sequence("ssh".into()),
            Access::Sequence("web".into()),
        ]));
        assert!(
            matches!(rig.verify(SOURCE, &mixed, T0), Err(Rejection::NotAllowed { .. })),
            "all or nothing"
        );
        let long = rig.alice(&Request {
            open_for_s: 3601,
            ..request(vec![])
        });
        let what = not_allowed(rig.verify(SOURCE, &long, T0));
        assert!(what.contains("max_open of alice is 1h"), "{what}");
        let max = rig.alice(&Request {
            open_for_s: 3600,
            ..request(vec![])
        });
        assert_eq!(
            rig.verify(SOURCE, &max, T0),
            grant("alice", SOURCE, vec![0, 1], 3600)
        );
    }

    #[test]
    fn open_for_zero_is_capped_by_max_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = config(dir.path());
        if let Some(spa) = c.spa.as_mut() {
            spa.clients[1].max_open = Duration::from_secs(20);
        }
        let mut v = Verifier::new_at(&c, t(T0)).expect("loads").expect("given");
        let p = seal(
            BOB_ID,
            &Key::from_bytes(BOB_KEY),
            [1; NONCE_LEN],
            &request(vec![]),
        )
        .expect("seals");
        let granted = v.verify(SOURCE, &p, t(T0)).expect("granted");
        assert_eq!(
            granted.nonce,
            Nonce {
                key_id: BOB_ID.0,
                nonce: [1; NONCE_LEN]
            },
            "the nonce the fleet claims"
        );
        let granted = Grant {
            nonce: Nonce::default(),
            ..granted
        };
        assert_eq!(Ok(granted), grant("bob", SOURCE, vec![2], 20));
    }

    #[test]
    fn an_unsaved_replay_cache_refuses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = config(dir.path());
        let parent = dir.path().join("sub");
        if let Some(spa) = c.spa.as_mut() {
            spa.replay_file = parent.join("spa-replay");
        }
        let mut v = Verifier::new_at(&c, t(T0))
            .expect("missing file: empty cache")
            .expect("given");
        // The cache's directory is now a file: it can be neither created nor written.
        std::fs::write(&parent, "").expect("written");
        let p = seal(
            ALICE_ID,
            &Key::from_bytes(ALICE_KEY),
            [1; NONCE_LEN],
            &request(vec![]),
        )
        .expect("seals");
        let r = v.verify(SOURCE, &p, t(T0));
        assert!(
            matches!(&r, Err(Rejection::ReplayCacheUnsaved { error }) if error.contains("sub/spa-replay")),
            "{r:?}"
        );
        assert_eq!(r.err().map(|e| e.reason()), Some("replay_cache_unsaved"));
    }

    #[test]
    fn a_corrupt_replay_file_fails_verifier_new() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = config(dir.path());
        std::fs::write(dir.path().join("spa-replay"), "not json").expect("written");
        let err = format!("{:#}", Verifier::new(&c).err().expect("refused"));
        assert!(
            err.contains(&dir.path().join("spa-replay").display().to_string()),
            "{err}"
        );
    }

    /// Seals arbitrary plaintext bytes, valid or not.
    fn raw_seal(key: [u8; 32], id: KeyId, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
        let mut packet = vec![VERSION];
        packet.extend_from_slice(&id.0);
        packet.extend_from_slice(&nonce);
        let sealed = Key::from_bytes(key)
            .cipher()
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &packet,
                },
            )
            .expect("encrypts");
        packet.extend_from_slice(&sealed);
        packet
    }

    /// xorshift64*: reproducible noise without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        /// Fewer than `max` random bytes.
        fn junk(&mut self, max: usize) -> Vec<u8> {
            let len = self.below(max);
            self.bytes(len)
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rig = Rig::new();
        let mut noise = Noise(0x5eed_1234_abcd_0001);
        let valid = rig.alice(&request(vec![
            Access::Sequence("ssh".into()),
            port(22, PROTO_TCP),
        ]));
        let plaintext = request(vec![Access::Sequence("db".into())])
            .encode()
            .expect("encodes");
        for round in 0..20_000u32 {
            // Pure noise, noise behind a known key id, and authentic noise or mutilated
            // plaintexts, so that every parser sees junk.
            let packet = match round % 4 {
                0 => noise.junk(SPA_MAX_PAYLOAD + 64),
                1 => {
                    let mut p = noise.junk(SPA_MAX_PAYLOAD);
                    if p.len() >= 9 {
                        p[0] = VERSION;
                        p[1..9].copy_from_slice(&ALICE_ID.0);
                    }
                    p
                }
                2 => {
                    let mut nonce = [0; NONCE_LEN];
                    nonce.copy_from_slice(&noise.bytes(NONCE_LEN));
                    let len = noise.below(SPA_MAX_PAYLOAD - HEADER_LEN - 16);
                    raw_seal(ALICE_KEY, ALICE_ID, nonce, &noise.bytes(len))
                }
                _ => {
                    let mut mutated = plaintext.clone();
                    let cut = noise.below(mutated.len() + 1);
                    mutated.truncate(cut);
                    if !mutated.is_empty() {
                        let i = noise.below(mutated.len());
                        mutated[i] = noise.next() as u8;
                    }
                    mutated.extend(noise.junk(4));
                    let mut nonce = [0; NONCE_LEN];
                    nonce.copy_from_slice(&noise.bytes(NONCE_LEN));
                    raw_seal(ALICE_KEY, ALICE_ID, nonce, &mutated)
                }
            };
            let _ = rig.verify(SOURCE, &packet, T0);
            let _ = Request::decode(&packet);
            let cut = noise.below(valid.len());
            assert!(
                rig.verify(SOURCE, &valid[..cut], T0).is_err(),
                "a truncated packet at {cut}"
            );
        }
    }

    /// Not a test: how fast the verifier refuses what a spoofer could hand it (a
    /// request-shaped datagram under a client's key id, a bad tag), and refuses a
    /// replay, for docs/spa.md (`cargo test --release -p knock-loader verifier_rate --
    /// --ignored --nocapture`). No assertions on time.
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn verifier_rate() {
        let mut rig = Rig::new();
        let valid = rig.alice(&request(vec![Access::Sequence("ssh".into())]));
        let mut forged = valid.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(rig.verify(SOURCE, &valid, T0).is_ok());
        for (name, packet, want) in [("bad tag", &forged, "bad_tag"), ("replayed", &valid, "replayed")] {
            let n = 200_000;
            let started = std::time::Instant::now();
            for _ in 0..n {
                let r = rig.verify(SOURCE, packet, T0);
                assert_eq!(r.err().map(|e| e.reason()), Some(want));
            }
            let took = started.elapsed();
            println!(
                "{name} ({} bytes): {:.2} us each, {:.0} a second",
                packet.len(),
                took.as_secs_f64() * 1e6 / f64::from(n),
                f64::from(n) / took.as_secs_f64()
            );
        }
    }

    #[test]
    fn a_request_sent_over_loopback_is_granted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = crate::spa::ClientKey {
            server: None,
            port: 0,
            key_id: "0123456789abcdef".parse().expect("valid id"),
            key: Key::random().expect("rng"),
        };
        let text = format!(
            "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000\", \"8000\"]\nprotect = [\"22/tcp\"]\n\
             [spa]\nreplay_file = \"{}\"\n{}",
            dir.path().join("replay").display(),
            key.server_stanza("alice", &["ssh".into()])
        );
        let config = Config::parse(Path::new("test.toml"), &text).expect("valid");
        let mut verifier = Verifier::new(&config).expect("loads").expect("[spa] given");

        let server = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let now = SystemTime::now();
        let r = crate::client::spa::request(
            vec![Access::Sequence("ssh".into())],
            Some(Duration::from_secs(60)),
            None,
            now,
        )
        .expect("valid");
        crate::client::spa::send(
            server.local_addr().expect("bound"),
            &crate::client::spa::seal(&key, &r).expect("seals"),
        )
        .expect("sent");
        let mut buf = [0; 2048];
        let (n, from) = server.recv_from(&mut buf).expect("received");
        let grant = verifier.verify(from.ip(), &buf[..n], now).expect("granted");
        assert_eq!(
            (grant.client.as_str(), grant.addr, grant.sequences, grant.open_for),
            ("alice", from.ip(), vec![0], Duration::from_secs(60))
        );
        let twice = crate::client::spa::seal(&key, &r).expect("seals");
        assert_ne!(twice[9..33], buf[9..33], "every request has a nonce of its own");
    }
}
