//! Events as `run` prints them: one per line, human-readable or JSON. Knock and reset
//! come from the kernel's per-packet ring (within its budget; the rest is summed up
//! in a `suppressed` line), open, open-failed, ban and spa_rejected (for what the
//! kernel refused) from its ring of rare events. Those rings are hints: every open is
//! also found in the authorization map (which records what made it), so an open the
//! ring lost is reported all the same, with its real reason; close comes from
//! watching the map too. Open for an SPA request and spa_rejected come from `run`'s
//! verifier.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use knock_common::{
    Authorization, Event, EventKind, OpenFailure, Origin, PROTO_UDP, ResetReason, SourceAddr, SourceKey,
    SpaRefusal,
};
use serde::Serialize;

use super::spa::Rejection;
use crate::{
    clock::{self, nanos},
    kernel::{
        maps::{State, sequence_name},
        reconcile::Dropped,
    },
    net::unmapped,
};

/// One output line. Field names are the public contract (SPEC.md, Events).
#[derive(Debug, Serialize)]
pub struct EventLine {
    pub ts: String,
    pub event: &'static str,
    pub source: IpAddr,
    /// Absent for `ban` and `unban`, which concern the source as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of: Option<u8>,
    /// The packet's destination, for kernel events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// How long an `open` lasts.
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub open_for: Option<String>,
    /// The SPA client whose request opened (its name in the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// What exactly was wrong with a rejected SPA request (how far off the clock was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EventLine {
    pub fn render(&self, json: bool) -> String {
        if json {
            return serde_json::to_string(self).unwrap_or_default();
        }
        let mut line = format!("{} {:<6} {}", self.ts, self.event, self.source);
        if let Some(sequence) = &self.sequence {
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
        if let Some(client) = &self.client {
            line += &format!(" client={client}");
        }
        if let Some(detail) = &self.detail {
            line += &format!(": {detail}");
        }
        line
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `suppressed`: what the kernel counted instead of reporting since the last one (it
/// is printed once a second at most, and only when something was).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Suppressed {
    pub ts: String,
    pub event: &'static str,
    /// Knock and reset events over the per-CPU budget (`[events]`).
    pub knock: u64,
    pub reset: u64,
    /// Events a full ring had no room for.
    pub lost: u64,
}

impl Suppressed {
    pub fn render(&self, json: bool) -> String {
        if json {
            return serde_json::to_string(self).unwrap_or_default();
        }
        format!(
            "{} {:<6} knock={} reset={} lost={}",
            self.ts, self.event, self.knock, self.reset, self.lost
        )
    }
}

/// The kernel's counters behind `suppressed` lines, and the totals last reported.
#[derive(Default)]
pub struct Suppression {
    reported: [u64; 3],
}

impl Suppression {
    /// The totals seen at start: only what follows is reported.
    pub fn new(state: &State) -> Suppression {
        Suppression {
            reported: Self::totals(state).unwrap_or_default(),
        }
    }

    fn totals(state: &State) -> Result<[u64; 3]> {
        use knock_common::Counter;
        Ok([
            state.counter(Counter::SuppressedKnock)?,
            state.counter(Counter::SuppressedReset)?,
            state.counter(Counter::EventsLost)?,
        ])
    }

    /// A line for what was suppressed or lost since the last call, if anything was.
    pub fn line(&mut self, state: &State) -> Option<Suppressed> {
        let totals = Self::totals(state).ok()?;
        let [knock, reset, lost] = std::array::from_fn(|i| totals[i].saturating_sub(self.reported[i]));
        self.reported = totals;
        (knock | reset | lost != 0).then(|| Suppressed {
            ts: rfc3339(SystemTime::now()),
            event: "suppressed",
            knock,
            reset,
            lost,
        })
    }
}

/// What an authorization's origin is called in an `open` line's `reason`.
fn origin_reason(origin: u8) -> &'static str {
    match Origin::from_u8(origin) {
        Some(Origin::Knock) => "knock",
        Some(Origin::Spa) => "spa",
        Some(Origin::Allow) => "allow",
        Some(Origin::Fleet) => "fleet",
        None => "unknown",
    }
}

/// Turns kernel events into lines and watches authorizations for the rest.
pub struct Events {
    /// Sequence names and open windows by index.
    sequences: HashMap<u8, (String, Duration)>,
    /// Authorizations announced and not yet closed, by when they were granted (which
    /// tells a renewal from the open before it).
    open: HashMap<SourceKey, u64>,
    /// Bans announced and not yet lifted, with their end.
    bans: HashMap<[u8; 16], u64>,
    ban_for: Duration,
}

impl Events {
    /// Starts from the state's current authorizations (adopted ones are not re-announced).
    pub fn new(state: &State) -> Result<Events> {
        let sequences = state
            .sequences()?
            .into_iter()
            .map(|(i, c)| (i, (sequence_name(&c), Duration::from_nanos(c.open_for_ns))))
            .collect();
        let open = state
            .authorized
            .iter()
            .filter_map(Result::ok)
            .map(|(k, a)| (k, a.opened_ns))
            .collect();
        let now = state.now_ns()?;
        let bans = state.live_bans(now);
        let ban_for = Duration::from_nanos(state.settings()?.ban_for_ns);
        Ok(Events {
            sequences,
            open,
            bans,
            ban_for,
        })
    }

    fn name(&self, seq: u8) -> String {
        self.sequences
            .get(&seq)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("#{seq}"))
    }

    fn line(&self, ts: SystemTime, event: &'static str, addr: [u8; 16], seq: u8) -> EventLine {
        EventLine {
            ts: rfc3339(ts),
            event,
            source: unmapped(addr),
            sequence: Some(self.name(seq)),
            step: None,
            of: None,
            port: None,
            reason: None,
            open_for: None,
            client: None,
            detail: None,
        }
    }

    /// `open` for an authorization `run` added on an SPA request (announced here, so
    /// the sweep does not take it for one from `xknock allow`).
    pub fn spa_open(
        &mut self,
        key: SourceKey,
        auth: &Authorization,
        open_for: Duration,
        client: &str,
    ) -> EventLine {
        self.open.insert(key, auth.opened_ns);
        let mut l = self.line(SystemTime::now(), "open", key.addr, key.seq);
        l.reason = Some("spa");
        l.open_for = Some(clock::human(open_for));
        l.client = Some(client.into());
        l
    }

    /// `open_failed` for an authorization `run` could not add.
    pub fn open_failed(&self, key: SourceKey, detail: String) -> EventLine {
        let mut l = self.line(SystemTime::now(), "open_failed", key.addr, key.seq);
        l.reason = Some("authorization map full");
        l.detail = Some(detail);
        l
    }

    /// `close` for an authorization whose sequence a new config no longer has.
    pub fn removed(&self, dropped: &Dropped) -> EventLine {
        let mut l = self.line(SystemTime::now(), "close", dropped.key.addr, dropped.key.seq);
        l.sequence = Some(dropped.sequence.clone());
        l.reason = Some("removed");
        l
    }

    /// `spa_rejected`: a request from `source` refused, and why.
    pub fn spa_rejected(&self, source: [u8; 16], reason: &'static str, detail: String) -> EventLine {
        let mut l = self.line(SystemTime::now(), "spa_rejected", source, 0);
        l.sequence = None;
        l.reason = Some(reason);
        l.detail = Some(detail);
        l
    }

    /// A record from the kernel's ring buffer.
    pub fn from_kernel(&mut self, ev: &Event, now_ns: u64) -> Option<EventLine> {
        let kind = EventKind::from_u8(ev.kind)?;
        let mut line = self.line(clock::wall_time(ev.ts_ns, now_ns), "", ev.addr, ev.seq);
        line.port = Some(format!(
            "{}/{}",
            ev.port,
            if ev.proto == PROTO_UDP { "udp" } else { "tcp" }
        ));
        match kind {
            EventKind::Knock => {
                line.event = "knock";
                (line.step, line.of) = (Some(ev.step), Some(ev.of));
            }
            EventKind::Reset => {
                line.event = "reset";
                (line.step, line.of) = (Some(ev.step), Some(ev.of));
                line.reason = Some(match ev.reason {
                    r if r == ResetReason::Timeout as u8 => "timeout",
                    r if r == ResetReason::Strict as u8 => "strict",
                    _ => "wrong",
                });
            }
            EventKind::Open => {
                let key = SourceKey {
                    addr: ev.addr,
                    seq: ev.seq,
                    _pad: [0; 3],
                };
                // Found in the map first (the ring was late): said already.
                if self.open.get(&key) == Some(&ev.ts_ns) {
                    return None;
                }
                line.event = "open";
                line.reason = Some("knock");
                let open_for = self.sequences.get(&ev.seq).map(|(_, d)| *d).unwrap_or_default();
                line.open_for = Some(clock::human(open_for));
                self.open.insert(key, ev.ts_ns);
            }
            EventKind::OpenFailed => {
                line.event = "open_failed";
                line.reason = Some(if ev.reason == OpenFailure::Spent as u8 {
                    "one-time sequence used"
                } else {
                    "authorization map full"
                });
            }
            EventKind::Ban => {
                let until = ev.ts_ns.saturating_add(nanos(self.ban_for));
                // Found in the map first: said already.
                if self.bans.get(&ev.addr) == Some(&until) {
                    return None;
                }
                line.event = "ban";
                line.sequence = None;
                line.open_for = Some(clock::human(self.ban_for));
                self.bans.insert(ev.addr, until);
            }
            EventKind::SpaRefused => {
                let rejection = if ev.reason == SpaRefusal::UnknownKey as u8 {
                    Rejection::UnknownKey
                } else if ev.reason == SpaRefusal::BadCheck as u8 {
                    Rejection::BadCheck
                } else {
                    Rejection::Malformed
                };
                line.event = "spa_rejected";
                line.sequence = None;
                line.reason = Some(rejection.reason());
                line.detail = Some(rejection.to_string());
            }
            EventKind::Close | EventKind::Unban => return None,
        }
        Some(line)
    }

    /// Removes expired authorizations and reports what changed in the map since the
    /// last sweep: `close` for expired or revoked ones, `open` for new or renewed ones
    /// not announced yet (by `xknock allow`, or whose ring event was lost), with the
    /// reason the map records.
    pub fn sweep(&mut self, state: &mut State) -> Result<Vec<EventLine>> {
        let now_ns = state.now_ns()?;
        let now = SystemTime::now();
        let current: HashMap<SourceKey, Authorization> = state.repair_hint().into_iter().collect();
        let mut lines = Vec::new();
        for (key, auth) in &current {
            let expires = &auth.expires_ns;
            if *expires <= now_ns {
                // Renewed meanwhile (a re-knock at expiry): still open, nothing to say.
                match state.unauthorize_expired(key, now_ns) {
                    Ok(true) => {}
                    Ok(false) if state.authorized.get(key, 0).is_ok() => continue,
                    // Removed by someone else meanwhile: closed all the same.
                    Ok(false) => {}
                    Err(e) => {
                        log::warn!("expiry: {e:#}; retried at the next sweep");
                        continue;
                    }
                }
                let mut l = self.line(clock::wall_time(*expires, now_ns), "close", key.addr, key.seq);
                l.reason = Some("expired");
                lines.push(l);
                self.open.remove(key);
            } else if self.open.get(key) != Some(&auth.opened_ns) {
                let at = clock::wall_time(auth.opened_ns.min(now_ns), now_ns);
                let mut l = self.line(at, "open", key.addr, key.seq);
                l.reason = Some(origin_reason(auth.origin));
                l.open_for = Some(clock::human(Duration::from_nanos(
                    expires.saturating_sub(auth.opened_ns),
                )));
                lines.push(l);
                self.open.insert(*key, auth.opened_ns);
            }
        }
        let revoked: Vec<SourceKey> = self
            .open
            .keys()
            .filter(|k| !current.contains_key(k))
            .copied()
            .collect();
        for key in revoked {
            self.open.remove(&key);
            let mut l = self.line(now, "close", key.addr, key.seq);
            l.reason = Some("revoked");
            lines.push(l);
        }
        self.sweep_bans(state, now_ns, &mut lines);
        Ok(lines)
    }

    /// `unban` for bans that ended (the record is removed, failures forgotten) or
    /// were lifted by `xknock unban`.
    fn sweep_bans(&mut self, state: &mut State, now_ns: u64, lines: &mut Vec<EventLine>) {
        let current: HashMap<SourceAddr, u64> = state
            .bans
            .iter()
            .filter_map(Result::ok)
            .map(|(k, b)| (k, b.until_ns))
            .collect();
        for (key, until) in &current {
            if *until != 0 && *until <= now_ns {
                let _ = state.bans.remove(key);
            } else if *until > now_ns && self.bans.get(&key.addr) != Some(until) {
                // A ban whose event the ring lost (or a new one): said from the map.
                let at = clock::wall_time(until.saturating_sub(nanos(self.ban_for)), now_ns);
                let mut l = self.line(at, "ban", key.addr, 0);
                l.sequence = None;
                l.open_for = Some(clock::human(self.ban_for));
                lines.push(l);
                self.bans.insert(key.addr, *until);
            }
        }
        let ended: Vec<([u8; 16], u64)> = self
            .bans
            .iter()
            .filter(|(addr, _)| {
                current
                    .get(&SourceAddr { addr: **addr })
                    .is_none_or(|u| *u <= now_ns)
            })
            .map(|(a, u)| (*a, *u))
            .collect();
        for (addr, until) in ended {
            self.bans.remove(&addr);
            let expired = until <= now_ns;
            let ts = if expired {
                clock::wall_time(until, now_ns)
            } else {
                SystemTime::now()
            };
            let mut l = self.line(ts, "unban", addr, 0);
            l.sequence = None;
            l.reason = Some(if expired { "expired" } else { "lifted" });
            lines.push(l);
        }
    }
}
