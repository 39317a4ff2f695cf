//! Time-based knock sequences: a sequence's knocks come from a shared secret and the
//! current time period (TOTP-style: the period counter of RFC 6238 through
//! HMAC-SHA-256), so a sniffed sequence stops working once its period, and the grace
//! after it, are over. The secret file is shared by the server (`secret_file` in a
//! `[[sequence]]`) and the client (`xknock knock --secret`).

use std::{
    fmt,
    ops::RangeInclusive,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use hmac::{Hmac, KeyInit as _, Mac as _};
use knock_common::{PROTO_TCP, PROTO_UDP};
use serde::Deserialize;
use sha2::Sha256;

use crate::{
    net::Knock,
    secret_file::{read_private, write_private_new},
};

/// Knocks a time-based sequence may have: each takes two bytes of the 32 of a MAC,
/// and the rest are spares for a port that repeats the one before it.
pub const MAX_TIMED_KNOCKS: u8 = 8;
/// The narrowest port range: a guess must not be easy.
pub const MIN_PORTS: u32 = 256;
/// What the MAC of each period starts with (a version, so that a change of the
/// scheme cannot reuse old sequences).
const LABEL: &[u8] = b"xknock time-based knocks v1";

/// A time-based sequence's secret and shape. Its Debug shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TimedSecret {
    secret: [u8; 32],
    pub period: Duration,
    pub knocks: u8,
    pub ports: RangeInclusive<u16>,
    /// PROTO_TCP or PROTO_UDP.
    pub proto: u8,
}

impl fmt::Debug for TimedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedSecret")
            .field("secret", &"<secret>")
            .field("period", &self.period)
            .field("knocks", &self.knocks)
            .field("ports", &self.ports)
            .field("proto", &self.proto)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    secret: String,
    period: String,
    knocks: u8,
    ports: String,
    proto: String,
}

impl TimedSecret {
    /// A new random secret with this shape (checked as a loaded file would be).
    pub fn generate(
        period: Duration,
        knocks: u8,
        ports: RangeInclusive<u16>,
        proto: u8,
    ) -> Result<TimedSecret> {
        let mut secret = [0; 32];
        getrandom::fill(&mut secret).context("the OS random number generator failed")?;
        let s = TimedSecret {
            secret,
            period,
            knocks,
            ports,
            proto,
        };
        s.check().map_err(anyhow::Error::msg)?;
        Ok(s)
    }

    /// Reads a secret file, refusing one that other users can read (as ssh does).
    pub fn load(path: &Path) -> Result<TimedSecret> {
        let text = read_private(path)?;
        Self::parse(&text).with_context(|| format!("secret file {}", path.display()))
    }

    /// Parses a secret file's text; errors never quote the secret.
    pub fn parse(text: &str) -> Result<TimedSecret> {
        let raw: RawSecret = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let mut secret = [0; 32];
        hex::decode_to_slice(raw.secret.trim(), &mut secret)
            .map_err(|_| anyhow::anyhow!("secret: not 64 hex digits"))?;
        let period = humantime::parse_duration(&raw.period).map_err(|e| anyhow::anyhow!("period: {e}"))?;
        let ports = parse_range(&raw.ports).map_err(|e| anyhow::anyhow!("ports: {e}"))?;
        let proto = match raw.proto.as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            other => bail!("proto: {other:?} is not tcp or udp"),
        };
        let s = TimedSecret {
            secret,
            period,
            knocks: raw.knocks,
            ports,
            proto,
        };
        s.check().map_err(anyhow::Error::msg)?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if self.period < Duration::from_secs(1) || self.period.subsec_nanos() != 0 {
            return Err("period: whole seconds, at least 1s".into());
        }
        if !(1..=MAX_TIMED_KNOCKS).contains(&self.knocks) {
            return Err(format!("knocks: from 1 to {MAX_TIMED_KNOCKS}"));
        }
        if self.span() < MIN_PORTS {
            return Err(format!(
                "ports: at least {MIN_PORTS} ports, so that a guess is hard"
            ));
        }
        Ok(())
    }

    fn span(&self) -> u32 {
        u32::from(*self.ports.end()) + 1 - u32::from(*self.ports.start())
    }

    /// The file's text (it holds the secret).
    pub fn to_toml(&self) -> String {
        let proto = if self.proto == PROTO_UDP { "udp" } else { "tcp" };
        format!(
            "# xknock time-based knock secret: the server's secret_file and the client's\n\
             # `xknock knock --secret`. Keep it secret (mode 0600).\n\
             secret = \"{}\"\nperiod = \"{}\"\nknocks = {}\nports = \"{}-{}\"\nproto = \"{proto}\"\n",
            hex::encode(self.secret),
            humantime::format_duration(self.period),
            self.knocks,
            self.ports.start(),
            self.ports.end()
        )
    }

    /// Writes a new file of mode 0600; an existing file is left alone.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        write_private_new(path, &self.to_toml())
    }

    /// The period counter at `at` (Unix time over the period).
    pub fn counter(&self, at: SystemTime) -> u64 {
        let unix = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        unix.as_secs() / self.period.as_secs().max(1)
    }

    /// How long period `counter` has been running at `at` (zero before it began).
    pub fn into_period(&self, counter: u64, at: SystemTime) -> Duration {
        let start =
            SystemTime::UNIX_EPOCH + Duration::from_secs(counter.saturating_mul(self.period.as_secs()));
        at.duration_since(start).unwrap_or_default()
    }

    /// The knocks of period `counter`: two bytes of the MAC per knock, taken over the
    /// range; a port equal to the one before it is skipped (the next two bytes are
    /// used), since the same knock twice in a row would read as a retransmission.
    pub fn knocks_for(&self, counter: u64) -> Vec<Knock> {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return vec![];
        };
        mac.update(LABEL);
        mac.update(&counter.to_be_bytes());
        let bytes = mac.finalize().into_bytes();
        let mut knocks: Vec<Knock> = Vec::new();
        for pair in bytes.chunks_exact(2) {
            if knocks.len() == usize::from(self.knocks) {
                break;
            }
            let offset = u32::from(u16::from_be_bytes([pair[0], pair[1]])) % self.span();
            let port = (u32::from(*self.ports.start()) + offset) as u16;
            let knock = Knock {
                port,
                proto: self.proto,
            };
            if knocks.last() != Some(&knock) {
                knocks.push(knock);
            }
        }
        knocks
    }
}

/// `LOW-HIGH`, two ports.
pub fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let parsed = s
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.trim().parse::<u16>().ok()?, hi.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo >= 1 && lo <= hi => Ok(lo..=hi),
        _ => Err(format!("{s:?} is not LOW-HIGH with ports from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> TimedSecret {
        TimedSecret {
            secret: [7; 32],
            period: Duration::from_secs(30),
            knocks: 3,
            ports: 20000..=20255,
            proto: PROTO_UDP,
        }
    }

    #[test]
    fn each_period_has_its_own_knocks_in_the_range_never_twice_in_a_row() {
        let s = secret();
        let mut seen = std::collections::HashSet::new();
        for counter in 0..2000 {
            let knocks = s.knocks_for(counter);
            assert_eq!(knocks.len(), 3, "period {counter}");
            assert!(
                knocks
                    .iter()
                    .all(|k| s.ports.contains(&k.port) && k.proto == PROTO_UDP)
            );
            assert!(knocks.windows(2).all(|w| w[0] != w[1]));
            seen.insert(knocks);
        }
        assert!(
            seen.len() > 1990,
            "periods differ ({} distinct of 2000)",
            seen.len()
        );
        assert_eq!(s.knocks_for(5), s.knocks_for(5), "deterministic");
        let other = TimedSecret {
            secret: [8; 32],
            ..secret()
        };
        assert_ne!(
            other.knocks_for(5),
            s.knocks_for(5),
            "another secret, other knocks"
        );
    }

    #[test]
    fn the_counter_follows_the_clock() {
        let s = secret();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(3000 * 30 + 12);
        assert_eq!(s.counter(at), 3000);
        assert_eq!(s.into_period(3000, at), Duration::from_secs(12));
        assert_eq!(s.into_period(3001, at), Duration::ZERO);
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused_without_the_secret() {
        let s = secret();
        assert_eq!(TimedSecret::parse(&s.to_toml()).expect("parses"), s);
        let text = s.to_toml();
        for (from, to, key) in [
            ("20000-20255", "20000-20010", "ports"),
            ("knocks = 3", "knocks = 9", "knocks"),
            ("period = \"30s\"", "period = \"1500ms\"", "period"),
            ("proto = \"udp\"", "proto = \"icmp\"", "proto"),
        ] {
            let e = TimedSecret::parse(&text.replace(from, to)).expect_err(key);
            assert!(e.to_string().starts_with(key), "{key}: {e}");
        }
        let e = TimedSecret::parse(&text.replace("0707", "zz07")).expect_err("bad hex");
        assert!(!e.to_string().contains("0707"), "never quotes the secret: {e}");
        assert!(format!("{s:?}").contains("<secret>"));
    }
}
