//! fwknop's SPA packets (Rijndael + HMAC mode, as fwknop 2.6.10 sends them), the
//! protocol alone: authenticating, decrypting and parsing a payload, and sealing one
//! (for tests and other clients). docs/fwknop.md has the format.
//!
//! The wire payload is the base64 of `"Salted__" || salt || AES-256-CBC(plaintext)`
//! without its first 10 characters (`U2FsdGVkX1`, which are always the same), then
//! the base64 of an HMAC over the whole base64 text. The key and IV come from the key
//! and the salt through OpenSSL's `EVP_BytesToKey` with MD5. The plaintext is
//! `random:b64(user):timestamp:version:type:b64(message)[:timeout]:b64(digest)`.
//! Base64 here is the standard alphabet without padding, decoded strictly: text
//! whose trailing bits are not zero is refused, so one packet has one encoding.

use std::{fmt, net::IpAddr, str::FromStr};

use aes::Aes256;
use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use cbc::cipher::{BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _, block_padding::Pkcs7};
use hmac::Hmac;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::{Sha256, Sha384, Sha512};

use crate::net::{Knock, parse_proto};

pub use knock_common::FWKNOP_MIN_PAYLOAD as MIN_PAYLOAD;

/// The base64 of `Salted__`, which fwknop leaves off the wire.
const SALTED_B64: &str = "U2FsdGVkX1";
const SALTED: &[u8] = b"Salted__";

/// Standard base64, unpadded, decoded strictly (canonical trailing bits only).
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// The HMAC's digest (fwknop's HMAC_DIGEST_TYPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacDigest {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HmacDigest {
    /// The tag's length on the wire, in base64 characters.
    fn tag_chars(self) -> usize {
        match self {
            HmacDigest::Sha1 => 27,
            HmacDigest::Sha256 => 43,
            HmacDigest::Sha384 => 64,
            HmacDigest::Sha512 => 86,
        }
    }

    fn mac(self, key: &[u8], text: &[u8]) -> Vec<u8> {
        fn run<M: hmac::Mac + hmac::KeyInit>(key: &[u8], text: &[u8]) -> Vec<u8> {
            // HMAC takes a key of any length.
            let mut mac = <M as hmac::KeyInit>::new_from_slice(key).expect("HMAC keys have any length");
            mac.update(text);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            HmacDigest::Sha1 => run::<Hmac<Sha1>>(key, text),
            HmacDigest::Sha256 => run::<Hmac<Sha256>>(key, text),
            HmacDigest::Sha384 => run::<Hmac<Sha384>>(key, text),
            HmacDigest::Sha512 => run::<Hmac<Sha512>>(key, text),
        }
    }

    /// Whether `tag` is the HMAC of `text` under `key`, in constant time.
    fn verify(self, key: &[u8], text: &[u8], tag: &[u8]) -> bool {
        fn run<M: hmac::Mac + hmac::KeyInit>(key: &[u8], text: &[u8], tag: &[u8]) -> bool {
            let Ok(mut mac) = <M as hmac::KeyInit>::new_from_slice(key) else {
                return false;
            };
            mac.update(text);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            HmacDigest::Sha1 => run::<Hmac<Sha1>>(key, text, tag),
            HmacDigest::Sha256 => run::<Hmac<Sha256>>(key, text, tag),
            HmacDigest::Sha384 => run::<Hmac<Sha384>>(key, text, tag),
            HmacDigest::Sha512 => run::<Hmac<Sha512>>(key, text, tag),
        }
    }
}

impl FromStr for HmacDigest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(HmacDigest::Sha1),
            "sha256" => Ok(HmacDigest::Sha256),
            "sha384" => Ok(HmacDigest::Sha384),
            "sha512" => Ok(HmacDigest::Sha512),
            _ => Err(format!("{s:?} is not sha1, sha256, sha384 or sha512")),
        }
    }
}

impl fmt::Display for HmacDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HmacDigest::Sha1 => "sha1",
            HmacDigest::Sha256 => "sha256",
            HmacDigest::Sha384 => "sha384",
            HmacDigest::Sha512 => "sha512",
        })
    }
}

/// A client's keys (fwknop's KEY_BASE64, HMAC_KEY_BASE64 and HMAC_DIGEST_TYPE).
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// The encryption key, 1 to 32 bytes.
    pub key: Vec<u8>,
    pub hmac_key: Vec<u8>,
    pub digest: HmacDigest,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys(<secret>, {})", self.digest)
    }
}

/// Decodes a key as fwknop writes it (KEY_BASE64, standard base64 with padding).
pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let padded = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(false),
    );
    // Never the text in the error: it is the key.
    padded
        .decode(text.trim())
        .map_err(|_| "not base64 (fwknop --key-gen writes it)".to_string())
}

/// Whether a datagram could be fwknop's: its first character is one the base64 of a
/// salted blob (after the prefix) begins with, and its length is in range.
pub fn looks_like(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(b'8' | b'9' | b'+' | b'/'))
        && (MIN_PAYLOAD..=knock_common::SPA_MAX_PAYLOAD).contains(&payload.len())
}

/// Why a payload is not a request of a client's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not base64, a payload with the `U2FsdGVkX1` prefix, the wrong length.
    Malformed(&'static str),
    /// No key's HMAC matches.
    BadHmac,
    /// Authenticated, but the plaintext is not what fwknop writes.
    BadPlaintext(&'static str),
    /// A command or NAT message: authentic, never acted on.
    Unsupported(&'static str),
}

/// A payload that one client's HMAC key authenticates: the encrypted blob, and the
/// tag (the replay cache's key).
pub struct Authentic {
    pub blob: Vec<u8>,
    pub tag: Vec<u8>,
}

/// Checks `payload`'s HMAC under `keys`: first of fwknopd's checks, and the one that
/// tells the clients apart. Nothing is decrypted before it passes.
pub fn authenticate(payload: &[u8], keys: &Keys) -> Result<Authentic, Refusal> {
    let text = std::str::from_utf8(payload).map_err(|_| Refusal::Malformed("not text"))?;
    if text.starts_with(SALTED_B64) {
        return Err(Refusal::Malformed("the U2FsdGVkX1 prefix is never on the wire"));
    }
    let chars = keys.digest.tag_chars();
    if text.len() <= chars || !text.is_char_boundary(text.len() - chars) {
        return Err(Refusal::Malformed("too short"));
    }
    let (body, tag_b64) = text.split_at(text.len() - chars);
    let tag = B64
        .decode(tag_b64)
        .map_err(|_| Refusal::Malformed("the HMAC is not base64"))?;
    let full = format!("{SALTED_B64}{body}");
    if !keys.digest.verify(&keys.hmac_key, full.as_bytes(), &tag) {
        return Err(Refusal::BadHmac);
    }
    let blob = B64.decode(&full).map_err(|_| Refusal::Malformed("not base64"))?;
    Ok(Authentic { blob, tag })
}

/// OpenSSL's EVP_BytesToKey with MD5, one round: the AES-256 key and the IV.
fn derive(key: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let round = |prev: &[u8]| -> [u8; 16] {
        let mut h = Md5::new();
        h.update(prev);
        h.update(key);
        h.update(salt);
        h.finalize().into()
    };
    let d1 = round(&[]);
    let d2 = round(&d1);
    let d3 = round(&d2);
    let mut aes_key = [0; 32];
    aes_key[..16].copy_from_slice(&d1);
    aes_key[16..].copy_from_slice(&d2);
    (aes_key, d3)
}

/// Decrypts an authenticated blob into its plaintext.
pub fn decrypt(blob: &[u8], key: &[u8]) -> Result<String, Refusal> {
    let (Some(SALTED), Some(salt), Some(ciphertext)) = (blob.get(..8), blob.get(8..16), blob.get(16..))
    else {
        return Err(Refusal::BadPlaintext("no salt"));
    };
    let (aes_key, iv) = derive(key, salt);
    let decryptor = cbc::Decryptor::<Aes256>::new(&aes_key.into(), &iv.into());
    let plain = decryptor
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map_err(|_| Refusal::BadPlaintext("does not decrypt (another encryption key?)"))?;
    String::from_utf8(plain).map_err(|_| Refusal::BadPlaintext("not text"))
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub user: String,
    /// Unix seconds, as the client's clock had it.
    pub timestamp: u64,
    /// The address to open for; unspecified (`0.0.0.0`, the client's `-s`) means
    /// the packet's source.
    pub addr: IpAddr,
    pub access: Vec<Knock>,
    /// The client's timeout in seconds (message type 3), if it gave one.
    pub timeout: Option<u32>,
}

/// fwknop's message types: an access request, with or without a client timeout.
const ACCESS: &str = "1";
const ACCESS_TIMEOUT: &str = "3";

/// Parses a decrypted plaintext, checking its digest (by its length: MD5 is refused,
/// SHA-1 and SHA-2 are checked).
pub fn parse(plaintext: &str) -> Result<Message, Refusal> {
    let Some((encoded, digest)) = plaintext.rsplit_once(':') else {
        return Err(Refusal::BadPlaintext("no digest"));
    };
    let want = B64
        .decode(digest)
        .map_err(|_| Refusal::BadPlaintext("the digest is not base64"))?;
    let got = match digest.len() {
        27 => Sha1::digest(encoded).to_vec(),
        43 => Sha256::digest(encoded).to_vec(),
        64 => Sha384::digest(encoded).to_vec(),
        86 => Sha512::digest(encoded).to_vec(),
        _ => return Err(Refusal::BadPlaintext("a digest other than SHA-1 or SHA-2")),
    };
    if got != want {
        return Err(Refusal::BadPlaintext("the digest does not match"));
    }
    let fields: Vec<&str> = encoded.split(':').collect();
    let (random, user, timestamp, kind, message, rest) = match fields.as_slice() {
        [random, user, timestamp, _version, kind, message, rest @ ..] => {
            (*random, *user, *timestamp, *kind, *message, rest)
        }
        _ => return Err(Refusal::BadPlaintext("too few fields")),
    };
    if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::BadPlaintext("the random field is not 16 digits"));
    }
    let timeout = match (kind, rest) {
        (ACCESS, []) => None,
        (ACCESS_TIMEOUT, [timeout]) => Some(
            timeout
                .parse()
                .map_err(|_| Refusal::BadPlaintext("the timeout is not a number"))?,
        ),
        (ACCESS | ACCESS_TIMEOUT, _) => return Err(Refusal::BadPlaintext("unexpected fields")),
        ("0", _) => return Err(Refusal::Unsupported("a command message (xknock runs none)")),
        _ => return Err(Refusal::Unsupported("a NAT message (xknock forwards nothing)")),
    };
    let user = b64_text(user)?;
    let timestamp = timestamp
        .parse()
        .map_err(|_| Refusal::BadPlaintext("the timestamp is not a number"))?;
    let message = b64_text(message)?;
    let (addr, ports) = message
        .split_once(',')
        .ok_or(Refusal::BadPlaintext("the message names no port"))?;
    let addr = addr
        .parse()
        .map_err(|_| Refusal::BadPlaintext("the message's address is not an address"))?;
    let access = ports.split(',').map(parse_access).collect::<Result<_, _>>()?;
    Ok(Message {
        user,
        timestamp,
        addr,
        access,
        timeout,
    })
}

fn b64_text(field: &str) -> Result<String, Refusal> {
    let bytes = B64
        .decode(field)
        .map_err(|_| Refusal::BadPlaintext("a field is not base64"))?;
    String::from_utf8(bytes).map_err(|_| Refusal::BadPlaintext("a field is not text"))
}

/// `tcp/22` or `udp/53` (fwknop writes the protocol first).
fn parse_access(s: &str) -> Result<Knock, Refusal> {
    let (proto, port) = s
        .split_once('/')
        .ok_or(Refusal::BadPlaintext("an access entry is not PROTO/PORT"))?;
    let proto = parse_proto(proto).ok_or(Refusal::BadPlaintext("a protocol other than tcp or udp"))?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(Knock { port, proto }),
        _ => Err(Refusal::BadPlaintext("an access entry's port is not a port")),
    }
}

/// Seals `message` as fwknop's client does, with `random` (16 digits) and `salt`:
/// the wire payload. For tests and for clients the Debian one cannot be (IPv6).
pub fn seal(keys: &Keys, message: &Message, random: u64, salt: [u8; 8]) -> Vec<u8> {
    let access: Vec<String> = message
        .access
        .iter()
        .map(|k| format!("{}/{}", crate::net::proto_name(k.proto), k.port))
        .collect();
    let body = format!("{},{}", message.addr, access.join(","));
    let mut encoded = format!(
        "{random:016}:{}:{}:3.0.0:{}:{}",
        B64.encode(&message.user),
        message.timestamp,
        if message.timeout.is_some() {
            ACCESS_TIMEOUT
        } else {
            ACCESS
        },
        B64.encode(body)
    );
    if let Some(t) = message.timeout {
        encoded += &format!(":{t}");
    }
    let digest = B64.encode(Sha256::digest(&encoded));
    let plaintext = format!("{encoded}:{digest}");
    let (aes_key, iv) = derive(&keys.key, &salt);
    let encryptor = cbc::Encryptor::<Aes256>::new(&aes_key.into(), &iv.into());
    let mut blob = SALTED.to_vec();
    blob.extend_from_slice(&salt);
    blob.extend(encryptor.encrypt_padded_vec::<Pkcs7>(plaintext.as_bytes()));
    let full = B64.encode(blob);
    let tag = B64.encode(keys.digest.mac(&keys.hmac_key, full.as_bytes()));
    format!("{}{tag}", &full[SALTED_B64.len()..]).into_bytes()
}

#[cfg(test)]
mod tests {
    use knock_common::PROTO_TCP;

    use super::*;

    /// The real packet of FWKNOP.md's test vector (Debian's fwknop 2.6.10).
    const PACKET: &str = "9ERSijh/iFZUNB8EaUGAdKaDMQePTCIHDhfGSBaP1ABcmo/LzOsTHeK076Jfj81YSuGFHJiQRT7qvhqpnqjLSTPn3coulLhRy3JquXTq6Ez7UnLELJO+Ft2crwfd6qQsntn9wtqW8RQRyPK52mjcSjzR8avrM0HAMKwrJ6jKCDA0FkEdgIrmoYZsKyZtqYQzPIm3iiOGfavFLGvxCxC4JeMRelDf68Qlo";
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const HMAC_KEY: &str =
        "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+fw==";

    fn keys() -> Keys {
        Keys {
            key: decode_key(KEY).expect("key"),
            hmac_key: decode_key(HMAC_KEY).expect("hmac key"),
            digest: HmacDigest::Sha256,
        }
    }

    #[test]
    fn the_real_packet_authenticates_decrypts_and_parses() {
        let payload = PACKET.as_bytes();
        assert_eq!(payload.len(), 225);
        assert!(looks_like(payload));
        let authentic = authenticate(payload, &keys()).expect("the HMAC checks out");
        assert_eq!(
            B64.encode(&authentic.tag),
            "ZsKyZtqYQzPIm3iiOGfavFLGvxCxC4JeMRelDf68Qlo"
        );
        assert_eq!(hex::encode(&authentic.blob[8..16]), "444528a387f88565");
        let (aes_key, iv) = derive(&keys().key, &authentic.blob[8..16]);
        assert_eq!(
            hex::encode(aes_key),
            "c856f59d8a04ce1fbcd37d824983c7cf451d116ec1cf73d619c5cd450e08c65f"
        );
        assert_eq!(hex::encode(iv), "4acafeb12ea6d26b7bd1fdd8a3d33e6a");
        let plaintext = decrypt(&authentic.blob, &keys().key).expect("decrypts");
        assert_eq!(
            plaintext,
            "2578500161409120:bm9ib2R5:1796152510:3.0.0:1:MTk4LjE4LjAuMSx0Y3AvMjI:ta9S2ouGCEtPd26cV00zr4RWlkFBk2Aw5kZhfAzLatY"
        );
        let message = parse(&plaintext).expect("parses");
        assert_eq!(
            message,
            Message {
                user: "nobody".into(),
                timestamp: 1_796_152_510,
                addr: "198.18.0.1".parse().expect("addr"),
                access: vec![Knock {
                    port: 22,
                    proto: PROTO_TCP
                }],
                timeout: None,
            }
        );
    }

    #[test]
    fn another_hmac_key_or_an_altered_byte_is_refused() {
        let mut other = keys();
        other.hmac_key[0] ^= 1;
        assert_eq!(
            authenticate(PACKET.as_bytes(), &other).err(),
            Some(Refusal::BadHmac)
        );
        let mut altered = PACKET.as_bytes().to_vec();
        altered[40] = if altered[40] == b'A' { b'B' } else { b'A' };
        assert_eq!(authenticate(&altered, &keys()).err(), Some(Refusal::BadHmac));
        let mut sha512 = keys();
        sha512.digest = HmacDigest::Sha512;
        assert!(authenticate(PACKET.as_bytes(), &sha512).is_err());
    }

    #[test]
    fn encodings_are_canonical_and_the_prefix_is_refused() {
        // The tag's last character carries 2 unused bits: a non-zero one is another
        // encoding of the same tag, refused.
        let mut twisted = PACKET.as_bytes().to_vec();
        let last = twisted.len() - 1;
        twisted[last] = b'p'; // 'o' + 1: the same 6-bit prefix, a trailing bit set
        assert!(matches!(
            authenticate(&twisted, &keys()),
            Err(Refusal::Malformed(_))
        ));
        let prefixed = format!("{SALTED_B64}{PACKET}");
        assert!(matches!(
            authenticate(prefixed.as_bytes(), &keys()),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn sealed_requests_open_as_fwknop_writes_them_in_both_families() {
        for (digest, addr) in [(HmacDigest::Sha256, "fd00::2"), (HmacDigest::Sha512, "0.0.0.0")] {
            let keys = Keys { digest, ..keys() };
            let message = Message {
                user: "alice".into(),
                timestamp: 1_796_152_510,
                addr: addr.parse().expect("addr"),
                access: vec![Knock {
                    port: 22,
                    proto: PROTO_TCP,
                }],
                timeout: Some(60),
            };
            let payload = seal(&keys, &message, 1_234_567_890_123_456, [7; 8]);
            assert!(looks_like(&payload), "{}", payload.len());
            let authentic = authenticate(&payload, &keys).expect("authentic");
            let plaintext = decrypt(&authentic.blob, &keys.key).expect("decrypts");
            assert_eq!(parse(&plaintext).expect("parses"), message);
        }
    }

    #[test]
    fn commands_and_nat_are_refused() {
        let digest = |s: &str| B64.encode(Sha256::digest(s));
        for (kind, why) in [("0", "command"), ("2", "NAT")] {
            let encoded = format!(
                "1234567890123456:bm9ib2R5:1796152510:3.0.0:{kind}:{}",
                B64.encode("x")
            );
            let e = parse(&format!("{encoded}:{}", digest(&encoded))).expect_err("refused");
            assert!(format!("{e:?}").contains(why), "{e:?}");
        }
    }
}
