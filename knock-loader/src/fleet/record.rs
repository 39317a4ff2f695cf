//! Keys and values in etcd. An authorization is the key
//! `{prefix}/auth/{address}/{sequence}` (sequence names, not slot numbers, which
//! differ between hosts) with a JSON [`Record`] that carries wall-clock times.

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

pub use crate::config::Shared;
use crate::{
    clock::millis,
    config::{check_prefix, is_plain_name},
    net::is_martian,
};

/// The version of [`Record`]; a receiver refuses any other.
pub const RECORD_VERSION: u32 = 1;

/// One source's authorization for one sequence, fleet-wide.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthKey {
    pub addr: IpAddr,
    pub sequence: String,
}

/// The value under an [`AuthKey`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    /// The publishing host's `[fleet] name`.
    pub origin: String,
    pub opener: Shared,
    /// Unix ms.
    pub opened_ms: u64,
    /// Unix ms: the receivers' kernels enforce it, whatever etcd's lease does.
    pub expires_ms: u64,
}

/// Why a received authorization is not installed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON of this version's shape.
    Malformed(String),
    Version(u32),
    /// Published by this host (it is in its kernel already).
    Own,
    /// No sequence of this host's config has the name.
    UnknownSequence,
    /// A loopback, unspecified or multicast source, never authorized.
    Martian,
    Expired,
    /// It claims more than the sequence allows from now, beyond the clock skew.
    TooLong {
        claimed: Duration,
        limit: Duration,
    },
}

/// The key names under one fleet's prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` as configured (see [`check_prefix`]).
    pub fn new(prefix: &str) -> Result<Keys, String> {
        Ok(Keys {
            prefix: check_prefix(prefix)?,
        })
    }

    /// Where every authorization is (what the watcher lists and watches).
    pub fn auth_prefix(&self) -> String {
        format!("{}/auth/", self.prefix)
    }

    pub fn auth(&self, key: &AuthKey) -> String {
        format!("{}{}/{}", self.auth_prefix(), key.addr, key.sequence)
    }

    /// The [`AuthKey`] of an etcd key under [`Keys::auth_prefix`]; `None` for anything
    /// else (written by another version, or by hand).
    pub fn parse_auth(&self, key: &str) -> Option<AuthKey> {
        let rest = key.strip_prefix(&self.auth_prefix())?;
        let (text, sequence) = rest.rsplit_once('/')?;
        let addr: IpAddr = text.parse().ok()?;
        // Only the canonical spelling: one authorization, one key.
        (addr.to_canonical().to_string() == text && is_plain_name(sequence)).then(|| AuthKey {
            addr,
            sequence: sequence.into(),
        })
    }

    /// An SPA request's nonce, claimed by a create-if-absent transaction: a request
    /// captured on its way to one host is a replay on every other.
    pub fn nonce(&self, key_id: &[u8], nonce: &[u8]) -> String {
        format!(
            "{}/nonce/{}/{}",
            self.prefix,
            hex::encode(key_id),
            hex::encode(nonce)
        )
    }
}

impl Record {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(value: &[u8]) -> Result<Record, Refusal> {
        serde_json::from_slice(value).map_err(|e| Refusal::Malformed(e.to_string()))
    }
}

/// Whether this host installs `record`, received under `key`, at `now_ms`: `limit`
/// is what the sequence allows (its `open_for`, or the longest `max_open` of a client
/// that may open it; `None`: no such sequence here), `skew` the clocks' allowed
/// disagreement. Returns the expiry to enforce (Unix ms).
pub fn admit(
    key: &AuthKey,
    record: &Record,
    own_name: &str,
    now_ms: u64,
    limit: Option<Duration>,
    skew: Duration,
) -> Result<u64, Refusal> {
    if record.version != RECORD_VERSION {
        return Err(Refusal::Version(record.version));
    }
    if record.origin == own_name {
        return Err(Refusal::Own);
    }
    let limit = limit.ok_or(Refusal::UnknownSequence)?;
    if is_martian(key.addr) {
        return Err(Refusal::Martian);
    }
    if record.expires_ms <= now_ms {
        return Err(Refusal::Expired);
    }
    let claimed = Duration::from_millis(record.expires_ms - now_ms);
    if millis(claimed) > millis(limit).saturating_add(millis(skew)) {
        return Err(Refusal::TooLong { claimed, limit });
    }
    Ok(record.expires_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(addr: &str) -> AuthKey {
        AuthKey {
            addr: addr.parse().unwrap(),
            sequence: "ssh".into(),
        }
    }

    fn record(expires_ms: u64) -> Record {
        Record {
            version: RECORD_VERSION,
            origin: "bastion-1".into(),
            opener: Shared::Knock,
            opened_ms: 1_000,
            expires_ms,
        }
    }

    #[test]
    fn keys_round_trip_for_both_families() {
        let keys = Keys::new("/xknock/").unwrap();
        for addr in ["198.18.0.2", "fd00::2"] {
            let k = key(addr);
            let name = keys.auth(&k);
            assert!(name.starts_with("/xknock/auth/"), "{name}");
            assert_eq!(keys.parse_auth(&name), Some(k));
        }
        assert_eq!(keys.parse_auth("/xknock/auth/::ffff:198.18.0.2/ssh"), None);
        assert_eq!(keys.parse_auth("/xknock/auth/198.18.0.2/a/b"), None);
        assert_eq!(keys.parse_auth("/other/auth/198.18.0.2/ssh"), None);
        assert!(Keys::new("xknock").is_err());
        assert_eq!(keys.nonce(b"ab", &[1, 2]), "/xknock/nonce/6162/0102");
    }

    #[test]
    fn records_are_json_and_strict() {
        let r = record(5_000);
        assert_eq!(Record::from_json(r.to_json().as_bytes()), Ok(r));
        assert!(matches!(
            Record::from_json(
                br#"{"version":1,"origin":"a","opener":"knock","opened_ms":1,"expires_ms":2,"x":1}"#
            ),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn a_receiver_bounds_what_it_installs() {
        let hour = Some(Duration::from_secs(3600));
        let skew = Duration::from_secs(5);
        let now = 1_000_000;
        let k = key("198.18.0.2");
        assert_eq!(
            admit(&k, &record(now + 60_000), "b", now, hour, skew),
            Ok(now + 60_000)
        );
        // The limit plus the skew, and not a millisecond more.
        assert!(admit(&k, &record(now + 3_605_000), "b", now, hour, skew).is_ok());
        assert!(matches!(
            admit(&k, &record(now + 3_605_001), "b", now, hour, skew),
            Err(Refusal::TooLong { .. })
        ));
        assert_eq!(
            admit(&k, &record(now), "b", now, hour, skew),
            Err(Refusal::Expired)
        );
        assert_eq!(
            admit(&k, &record(now + 1), "bastion-1", now, hour, skew),
            Err(Refusal::Own)
        );
        assert_eq!(
            admit(&k, &record(now + 1), "b", now, None, skew),
            Err(Refusal::UnknownSequence)
        );
        assert_eq!(
            admit(&key("127.0.0.1"), &record(now + 1), "b", now, hour, skew),
            Err(Refusal::Martian)
        );
        let mut old = record(now + 1);
        old.version = 2;
        assert_eq!(admit(&k, &old, "b", now, hour, skew), Err(Refusal::Version(2)));
    }
}
