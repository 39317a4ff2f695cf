//! SPA keys: a client's secret 256-bit key and the public 8-byte id that tells the server
//! which key to try, both written as hex; random ones for `xknock keygen`; and the
//! client's key file that `xknock spa --key` reads.

use std::{fmt, path::Path, str::FromStr};

use anyhow::{Context as _, Result};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use hex::FromHex as _;
use serde::{Deserialize, Serialize};

use knock_common::SpaCheckKey;

use super::DEFAULT_PORT;
use crate::secret_file::{read_private, write_private_new};

/// The public name of a client's key, sent in the clear at the start of every request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; knock_common::SPA_KEY_ID_LEN]);

impl KeyId {
    /// A random key id from the OS RNG.
    pub fn random() -> Result<KeyId> {
        let mut id = [0; 8];
        getrandom::fill(&mut id).context("the OS random number generator failed")?;
        Ok(KeyId(id))
    }
}

impl FromStr for KeyId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <[u8; 8]>::from_hex(s)
            .map(KeyId)
            .map_err(|_| format!("{s:?} is not 16 hex digits (an 8-byte key id)"))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A client's secret key. Neither `Debug` nor any error shows it: only [`Key::to_hex`]
/// does, for `keygen`.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// A random key from the OS RNG.
    pub fn random() -> Result<Key> {
        let mut key = [0; 32];
        getrandom::fill(&mut key).context("the OS random number generator failed")?;
        Ok(Key(key))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// Parses 64 hex digits. The error never repeats the text: it may be a key with a typo.
    pub fn from_hex(s: &str) -> Result<Key, String> {
        <[u8; 32]>::from_hex(s)
            .map(Key)
            .map_err(|_| "not 64 hex digits (a 32-byte key, as xknock keygen writes it)".to_string())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// The check key the kernel holds for this key's key id: the first 16 bytes of
    /// SHA-256 of "xknock spa check v1", a NUL and the key, as two little-endian
    /// words. It shows nothing of the key, and lets the kernel check a request's
    /// check value ([`knock_common::spa_check`]) without holding the key.
    pub fn check_key(&self) -> SpaCheckKey {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(CHECK_LABEL)
            .chain_update([0])
            .chain_update(self.0)
            .finalize();
        let mut words = [0u64; 2];
        for (w, chunk) in words.iter_mut().zip(digest.chunks_exact(8)) {
            let mut b = [0; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        SpaCheckKey { k: words }
    }
}

const CHECK_LABEL: &[u8] = b"xknock spa check v1";

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// Reads a server-side `key_file`: the key as 64 hex digits (surrounding whitespace is
/// ignored). Refused when other users can read it.
pub fn read_key_file(path: &Path) -> Result<Key> {
    let text = read_private(path)?;
    Key::from_hex(text.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The client's key file: where to send requests and the key to seal them with.
/// `keygen --out` writes it; `xknock spa --key` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKey {
    /// The server's name or address, if keygen was told it.
    pub server: Option<String>,
    /// The server's SPA port.
    pub port: u16,
    pub key_id: KeyId,
    pub key: Key,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawClientKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    port: Option<u16>,
    key_id: String,
    key: String,
}

impl ClientKey {
    /// Reads a client key file, refusing one that other users can read (as ssh does).
    pub fn load(path: &Path) -> Result<ClientKey> {
        let text = read_private(path)?;
        Self::parse(path, &text)
    }

    /// Parses a key file's text, naming `path` and the line in errors (never the key).
    pub fn parse(path: &Path, text: &str) -> Result<ClientKey> {
        let at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        // e.message(), not e's Display: that would quote the offending line, maybe the key.
        let raw: RawClientKey = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| format!(":{}", at(s.start))).unwrap_or_default();
            anyhow::anyhow!("{}{line}: {}", path.display(), e.message())
        })?;
        let key_id = raw
            .key_id
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: key_id: {e}", path.display()))?;
        let key = Key::from_hex(&raw.key).map_err(|e| anyhow::anyhow!("{}: key: {e}", path.display()))?;
        Ok(ClientKey {
            server: raw.server,
            port: raw.port.unwrap_or(DEFAULT_PORT),
            key_id,
            key,
        })
    }

    /// The key file's text, with a comment saying what it is.
    pub fn to_toml(&self, name: &str) -> String {
        let raw = RawClientKey {
            server: self.server.clone(),
            port: Some(self.port),
            key_id: self.key_id.to_string(),
            key: self.key.to_hex(),
        };
        // Four plain keys always serialize; the fallback only keeps this free of unwrap.
        let body = toml::to_string(&raw).unwrap_or_default();
        format!(
            "# xknock SPA key of client {name:?}: keep it secret (mode 0600).\n\
             # Use: xknock spa --key THIS-FILE [HOST] [--open SEQUENCE]\n{body}"
        )
    }

    /// The server's `[[spa.client]]` stanza for this key (it holds the key).
    pub fn server_stanza(&self, name: &str, sequences: &[String]) -> String {
        let sequences = if sequences.is_empty() {
            format!("[]  # name the sequences {name} may open")
        } else {
            let quoted: Vec<_> = sequences.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        format!(
            "[[spa.client]]\n\
             name = {name:?}\n\
             key_id = \"{}\"\n\
             key = \"{}\"\n\
             sequences = {sequences}\n\
             # max_open = \"1h\"     # the longest open_for {name} may ask for\n\
             # behind_nat = false  # true: open for the address the request names\n",
            self.key_id,
            self.key.to_hex()
        )
    }

    /// Writes the key file to a new file of mode 0600; an existing file is left alone.
    pub fn write_new(&self, path: &Path, name: &str) -> Result<()> {
        write_private_new(path, &self.to_toml(name))
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn hex_round_trips_and_errors_hide_the_key() {
        let id: KeyId = "0123456789abcdef".parse().expect("valid id");
        assert_eq!(id.to_string(), "0123456789abcdef");
        assert!("0123456789abcde".parse::<KeyId>().is_err(), "15 digits");
        assert!("0123456789abcdeg".parse::<KeyId>().is_err(), "not hex");
        assert_eq!(Key::from_hex(KEY_HEX).expect("valid key").to_hex(), KEY_HEX);
        let typo = KEY_HEX.replace('f', "x");
        let err = Key::from_hex(&typo).expect_err("not hex");
        assert!(!err.contains("0102030405"), "{err}");
        assert_eq!(format!("{:?}", Key::from_hex(KEY_HEX)), "Ok(Key(<secret>))");
    }

    #[test]
    fn random_keys_differ() {
        let (a, b) = (Key::random().expect("rng"), Key::random().expect("rng"));
        assert_ne!(a, b);
        assert_ne!(KeyId::random().expect("rng"), KeyId::random().expect("rng"));
    }

    #[test]
    fn client_key_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alice.key");
        let key = ClientKey {
            server: Some("server.example".into()),
            port: 62201,
            key_id: "0123456789abcdef".parse().expect("valid id"),
            key: Key::from_hex(KEY_HEX).expect("valid key"),
        };
        key.write_new(&path, "alice").expect("written");
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClientKey::load(&path).expect("readable"), key);
        let again = key.write_new(&path, "alice").expect_err("never overwrites");
        assert!(format!("{again:#}").contains("never overwritten"), "{again:#}");
    }

    #[test]
    fn key_files_open_to_others_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("server.key");
        fs::write(&path, format!("{KEY_HEX}\n")).expect("written");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = format!("{:#}", read_key_file(&path).expect_err("mode 0644"));
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_key_file(&path).expect("valid"),
            Key::from_hex(KEY_HEX).expect("valid")
        );
    }

    #[test]
    fn client_key_errors_name_the_file_and_line_but_not_the_key() {
        let path = Path::new("/home/alice/.xknock.key");
        let text = "port = 62201\nkey_id = \"0123456789abcdef\"\nkey = \"secretsecret\"\n";
        let err = format!("{:#}", ClientKey::parse(path, text).expect_err("short key"));
        assert!(err.starts_with("/home/alice/.xknock.key: key: "), "{err}");
        assert!(!err.contains("secretsecret"), "{err}");
        let err = format!(
            "{:#}",
            ClientKey::parse(path, "port = 1\nkye = \"x\"\n").expect_err("typo")
        );
        assert!(
            err.starts_with("/home/alice/.xknock.key:2: unknown field `kye`"),
            "{err}"
        );
    }
}
