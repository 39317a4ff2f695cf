//! A new configuration over a state that already has authorizations and progress:
//! on a reload, or when `run` adopts maps under an edited config. Entries are keyed
//! by sequence slot, and slots follow the config's order, so each entry moves with
//! its sequence (matched by name) to the sequence's new slot; a removed sequence's
//! entries go, and so does progress on a sequence whose knocks changed.

use std::{collections::HashMap, time::SystemTime};

use anyhow::Result;
use knock_common::{Authorization, SequenceConfig, SourceKey};

use crate::{
    config::{Config, Sequence},
    maps::{State, sequence_name},
};

/// An authorization dropped because its sequence is no longer configured.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub key: SourceKey,
    pub sequence: String,
}

/// Where each old slot's entries go: the new slot of the same name and occurrence (a
/// time-based sequence has two slots), or `None` when the sequence is gone.
fn slot_moves(old: &[(u8, SequenceConfig)], new: &[Sequence]) -> HashMap<u8, Option<u8>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut new_slots: HashMap<(String, usize), u8> = HashMap::new();
    for (i, s) in new.iter().enumerate() {
        let n = seen.entry(s.name.clone()).or_default();
        new_slots.insert((s.name.clone(), *n), i as u8);
        *n += 1;
    }
    seen.clear();
    let mut moves = HashMap::new();
    for (i, c) in old {
        let name = sequence_name(c);
        let n = seen.entry(name.clone()).or_default();
        moves.insert(*i, new_slots.get(&(name, *n)).copied());
        *n += 1;
    }
    moves
}

impl State {
    /// Applies `config` (as `apply`), then moves every authorization to its
    /// sequence's new slot and clears progress that no longer means anything.
    /// Returns the authorizations dropped with their sequence.
    pub fn apply_keeping(&mut self, config: &Config) -> Result<Vec<Dropped>> {
        let old = self.sequences()?;
        let now = SystemTime::now();
        let new = config.kernel_slots(now);
        let moves = slot_moves(&old, &new);
        self.apply(config)?;

        let names: HashMap<u8, String> = old.iter().map(|(i, c)| (*i, sequence_name(c))).collect();
        let current: HashMap<SourceKey, Authorization> =
            self.authorized.iter().filter_map(Result::ok).collect();
        let mut wanted: HashMap<SourceKey, Authorization> = HashMap::new();
        let mut dropped = vec![];
        for (key, auth) in &current {
            match moves.get(&key.seq).copied() {
                // A slot the old table did not have: left as it is.
                None => {
                    wanted.insert(*key, *auth);
                }
                Some(Some(seq)) => {
                    wanted.insert(SourceKey { seq, ..*key }, *auth);
                }
                Some(None) => dropped.push(Dropped {
                    key: *key,
                    sequence: names.get(&key.seq).cloned().unwrap_or_default(),
                }),
            }
        }
        // Removals first: for a moment a moved authorization may be missing, never
        // granting one sequence's ports on another's authorization.
        for key in current.keys() {
            if !wanted.contains_key(key) {
                self.unauthorize(key);
            }
        }
        for (key, auth) in &wanted {
            if current.get(key).is_none_or(|a| a.expires_ns != auth.expires_ns) {
                self.authorize(key, auth)?;
            }
        }

        let table = config.sequence_table(now);
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
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn table(toml: &str) -> (Config, Vec<(u8, SequenceConfig)>) {
        let config = Config::parse(Path::new("t.toml"), toml).expect("valid");
        let table = config.sequence_table(SystemTime::UNIX_EPOCH);
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
