//! `xknock run`: load (adopting pinned state), configure, attach, print events;
//! reload on SIGHUP; on SIGINT/SIGTERM detach, or leave the filter in place.

pub mod commands;
pub mod events;
pub mod metrics;
pub mod onetime;
pub mod spa;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::RingBuf;
use knock_common::{Event, OneTimeId, SpaRequest, map_names};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use self::{
    commands::Commands,
    events::{EventLine, Events, Suppression},
    onetime::Spender,
    spa::Verifier,
};
use crate::{
    config::{Config, XdpMode},
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

/// `run`'s command line: the config file, what overrides it, and how to run.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// The configuration file.
    #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Interface to attach to (repeatable); overrides `interface` in the config.
    #[arg(long = "iface", short)]
    pub ifaces: Vec<String>,
    /// Where maps are pinned (on bpffs); overrides `pin_dir` in the config
    /// [default: /sys/fs/bpf/xknock].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Attach mode; overrides `xdp_mode` in the config.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// On SIGINT/SIGTERM, exit leaving the filter attached (as after a crash):
    /// knocks and authorizations keep working, the next `run` takes over without
    /// a gap, `xknock down` removes it. For service managers and upgrades.
    #[arg(long)]
    pub keep_attached: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics: the kernel's counters,
    /// sources in progress, authorizations, bans, the tracking maps' entries and
    /// capacity, and the on_open/on_close commands' results. ADDR is PORT (on
    /// 127.0.0.1) or IP:PORT, e.g. 9464, 198.18.0.1:9464 or [::1]:9464.
    #[arg(long, value_name = "ADDR", value_parser = metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
}

impl RunOptions {
    /// Reads and validates the config file, with the command line's overrides.
    pub fn load(&self) -> Result<Config> {
        let mut config = Config::load(&self.config)?;
        if !self.ifaces.is_empty() {
            config.interfaces = self.ifaces.clone();
        }
        if let Some(dir) = &self.pin_dir {
            config.pin_dir = dir.clone();
        }
        if let Some(mode) = self.xdp_mode {
            config.xdp_mode = mode;
        }
        if config.interfaces.is_empty() {
            bail!("no interface: give --iface IFACE or set interface in the config");
        }
        Ok(config)
    }
}

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
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "cannot raise the descriptor limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where every event goes, whatever noticed it (the kernel, the SPA verifier, the
/// sweep of the authorization map): printed, and then, for an `open` or `close`, its
/// sequence's command started or queued (never waited for).
struct Output {
    json: bool,
    commands: Commands,
}

impl Output {
    fn emit(&self, line: EventLine) {
        say(&line.render(self.json));
        self.commands.event(&line);
    }

    /// Prints the kernel's events, the per-packet ones first (so that the knocks of
    /// an open come before it). Nothing depends on them: what they tell is in the
    /// maps too (`Daemon::spent`, `Events::sweep`).
    fn drain(&self, rings: &mut Rings, rare: &mut RingBuf<aya::maps::MapData>, d: &mut Daemon) {
        let now = d.state.now_ns().unwrap_or_else(|_| crate::clock::monotonic_ns());
        for ring in [&mut rings.steps, rare] {
            while let Some(item) = ring.next() {
                if let Ok(ev) = bytemuck::try_pod_read_unaligned::<Event>(&item)
                    && let Some(line) = d.live.events.from_kernel(&ev, now)
                {
                    self.emit(line);
                }
            }
        }
    }
}

/// The kernel's per-packet event ring, read on an interval (it wakes nobody).
struct Rings {
    steps: RingBuf<aya::maps::MapData>,
}

/// Registers ring buffer `name` with the runtime, to await its records.
fn watch(ebpf: &mut aya::Ebpf, name: &str) -> Result<AsyncFd<RingBuf<aya::maps::MapData>>> {
    let ring: RingBuf<_> = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?
        .try_into()?;
    // SAFETY: the ring buffer owns its fd and keeps it open while registered.
    unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot watch the ring buffer {name}"))
}

/// What a reload replaces: the config and everything built from it.
struct Live {
    config: Config,
    verifier: Option<Verifier>,
    events: Events,
}

/// A reload that is valid but not yet wholly written into the kernel (a write failed
/// part way): retried until it is. Until then the kernel is closed where the two
/// configs differ (see `reconcile`), and nothing else rewrites its tables.
struct Pending {
    config: Config,
    verifier: Option<Verifier>,
    reported: Option<String>,
}

/// The kernel-facing state the loop keeps consistent, and retries where a write failed.
struct Daemon {
    state: State,
    live: Live,
    pending: Option<Pending>,
    carried: Carried,
    spender: Spender,
    /// The time-based slots last written; empty forces a rewrite.
    slots: Vec<crate::config::Sequence>,
    /// The tables must be rewritten from the config in force (changed, or a write
    /// failed).
    stale: bool,
    /// A failed rewrite was logged; said again only after one succeeds.
    failing: bool,
}

impl Daemon {
    /// Replaces the one-time lines the kernel spent (XK_SPENT): each is marked in
    /// its file, and the next line is written into the kernel (into the target
    /// config, when a reload is pending). A spent line's record is removed only once
    /// its replacement is in the kernel and its mark in the file, so the line stays
    /// closed across a crash or a restart of `run` until then. Also retries what
    /// waits: one-time marks and files, and tables whose write failed.
    fn spent(&mut self) {
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
            .filter_map(crate::config::Sequence::one_time_id)
            .collect();
        for id in ids.into_iter().filter(|id| !armed.contains(id)) {
            // Left for the next call if this fails: a stale record only keeps a used
            // line closed.
            let _ = self.state.spent.remove(&OneTimeId { id });
        }
    }

    /// Writes the time-based and one-time sequences' tables when they changed or a
    /// write failed; a failure is logged and retried at the next tick.
    fn rewrite(&mut self) {
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

    /// Validates a reload whole, then starts putting it in force.
    fn reload(
        &mut self,
        opts: &RunOptions,
        output: &mut Output,
        ifaces: &mut Interfaces,
        xdp: &mut aya::programs::Xdp,
    ) {
        match prepare(opts, &self.live, &self.spender) {
            Ok((config, verifier)) => {
                if let Err(e) = ifaces.set(xdp, &config.interfaces) {
                    log::error!("reload: {e:#}");
                }
                self.pending = Some(Pending {
                    config,
                    verifier,
                    reported: None,
                });
                self.finish_reload(opts, output);
            }
            Err(e) => log::error!("reload refused, the running config stays in force: {e:#}"),
        }
    }

    /// Writes a pending reload into the kernel; on success it is the config in force.
    fn finish_reload(&mut self, opts: &RunOptions, output: &mut Output) {
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
                    output.emit(self.live.events.removed(d));
                }
                log::info!(
                    "reloaded {}: {} sequence(s); {} authorization(s) of removed sequences dropped",
                    opts.config.display(),
                    pending.config.sequences.len(),
                    dropped.len()
                );
                match Events::new(&self.state) {
                    Ok(events) => self.live.events = events,
                    Err(e) => log::error!("reload: cannot read the new sequence names: {e:#}"),
                }
                self.live.config = pending.config;
                self.live.verifier = pending.verifier;
                output.commands.set_hooks(&self.live.config);
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

async fn run_async(opts: RunOptions, config: Config) -> Result<()> {
    // First: until they are handled, each of these would kill the process (a
    // reload from a service manager during start-up, say).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Held until exit: one `run` per pin directory.
    let _lock = RunLock::take(&config.pin_dir, "start run")?;
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
    let mut ring = watch(&mut ebpf, map_names::EVENTS)?;
    let mut rings = Rings {
        steps: ebpf
            .take_map(map_names::STEP_EVENTS)
            .with_context(|| format!("the eBPF object has no map {}", map_names::STEP_EVENTS))?
            .try_into()?,
    };
    let mut suppression = Suppression::new(&state);
    let mut spa_ring = watch(&mut ebpf, map_names::SPA_REQUESTS)?;
    forward_kernel_logs(&mut ebpf);
    let links = LinkEvents::open()
        .map_err(|e| log::warn!("{e:#}: interfaces are followed by polling only"))
        .ok();

    let xdp = attach::program(&mut ebpf)?;
    attach::pin_program(xdp, &config.pin_dir)?;
    let mut ifaces = Interfaces::attach(xdp, &config.pin_dir, config.xdp_mode, &config.interfaces)
        .context("the filter stays as it is on the interfaces attached so far (`xknock down` removes it)")?;

    let mut output = Output {
        json: opts.json,
        commands: Commands::new(&config),
    };
    if let Some(listener) = listener {
        metrics::serve(listener, config.pin_dir.clone(), output.commands.runner().stats());
    }
    let events = Events::new(&state)?;
    for d in &dropped {
        output.emit(events.removed(d));
    }
    let mut d = Daemon {
        state,
        live: Live {
            config,
            verifier,
            events,
        },
        pending: None,
        carried,
        spender: Spender::default(),
        // Empty: the first tick rewrites them, in case a period ended since `apply`.
        slots: vec![],
        stale: false,
        failing: false,
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut rotate = tokio::time::interval(ROTATE_EVERY);
    let mut follow = tokio::time::interval(FOLLOW_IFACES_EVERY);
    let mut steps = tokio::time::interval(STEP_EVENTS_EVERY);
    let mut summary = tokio::time::interval(SUPPRESSED_EVERY);
    // Nothing on this loop may end it but a signal to stop: every failure is logged
    // and retried, and the filter stays attached whatever happens here.
    loop {
        let timed = d.live.config.sequences.iter().any(|s| s.timed.is_some());
        tokio::select! {
            guard = ring.readable_mut() => match guard {
                Ok(mut guard) => {
                    output.drain(&mut rings, guard.get_inner_mut(), &mut d);
                    // A rare event: perhaps an open that spent a one-time line.
                    d.spent();
                    guard.clear_ready();
                }
                Err(e) => {
                    // Not expected of an open ring; a pause rather than a spin.
                    log::error!("cannot wait for kernel events: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            guard = spa_ring.readable_mut(), if d.live.verifier.is_some() => match guard {
                Ok(mut guard) => {
                    // Kernel events first, so that its knocks print before an open.
                    output.drain(&mut rings, ring.get_mut(), &mut d);
                    if let Some(verifier) = d.live.verifier.as_mut() {
                        let requests = guard.get_inner_mut();
                        while let Some(item) = requests.next() {
                            if let Ok(request) = bytemuck::try_pod_read_unaligned::<SpaRequest>(&item) {
                                for line in spa::serve(&request, verifier, &mut d.state, &mut d.live.events) {
                                    output.emit(line);
                                }
                            }
                        }
                    }
                    guard.clear_ready();
                }
                Err(e) => {
                    // Not expected of an open ring; a pause rather than a spin.
                    log::error!("cannot wait for SPA requests: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = rotate.tick(), if timed => d.rewrite(),
            _ = steps.tick() => output.drain(&mut rings, ring.get_mut(), &mut d),
            _ = summary.tick() => {
                if let Some(line) = suppression.line(&d.state) {
                    say(&line.render(opts.json));
                }
            }
            _ = sweep.tick() => {
                // Kernel events first, so that an open says what its event says.
                output.drain(&mut rings, ring.get_mut(), &mut d);
                d.spent();
                d.finish_reload(&opts, &mut output);
                match d.live.events.sweep(&mut d.state) {
                    Ok(lines) => lines.into_iter().for_each(|line| output.emit(line)),
                    Err(e) => log::error!("cannot sweep the authorizations: {e:#}; retrying"),
                }
            }
            changed = async { links.as_ref()?.changed().await.ok() }, if links.is_some() => {
                if changed.is_some()
                    && let Ok(xdp) = attach::program(&mut ebpf)
                {
                    ifaces.sync(xdp);
                }
            }
            _ = follow.tick() => {
                if let Ok(xdp) = attach::program(&mut ebpf) {
                    ifaces.sync(xdp);
                }
            }
            _ = sighup.recv() => {
                // Events so far belong to the old sequence names.
                output.drain(&mut rings, ring.get_mut(), &mut d);
                d.spent();
                if let Ok(xdp) = attach::program(&mut ebpf) {
                    d.reload(&opts, &mut output, &mut ifaces, xdp);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    output.commands.shutdown();
    if opts.keep_attached {
        log::info!(
            "exiting with the filter attached to {}: knocks keep working; the next `run` adopts \
             it, `xknock down --pin-dir {}` removes it",
            ifaces.attached().join(", "),
            d.live.config.pin_dir.display()
        );
    } else {
        log::info!(
            "detaching; the maps stay pinned in {}",
            d.live.config.pin_dir.display()
        );
        ifaces.detach(attach::program(&mut ebpf)?);
    }
    Ok(())
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

/// Forwards the program's aya-log lines to env_logger (stderr).
fn forward_kernel_logs(ebpf: &mut aya::Ebpf) {
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
