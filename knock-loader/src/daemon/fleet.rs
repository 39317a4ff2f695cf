//! `run`'s side of `[fleet]`: what etcd reports is installed in (or removed from)
//! the kernel, what this host granted or revoked is published, and SPA nonces are
//! claimed fleet-wide. The packet path never waits for any of it: a local grant is
//! in the kernel before it is published, and a remote one is installed when the
//! watcher reports it.
//!
//! Decisions follow from state: what to publish or delete from complete reads of
//! the authorization map (`Ledger::plan`), what was deleted while the watch was
//! down from complete listings (`Ledger::relisted`). The watch is the fast path.

mod etcd;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use anyhow::Result;
use knock_common::{Authorization, Origin, SourceKey};
use tokio::sync::{mpsc, oneshot};

pub use etcd::Report;
use etcd::{Claimed, Publish, Request};

use super::{
    event::Event,
    events::Events,
    spa::{Nonce, Rejection},
};
use crate::{
    clock::{nanos, wall_time},
    config::{self, Config, OfflineSpa},
    fleet::{
        ledger::{EXPIRY_GRACE_MS, Gone, Ledger, Seen},
        record::{self, AuthKey, Keys, Record, Refusal, Shared},
    },
    kernel::maps::State,
    net::{source_key, unmapped},
    spa::packet::unix_ms,
};

/// How long an SPA request waits for its nonce's claim before `offline_spa` decides.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// The fleet's state for the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicBool,
    /// Authorizations this host wrote to etcd.
    pub published: AtomicU64,
    /// Authorizations from other hosts installed here.
    pub installed: AtomicU64,
    /// Records from other hosts refused (too long, unknown sequence, malformed...).
    pub refused: AtomicU64,
    /// The last installed record's age when it arrived (ms, clock skew included).
    pub watch_lag_ms: AtomicU64,
}

pub struct Fleet {
    config: config::Fleet,
    keys: Keys,
    ledger: Ledger,
    requests: mpsc::UnboundedSender<Request>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// A session is up and has listed: writes and claims go to etcd.
    connected: bool,
    /// A write is on its way; the next plan waits for its confirmation.
    writing: bool,
    /// Sequence names by kernel slot, and by name their first slot with the longest
    /// a received authorization may claim.
    names: HashMap<u8, String>,
    slots: HashMap<String, (u8, Duration)>,
    stats: Arc<Stats>,
    /// Where `status` finds the origins of what the fleet installed.
    origins_file: PathBuf,
    /// A refusal or failure said; said again after things went right.
    warned: bool,
}

impl Fleet {
    /// Starts the etcd task for `config`'s `[fleet]`, if it has one.
    pub fn start(config: &Config, state: &State) -> Result<Option<Fleet>> {
        let Some(fleet) = config.fleet.clone() else {
            return Ok(None);
        };
        let keys = Keys::new(&fleet.prefix).map_err(anyhow::Error::msg)?;
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        tokio::spawn(etcd::serve(fleet.clone(), keys.clone(), requests_rx, reports_tx));
        log::info!(
            "fleet: {} shares {} through {}",
            fleet.name,
            fleet
                .share
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", "),
            fleet.etcd.join(", ")
        );
        let mut f = Fleet {
            config: fleet,
            keys,
            ledger: Ledger::default(),
            requests,
            reports,
            connected: false,
            writing: false,
            names: HashMap::new(),
            slots: HashMap::new(),
            stats: Arc::default(),
            origins_file: crate::status::origins_file(&config.pin_dir),
            warned: false,
        };
        f.retable(config, state)?;
        f.save_origins();
        Ok(Some(f))
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The tables that name slots, after a start or a reload.
    pub fn retable(&mut self, config: &Config, state: &State) -> Result<()> {
        self.names.clear();
        self.slots.clear();
        for (slot, c) in state.sequences()? {
            let name = crate::kernel::maps::sequence_name(&c);
            self.names.insert(slot, name.clone());
            let Some(seq) = config.sequences.iter().find(|s| s.name == name) else {
                continue;
            };
            let spa = config.spa.iter().flat_map(|spa| {
                let clients = spa.clients.iter().map(|c| (&c.sequences, c.max_open));
                let fwknop = spa.fwknop.iter().map(|c| (&c.sequences, c.max_open));
                clients
                    .chain(fwknop)
                    .filter(|(seqs, _)| seqs.contains(&name))
                    .map(|(_, max)| max)
            });
            let limit = spa.fold(seq.open_for, Duration::max);
            self.slots.entry(name).or_insert((slot, limit));
        }
        Ok(())
    }

    /// Waits for etcd's next report (the loop's select arm).
    pub async fn report(&mut self) -> Option<Report> {
        self.reports.recv().await
    }

    /// Handles `first` and every report already waiting; returns the events.
    pub fn handle(&mut self, first: Report, state: &mut State, events: &mut Events) -> Vec<Event> {
        let mut out = vec![];
        let mut next = Some(first);
        let mut installed_changed = false;
        while let Some(report) = next {
            installed_changed |= self.one(report, state, events, &mut out);
            next = self.reports.try_recv().ok();
        }
        if installed_changed {
            self.save_origins();
        }
        out
    }

    /// One report; whether what the fleet installed here changed.
    fn one(&mut self, report: Report, state: &mut State, events: &mut Events, out: &mut Vec<Event>) -> bool {
        match report {
            Report::Listed(kvs) => {
                let mut listed = HashSet::new();
                for (key, value) in &kvs {
                    if let Some(k) = self.keys.parse_auth(key) {
                        listed.insert(k.clone());
                        out.extend(self.arrived(k, value, state, events));
                    }
                }
                for (key, gone) in self.ledger.relisted(&listed, unix_ms(SystemTime::now())) {
                    out.extend(self.remove(&key, &gone, state, events));
                }
                if !self.connected {
                    log::info!(
                        "fleet: connected to etcd ({} authorization(s) listed)",
                        listed.len()
                    );
                }
                self.connected = true;
                self.stats.connected.store(true, Relaxed);
                self.publish(state);
                true
            }
            Report::Put(key, value) => {
                let Some(k) = self.keys.parse_auth(&key) else {
                    return false;
                };
                let events = self.arrived(k, &value, state, events);
                let changed = events.is_some();
                out.extend(events);
                changed
            }
            Report::Deleted(key) => {
                let Some(k) = self.keys.parse_auth(&key) else {
                    return false;
                };
                let Some(gone) = self.ledger.deleted(&k) else {
                    return false;
                };
                out.extend(self.remove(&k, &gone, state, events));
                true
            }
            Report::Written { published, deleted } => {
                self.writing = false;
                self.stats.published.fetch_add(published.len() as u64, Relaxed);
                for p in published {
                    self.ledger.published(p.key, &p.record, p.opened_ns);
                }
                for k in &deleted {
                    self.ledger.deleted(k);
                }
                // What was granted while the write was on its way.
                self.publish(state);
                false
            }
            Report::WriteFailed(why) => {
                self.writing = false;
                log::warn!("fleet: cannot publish: {why}; planned again when etcd answers");
                false
            }
            Report::Lost(why) => {
                if self.connected || !self.warned {
                    log::warn!(
                        "fleet: etcd unreachable ({why}); reconnecting. Local knocks and SPA keep \
                         working; nothing arrives from the fleet meanwhile"
                    );
                    self.warned = true;
                }
                self.connected = false;
                self.stats.connected.store(false, Relaxed);
                false
            }
        }
    }

    /// A record another host put: installed if admitted and longer than what the map
    /// holds for it.
    fn arrived(
        &mut self,
        key: AuthKey,
        value: &[u8],
        state: &mut State,
        events: &mut Events,
    ) -> Option<Event> {
        let now_ms = unix_ms(SystemTime::now());
        let slot = self.slots.get(&key.sequence).copied();
        let admitted = Record::from_json(value).and_then(|record| {
            let limit = slot.map(|(_, limit)| limit);
            let expires_ms = record::admit(
                &key,
                &record,
                &self.config.name,
                now_ms,
                limit,
                self.config.clock_skew,
            )?;
            Ok((record, expires_ms))
        });
        let (record, expires_ms) = match admitted {
            Ok(admitted) => admitted,
            Err(Refusal::Own) => return None,
            Err(why) => {
                self.stats.refused.fetch_add(1, Relaxed);
                log::warn!("fleet: refused {}/{}: {why:?}", key.addr, key.sequence);
                return None;
            }
        };
        let (slot, _) = slot?;
        // Its record replaced this host's in etcd, if there was one.
        self.ledger.replaced(&key);
        let skey = source_key(key.addr, slot);
        let now_ns = state.now_ns().ok()?;
        let expires_ns = now_ns.saturating_add(nanos(Duration::from_millis(expires_ms - now_ms)));
        if state
            .authorized
            .get(&skey, 0)
            .is_ok_and(|a| a.expires_ns >= expires_ns)
        {
            // As long here already (installed before a relisting, or granted here).
            return None;
        }
        let auth = Authorization::new(now_ns, expires_ns, Origin::Fleet);
        if let Err(e) = state.authorize(&skey, &auth) {
            return Some(events.open_failed(skey, format!("from the fleet ({}): {e:#}", record.origin)));
        }
        self.ledger.installed(key, &record, now_ns);
        self.stats.installed.fetch_add(1, Relaxed);
        self.stats
            .watch_lag_ms
            .store(now_ms.saturating_sub(record.opened_ms), Relaxed);
        Some(events.fleet_open(skey, &auth, &record.origin))
    }

    /// An authorization deleted fleet-wide: removed here if the map still holds the
    /// grant the ledger knew (not one made since).
    fn remove(&self, key: &AuthKey, gone: &Gone, state: &mut State, events: &mut Events) -> Option<Event> {
        // Deleted at its expiry: etcd's lease ended, the sweep says `expired`.
        if gone.expires_ms <= unix_ms(SystemTime::now()) + EXPIRY_GRACE_MS {
            return None;
        }
        let (slot, _) = self.slots.get(&key.sequence)?;
        let skey = source_key(key.addr, *slot);
        let current = state.authorized.get(&skey, 0).ok()?;
        if current.opened_ns != gone.opened_ns {
            return None;
        }
        if let Err(e) = state.revoke(key.addr, Some(*slot)) {
            log::warn!("fleet: cannot revoke {}/{}: {e:#}", key.addr, key.sequence);
            return None;
        }
        events.fleet_close(skey)
    }

    /// Publishes what the map holds and etcd does not, and deletes fleet-wide what
    /// was revoked here, from one complete read of the map. Waits while a write is
    /// on its way or etcd is away (what is not confirmed is planned again).
    pub fn publish(&mut self, state: &State) {
        if !self.connected || self.writing {
            return;
        }
        let Ok(now_ns) = state.now_ns() else { return };
        let mut map = vec![];
        for entry in &state.authorized {
            // A failed read is evidence of nothing: no plan from it.
            let Ok((key, auth)) = entry else { return };
            if let Some(seen) = self.seen(key, auth, now_ns) {
                map.push(seen);
            }
        }
        let now_ms = unix_ms(SystemTime::now());
        let actions = self
            .ledger
            .plan(&self.config.name, &self.config.share, &map, now_ms);
        if actions.publish.is_empty() && actions.delete.is_empty() {
            return;
        }
        let publish = actions
            .publish
            .into_iter()
            .map(|(key, record, opened_ns)| Publish {
                key,
                record,
                opened_ns,
            })
            .collect();
        let write = Request::Write {
            publish,
            delete: actions.delete,
        };
        self.writing = self.requests.send(write).is_ok();
    }

    fn seen(&self, key: SourceKey, auth: Authorization, now_ns: u64) -> Option<Seen> {
        if auth.expires_ns <= now_ns {
            return None;
        }
        let opener = match Origin::from_u8(auth.origin) {
            Some(Origin::Knock) => Some(Shared::Knock),
            Some(Origin::Spa) => Some(Shared::Spa),
            Some(Origin::Allow) => Some(Shared::Allow),
            Some(Origin::Fleet) | None => None,
        };
        Some(Seen {
            key: AuthKey {
                addr: unmapped(key.addr),
                sequence: self.names.get(&key.seq)?.clone(),
            },
            opener,
            opened_ns: auth.opened_ns,
            opened_ms: unix_ms(wall_time(auth.opened_ns, now_ns)),
            expires_ms: unix_ms(wall_time(auth.expires_ns, now_ns)),
        })
    }

    /// Claims an SPA request's nonce fleet-wide (kept for `ttl`, the time the request
    /// is acceptable anywhere); `Err` names the rejection.
    pub async fn claim(&self, nonce: &Nonce, ttl: Duration) -> Result<(), Rejection> {
        let claimed = if self.connected {
            let (reply, answer) = oneshot::channel();
            let request = Request::Claim {
                key: self.keys.nonce(&nonce.key_id, &nonce.nonce),
                ttl,
                reply,
            };
            match self.requests.send(request) {
                Ok(()) => tokio::time::timeout(CLAIM_TIMEOUT, answer)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(Claimed::Unreachable),
                Err(_) => Claimed::Unreachable,
            }
        } else {
            Claimed::Unreachable
        };
        decide(claimed, self.config.offline_spa)
    }

    /// Writes the origins of what the fleet installed for `status` (best effort: a
    /// `status` without it shows no origins).
    fn save_origins(&self) {
        let origins: BTreeMap<String, &str> = self
            .ledger
            .remote()
            .map(|(k, origin)| (format!("{}/{}", k.addr, k.sequence), origin))
            .collect();
        let text = serde_json::to_string(&origins).unwrap_or_default();
        if let Err(e) = crate::secret_file::replace(&self.origins_file, &text) {
            log::debug!("fleet: cannot write {}: {e}", self.origins_file.display());
        }
    }
}

/// A request whose nonce was `claimed` so: granted, a replay, or (etcd away) what
/// `offline` says.
fn decide(claimed: Claimed, offline: OfflineSpa) -> Result<(), Rejection> {
    match (claimed, offline) {
        (Claimed::Mine, _) | (Claimed::Unreachable, OfflineSpa::Local) => Ok(()),
        (Claimed::Taken, _) => Err(Rejection::ReplayedInFleet),
        (Claimed::Unreachable, OfflineSpa::Refuse) => Err(Rejection::FleetUnreachable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_nonce_is_a_replay_and_offline_spa_decides_without_etcd() {
        for offline in [OfflineSpa::Local, OfflineSpa::Refuse] {
            assert_eq!(decide(Claimed::Mine, offline), Ok(()));
            assert_eq!(decide(Claimed::Taken, offline), Err(Rejection::ReplayedInFleet));
        }
        assert_eq!(decide(Claimed::Unreachable, OfflineSpa::Local), Ok(()));
        let refused = decide(Claimed::Unreachable, OfflineSpa::Refuse);
        assert_eq!(refused, Err(Rejection::FleetUnreachable));
        assert_eq!(refused.map_err(|r| r.reason()), Err("fleet_unreachable"));
    }
}
