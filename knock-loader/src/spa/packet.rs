//! The SPA wire format, version 1 (docs/spa.md, "Wire format"): a 33-byte clear header
//! (version, key id, nonce), then the request sealed with XChaCha20-Poly1305 under the
//! client's key with the header as associated data. All integers are little-endian.
//! Parsing reads through a bounds-checked cursor, so no input can make it panic.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use chacha20poly1305::{
    XChaCha20Poly1305,
    aead::{Aead as _, Payload},
};
use knock_common::{PROTO_TCP, PROTO_UDP, SPA_MAX_PAYLOAD};

use super::keys::{Key, KeyId};
use knock_common::SPA_KEY_ID_LEN;

use crate::{
    clock::millis,
    net::{Knock, mapped},
};

pub const VERSION: u8 = knock_common::SPA_VERSION;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Version, key id and nonce: sent in the clear, authenticated as associated data.
pub const HEADER_LEN: usize = 1 + SPA_KEY_ID_LEN + NONCE_LEN;
/// Timestamp, open_for, address flag and entry count: the smallest plaintext.
pub const MIN_PLAINTEXT: usize = 8 + 4 + 1 + 1;
pub const MIN_PACKET: usize = HEADER_LEN + MIN_PLAINTEXT + TAG_LEN;

/// Access entry kinds.
pub const ACCESS_SEQUENCE: u8 = 0;
pub const ACCESS_PORT: u8 = 1;

/// What a client asks for: the plaintext of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Seconds to open for; 0 lets the server choose (see docs/spa.md).
    pub open_for_s: u32,
    /// The address to authorize; `None` for the packet's own source.
    pub addr: Option<IpAddr>,
    /// What to open; empty for everything the client may open.
    pub access: Vec<Access>,
}

/// One thing a request asks to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A sequence, by name.
    Sequence(String),
    /// Every permitted sequence that protects this port.
    Port(Knock),
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Sequence(name) => f.write_str(name),
            Access::Port(k) => k.fmt(f),
        }
    }
}

/// The clear header of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub key_id: KeyId,
    pub nonce: [u8; NONCE_LEN],
}

impl Request {
    /// The plaintext bytes. Fails only for what the format cannot carry.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.open_for_s.to_le_bytes());
        match self.addr {
            None => out.push(0),
            Some(addr) => {
                out.push(1);
                out.extend_from_slice(&mapped(addr));
            }
        }
        let Ok(n) = u8::try_from(self.access.len()) else {
            bail!("at most 255 things to open in one request");
        };
        out.push(n);
        for access in &self.access {
            match access {
                Access::Sequence(name) => {
                    let Ok(len) = u8::try_from(name.len()) else {
                        bail!("sequence name {name:?} is longer than 255 bytes");
                    };
                    out.push(ACCESS_SEQUENCE);
                    out.push(len);
                    out.extend_from_slice(name.as_bytes());
                }
                Access::Port(k) => {
                    out.push(ACCESS_PORT);
                    out.extend_from_slice(&k.port.to_le_bytes());
                    out.push(k.proto);
                }
            }
        }
        Ok(out)
    }

    /// Parses a plaintext; `None` if it is malformed in any way (short, trailing bytes,
    /// an unknown flag, kind or protocol, port 0, an empty or non-UTF-8 name).
    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let mut r = Reader(bytes);
        let timestamp_ms = u64::from_le_bytes(r.array()?);
        let open_for_s = u32::from_le_bytes(r.array()?);
        let addr = match r.u8()? {
            0 => None,
            1 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)).to_canonical()),
            _ => return None,
        };
        let n = r.u8()?;
        let mut access = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            access.push(match r.u8()? {
                ACCESS_SEQUENCE => {
                    let len = r.u8()?;
                    let name = std::str::from_utf8(r.take(usize::from(len))?).ok()?;
                    if name.is_empty() {
                        return None;
                    }
                    Access::Sequence(name.to_string())
                }
                ACCESS_PORT => {
                    let port = u16::from_le_bytes(r.array()?);
                    let proto = r.u8()?;
                    if port == 0 || (proto != PROTO_TCP && proto != PROTO_UDP) {
                        return None;
                    }
                    Access::Port(Knock { port, proto })
                }
                _ => return None,
            });
        }
        r.0.is_empty().then_some(Request {
            timestamp_ms,
            open_for_s,
            addr,
            access,
        })
    }
}

/// The nonce of a request: `random` (16 fresh random bytes), then the check value
/// under `key`'s check key (docs/spa.md, "Wire format"), which the kernel verifies.
pub fn checked_nonce(key_id: KeyId, key: &Key, random: [u8; 16]) -> [u8; NONCE_LEN] {
    let word = |b: &[u8]| {
        let mut w = [0; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let check = knock_common::spa_check(
        &key.check_key(),
        u64::from_le_bytes(key_id.0),
        word(&random[..8]),
        word(&random[8..]),
    );
    let mut nonce = [0; NONCE_LEN];
    nonce[..16].copy_from_slice(&random);
    nonce[16..].copy_from_slice(&check.to_le_bytes());
    nonce
}

/// Seals `request` for the client `key_id`/`key` with `nonce` (which must be fresh and
/// random for every request): the UDP payload to send.
pub fn seal(key_id: KeyId, key: &Key, nonce: [u8; NONCE_LEN], request: &Request) -> Result<Vec<u8>> {
    let mut packet = Vec::with_capacity(SPA_MAX_PAYLOAD);
    packet.push(VERSION);
    packet.extend_from_slice(&key_id.0);
    packet.extend_from_slice(&nonce);
    let plaintext = request.encode()?;
    let sealed = key
        .cipher()
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &plaintext,
                aad: &packet,
            },
        )
        .map_err(|_| anyhow::anyhow!("cannot encrypt the request"))?;
    packet.extend_from_slice(&sealed);
    if packet.len() > SPA_MAX_PAYLOAD {
        bail!(
            "the request takes {} bytes, more than the {SPA_MAX_PAYLOAD} the server reads: ask for fewer things at once",
            packet.len()
        );
    }
    Ok(packet)
}

/// Splits a packet into its header, the header's bytes and the sealed rest; `None`
/// for a packet too short or too long, or of another version.
pub fn split(payload: &[u8]) -> Option<(Header, &[u8], &[u8])> {
    if !(MIN_PACKET..=SPA_MAX_PAYLOAD).contains(&payload.len()) {
        return None;
    }
    let (header_bytes, sealed) = payload.split_at(HEADER_LEN);
    let mut r = Reader(header_bytes);
    if r.u8()? != VERSION {
        return None;
    }
    let key_id = KeyId(r.array()?);
    let nonce = r.array()?;
    Some((Header { key_id, nonce }, header_bytes, sealed))
}

/// Decrypts and authenticates the sealed part; `None` if the tag does not check out.
pub fn open(
    cipher: &XChaCha20Poly1305,
    header: &Header,
    header_bytes: &[u8],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    cipher
        .decrypt(
            &header.nonce.into(),
            Payload {
                msg: sealed,
                aad: header_bytes,
            },
        )
        .ok()
}

/// A cursor that hands out bytes only while there are enough left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
}

/// Unix time in ms (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn request() -> Request {
        Request {
            timestamp_ms: 1_790_000_000_123,
            open_for_s: 600,
            addr: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
            access: vec![
                Access::Sequence("ssh".into()),
                Access::Port(Knock {
                    port: 5432,
                    proto: PROTO_TCP,
                }),
            ],
        }
    }

    #[test]
    fn plaintext_layout_is_the_documented_one() {
        let bytes = request().encode().expect("encodes");
        let mut want = Vec::new();
        want.extend_from_slice(&1_790_000_000_123u64.to_le_bytes());
        want.extend_from_slice(&600u32.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1]);
        want.extend_from_slice(&[2, 0, 3, b's', b's', b'h', 1, 0x38, 0x15, 6]);
        assert_eq!(bytes, want);
        assert_eq!(Request::decode(&bytes), Some(request()));
    }

    #[test]
    fn decode_refuses_trailing_and_unknown_bytes() {
        let bytes = request().encode().expect("encodes");
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(Request::decode(&trailing), None);
        for cut in 0..bytes.len() {
            assert_eq!(Request::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flag = bytes.clone();
        flag[12] = 2;
        assert_eq!(Request::decode(&flag), None, "address flag 2");
        let mut proto = bytes.clone();
        *proto.last_mut().expect("not empty") = 1;
        assert_eq!(Request::decode(&proto), None, "protocol 1");
        let mut kind = bytes;
        kind[30] = 2;
        assert_eq!(Request::decode(&kind), None, "entry kind 2");
    }

    #[test]
    fn seal_then_open() {
        let key = Key::from_bytes([7; 32]);
        let id = KeyId([1, 2, 3, 4, 5, 6, 7, 8]);
        let packet = seal(id, &key, [9; NONCE_LEN], &request()).expect("seals");
        assert_eq!(packet[0], VERSION);
        assert_eq!(&packet[1..9], &id.0);
        assert_eq!(
            packet.len(),
            HEADER_LEN + request().encode().expect("encodes").len() + TAG_LEN
        );
        let (header, aad, sealed) = split(&packet).expect("splits");
        assert_eq!(
            header,
            Header {
                key_id: id,
                nonce: [9; NONCE_LEN]
            }
        );
        let plaintext = open(&key.cipher(), &header, aad, sealed).expect("authentic");
        assert_eq!(Request::decode(&plaintext), Some(request()));
        assert_eq!(
            open(&Key::from_bytes([8; 32]).cipher(), &header, aad, sealed),
            None
        );
    }

    /// The key, key id and request of the test vectors of docs/spa.md.
    fn readme_vector() -> (Key, KeyId, Request) {
        let key = Key::from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .expect("valid key");
        let id: KeyId = "0123456789abcdef".parse().expect("valid id");
        let request = Request {
            timestamp_ms: 1_790_000_000_000,
            open_for_s: 0,
            addr: None,
            access: vec![Access::Sequence("ssh".into())],
        };
        (key, id, request)
    }

    /// The test vector of docs/spa.md, for people writing other clients (checked against an
    /// independent XChaCha20-Poly1305: HChaCha20 by hand, then IETF ChaCha20-Poly1305).
    #[test]
    fn the_readme_test_vector() {
        let (key, id, request) = readme_vector();
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x40 + i as u8);
        let packet = seal(id, &key, nonce, &request).expect("seals");
        assert_eq!(
            hex::encode(&packet),
            "01\
             0123456789abcdef\
             404142434445464748494a4b4c4d4e4f5051525354555657\
             d45555b470e179168ff487beaf9d6591e1c9c590\
             50ebcb26029ce72239d7e9b5955a3b"
        );
    }

    /// The test vector of docs/spa.md of the check value, and the request sealed with it.
    #[test]
    fn the_readme_check_vector() {
        let (key, id, request) = readme_vector();
        let check = key.check_key();
        let random: [u8; 16] = std::array::from_fn(|i| 0x40 + i as u8);
        let nonce = checked_nonce(id, &key, random);
        let packet = seal(id, &key, nonce, &request).expect("seals");
        // Checked against an independent SHA-256 and SipHash-2-4 (Python's hashlib
        // and the paper's algorithm).
        let check_bytes: Vec<u8> = check.k.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(hex::encode(check_bytes), "3ed08d2c5ab391ecee0b5138068ad214");
        assert_eq!(hex::encode(&nonce[16..]), "b4a01387208f4bc5");
        assert_eq!(
            hex::encode(&packet),
            "01\
             0123456789abcdef\
             404142434445464748494a4b4c4d4e4fb4a01387208f4bc5\
             3ed6ea8c106a1e420a78749b17ce827c78f8d590\
             094f09e00a467b55c486efe53b0905"
        );
    }

    #[test]
    fn seal_refuses_what_would_not_fit() {
        let mut big = request();
        big.access = (0..40)
            .map(|i| Access::Sequence(format!("sequence-{i:03}")))
            .collect();
        let err = seal(KeyId([0; 8]), &Key::from_bytes([0; 32]), [0; NONCE_LEN], &big).expect_err("too big");
        assert!(format!("{err}").contains("512"), "{err}");
    }
}
