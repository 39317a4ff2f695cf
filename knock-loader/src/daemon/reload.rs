//! SIGHUP: a new config, checked whole before anything is written, then put in force;
//! a write that fails part way is retried and the kernel stays closed where the two
//! configs differ meanwhile.

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};

use super::{Daemon, Live, RunOptions, events::Events, onetime::Spender, spa::Verifier};
use crate::{config::Config, kernel::load as attach};

/// A reload that is valid but not yet wholly written into the kernel (a write failed
/// part way): retried until it is. Until then the kernel is closed where the two
/// configs differ (see `reconcile`), and nothing else rewrites its tables.
pub(super) struct Pending {
    pub(super) config: Config,
    verifier: Option<Verifier>,
    reported: Option<String>,
}

impl Daemon {
    /// SIGHUP: validates the new config whole, then starts putting it in force.
    pub(super) fn reload(&mut self, rare: &mut RingBuf<MapData>) {
        // Events so far belong to the old sequence names.
        self.drain(rare);
        self.spent();
        let (config, verifier) = match prepare(&self.opts, &self.live, &self.spender) {
            Ok(prepared) => prepared,
            Err(e) => return log::error!("reload refused, the running config stays in force: {e:#}"),
        };
        match attach::program(&mut self.ebpf) {
            Ok(xdp) => {
                if let Err(e) = self.ifaces.set(xdp, &config.interfaces) {
                    log::error!("reload: {e:#}");
                }
            }
            Err(e) => log::error!("reload: {e:#}"),
        }
        self.pending = Some(Pending {
            config,
            verifier,
            reported: None,
        });
        self.finish_reload();
    }

    /// Writes a pending reload into the kernel; on success it is the config in force.
    pub(super) fn finish_reload(&mut self) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        match self.state.apply_keeping(&pending.config, &mut self.carried) {
            Ok(dropped) => {
                let Some(pending) = self.pending.take() else {
                    return;
                };
                // The old names and hooks still: a removed sequence's on_close runs.
                for d in &dropped {
                    self.output.emit(Events::removed(d));
                }
                log::info!(
                    "reloaded {}: {} sequence(s); {} authorization(s) of removed sequences dropped",
                    self.opts.config.display(),
                    pending.config.sequences.len(),
                    dropped.len()
                );
                match Events::new(&self.state) {
                    Ok(events) => self.live.events = events,
                    Err(e) => log::error!("reload: cannot read the new sequence names: {e:#}"),
                }
                self.live.config = pending.config;
                self.live.verifier = pending.verifier;
                if let Some(fleet) = self.fleet.as_mut()
                    && let Err(e) = fleet.retable(&self.live.config, &self.state)
                {
                    log::error!("reload: fleet: cannot read the new sequences: {e:#}");
                }
                self.output.commands.set_hooks(&self.live.config);
                self.slots = vec![];
                self.stale = false;
            }
            Err(e) => {
                let e = format!("{e:#}");
                if pending.reported.as_ref() != Some(&e) {
                    log::error!(
                        "reload failed part way: {e}; the kernel stays closed where the old and new \
                         configs differ, and the reload is retried"
                    );
                    pending.reported = Some(e);
                }
            }
        }
    }
}

/// Re-reads the config file and checks all of it, before anything is written: the
/// new config (with spent one-time lines skipped) and its SPA verifier.
fn prepare(opts: &RunOptions, live: &Live, spender: &Spender) -> Result<(Config, Option<Verifier>)> {
    let mut config = opts
        .load()
        .with_context(|| format!("cannot reload {}", opts.config.display()))?;
    if config.pin_dir != live.config.pin_dir {
        bail!(
            "pin_dir changed ({} to {}): the state cannot move while `run` runs; restart it",
            live.config.pin_dir.display(),
            config.pin_dir.display()
        );
    }
    if config.limits != live.config.limits {
        bail!(
            "[limits] changed: the maps keep the sizes they were created with (to resize them, \
             stop `run`, `xknock down`, which loses authorizations and progress, and start again)"
        );
    }
    if config.fleet != live.config.fleet {
        bail!("[fleet] changed: restart `run` to join another fleet or change what it shares");
    }
    spender.adjust(&mut config)?;
    // The nonces in memory carry over (to a new replay_file too), each for the
    // longest window in force since it was seen.
    let verifier = match Verifier::renewed(&config, live.verifier.as_ref())
        .context("cannot start Single Packet Authorization")?
    {
        Some((verifier, saved)) => {
            if let Err(e) = saved {
                log::error!("reload: {e:#}; SPA requests are refused until the replay file can be written");
            }
            Some(verifier)
        }
        None => None,
    };
    Ok((config, verifier))
}
