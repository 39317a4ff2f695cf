//! `xknock run`: load, configure, attach, print events, detach on SIGINT/SIGTERM.

use std::{
    net::SocketAddr,
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
    config::Config,
    events::{EventLine, Events},
    maps::State,
    metrics, onetime,
    spa::{self, Verifier},
};

/// How often authorizations are checked for expiry (the lateness of `close` events).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often time-based sequences are checked for a new period or the end of a grace.
const ROTATE_EVERY: Duration = Duration::from_millis(200);

/// `metrics`: where to serve `/metrics` (`--metrics`), if anywhere.
pub fn run(config: Config, json: bool, metrics: Option<SocketAddr>) -> Result<()> {
    if config.interfaces.is_empty() {
        bail!("no interface: give --iface IFACE or set interface in the config");
    }
    // Checked before anything is loaded or pinned.
    for iface in &config.interfaces {
        let name =
            std::ffi::CString::new(iface.as_str()).with_context(|| format!("interface name {iface:?}"))?;
        // SAFETY: a NUL-terminated name; the call only reads it.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            bail!("no network interface named {iface:?} (see `ip link`)");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(config, json, metrics))
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

async fn run_async(mut config: Config, json: bool, metrics: Option<SocketAddr>) -> Result<()> {
    // Before anything is loaded: an unreadable replay cache or a taken metrics
    // address stops here.
    let mut verifier = Verifier::new(&config).context("cannot start Single Packet Authorization")?;
    let listener = match metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let adopted = attach::has_pins(&config.pin_dir);
    let mut ebpf = attach::load(&config.pin_dir, &config.limits)?;
    let mut state = State::from_ebpf(&mut ebpf)?;
    state
        .apply(&config)
        .context("cannot write the configuration into the maps")?;
    if adopted {
        log::info!(
            "adopted the state pinned in {}: {} authorization(s), {} source(s) in progress",
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
    let mut links = Vec::new();
    for iface in &config.interfaces {
        match attach::attach_pinned(xdp, &config.pin_dir, iface, config.xdp_mode) {
            Ok((link, how)) => {
                log::info!("{iface}: {how}; pins in {}", config.pin_dir.display());
                links.push(link);
            }
            Err(e) => {
                // Nothing half-applied: undo the interfaces already attached.
                let _ = attach::detach(xdp, links);
                return Err(e);
            }
        }
    }

    let output = Output {
        json,
        commands: Commands::new(&config),
    };
    if let Some(listener) = listener {
        metrics::serve(listener, config.pin_dir.clone(), output.commands.runner().stats());
    }
    let mut events = Events::new(&state)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let timed = config.sequences.iter().any(|s| s.timed.is_some());
    let mut rotate = tokio::time::interval(ROTATE_EVERY);
    // Empty: the first tick rewrites them, in case a period ended since `apply`.
    let mut slots = vec![];
    let print = |line: EventLine| output.emit(line);
    // Prints the kernel's events; returns the sequences that opened.
    let drain = |ring: &mut RingBuf<_>, events: &mut Events, state: &State| -> Result<Vec<u8>> {
        let now = state.now_ns()?;
        let mut opened = vec![];
        while let Some(item) = ring.next() {
            if let Ok(ev) = bytemuck::try_pod_read_unaligned::<Event>(&item) {
                if ev.kind == EventKind::Open as u8 {
                    opened.push(ev.seq);
                }
                if let Some(line) = events.from_kernel(&ev, now) {
                    print(line);
                }
            }
        }
        Ok(opened)
    };
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let opened = drain(guard.get_inner_mut(), &mut events, &state)?;
                next_one_time(&mut config, &mut state, &opened)?;
                guard.clear_ready();
            }
            guard = spa_ring.readable_mut(), if verifier.is_some() => {
                let mut guard = guard?;
                if let Some(verifier) = verifier.as_mut() {
                    // Kernel events first, so that its knocks print before an open.
                    let opened = drain(ring.get_mut(), &mut events, &state)?;
                    next_one_time(&mut config, &mut state, &opened)?;
                    let requests = guard.get_inner_mut();
                    while let Some(item) = requests.next() {
                        if let Ok(request) = bytemuck::try_pod_read_unaligned::<SpaRequest>(&item) {
                            for line in spa::serve(&request, verifier, &mut state, &mut events) {
                                print(line);
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
                let next = config.kernel_slots(now);
                if next != slots {
                    state
                        .apply_sequences(&config, now)
                        .context("cannot rewrite the time-based sequences")?;
                    log::debug!("time-based sequences: new knocks or the end of a grace");
                    slots = next;
                }
            }
            _ = sweep.tick() => {
                // Kernel events first, so an `open` the kernel just made is not
                // mistaken for one added by `xknock allow`.
                let opened = drain(ring.get_mut(), &mut events, &state)?;
                next_one_time(&mut config, &mut state, &opened)?;
                for line in events.sweep(&mut state)? {
                    print(line);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    output.commands.shutdown();
    log::info!("detaching; the maps stay pinned in {}", config.pin_dir.display());
    attach::detach(attach::program(&mut ebpf)?, links)
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
