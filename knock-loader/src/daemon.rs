//! `xknock run`: load (adopting pinned state), configure, attach, report events;
//! reload on SIGHUP; on SIGINT/SIGTERM detach, or leave the filter in place.
//!
//! [`Daemon`] holds what the loop keeps consistent, with one handler per source of
//! work: the kernel's events (`drain`, the one place that reads its rings), SPA
//! requests, the expiry sweep, the tables' rotation (`tables`), reloads (`reload`),
//! interfaces and the `suppressed` summary. Nothing a handler meets ends the loop:
//! every failure is logged and retried, and the filter stays attached.

pub mod commands;
pub mod event;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod onetime;
mod options;
mod reload;
pub mod spa;
mod tables;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use knock_common::{SpaRequest, map_names};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

pub use options::RunOptions;

use self::{
    commands::Commands,
    event::{Event, Tally},
    events::{Events, Suppression},
    fleet::Fleet,
    onetime::Spender,
    reload::Pending,
    spa::Verifier,
};
use crate::{
    config::{Config, Sequence},
    kernel::{
        ifaces::{Interfaces, LinkEvents},
        load as attach,
        maps::State,
        pins::{Pinned, RunLock},
        reconcile::Carried,
    },
};

/// How often authorizations are checked for expiry (the lateness of `close` events).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often time-based sequences are checked for a new period or the end of a grace.
const ROTATE_EVERY: Duration = Duration::from_millis(200);
/// How often the per-packet events (knock, reset) are read: the kernel wakes nobody
/// for them.
const STEP_EVENTS_EVERY: Duration = Duration::from_millis(100);
/// How often a `suppressed` line may be printed.
const SUPPRESSED_EVERY: Duration = Duration::from_secs(1);
/// How often interfaces are checked for appearing, or coming back under a new index,
/// besides when netlink announces a change.
const FOLLOW_IFACES_EVERY: Duration = Duration::from_secs(1);

pub fn run(opts: RunOptions) -> Result<()> {
    let config = opts.load()?;
    raise_descriptor_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(opts, config))
}

/// Raises the soft limit on open descriptors to the hard one: a service manager's
/// usual 1024 is a limit a local user can reach through `--metrics`.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) != 0 {
                log::warn!(
                    "cannot raise the descriptor limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Where every event goes, whoever noticed it: printed, counted for the metrics,
/// and, for an `open` or `close`, its sequence's command started or queued (never
/// waited for).
struct Output {
    json: bool,
    commands: Commands,
    tally: Arc<Tally>,
}

impl Output {
    fn emit(&self, event: Event) {
        say(&event.render(self.json));
        self.tally.count(&event);
        self.commands.event(&event);
    }
}

fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What a reload replaces: the config and everything built from it.
struct Live {
    config: Config,
    verifier: Option<Verifier>,
    events: Events,
}

/// The kernel-facing state the loop keeps consistent, and retries where a write failed.
pub(crate) struct Daemon {
    opts: RunOptions,
    ebpf: Ebpf,
    state: State,
    ifaces: Interfaces,
    output: Output,
    /// The per-packet events' ring, read on an interval (it wakes nobody).
    steps: RingBuf<MapData>,
    suppression: Suppression,
    live: Live,
    pending: Option<Pending>,
    carried: Carried,
    spender: Spender,
    /// `[fleet]`: authorizations shared through etcd.
    fleet: Option<Fleet>,
    /// The time-based slots last written; empty forces a rewrite.
    slots: Vec<Sequence>,
    /// The tables must be rewritten from the config in force (changed, or a write
    /// failed).
    stale: bool,
    /// A failed rewrite was logged; said again only after one succeeds.
    failing: bool,
}

/// What the loop waits on besides timers and signals: the rings that wake it, and
/// netlink's link announcements.
struct Wakers {
    /// Rare events (open, open_failed, ban, spa_rejected).
    rare: AsyncFd<RingBuf<MapData>>,
    spa: AsyncFd<RingBuf<MapData>>,
    links: Option<LinkEvents>,
}

async fn run_async(opts: RunOptions, config: Config) -> Result<()> {
    // First: until they are handled, each of these would kill the process (a
    // reload from a service manager during start-up, say).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Held until exit: one `run` per pin directory.
    let _lock = RunLock::take(&config.pin_dir, "start run")?;
    let (mut d, mut wakers) = Daemon::start(opts, config).await?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut rotate = tokio::time::interval(ROTATE_EVERY);
    let mut follow = tokio::time::interval(FOLLOW_IFACES_EVERY);
    let mut steps = tokio::time::interval(STEP_EVENTS_EVERY);
    let mut summary = tokio::time::interval(SUPPRESSED_EVERY);
    let links = wakers.links.take();
    loop {
        let timed = d.live.config.sequences.iter().any(|s| s.timed.is_some());
        let spa = d.live.verifier.is_some();
        tokio::select! {
            guard = wakers.rare.readable_mut() => match guard {
                Ok(mut guard) => {
                    let opened = d.drain(guard.get_inner_mut());
                    // A rare event: perhaps an open that spent a one-time line. Only
                    // an open is worth a read of the map for the fleet (not, say, a
                    // flood of refused SPA datagrams); the sweep reads it anyway.
                    d.spent();
                    if opened {
                        d.publish();
                    }
                    guard.clear_ready();
                }
                Err(e) => wait_failed("kernel events", &e).await,
            },
            guard = wakers.spa.readable_mut(), if spa => match guard {
                Ok(mut guard) => {
                    d.spa_requests(wakers.rare.get_mut(), guard.get_inner_mut()).await;
                    guard.clear_ready();
                }
                Err(e) => wait_failed("SPA requests", &e).await,
            },
            report = async { d.fleet.as_mut()?.report().await }, if d.fleet.is_some() => {
                if let Some(report) = report {
                    d.fleet_report(report);
                } else {
                    // The etcd task died (a panic in it): what it installed keeps its
                    // own expiry, nothing new arrives, the filter goes on.
                    log::error!("fleet: the etcd task ended; nothing is shared until `run` restarts");
                    d.fleet = None;
                }
            }
            _ = rotate.tick(), if timed => d.rewrite(),
            _ = steps.tick() => {
                d.drain(wakers.rare.get_mut());
            }
            _ = summary.tick() => d.summary(),
            _ = sweep.tick() => d.sweep(wakers.rare.get_mut()),
            changed = async { links.as_ref()?.changed().await.ok() }, if links.is_some() => {
                if changed.is_some() {
                    d.follow_interfaces();
                }
            }
            _ = follow.tick() => d.follow_interfaces(),
            _ = sighup.recv() => d.reload(wakers.rare.get_mut()),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    d.stop()
}

fn fleet_skew(config: &Config) -> Duration {
    config.fleet.as_ref().map_or(Duration::ZERO, |f| f.clock_skew)
}

/// A ring that cannot be waited for: not expected of an open ring; a pause rather
/// than a spin.
async fn wait_failed(what: &str, e: &std::io::Error) {
    log::error!("cannot wait for {what}: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

impl Daemon {
    /// Loads (adopting what is pinned), writes the config, attaches.
    async fn start(opts: RunOptions, config: Config) -> Result<(Daemon, Wakers)> {
        // Before anything is loaded: an unreadable replay cache or a taken metrics
        // address stops here.
        let verifier = Verifier::new(&config).context("cannot start Single Packet Authorization")?;
        let listener = match opts.metrics {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let (mut ebpf, pinned) = attach::load(&config.pin_dir, &config.limits)?;
        let mut state = State::from_ebpf(&mut ebpf)?;
        let mut carried = Carried::default();
        let dropped = state
            .apply_keeping(&config, &mut carried)
            .context("cannot write the configuration into the maps")?;
        if let Pinned::Adoptable { created_by } = &pinned {
            log::info!(
                "adopted the state pinned in {} (created by xknock {created_by}): {} authorization(s), \
                 {} source(s) in progress",
                config.pin_dir.display(),
                state.authorized.keys().count(),
                state.progress.keys().count()
            );
        }
        let rare = watch(&mut ebpf, map_names::EVENTS)?;
        let steps = ebpf
            .take_map(map_names::STEP_EVENTS)
            .with_context(|| format!("the eBPF object has no map {}", map_names::STEP_EVENTS))?
            .try_into()?;
        let suppression = Suppression::new(&state);
        let spa = watch(&mut ebpf, map_names::SPA_REQUESTS)?;
        forward_kernel_logs(&mut ebpf);
        let links = LinkEvents::open()
            .map_err(|e| log::warn!("{e:#}: interfaces are followed by polling only"))
            .ok();

        let xdp = attach::program(&mut ebpf)?;
        attach::pin_program(xdp, &config.pin_dir)?;
        let ifaces = Interfaces::attach(xdp, &config.pin_dir, config.xdp_mode, &config.interfaces).context(
            "the filter stays as it is on the interfaces attached so far (`xknock down` removes it)",
        )?;

        let output = Output {
            json: opts.json,
            commands: Commands::new(&config),
            tally: Arc::default(),
        };
        let fleet = Fleet::start(&config, &state).context("cannot start the fleet")?;
        if let Some(listener) = listener {
            let stats = output.commands.runner().stats();
            let fleet = fleet.as_ref().map(Fleet::stats);
            metrics::serve(
                listener,
                config.pin_dir.clone(),
                stats,
                output.tally.clone(),
                fleet,
            );
        }
        let events = Events::new(&state)?;
        for d in &dropped {
            output.emit(Events::removed(d));
        }
        let daemon = Daemon {
            opts,
            ebpf,
            state,
            ifaces,
            output,
            steps,
            suppression,
            live: Live {
                config,
                verifier,
                events,
            },
            pending: None,
            carried,
            spender: Spender::default(),
            fleet,
            // Empty: the first tick rewrites them, in case a period ended since `apply`.
            slots: vec![],
            stale: false,
            failing: false,
        };
        Ok((daemon, Wakers { rare, spa, links }))
    }

    /// Reports the kernel's events, the per-packet ones first (so that the knocks of
    /// an open come before it). Nothing depends on them: what they tell is in the
    /// maps too (`spent`, `Events::sweep`). Returns whether one was an `open`: a hint
    /// that the map has something to publish.
    fn drain(&mut self, rare: &mut RingBuf<MapData>) -> bool {
        let mut opened = false;
        let now = self
            .state
            .now_ns()
            .unwrap_or_else(|_| crate::clock::monotonic_ns());
        for ring in [&mut self.steps, rare] {
            while let Some(item) = ring.next() {
                if let Ok(ev) = bytemuck::try_pod_read_unaligned::<knock_common::Event>(&item)
                    && let Some(event) = self.live.events.from_kernel(&ev, now)
                {
                    opened |= matches!(event.kind, event::Kind::Open { .. });
                    self.output.emit(event);
                }
            }
        }
        opened
    }

    /// Verifies and serves the SPA requests the kernel handed over; with a fleet, a
    /// request's nonce is claimed fleet-wide before it is granted.
    async fn spa_requests(&mut self, rare: &mut RingBuf<MapData>, requests: &mut RingBuf<MapData>) {
        // Kernel events first, so that its knocks print before an open.
        self.drain(rare);
        let Some(verifier) = self.live.verifier.as_mut() else {
            return;
        };
        let mut granted = false;
        loop {
            let request = match requests.next() {
                Some(item) => bytemuck::try_pod_read_unaligned::<SpaRequest>(&item),
                None => break,
            };
            let Ok(request) = request else { continue };
            let grant = match spa::check(&request, verifier) {
                Ok(grant) => grant,
                Err(rejection) => {
                    self.output.emit(spa::rejected(&request, &rejection));
                    continue;
                }
            };
            if let (Some(fleet), Some(spa)) = (&self.fleet, &self.live.config.spa) {
                // Acceptable anywhere from `window` before its time to `window` after.
                let ttl = spa.window * 2 + fleet_skew(&self.live.config);
                if let Err(rejection) = fleet.claim(&grant.nonce, ttl).await {
                    self.output.emit(spa::rejected(&request, &rejection));
                    continue;
                }
            }
            for event in spa::authorize(&grant, &mut self.state, &mut self.live.events) {
                self.output.emit(event);
            }
            granted = true;
        }
        if granted {
            self.publish();
        }
    }

    /// Publishes (or deletes fleet-wide) what the authorization map calls for.
    fn publish(&mut self) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.publish(&self.state);
        }
    }

    /// What etcd reported: installs, removals, confirmations.
    fn fleet_report(&mut self, report: fleet::Report) {
        let Some(fleet) = self.fleet.as_mut() else { return };
        for event in fleet.handle(report, &mut self.state, &mut self.live.events) {
            self.output.emit(event);
        }
    }

    /// The expiry sweep, and what waits for retries: one-time lines, a reload.
    fn sweep(&mut self, rare: &mut RingBuf<MapData>) {
        // Kernel events first, so that an open says what its event says.
        self.drain(rare);
        self.spent();
        self.finish_reload();
        match self.live.events.sweep(&mut self.state) {
            Ok(events) => events.into_iter().for_each(|e| self.output.emit(e)),
            Err(e) => log::error!("cannot sweep the authorizations: {e:#}; retrying"),
        }
        // After the sweep: a revocation it found is deleted fleet-wide, and what etcd
        // missed while away is published.
        self.publish();
    }

    /// One `suppressed` line for what the kernel counted instead of reporting.
    fn summary(&mut self) {
        if let Some(suppressed) = self.suppression.line(&self.state) {
            say(&suppressed.render(self.output.json));
        }
    }

    /// Attaches to interfaces that appeared (or came back under a new index).
    fn follow_interfaces(&mut self) {
        if let Ok(xdp) = attach::program(&mut self.ebpf) {
            self.ifaces.sync(xdp);
        }
    }

    /// SIGINT/SIGTERM: detach, or leave the filter attached with --keep-attached.
    fn stop(mut self) -> Result<()> {
        self.output.commands.shutdown();
        let pin_dir = self.live.config.pin_dir.display();
        if self.opts.keep_attached {
            log::info!(
                "exiting with the filter attached to {}: knocks keep working; the next `run` adopts \
                 it, `xknock down --pin-dir {pin_dir}` removes it",
                self.ifaces.attached().join(", "),
            );
        } else {
            log::info!("detaching; the maps stay pinned in {pin_dir}");
            self.ifaces.detach(attach::program(&mut self.ebpf)?);
        }
        Ok(())
    }
}

/// Registers ring buffer `name` with the runtime, to await its records.
fn watch(ebpf: &mut Ebpf, name: &str) -> Result<AsyncFd<RingBuf<MapData>>> {
    let ring: RingBuf<_> = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?
        .try_into()?;
    // SAFETY: the ring buffer owns its fd and keeps it open while registered.
    unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot watch the ring buffer {name}"))
}

/// Forwards the program's aya-log lines to env_logger (stderr).
fn forward_kernel_logs(ebpf: &mut Ebpf) {
    let logger = aya_log::EbpfLogger::init(ebpf)
        .map_err(anyhow::Error::from)
        .and_then(|l| {
            // SAFETY: the logger owns its map fd and keeps it open while registered.
            unsafe { AsyncFd::register(l) }.map_err(|e| anyhow::Error::from(std::io::Error::from(e)))
        });
    let mut logger = match logger {
        Ok(logger) => logger,
        Err(e) => return log::warn!("kernel log lines will not be shown: {e:#}"),
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
