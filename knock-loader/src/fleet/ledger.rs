//! What this host believes the fleet holds for each authorization it knows of, and
//! the actions that follow from a complete read of its authorization map: publish
//! what was granted here (again, if etcd was away), delete fleet-wide what was revoked
//! here, forget what expired. A read that failed is never planned from: not seeing
//! an authorization is evidence of nothing.

use std::collections::{HashMap, HashSet};

use super::record::{AuthKey, Record, Shared};

/// One authorization as a complete read of the kernel's map shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub key: AuthKey,
    /// What made it; `None` for one the fleet installed here.
    pub opener: Option<Shared>,
    /// Kernel clock: with the key, what tells one grant from another.
    pub opened_ns: u64,
    /// Unix ms, converted by the caller.
    pub opened_ms: u64,
    pub expires_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    opened_ns: u64,
    expires_ms: u64,
    /// The publishing host, for one installed from the fleet.
    remote: Option<String>,
}

/// How close to its expiry a missing authorization is taken for expired, not
/// revoked: clocks in ms and in kernel ns round apart, and deleting a record its
/// host renewed just then would end the renewal fleet-wide.
pub const EXPIRY_GRACE_MS: u64 = 1_000;

/// An authorization gone from etcd that this host holds (or held): the caller
/// removes it from the kernel if the map still has this grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    pub opened_ns: u64,
    /// Unix ms: a deletion near it is etcd's lease ending, not a revocation.
    pub expires_ms: u64,
    /// The publishing host, for one installed from the fleet.
    pub remote: Option<String>,
}

/// What to do after a read of the map.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub publish: Vec<(AuthKey, Record, u64)>,
    /// Revoked here while still valid: ended fleet-wide.
    pub delete: Vec<AuthKey>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<AuthKey, Entry>,
}

impl Ledger {
    /// The actions a complete read `map` at `now_ms` calls for, publishing what
    /// `share` names. Nothing is recorded until the caller confirms it
    /// ([`Ledger::published`], [`Ledger::deleted`]): what failed is planned again.
    /// `map` must be read after the last [`Ledger::installed`], or a fleet
    /// authorization installed since would be taken for one revoked here.
    pub fn plan(&mut self, name: &str, share: &[Shared], map: &[Seen], now_ms: u64) -> Actions {
        self.entries.retain(|_, e| e.expires_ms > now_ms);
        let mut actions = Actions::default();
        let present: HashSet<&AuthKey> = map.iter().map(|s| &s.key).collect();
        for seen in map.iter().filter(|s| s.expires_ms > now_ms) {
            let Some(opener) = seen.opener.filter(|o| share.contains(o)) else {
                continue;
            };
            if self
                .entries
                .get(&seen.key)
                .is_some_and(|e| e.opened_ns == seen.opened_ns)
            {
                continue;
            }
            let record = Record {
                version: super::record::RECORD_VERSION,
                origin: name.into(),
                opener,
                opened_ms: seen.opened_ms,
                expires_ms: seen.expires_ms,
            };
            actions.publish.push((seen.key.clone(), record, seen.opened_ns));
        }
        actions.delete = self
            .entries
            .iter()
            .filter(|(k, e)| !present.contains(k) && e.expires_ms > now_ms + EXPIRY_GRACE_MS)
            .map(|(k, _)| k.clone())
            .collect();
        actions
    }

    /// `key`'s grant of `opened_ns` is in etcd.
    pub fn published(&mut self, key: AuthKey, record: &Record, opened_ns: u64) {
        let entry = Entry {
            opened_ns,
            expires_ms: record.expires_ms,
            remote: None,
        };
        self.entries.insert(key, entry);
    }

    /// `key` is gone from etcd (deleted by this host, or its deletion watched).
    pub fn deleted(&mut self, key: &AuthKey) -> Option<Gone> {
        self.entries.remove(key).map(|e| Gone {
            opened_ns: e.opened_ns,
            expires_ms: e.expires_ms,
            remote: e.remote,
        })
    }

    /// Another host's record replaced this host's under `key` (one key per address
    /// and sequence: the last writer's record is etcd's). What this host granted is
    /// no longer in etcd, so the next plan publishes it again if the map still holds
    /// it; a record installed from the fleet stays as it is.
    pub fn replaced(&mut self, key: &AuthKey) {
        if self.entries.get(key).is_some_and(|e| e.remote.is_none()) {
            self.entries.remove(key);
        }
    }

    /// An admitted record from another host, installed in the kernel as `opened_ns`.
    pub fn installed(&mut self, key: AuthKey, record: &Record, opened_ns: u64) {
        let entry = Entry {
            opened_ns,
            expires_ms: record.expires_ms,
            remote: Some(record.origin.clone()),
        };
        self.entries.insert(key, entry);
    }

    /// After a complete listing (at start, and after a reconnect or a compaction, when
    /// deletions may have been missed): what this host holds, from the fleet or
    /// published, that the listing no longer has while still valid at `now_ms`:
    /// deleted elsewhere meanwhile, which the caller removes from the kernel.
    pub fn relisted(&mut self, listed: &HashSet<AuthKey>, now_ms: u64) -> Vec<(AuthKey, Gone)> {
        let gone: Vec<AuthKey> = self
            .entries
            .iter()
            .filter(|(k, e)| !listed.contains(*k) && e.expires_ms > now_ms + EXPIRY_GRACE_MS)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.deleted(&k).map(|g| (k, g)))
            .collect()
    }

    /// Every authorization installed from the fleet, with its publishing host.
    pub fn remote(&self) -> impl Iterator<Item = (&AuthKey, &str)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| Some((k, e.remote.as_deref()?)))
    }

    /// The publishing host of an authorization installed from the fleet (`status`).
    pub fn origin(&self, key: &AuthKey) -> Option<&str> {
        self.entries.get(key)?.remote.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARE: &[Shared] = &[Shared::Knock, Shared::Spa, Shared::Allow];

    fn key(addr: &str) -> AuthKey {
        AuthKey {
            addr: addr.parse().unwrap(),
            sequence: "ssh".into(),
        }
    }

    fn seen(addr: &str, opener: Option<Shared>, opened_ns: u64, expires_ms: u64) -> Seen {
        Seen {
            key: key(addr),
            opener,
            opened_ns,
            opened_ms: 1,
            expires_ms,
        }
    }

    /// A knock's record published by host "b".
    fn from_b(expires_ms: u64) -> Record {
        Record {
            version: 1,
            origin: "b".into(),
            opener: Shared::Knock,
            opened_ms: 1,
            expires_ms,
        }
    }

    fn confirm(ledger: &mut Ledger, actions: &Actions) {
        for (k, r, ns) in &actions.publish {
            ledger.published(k.clone(), r, *ns);
        }
        for k in &actions.delete {
            ledger.deleted(k);
        }
    }

    #[test]
    fn publishes_once_and_again_on_renewal_only() {
        let mut l = Ledger::default();
        let map = [seen("198.18.0.2", Some(Shared::Knock), 10, 5_000)];
        let a = l.plan("a", SHARE, &map, 1_000);
        assert_eq!(a.publish.len(), 1);
        assert_eq!(a.publish[0].1.origin, "a");
        confirm(&mut l, &a);
        assert_eq!(l.plan("a", SHARE, &map, 1_100), Actions::default());
        let renewed = [seen("198.18.0.2", Some(Shared::Knock), 20, 9_000)];
        assert_eq!(l.plan("a", SHARE, &renewed, 1_200).publish.len(), 1);
    }

    #[test]
    fn what_failed_to_publish_is_planned_again_while_valid() {
        let mut l = Ledger::default();
        let map = [seen("198.18.0.2", Some(Shared::Spa), 10, 5_000)];
        assert_eq!(l.plan("a", SHARE, &map, 1_000).publish.len(), 1);
        // etcd was away: nothing confirmed, so the next read plans it again.
        assert_eq!(l.plan("a", SHARE, &map, 4_000).publish.len(), 1);
        // Expired meanwhile: not published at all.
        assert_eq!(l.plan("a", SHARE, &map, 5_000), Actions::default());
    }

    #[test]
    fn share_and_fleet_installed_ones_are_not_published() {
        let mut l = Ledger::default();
        let map = [
            seen("198.18.0.2", Some(Shared::Allow), 10, 5_000),
            seen("198.18.0.3", None, 10, 5_000),
        ];
        assert_eq!(l.plan("a", &[Shared::Knock], &map, 1_000), Actions::default());
    }

    #[test]
    fn a_revocation_here_ends_it_fleet_wide_an_expiry_does_not() {
        let mut l = Ledger::default();
        let map = [
            seen("198.18.0.2", Some(Shared::Knock), 10, 5_000),
            seen("198.18.0.3", Some(Shared::Knock), 10, 2_000),
        ];
        let a = l.plan("a", SHARE, &map, 1_000);
        confirm(&mut l, &a);
        // Both gone from the map: .2 revoked while valid, .3 expired.
        let a = l.plan("a", SHARE, &[], 2_000);
        assert_eq!(a.delete, vec![key("198.18.0.2")]);
        // Until the delete is confirmed it is planned again.
        assert_eq!(l.plan("a", SHARE, &[], 2_100).delete, vec![key("198.18.0.2")]);
        confirm(&mut l, &a);
        assert_eq!(l.plan("a", SHARE, &[], 2_200), Actions::default());
    }

    #[test]
    fn a_remote_one_revoked_here_is_deleted_and_relisting_loses_no_deletion() {
        let mut l = Ledger::default();
        let r = from_b(5_000);
        l.installed(key("198.18.0.2"), &r, 7);
        l.installed(key("198.18.0.3"), &r, 7);
        assert_eq!(l.origin(&key("198.18.0.2")), Some("b"));
        // In the map as installed: nothing to do.
        let map = [
            seen("198.18.0.2", None, 7, 5_000),
            seen("198.18.0.3", None, 7, 5_000),
        ];
        assert_eq!(l.plan("a", SHARE, &map, 1_000), Actions::default());
        // .3 was deleted while the watch was down: the listing no longer has it.
        let listed: HashSet<AuthKey> = [key("198.18.0.2")].into();
        let gone = Gone {
            opened_ns: 7,
            expires_ms: 5_000,
            remote: Some("b".into()),
        };
        assert_eq!(
            l.relisted(&listed, 1_000),
            vec![(key("198.18.0.3"), gone.clone())]
        );
        // .2 revoked here with `xknock revoke`: deleted fleet-wide.
        assert_eq!(l.plan("a", SHARE, &[], 1_100).delete, vec![key("198.18.0.2")]);
        assert_eq!(l.deleted(&key("198.18.0.2")), Some(gone));
    }

    #[test]
    fn a_published_one_deleted_elsewhere_while_away_is_found_by_the_listing() {
        let mut l = Ledger::default();
        let map = [
            seen("198.18.0.2", Some(Shared::Knock), 10, 9_000),
            seen("198.18.0.3", Some(Shared::Knock), 10, 1_500),
        ];
        let a = l.plan("a", SHARE, &map, 1_000);
        confirm(&mut l, &a);
        // Neither is listed: .2 was revoked on another host, .3 is about to expire
        // (its lease may be gone already): only .2 is a deletion.
        let gone = l.relisted(&HashSet::new(), 1_000);
        let gone: Vec<_> = gone.into_iter().map(|(k, g)| (k, g.remote)).collect();
        assert_eq!(gone, vec![(key("198.18.0.2"), None)]);
    }

    #[test]
    fn a_grant_replaced_in_etcd_by_another_hosts_is_published_again() {
        let mut l = Ledger::default();
        let map = [seen("198.18.0.2", Some(Shared::Knock), 10, 9_000)];
        let a = l.plan("a", SHARE, &map, 1_000);
        confirm(&mut l, &a);
        // b wrote a shorter one under the same key: a's is gone from etcd, so its
        // lease's end cannot be taken for a revocation, and a publishes it again.
        l.replaced(&key("198.18.0.2"));
        assert_eq!(l.deleted(&key("198.18.0.2")), None);
        assert_eq!(l.plan("a", SHARE, &map, 1_100).publish.len(), 1);
        // One installed from the fleet is left alone.
        let r = from_b(5_000);
        l.installed(key("198.18.0.3"), &r, 7);
        l.replaced(&key("198.18.0.3"));
        assert_eq!(l.origin(&key("198.18.0.3")), Some("b"));
    }
}
