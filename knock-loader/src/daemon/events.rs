//! Where events come from (see `event` for what they are). Knock and reset
//! come from the kernel's per-packet ring (within its budget; the rest is summed up
//! in a `suppressed` line), open, open-failed, ban and spa_rejected (for what the
//! kernel refused) from its ring of rare events. Those rings are hints: every open is
//! also found in the authorization map (which records what made it), so an open the
//! ring lost is reported all the same, with its real reason; close comes from
//! watching the map too. Open for an SPA request and spa_rejected come from `run`'s
//! verifier.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use knock_common::{Authorization, Counter, EventKind, OpenFailure, SourceAddr, SourceKey, SpaRefusal};

use super::{
    event::{CloseReason, Event, Kind, Opener, ResetCause, Suppressed, UnbanReason},
    spa::Rejection,
};
use crate::{
    clock::{self, nanos},
    kernel::{
        maps::{State, sequence_name},
        reconcile::Dropped,
    },
    net::{Knock, unmapped},
};

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
            at: SystemTime::now(),
            knock,
            reset,
            lost,
        })
    }
}

/// Turns kernel records into events and watches the maps for the rest.
pub struct Events {
    /// Sequence names and open windows by index.
    sequences: HashMap<u8, (String, Duration)>,
    /// Authorizations announced and not yet closed, by when they were granted (which
    /// tells a renewal from the open before it).
    open: HashMap<SourceKey, u64>,
    /// Bans announced and not yet lifted, with their end.
    bans: HashMap<[u8; 16], u64>,
    ban_for: Duration,
    /// The publishing host of each authorization installed from the fleet.
    origins: HashMap<SourceKey, String>,
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
            origins: HashMap::new(),
        })
    }

    fn name(&self, seq: u8) -> String {
        self.sequences
            .get(&seq)
            .map_or_else(|| format!("#{seq}"), |(n, _)| n.clone())
    }

    fn event(at: SystemTime, addr: [u8; 16], kind: Kind) -> Event {
        Event {
            at,
            source: unmapped(addr),
            port: None,
            kind,
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
    ) -> Event {
        self.open.insert(key, auth.opened_ns);
        let kind = Kind::Open {
            sequence: self.name(key.seq),
            reason: Opener::Spa,
            open_for,
            client: Some(client.into()),
            origin: None,
        };
        self.origins.remove(&key);
        Self::event(SystemTime::now(), key.addr, kind)
    }

    /// `open` for an authorization the fleet installed, published by `origin`.
    pub fn fleet_open(&mut self, key: SourceKey, auth: &Authorization, origin: &str) -> Event {
        self.open.insert(key, auth.opened_ns);
        self.origins.insert(key, origin.into());
        let kind = Kind::Open {
            sequence: self.name(key.seq),
            reason: Opener::Fleet,
            open_for: Duration::from_nanos(auth.expires_ns.saturating_sub(auth.opened_ns)),
            client: None,
            origin: Some(origin.into()),
        };
        Self::event(SystemTime::now(), key.addr, kind)
    }

    /// `close` (revoked) for an authorization the fleet ended here, if it was
    /// announced and not closed yet.
    pub fn fleet_close(&mut self, key: SourceKey) -> Option<Event> {
        self.open.remove(&key)?;
        let kind = Kind::Close {
            sequence: self.name(key.seq),
            reason: CloseReason::Revoked,
            origin: self.origins.remove(&key),
        };
        Some(Self::event(SystemTime::now(), key.addr, kind))
    }

    /// `open_failed` for an authorization `run` could not add.
    pub fn open_failed(&self, key: SourceKey, detail: String) -> Event {
        let kind = Kind::OpenFailed {
            sequence: self.name(key.seq),
            reason: OpenFailure::MapFull,
            detail: Some(detail),
        };
        Self::event(SystemTime::now(), key.addr, kind)
    }

    /// `close` for an authorization whose sequence a new config no longer has.
    pub fn removed(dropped: &Dropped) -> Event {
        let kind = Kind::Close {
            sequence: dropped.sequence.clone(),
            reason: CloseReason::Removed,
            origin: None,
        };
        Self::event(SystemTime::now(), dropped.key.addr, kind)
    }

    /// `spa_rejected`: a request from `source` refused, and why.
    pub fn spa_rejected(source: [u8; 16], reason: &'static str, detail: String) -> Event {
        Self::event(SystemTime::now(), source, Kind::SpaRejected { reason, detail })
    }

    /// A record from one of the kernel's rings.
    pub fn from_kernel(&mut self, ev: &knock_common::Event, now_ns: u64) -> Option<Event> {
        let sequence = self.name(ev.seq);
        let kind = match EventKind::from_u8(ev.kind)? {
            EventKind::Knock => Kind::Knock {
                sequence,
                step: ev.step,
                of: ev.of,
            },
            EventKind::Reset => Kind::Reset {
                sequence,
                step: ev.step,
                of: ev.of,
                reason: ResetCause::from_kernel(ev.reason),
            },
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
                self.open.insert(key, ev.ts_ns);
                self.origins.remove(&key);
                let open_for = self.sequences.get(&ev.seq).map(|(_, d)| *d).unwrap_or_default();
                Kind::Open {
                    sequence,
                    reason: Opener::Knock,
                    open_for,
                    client: None,
                    origin: None,
                }
            }
            EventKind::OpenFailed => Kind::OpenFailed {
                sequence,
                reason: if ev.reason == OpenFailure::Spent as u8 {
                    OpenFailure::Spent
                } else {
                    OpenFailure::MapFull
                },
                detail: None,
            },
            EventKind::Ban => {
                let until = ev.ts_ns.saturating_add(nanos(self.ban_for));
                // Found in the map first: said already.
                if self.bans.get(&ev.addr) == Some(&until) {
                    return None;
                }
                self.bans.insert(ev.addr, until);
                Kind::Ban {
                    ban_for: self.ban_for,
                }
            }
            EventKind::SpaRefused => {
                let rejection = if ev.reason == SpaRefusal::UnknownKey as u8 {
                    Rejection::UnknownKey
                } else if ev.reason == SpaRefusal::BadCheck as u8 {
                    Rejection::BadCheck
                } else {
                    Rejection::Malformed
                };
                Kind::SpaRejected {
                    reason: rejection.reason(),
                    detail: rejection.to_string(),
                }
            }
        };
        let mut event = Self::event(clock::wall_time(ev.ts_ns, now_ns), ev.addr, kind);
        event.port = Some(Knock {
            port: ev.port,
            proto: ev.proto,
        });
        Some(event)
    }

    /// Removes expired authorizations and reports what changed in the map since the
    /// last sweep: `close` for expired or revoked ones, `open` for new or renewed ones
    /// not announced yet (by `xknock allow`, or whose ring event was lost), with the
    /// reason the map records.
    pub fn sweep(&mut self, state: &mut State) -> Result<Vec<Event>> {
        let now_ns = state.now_ns()?;
        let now = SystemTime::now();
        let current: HashMap<SourceKey, Authorization> = state.repair_hint().into_iter().collect();
        let mut events = Vec::new();
        for (key, auth) in &current {
            let expires = auth.expires_ns;
            if expires <= now_ns {
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
                let kind = Kind::Close {
                    sequence: self.name(key.seq),
                    reason: CloseReason::Expired,
                    origin: self.origins.remove(key),
                };
                events.push(Self::event(clock::wall_time(expires, now_ns), key.addr, kind));
                self.open.remove(key);
            } else if self.open.get(key) != Some(&auth.opened_ns) {
                let at = clock::wall_time(auth.opened_ns.min(now_ns), now_ns);
                let kind = Kind::Open {
                    sequence: self.name(key.seq),
                    reason: Opener::from_origin(auth.origin),
                    open_for: Duration::from_nanos(expires.saturating_sub(auth.opened_ns)),
                    client: None,
                    origin: self.origins.get(key).cloned(),
                };
                events.push(Self::event(at, key.addr, kind));
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
            let kind = Kind::Close {
                sequence: self.name(key.seq),
                reason: CloseReason::Revoked,
                origin: self.origins.remove(&key),
            };
            events.push(Self::event(now, key.addr, kind));
        }
        self.sweep_bans(state, now_ns, &mut events);
        Ok(events)
    }

    /// `ban` for bans found in the map and not announced, `unban` for bans that
    /// ended (the record is removed, failures forgotten) or were lifted by
    /// `xknock unban`.
    fn sweep_bans(&mut self, state: &mut State, now_ns: u64, events: &mut Vec<Event>) {
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
                events.push(Self::event(
                    at,
                    key.addr,
                    Kind::Ban {
                        ban_for: self.ban_for,
                    },
                ));
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
            let (at, reason) = if until <= now_ns {
                (clock::wall_time(until, now_ns), UnbanReason::Expired)
            } else {
                (SystemTime::now(), UnbanReason::Lifted)
            };
            events.push(Self::event(at, addr, Kind::Unban { reason }));
        }
    }
}
