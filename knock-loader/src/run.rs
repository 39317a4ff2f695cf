//! `xknock run`: load (adopting pinned state), configure, attach, print events;
//! reload on SIGHUP; on SIGINT/SIGTERM detach, or leave the filter in place.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::RingBuf;
use knock_common::{Event, EventKind, SpaRequest, map_names};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    attach,
    commands::Commands,
    config::{Config, XdpMode},
    events::{EventLine, Events},
    ifaces::Interfaces,
    maps::State,
    metrics, onetime,
    pins::Pinned,
    reconcile::Dropped,
    spa::{self, Verifier},
};

/// How often authorizations are checked for expiry (the lateness of `close` events).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often time-based sequences are checked for a new period or the end of a grace.
const ROTATE_EVERY: Duration = Duration::from_millis(200);
/// How often interfaces are checked for appearing, or coming back under a new index.
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(opts, config))
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

    /// Prints the kernel's events; returns the sequences that opened.
    fn drain(
        &self,
        ring: &mut RingBuf<aya::maps::MapData>,
        events: &mut Events,
        state: &State,
    ) -> Result<Vec<u8>> {
        let now = state.now_ns()?;
        let mut opened = vec![];
        while let Some(item) = ring.next() {
            if let Ok(ev) = bytemuck::try_pod_read_unaligned::<Event>(&item) {
                if ev.kind == EventKind::Open as u8 {
                    opened.push(ev.seq);
                }
                if let Some(line) = events.from_kernel(&ev, now) {
                    self.emit(line);
                }
            }
        }
        Ok(opened)
    }
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

async fn run_async(opts: RunOptions, config: Config) -> Result<()> {
    // First: until they are handled, each of these would kill the process (a
    // reload from a service manager during start-up, say).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Before anything is loaded: an unreadable replay cache or a taken metrics
    // address stops here.
    let verifier = Verifier::new(&config).context("cannot start Single Packet Authorization")?;
    let listener = match opts.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let (mut ebpf, pinned) = attach::load(&config.pin_dir, &config.limits)?;
    let mut state = State::from_ebpf(&mut ebpf)?;
    let dropped = state
        .apply_keeping(&config)
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
    let mut spa_ring = watch(&mut ebpf, map_names::SPA_REQUESTS)?;
    forward_kernel_logs(&mut ebpf);

    let xdp = attach::program(&mut ebpf)?;
    attach::pin_program(xdp, &config.pin_dir)?;
    let mut ifaces = Interfaces::attach(xdp, &config.pin_dir, config.xdp_mode, &config.interfaces)?;

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
    let mut live = Live {
        config,
        verifier,
        events,
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut rotate = tokio::time::interval(ROTATE_EVERY);
    let mut follow = tokio::time::interval(FOLLOW_IFACES_EVERY);
    // Empty: the first tick rewrites them, in case a period ended since `apply`.
    let mut slots = vec![];
    loop {
        let timed = live.config.sequences.iter().any(|s| s.timed.is_some());
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let opened = output.drain(guard.get_inner_mut(), &mut live.events, &state)?;
                next_one_time(&mut live.config, &mut state, &opened)?;
                guard.clear_ready();
            }
            guard = spa_ring.readable_mut(), if live.verifier.is_some() => {
                // Nothing on this path ends the loop: a bad request, a full disk or
                // a failed write is an event or a log line, and the next request
                // tries again.
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => {
                        log::error!("cannot read the SPA request ring buffer: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Kernel events first, so that its knocks print before an open.
                match output.drain(ring.get_mut(), &mut live.events, &state) {
                    Ok(opened) => {
                        if let Err(e) = next_one_time(&mut live.config, &mut state, &opened) {
                            log::error!("{e:#}");
                        }
                    }
                    Err(e) => log::error!("cannot read the kernel's events: {e:#}"),
                }
                if let Some(verifier) = live.verifier.as_mut() {
                    let requests = guard.get_inner_mut();
                    while let Some(item) = requests.next() {
                        if let Ok(request) = bytemuck::try_pod_read_unaligned::<SpaRequest>(&item) {
                            for line in spa::serve(&request, verifier, &mut state, &mut live.events) {
                                output.emit(line);
                            }
                        }
                    }
                }
                guard.clear_ready();
            }
            _ = rotate.tick(), if timed => {
                // Only the time-based sequences' slots change; progress and
                // authorizations are left alone.
                let now = SystemTime::now();
                let next = live.config.kernel_slots(now);
                if next != slots {
                    state
                        .apply_sequences(&live.config, now)
                        .context("cannot rewrite the time-based sequences")?;
                    log::debug!("time-based sequences: new knocks or the end of a grace");
                    slots = next;
                }
            }
            _ = sweep.tick() => {
                // Kernel events first, so an `open` the kernel just made is not
                // mistaken for one added by `xknock allow`.
                let opened = output.drain(ring.get_mut(), &mut live.events, &state)?;
                next_one_time(&mut live.config, &mut state, &opened)?;
                for line in live.events.sweep(&mut state)? {
                    output.emit(line);
                }
            }
            _ = follow.tick() => ifaces.sync(attach::program(&mut ebpf)?),
            _ = sighup.recv() => {
                // Events so far belong to the old sequence names.
                let opened = output.drain(ring.get_mut(), &mut live.events, &state)?;
                next_one_time(&mut live.config, &mut state, &opened)?;
                let xdp = attach::program(&mut ebpf)?;
                match reload(&opts, &mut live, &mut state, &mut ifaces, xdp) {
                    Ok(dropped) => {
                        // The old hooks still: a removed sequence's on_close runs.
                        for d in &dropped {
                            output.emit(live.events.removed(d));
                        }
                        output.commands.set_hooks(&live.config);
                        slots = vec![];
                    }
                    Err(e) => log::error!("reload refused, the running config stays in force: {e:#}"),
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
            live.config.pin_dir.display()
        );
    } else {
        log::info!(
            "detaching; the maps stay pinned in {}",
            live.config.pin_dir.display()
        );
        ifaces.detach(attach::program(&mut ebpf)?);
    }
    Ok(())
}

/// Re-reads the config file and, if all of it is valid, puts it in force: sequences
/// (authorizations follow their sequence by name; those of removed sequences are
/// returned), lists, SPA clients, interfaces. Refused whole otherwise.
fn reload(
    opts: &RunOptions,
    live: &mut Live,
    state: &mut State,
    ifaces: &mut Interfaces,
    xdp: &mut aya::programs::Xdp,
) -> Result<Vec<Dropped>> {
    let config = opts
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
    // The nonces in memory carry over (to a new replay_file too), each for the
    // longest window in force since it was seen.
    let verifier = match Verifier::renewed(&config, live.verifier.as_ref())
        .context("cannot start Single Packet Authorization")?
    {
        Some((verifier, saved)) => {
            if let Err(e) = saved {
                log::error!(
                    "reload: {e:#}; SPA requests are refused until the replay file can be written"
                );
            }
            Some(verifier)
        }
        None => None,
    };
    let dropped = state
        .apply_keeping(&config)
        .context("cannot write the new configuration into the maps")?;
    if let Err(e) = ifaces.set(xdp, &config.interfaces) {
        log::error!("reload: {e:#}");
    }
    log::info!(
        "reloaded {}: {} sequence(s); {} authorization(s) of removed sequences dropped",
        opts.config.display(),
        config.sequences.len(),
        dropped.len()
    );
    live.events = Events::new(state)?;
    live.config = config;
    live.verifier = verifier;
    Ok(dropped)
}

/// For each one-time sequence among `opened`: marks its line used in its file and
/// loads the next (or none, once all are used) into the kernel.
fn next_one_time(config: &mut Config, state: &mut State, opened: &[u8]) -> Result<()> {
    let mut changed = false;
    for seq in opened {
        let Some(s) = config.sequences.get_mut(usize::from(*seq)) else {
            continue;
        };
        let Some(path) = s.one_time.clone() else { continue };
        // The line in use now: the one that opened (nothing else moves it).
        if let Some((line, _)) = onetime::current(&path)? {
            onetime::mark_used(&path, line)?;
        }
        s.knocks = match onetime::current(&path)? {
            Some((line, knocks)) => {
                log::info!(
                    "{}: one-time sequence used; line {line} of {} is next",
                    s.name,
                    path.display()
                );
                knocks
            }
            None => {
                log::warn!(
                    "{}: every one-time sequence in {} is used: add more",
                    s.name,
                    path.display()
                );
                vec![]
            }
        };
        changed = true;
    }
    if changed {
        state
            .apply_sequences(config, SystemTime::now())
            .context("cannot load the next one-time sequence")?;
    }
    Ok(())
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
