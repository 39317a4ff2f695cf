//! Seeded, structure-aware frames for the differential fuzzer: mostly well-formed
//! frames aimed at the configured ports (often the next knock a source needs, so that
//! sources really get authorized), with VLAN stacks, IPv4 options, IPv6 extension
//! chains, fragments and odd TCP flags, ICMP and ICMPv6 echo requests (of the knocks'
//! sizes, near them, of other types, over the other family), then a share of them
//! truncated, padded, bit-flipped or given lying length fields. Ports no sequence uses
//! get their share too: the public ones, the ephemeral range's edges and random others
//! (what stealth hides).

use knock_common::{MAX_ICMP_KNOCK_SIZE, PROTO_ICMP};
use rand::{RngExt as _, SeedableRng as _, rngs::SmallRng, seq::IndexedRandom as _};
use xknock::net::Knock;

use crate::{frame::Frame, model::Model};

pub const SOURCES: [&str; 8] = [
    "198.18.7.1",
    "198.18.7.2",
    "198.18.7.3",
    "198.18.7.4",
    "fd00:7::1",
    "fd00:7::2",
    "fd00:7::3",
    "fd00:7::4",
];

/// Now and then a source the filter must never track: IPv4-mapped IPv6 (Linux drops
/// those packets, and so must the filter) and martians (their knocks count for nothing).
pub const ODD_SOURCES: [&str; 10] = [
    "::ffff:198.18.7.1",
    "::ffff:198.18.7.5",
    "127.0.0.1",
    "0.0.0.0",
    "224.0.0.5",
    "255.255.255.255",
    "::1",
    "::",
    "ff02::1",
    "::ffff:127.0.0.1",
];

const FLAGS: [u8; 10] = [0x02, 0x02, 0x02, 0x12, 0x10, 0x18, 0x01, 0x04, 0x11, 0x03];
const TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const EXT: [u8; 7] = [0, 43, 60, 44, 51, 135, 59];

pub struct Gen {
    rng: SmallRng,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        *from.choose(&mut self.rng).expect("non-empty")
    }

    /// One frame from one of `SOURCES` (or, rarely, `ODD_SOURCES`).
    pub fn frame(&mut self, model: &Model, now: u64) -> Vec<u8> {
        let src = if self.chance(0.03) {
            self.pick(&ODD_SOURCES)
        } else {
            self.pick(&SOURCES)
        };
        let mapped = crate::mapped(src);
        let seqs = model.sequences();
        let seq = &seqs[self.rng.random_range(0..seqs.len())];
        let target: Knock = match self.rng.random_range(0..100) {
            0..40 => model.next_knock(mapped, self.rng.random_range(0..seqs.len()), now),
            40..55 => self.pick(&seq.knocks),
            55..80 => self.pick(&seq.protect),
            // Ports no sequence uses: the public ones (with stealth), a few others.
            80..86 => match model.public() {
                Some(public) if self.chance(0.5) => self.pick(public),
                _ => Knock {
                    port: self.pick(&[80, 53, 443, 1, 65535]),
                    proto: self.pick(&[6, 17]),
                },
            },
            // The ephemeral range stealth leaves UDP open in, at and past its edges.
            86..90 => {
                let (low, high) = model.ephemeral().unwrap_or(crate::model::ephemeral_range());
                let port = match self.rng.random_range(0..6) {
                    0 => low.saturating_sub(1),
                    1 => low,
                    2 => high,
                    3 => high.saturating_add(1),
                    _ => self.rng.random_range(low..=high),
                };
                Knock {
                    port,
                    proto: self.pick(&[6, 17, 17]),
                }
            }
            // Echo requests one byte off a knock's size, of ping's usual sizes, or at and
            // past the largest ICMP knock.
            90..94 => {
                let size = match self.pick(&seq.knocks) {
                    k if k.proto == PROTO_ICMP && self.chance(0.7) => {
                        if self.chance(0.5) {
                            k.port.saturating_add(1)
                        } else {
                            k.port.saturating_sub(1)
                        }
                    }
                    _ => self.pick(&[56, 32, 0, MAX_ICMP_KNOCK_SIZE, MAX_ICMP_KNOCK_SIZE + 1]),
                };
                Knock {
                    port: size,
                    proto: PROTO_ICMP,
                }
            }
            _ => Knock {
                port: self.rng.random(),
                proto: self.pick(&[6, 17, 1, 58, 132]),
            },
        };
        let mut f = match target.proto {
            6 => Frame::syn(src, target.port).flags(if self.chance(0.7) { 0x02 } else { self.pick(&FLAGS) }),
            17 => Frame::udp(src, target.port),
            PROTO_ICMP => self.echo(src, target.port),
            other => Frame::other(src, other),
        };
        f = f.sport(40000 + self.rng.random_range(0..3));
        if self.chance(0.05) {
            f = f.flags(self.rng.random());
        }
        if self.chance(0.15) {
            for _ in 0..self.rng.random_range(1..=3) {
                f = f.vlan(self.pick(&TPIDS));
            }
        }
        if f.src.is_ipv4() && self.chance(0.1) {
            f = f.ipv4_options(self.rng.random_range(1..=10));
        }
        if f.src.is_ipv6() && self.chance(0.15) {
            for _ in 0..self.rng.random_range(1..=8) {
                f = f.ext(self.pick(&EXT));
            }
        }
        if self.chance(0.08) {
            f = f.fragment(self.pick(&[0, 0, 1, 2, 185]), self.chance(0.5));
        }
        if self.chance(0.04) {
            f = f.l4_bytes(self.rng.random_range(0..20));
        }
        let mut bytes = f.build();
        self.mutate(&mut bytes);
        bytes
    }

    /// An echo request of `size` bytes of data, now and then of another ICMP type
    /// (echo replies, the other family's request) or over the other family's protocol.
    fn echo(&mut self, src: &str, size: u16) -> Frame {
        let f = Frame::echo(src, usize::from(size));
        match self.rng.random_range(0..20) {
            0 => f.icmp_type(self.pick(&[0, 8, 128, 129, 3])),
            // The other family's echo request, in this family's packet.
            1 => {
                let (proto, icmp_type) = if f.proto == 1 { (58, 128) } else { (1, 8) };
                Frame {
                    proto,
                    icmp_type,
                    ..f
                }
            }
            _ => f,
        }
    }

    fn mutate(&mut self, bytes: &mut Vec<u8>) {
        if self.chance(0.03) {
            // Ethernet padding: bytes past what the IP header counts.
            let pad = self.rng.random_range(1..=46);
            bytes.extend(std::iter::repeat_n(0u8, pad));
        }
        if self.chance(0.06) {
            let len = self.rng.random_range(14..=bytes.len());
            bytes.truncate(len);
        }
        if self.chance(0.04) {
            let at = self.rng.random_range(12..bytes.len());
            bytes[at] = self.rng.random();
        }
        if self.chance(0.03) {
            // Lying lengths: IPv4 total length or IPv6 payload length (same offsets
            // past the EtherType+2 for either family, near enough to hit both).
            let at = self.pick(&[16usize, 17, 18, 19, 20, 21]);
            if at < bytes.len() {
                bytes[at] = self.rng.random();
            }
        }
    }
}
