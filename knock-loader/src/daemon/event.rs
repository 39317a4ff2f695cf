//! What `run` reports, as types: every event is a [`Event`], whoever noticed it (the
//! kernel's rings, the sweep of the maps, the SPA verifier, a reload), and is
//! rendered in one place ([`Event::render`]) for the printer; the commands and the
//! metrics match on the same values. The field names of the rendering are the public
//! contract (docs/SPEC.md, Events).

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use knock_common::{OpenFailure, Origin, ResetReason};
use serde::Serialize;

use crate::{clock::human, net::Knock};

/// One event about one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    pub source: IpAddr,
    /// The packet's destination, for what the kernel reported.
    pub port: Option<Knock>,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A step of a sequence accepted.
    Knock { sequence: String, step: u8, of: u8 },
    /// Progress lost.
    Reset {
        sequence: String,
        step: u8,
        of: u8,
        reason: ResetCause,
    },
    /// An authorization began (or was renewed).
    Open {
        sequence: String,
        reason: Opener,
        open_for: Duration,
        /// The SPA client whose request opened.
        client: Option<String>,
        /// The fleet host that published it, for one installed from the fleet.
        origin: Option<String>,
    },
    /// An authorization ended.
    Close {
        sequence: String,
        reason: CloseReason,
        /// As in `Open`.
        origin: Option<String>,
    },
    /// A completed sequence or a granted request that could not be authorized.
    OpenFailed {
        sequence: String,
        reason: OpenFailure,
        detail: Option<String>,
    },
    /// The source failed too often and is banned for `ban_for`.
    Ban { ban_for: Duration },
    /// A ban ended.
    Unban { reason: UnbanReason },
    /// A datagram to the SPA port refused; `reason` is the rejection's name.
    SpaRejected { reason: &'static str, detail: String },
}

/// Why progress was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCause {
    Wrong,
    Timeout,
    Strict,
}

impl ResetCause {
    /// The kernel's [`ResetReason`] (a wrong knock for anything unknown).
    pub fn from_kernel(reason: u8) -> ResetCause {
        match reason {
            r if r == ResetReason::Timeout as u8 => ResetCause::Timeout,
            r if r == ResetReason::Strict as u8 => ResetCause::Strict,
            _ => ResetCause::Wrong,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ResetCause::Wrong => "wrong",
            ResetCause::Timeout => "timeout",
            ResetCause::Strict => "strict",
        }
    }
}

/// What granted an authorization, as the authorization map records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    Knock,
    Spa,
    Allow,
    Fleet,
    /// An origin this version does not know (written by a newer one).
    Unknown,
}

impl Opener {
    pub fn from_origin(origin: u8) -> Opener {
        match Origin::from_u8(origin) {
            Some(Origin::Knock) => Opener::Knock,
            Some(Origin::Spa) => Opener::Spa,
            Some(Origin::Allow) => Opener::Allow,
            Some(Origin::Fleet) => Opener::Fleet,
            None => Opener::Unknown,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Opener::Knock => "knock",
            Opener::Spa => "spa",
            Opener::Allow => "allow",
            Opener::Fleet => "fleet",
            Opener::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its time was up.
    Expired,
    /// Removed from the map (`xknock revoke`).
    Revoked,
    /// Its sequence is gone from a reloaded config.
    Removed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnbanReason {
    Expired,
    /// `xknock unban`.
    Lifted,
}

fn open_failure(reason: OpenFailure) -> &'static str {
    match reason {
        OpenFailure::MapFull => "authorization map full",
        OpenFailure::Spent => "one-time sequence used",
    }
}

/// The `event` field of each [`Kind`], in its order.
pub const NAMES: [&str; 8] = [
    "knock",
    "reset",
    "open",
    "close",
    "open_failed",
    "ban",
    "unban",
    "spa_rejected",
];

impl Event {
    fn index(&self) -> usize {
        match self.kind {
            Kind::Knock { .. } => 0,
            Kind::Reset { .. } => 1,
            Kind::Open { .. } => 2,
            Kind::Close { .. } => 3,
            Kind::OpenFailed { .. } => 4,
            Kind::Ban { .. } => 5,
            Kind::Unban { .. } => 6,
            Kind::SpaRejected { .. } => 7,
        }
    }

    /// The `event` field (one of [`NAMES`]).
    pub fn name(&self) -> &'static str {
        NAMES[self.index()]
    }

    /// The sequence it concerns; `None` for what concerns the source as a whole.
    pub fn sequence(&self) -> Option<&str> {
        match &self.kind {
            Kind::Knock { sequence, .. }
            | Kind::Reset { sequence, .. }
            | Kind::Open { sequence, .. }
            | Kind::Close { sequence, .. }
            | Kind::OpenFailed { sequence, .. } => Some(sequence),
            Kind::Ban { .. } | Kind::Unban { .. } | Kind::SpaRejected { .. } => None,
        }
    }

    /// One output line: human-readable, or one JSON object.
    pub fn render(&self, json: bool) -> String {
        let line = self.line();
        if json {
            serde_json::to_string(&line).unwrap_or_default()
        } else {
            line.text()
        }
    }

    fn line(&self) -> Line<'_> {
        let mut l = Line {
            ts: rfc3339(self.at),
            event: self.name(),
            source: self.source,
            sequence: self.sequence(),
            step: None,
            of: None,
            port: self.port.map(|k| k.to_string()),
            reason: None,
            open_for: None,
            client: None,
            origin: None,
            detail: None,
        };
        match &self.kind {
            Kind::Knock { step, of, .. } => (l.step, l.of) = (Some(*step), Some(*of)),
            Kind::Reset { step, of, reason, .. } => {
                (l.step, l.of) = (Some(*step), Some(*of));
                l.reason = Some(reason.as_str());
            }
            Kind::Open {
                reason,
                open_for,
                client,
                origin,
                ..
            } => {
                l.reason = Some(reason.as_str());
                l.open_for = Some(human(*open_for));
                l.client = client.as_deref();
                l.origin = origin.as_deref();
            }
            Kind::Close { reason, origin, .. } => {
                l.origin = origin.as_deref();
                l.reason = Some(match reason {
                    CloseReason::Expired => "expired",
                    CloseReason::Revoked => "revoked",
                    CloseReason::Removed => "removed",
                });
            }
            Kind::OpenFailed { reason, detail, .. } => {
                l.reason = Some(open_failure(*reason));
                l.detail = detail.as_deref();
            }
            Kind::Ban { ban_for } => l.open_for = Some(human(*ban_for)),
            Kind::Unban { reason } => {
                l.reason = Some(match reason {
                    UnbanReason::Expired => "expired",
                    UnbanReason::Lifted => "lifted",
                });
            }
            Kind::SpaRejected { reason, detail } => {
                l.reason = Some(reason);
                l.detail = Some(detail);
            }
        }
        l
    }
}

/// Events reported, by kind: what the metrics count (`xknock_events`).
#[derive(Debug, Default)]
pub struct Tally([AtomicU64; NAMES.len()]);

impl Tally {
    pub fn count(&self, event: &Event) {
        self.0[event.index()].fetch_add(1, Relaxed);
    }

    /// Each kind's name and count.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        NAMES.iter().zip(&self.0).map(|(n, c)| (*n, c.load(Relaxed)))
    }
}

/// `suppressed`: what the kernel counted instead of reporting since the last one (it
/// is printed once a second at most, and only when something was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub at: SystemTime,
    /// Knock and reset events over the per-CPU budget (`[events]`).
    pub knock: u64,
    pub reset: u64,
    /// Events a full ring had no room for.
    pub lost: u64,
}

impl Suppressed {
    pub fn render(&self, json: bool) -> String {
        let ts = rfc3339(self.at);
        if json {
            #[derive(Serialize)]
            struct Line<'a> {
                ts: &'a str,
                event: &'static str,
                knock: u64,
                reset: u64,
                lost: u64,
            }
            let line = Line {
                ts: &ts,
                event: "suppressed",
                knock: self.knock,
                reset: self.reset,
                lost: self.lost,
            };
            return serde_json::to_string(&line).unwrap_or_default();
        }
        format!(
            "{ts} {:<6} knock={} reset={} lost={}",
            "suppressed", self.knock, self.reset, self.lost
        )
    }
}

/// An event's fields as printed.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    event: &'static str,
    source: IpAddr,
    /// Absent for `ban`, `unban` and `spa_rejected`, which concern the source as a
    /// whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    of: Option<u8>,
    /// The packet's destination, for kernel events.
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// How long an `open` (or a `ban`) lasts.
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    open_for: Option<String>,
    /// The SPA client whose request opened (its name in the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    /// The fleet host that published an authorization installed from the fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
    /// What exactly was wrong (how far off a rejected request's clock was, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl Line<'_> {
    fn text(&self) -> String {
        let mut line = format!("{} {:<6} {}", self.ts, self.event, self.source);
        if let Some(sequence) = self.sequence {
            line += &format!(" {sequence}");
        }
        if let (Some(step), Some(of)) = (self.step, self.of) {
            line += &format!(" step {step}/{of}");
        }
        if let Some(port) = &self.port {
            line += &format!(" ({port})");
        }
        if let Some(reason) = self.reason {
            line += &format!(" reason={reason}");
        }
        if let Some(d) = &self.open_for {
            line += &format!(" for {d}");
        }
        if let Some(client) = self.client {
            line += &format!(" client={client}");
        }
        if let Some(origin) = self.origin {
            line += &format!(" origin={origin}");
        }
        if let Some(detail) = self.detail {
            line += &format!(": {detail}");
        }
        line
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use knock_common::PROTO_UDP;

    use super::*;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123)
    }

    #[test]
    fn an_open_renders_as_the_contract_says() {
        let open = Event {
            at: at(),
            source: "198.18.0.2".parse().expect("addr"),
            port: Some(Knock {
                port: 8000,
                proto: PROTO_UDP,
            }),
            kind: Kind::Open {
                sequence: "ssh".into(),
                reason: Opener::Knock,
                open_for: Duration::from_secs(30),
                client: None,
                origin: None,
            },
        };
        assert_eq!(
            open.render(false),
            "2026-09-21T14:13:20.123Z open   198.18.0.2 ssh (8000/udp) reason=knock for 30s"
        );
        assert_eq!(
            open.render(true),
            r#"{"ts":"2026-09-21T14:13:20.123Z","event":"open","source":"198.18.0.2","sequence":"ssh","port":"8000/udp","reason":"knock","for":"30s"}"#
        );
    }

    #[test]
    fn source_wide_events_have_no_sequence() {
        let ban = Event {
            at: at(),
            source: "fd00::2".parse().expect("addr"),
            port: None,
            kind: Kind::Ban {
                ban_for: Duration::from_secs(3600),
            },
        };
        assert_eq!(ban.sequence(), None);
        assert_eq!(
            ban.render(true),
            r#"{"ts":"2026-09-21T14:13:20.123Z","event":"ban","source":"fd00::2","for":"1h"}"#
        );
        let tally = Tally::default();
        tally.count(&ban);
        tally.count(&ban);
        assert!(tally.counts().any(|(name, n)| name == "ban" && n == 2));
        assert!(tally.counts().all(|(name, n)| name == "ban" || n == 0));
    }

    #[test]
    fn suppressed_sums_up_in_one_line() {
        let s = Suppressed {
            at: at(),
            knock: 5,
            reset: 0,
            lost: 2,
        };
        assert_eq!(
            s.render(false),
            "2026-09-21T14:13:20.123Z suppressed knock=5 reset=0 lost=2"
        );
        assert_eq!(
            s.render(true),
            r#"{"ts":"2026-09-21T14:13:20.123Z","event":"suppressed","knock":5,"reset":0,"lost":2}"#
        );
    }
}
