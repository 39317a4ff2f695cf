//! A new configuration over a state that already has authorizations and progress:
//! on a reload, or when `run` adopts maps under an edited config. Entries are keyed
//! by sequence slot, and slots follow the config's order, so each entry moves with
//! its sequence (matched by name) to the sequence's new slot; a removed sequence's
//! entries go, and so does progress on a sequence whose knocks changed.
//!
//! The writes are ordered so that no slot ever means two sequences at once: slots
//! that change meaning are first disarmed (no knock completes in them) and emptied,
//! then the new tables are written, then the moved authorizations go in at their new
//! slots. In between, a moved authorization admits nothing new (its kept connections
//! go on); nothing is ever admitted on another sequence's authorization. A failure
//! part way leaves the kernel closed (the old tables with slots disarmed, or the new
//! ones with some authorizations not yet moved) and the taken-out authorizations in
//! `Carried`, for the retry.

use std::{collections::HashMap, time::SystemTime};

use anyhow::{Context as _, Result, bail};
use knock_common::{Authorization, SequenceConfig, SourceKey};

use crate::{
    config::{Config, Sequence},
    fault,
    kernel::maps::{State, sequence_name},
};

/// An authorization dropped because its sequence is no longer configured.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub key: SourceKey,
    pub sequence: String,
}

/// Authorizations taken out of the kernel to move, by their sequence's name and
/// occurrence (a time-based sequence has two slots), until they are put back.
#[derive(Debug, Default)]
pub struct Carried(Vec<((String, usize), SourceKey, Authorization)>);

impl Carried {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Each slot's (name, occurrence): the identity an entry keeps across a reload.
fn identities<'a>(names: impl Iterator<Item = (u8, &'a str)>) -> HashMap<u8, (String, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    names
        .map(|(slot, name)| {
            let n = seen.entry(name).or_default();
            let id = (name.to_owned(), *n);
            *n += 1;
            (slot, id)
        })
        .collect()
}

/// Where each old slot's entries go: the new slot of the same name and occurrence, or
/// `None` when the sequence is gone.
fn slot_moves(old: &[(u8, SequenceConfig)], new: &[Sequence]) -> HashMap<u8, Option<u8>> {
    let new_slots: HashMap<(String, usize), u8> =
        identities(new.iter().enumerate().map(|(i, s)| (i as u8, s.name.as_str())))
            .into_iter()
            .map(|(slot, id)| (id, slot))
            .collect();
    let old_names: Vec<(u8, String)> = old.iter().map(|(i, c)| (*i, sequence_name(c))).collect();
    identities(old_names.iter().map(|(i, n)| (*i, n.as_str())))
        .into_iter()
        .map(|(slot, id)| (slot, new_slots.get(&id).copied()))
        .collect()
}

impl State {
    /// Applies `config` (as `apply`) in the order above, moving every authorization
    /// to its sequence's new slot (with those `carried` over from a failed attempt)
    /// and clearing progress that no longer means anything. Returns the
    /// authorizations dropped with their sequence.
    pub fn apply_keeping(&mut self, config: &Config, carried: &mut Carried) -> Result<Vec<Dropped>> {
        let old = self.sequences()?;
        let now = SystemTime::now();
        let new = config.kernel_slots(now);
        let moves = slot_moves(&old, &new);
        let names: HashMap<u8, String> = old.iter().map(|(i, c)| (*i, sequence_name(c))).collect();
        let ids = identities(old.iter().filter_map(|(i, _)| Some((*i, names.get(i)?.as_str()))));
        // A slot keeps its meaning only if its sequence stays in it.
        let changed: Vec<u8> = (0..knock_common::MAX_SEQUENCES as u8)
            .filter(|slot| moves.get(slot).copied().flatten() != Some(*slot))
            .filter(|slot| names.contains_key(slot) || usize::from(*slot) < new.len())
            .collect();

        // 1. Disarm: no knock completes in a slot about to change meaning.
        for (slot, c) in old.iter().filter(|(slot, _)| changed.contains(slot)) {
            let disarmed = SequenceConfig { n_knocks: 0, ..*c };
            self.sequences
                .set(u32::from(*slot), &disarmed, 0)
                .context("cannot disarm a sequence slot")?;
        }
        // 2. Empty those slots, keeping what moves.
        let current: Vec<(SourceKey, Authorization)> =
            self.authorized.iter().filter_map(Result::ok).collect();
        let mut dropped = vec![];
        for (key, auth) in &current {
            if !changed.contains(&key.seq) {
                continue;
            }
            if !self.unauthorize(key) {
                continue;
            }
            match (moves.get(&key.seq).copied().flatten(), ids.get(&key.seq)) {
                (Some(_), Some(id)) => carried.0.push((id.clone(), *key, *auth)),
                _ => dropped.push(Dropped {
                    key: *key,
                    sequence: names.get(&key.seq).cloned().unwrap_or_default(),
                }),
            }
        }
        self.clear_stale_progress(config, &old, &moves, now);
        if !carried.is_empty() && fault::injected("reload-midway") {
            bail!("injected fault: the old slots are emptied, the new tables not yet written");
        }
        // 3. The new tables.
        self.apply(config)?;
        // 4. The moved authorizations, at their new slots.
        let new_slots: HashMap<(String, usize), u8> =
            identities(new.iter().enumerate().map(|(i, s)| (i as u8, s.name.as_str())))
                .into_iter()
                .map(|(slot, id)| (id, slot))
                .collect();
        while let Some((id, key, auth)) = carried.0.pop() {
            let Some(seq) = new_slots.get(&id).copied() else {
                dropped.push(Dropped { key, sequence: id.0 });
                continue;
            };
            let key = SourceKey { seq, ..key };
            // One the kernel made meanwhile (the client knocked again) may last longer.
            let later = self
                .authorized
                .get(&key, 0)
                .ok()
                .filter(|a| a.expires_ns >= auth.expires_ns);
            if later.is_none()
                && let Err(e) = self.authorize(&key, &auth)
            {
                carried.0.push((id, key, auth));
                return Err(e);
            }
        }
        Ok(dropped)
    }

    /// Removes progress on slots whose sequence moved, went, or changed its knocks.
    fn clear_stale_progress(
        &mut self,
        config: &Config,
        old: &[(u8, SequenceConfig)],
        moves: &HashMap<u8, Option<u8>>,
        now: SystemTime,
    ) {
        let table = config.sequence_table(now, 0);
        let knocks = |c: &SequenceConfig| c.knocks[..usize::from(c.n_knocks)].to_vec();
        let stale: Vec<SourceKey> = self
            .progress
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let old_cfg = old.iter().find(|(i, _)| *i == k.seq).map(|(_, c)| c);
                let kept = moves.get(&k.seq) == Some(&Some(k.seq));
                let same_knocks = old_cfg
                    .zip(table.get(usize::from(k.seq)))
                    .is_some_and(|(o, n)| knocks(o) == knocks(n));
                !(kept && same_knocks)
            })
            .collect();
        for key in &stale {
            // Gone already (completed or evicted) is fine.
            let _ = self.progress.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn table(toml: &str) -> (Config, Vec<(u8, SequenceConfig)>) {
        let config = Config::parse(Path::new("t.toml"), toml).expect("valid");
        let table = config.sequence_table(SystemTime::UNIX_EPOCH, 0);
        let entries = table.into_iter().enumerate().map(|(i, c)| (i as u8, c)).collect();
        (config, entries)
    }

    fn seq(name: &str, port: u16) -> String {
        format!("[[sequence]]\nname = \"{name}\"\nknocks = [\"{port}/tcp\"]\nprotect = [\"22/tcp\"]\n")
    }

    #[test]
    fn slots_follow_names_and_removed_sequences_have_none() {
        let (_, old) = table(&(seq("a", 1000) + &seq("b", 2000) + &seq("c", 3000)));
        let (new, _) = table(&(seq("c", 3000) + &seq("a", 1001)));
        let moves = slot_moves(&old, &new.kernel_slots(SystemTime::UNIX_EPOCH));
        assert_eq!(moves[&0], Some(1), "a moved to slot 1");
        assert_eq!(moves[&1], None, "b is gone");
        assert_eq!(moves[&2], Some(0), "c moved to slot 0");
    }
}
