//! Keeping the kernel's sequence tables current: one-time lines the kernel spent are
//! replaced, time-based slots rotate, and a write that failed is retried.

use std::time::SystemTime;

use knock_common::OneTimeId;

use super::Daemon;
use crate::config::Sequence;

impl Daemon {
    /// Replaces the one-time lines the kernel spent (XK_SPENT): each is marked in
    /// its file, and the next line is written into the kernel (into the target
    /// config, when a reload is pending). A spent line's record is removed only once
    /// its replacement is in the kernel and its mark in the file, so the line stays
    /// closed across a crash or a restart of `run` until then. Also retries what
    /// waits: one-time marks and files, and tables whose write failed.
    pub(super) fn spent(&mut self) {
        let ids: Vec<u64> = self
            .state
            .spent
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.id)
            .collect();
        let config = match &mut self.pending {
            Some(p) => &mut p.config,
            None => &mut self.live.config,
        };
        let names: Vec<String> = config
            .sequences
            .iter()
            .filter(|s| s.one_time_id().is_some_and(|id| ids.contains(&id)))
            .map(|s| s.name.clone())
            .collect();
        if (!names.is_empty() || self.spender.pending()) && self.spender.opened(config, &names) {
            self.stale = true;
        }
        self.rewrite();
        if ids.is_empty() || self.pending.is_some() || self.stale || self.spender.pending() {
            return;
        }
        let armed: Vec<u64> = self
            .live
            .config
            .sequences
            .iter()
            .filter_map(Sequence::one_time_id)
            .collect();
        for id in ids.into_iter().filter(|id| !armed.contains(id)) {
            // Left for the next call if this fails: a stale record only keeps a used
            // line closed.
            let _ = self.state.spent.remove(&OneTimeId { id });
        }
    }

    /// Writes the time-based and one-time sequences' tables when they changed or a
    /// write failed; a failure is logged and retried at the next tick.
    pub(super) fn rewrite(&mut self) {
        if self.pending.is_some() {
            return;
        }
        let now = SystemTime::now();
        let next = self.live.config.kernel_slots(now);
        if next == self.slots && !self.stale {
            return;
        }
        match self.state.apply_sequences(&self.live.config, now) {
            Ok(()) => {
                log::debug!("sequence tables rewritten (a new period, a grace's end, a one-time line)");
                self.slots = next;
                self.stale = false;
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    log::error!("cannot rewrite the sequence tables: {e:#}; retrying");
                }
                self.stale = true;
                self.failing = true;
            }
        }
    }
}
