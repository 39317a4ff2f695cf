//! Cost under random-source floods with the real `xknock run` consuming events: the
//! receiver of a veth pair runs the `xknock run` binary (native mode, `--json`, its
//! standard output counted line by line), and the XDP program it attached is measured
//! by the kernel's run-time statistics during floods from the generator's 130,816
//! source addresses in turn, interleaved with the empty program on a pair of its own.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::ProgramInfo;
use xknock_tests::{BpfFs, frame::Frame, unique, xknock_bin};

use crate::{
    Csv,
    rig::Pair,
    setups::{SEQUENCES, empty_program, passing_pair},
};

/// Frames per measured flood (after a tenth of that as a warm-up).
const FRAMES: u32 = 2_000_000;
/// Interleaved rounds; the medians count.
const ROUNDS: usize = 7;

/// `xknock run` on a pair's receiver, in the receiver's network namespace, with a pin
/// directory of its own on a private bpffs. Stopped (SIGTERM: it detaches) and its
/// pins removed on drop, also on a panic.
struct Daemon {
    child: Child,
    /// Lines `run` has printed so far.
    lines: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
    pin_dir: PathBuf,
    /// Last: unmounted once `run` is gone.
    _fs: BpfFs,
}

impl Daemon {
    /// Starts `run` with SEQUENCES and the default [limits] on the pair's receiver;
    /// returns once its program is attached there.
    fn start(pair: &Pair) -> Daemon {
        let fs = BpfFs::new();
        let pin_dir = fs.pin_dir();
        let dir = std::env::temp_dir().join(unique("xknock-flood-"));
        std::fs::create_dir_all(&dir).expect("the run's directory");
        let config = dir.join("xknock.toml");
        std::fs::write(&config, SEQUENCES).expect("write the config");
        let log = std::fs::File::create(dir.join("run.log")).expect("the run's log");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", pair.rx_ns))
            .arg("--")
            .arg(xknock_bin())
            .args(["run", "--json", "--xdp-mode", "native", "--iface", &pair.rx_if])
            .arg("--config")
            .arg(&config)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start xknock run");
        let lines = Arc::new(AtomicU64::new(0));
        let mut out = child.stdout.take().expect("run's stdout");
        let counted = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                let n = buf[..n].iter().filter(|b| **b == b'\n').count();
                counted.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let daemon = Daemon {
            child,
            lines,
            reader: Some(reader),
            dir,
            pin_dir,
            _fs: fs,
        };
        daemon.wait_attached(pair);
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("run.log")).unwrap_or_default()
    }

    /// Waits until the receiver runs the program `run` pinned.
    fn wait_attached(&self, pair: &Pair) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let link = pair.rx(&["ip", "link", "show", "dev", &pair.rx_if]);
            let attached: Option<u32> = link
                .split("prog/xdp id ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|id| id.parse().ok());
            let pinned = ProgramInfo::from_pin(xknock::kernel::pins::PinDir(&self.pin_dir).program()).ok();
            if let (Some(attached), Some(pinned)) = (attached, pinned) {
                assert_eq!(
                    attached,
                    pinned.id(),
                    "the receiver runs another program than the one run pinned"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "xknock run did not attach within 20 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The program's statistics now (run time, run count).
    fn stats(&self) -> (Duration, u64) {
        let info = ProgramInfo::from_pin(xknock::kernel::pins::PinDir(&self.pin_dir).program())
            .expect("run's program");
        (info.run_time(), info.run_count())
    }

    fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to the child we started (nsenter execs run, same pid).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits until `run` has printed nothing for 300 ms (it has caught up), 10 s at most.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.lines();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.lines();
            if now == last {
                return;
            }
            last = now;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A stopped run would not act on SIGTERM: continue it too.
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("flood: xknock run did not exit on SIGTERM within 10 s; killing it");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // The maps stay pinned after a detach: remove them (the bpffs goes next).
        let _ = Command::new(xknock_bin())
            .args(["down", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
        let _ = std::fs::remove_file(xknock::kernel::pins::PinDir(&self.pin_dir).lock());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The program's time per run from statistics before and after.
fn ns_per_run(before: (Duration, u64), after: (Duration, u64)) -> f64 {
    let ns = after.0.saturating_sub(before.0).as_nanos() as f64;
    ns / after.1.saturating_sub(before.1).max(1) as f64
}

/// The middle value (of an odd count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What one flood measured.
struct Measured {
    /// The XDP program's time per packet.
    ns: f64,
    /// Packets the program ran on per second.
    pps: f64,
    /// Lines `run` printed per second.
    lines_per_s: f64,
}

/// One flood of `frame` (every frame a new source), after a warm-up; `stats` gives
/// the program's run time and count and the lines `run` printed so far.
fn flood(
    generator: &mut crate::rig::Generator,
    pair: &Pair,
    frame: &[u8],
    stats: &dyn Fn() -> (Duration, u64, u64),
) -> Measured {
    generator.send(pair, frame, FRAMES / 10, 1);
    std::thread::sleep(Duration::from_millis(100));
    let before = stats();
    let secs = generator.send(pair, frame, FRAMES, 1).as_secs_f64();
    let after = stats();
    Measured {
        ns: ns_per_run((before.0, before.1), (after.0, after.1)),
        pps: after.1.saturating_sub(before.1) as f64 / secs,
        lines_per_s: after.2.saturating_sub(before.2) as f64 / secs,
    }
}

/// A row of the table: name, ns per packet, x the empty program, target (if any).
pub type Row = (&'static str, f64, f64, Option<f64>);

/// The floods, what `run` does during each, and the target ratio to the empty
/// program.
struct Kind {
    name: &'static str,
    port: u16,
    paused: bool,
    target: Option<f64>,
}

const KINDS: [Kind; 4] = [
    Kind {
        name: "unrelated port (TCP SYN to 80)",
        port: 80,
        paused: false,
        target: Some(1.3),
    },
    Kind {
        name: "protected port, dropped (SYN to 22)",
        port: 22,
        paused: false,
        target: Some(2.0),
    },
    Kind {
        name: "first knock (every packet a new source, SYN to 7000)",
        port: 7000,
        paused: false,
        target: Some(4.0),
    },
    Kind {
        name: "first knock, `run` paused (SIGSTOP during the flood)",
        port: 7000,
        paused: true,
        target: None,
    },
];

/// The table: XDP ns per packet under each random-source flood with `run` consuming
/// the events, against the empty program measured in the same rounds.
pub fn flood_table(md: &mut String, csv: &mut Csv) -> Vec<Row> {
    let stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time statistics");
    let mut generator = crate::rig::Generator::new();
    // Declared before the daemon: dropped after it.
    let (base_pair, mut pass) = passing_pair();
    let our_pair = Pair::new();
    let daemon = Daemon::start(&our_pair);
    let pass: &aya::programs::Xdp = empty_program(&mut pass);
    let base_stats = || {
        let info = pass.info().expect("program info");
        (info.run_time(), info.run_count(), 0)
    };
    let ours_stats = || {
        let (time, count) = daemon.stats();
        (time, count, daemon.lines())
    };
    let frame_to = |pair: &Pair, port: u16| {
        let mut bytes = Frame::syn("198.18.100.2", port)
            .dst("198.18.100.1".parse().expect("addr"))
            .build();
        bytes[..6].copy_from_slice(&pair.rx_mac());
        bytes
    };
    let ports: Vec<u16> = {
        let mut p: Vec<u16> = KINDS.iter().map(|k| k.port).collect();
        p.dedup();
        p
    };
    let mut empty: Vec<f64> = vec![];
    let mut ours: Vec<Vec<f64>> = vec![vec![]; KINDS.len()];
    // `run`'s lines per second during each kind's floods.
    let mut lines_per_s: Vec<Vec<f64>> = vec![vec![]; KINDS.len()];
    // Packets per second the program ran on during the first-knock floods.
    let mut knock_pps: Vec<f64> = vec![];
    for round in 0..ROUNDS {
        // The empty program's floods first in even rounds, last in odd ones.
        let mut base_round = |generator: &mut crate::rig::Generator| {
            for &port in &ports {
                let frame = frame_to(&base_pair, port);
                empty.push(flood(generator, &base_pair, &frame, &base_stats).ns);
            }
        };
        if round % 2 == 0 {
            base_round(&mut generator);
        }
        for (i, kind) in KINDS.iter().enumerate() {
            let frame = frame_to(&our_pair, kind.port);
            if kind.paused {
                daemon.signal(libc::SIGSTOP);
            }
            let m = flood(&mut generator, &our_pair, &frame, &ours_stats);
            lines_per_s[i].push(m.lines_per_s);
            if i == 2 {
                knock_pps.push(m.pps);
            }
            if kind.paused {
                daemon.signal(libc::SIGCONT);
            }
            ours[i].push(m.ns);
            // What `run` still has to print must not overlap the next flood.
            daemon.settle();
        }
        if round % 2 == 1 {
            base_round(&mut generator);
        }
        eprintln!("flood: round {} of {ROUNDS}", round + 1);
    }
    drop(daemon);
    drop(stats_on);

    let empty_ns = median(empty);
    let _ = writeln!(
        md,
        "\n| flood (random sources), `run` consuming events | XDP ns per packet | x empty program | target |\n|---|---:|---:|---|"
    );
    let _ = writeln!(md, "| empty program | {empty_ns:.0} | 1.0 | |");
    csv.row("flood", "empty program", None, "ns_per_packet", empty_ns);
    let mut rows: Vec<Row> = vec![("empty program", empty_ns, 1.0, None)];
    let lines: Vec<f64> = lines_per_s.into_iter().map(median).collect();
    for ((kind, ns), lines) in KINDS.iter().zip(ours).zip(&lines) {
        let ns = median(ns);
        let ratio = ns / empty_ns;
        let target = kind.target.map_or(String::new(), |t| {
            format!("≤ {t}: {}", if ratio <= t { "met" } else { "not met" })
        });
        let _ = writeln!(md, "| {} | {ns:.0} | {ratio:.2} | {target} |", kind.name);
        csv.row("flood", kind.name, None, "ns_per_packet", ns);
        csv.row("flood", kind.name, None, "x_empty", ratio);
        csv.row("flood", kind.name, None, "run_lines_per_second", *lines);
        if let Some(t) = kind.target {
            csv.row("flood", kind.name, None, "target_x_empty", t);
        }
        rows.push((kind.name, ns, ratio, kind.target));
    }
    let _ = writeln!(
        md,
        "\n`run` printed {:.0} lines per second during the first-knock floods, which reached its program at {:.0} \
         packets per second (medians of {ROUNDS} floods of {FRAMES} frames); {:.0} and {:.0} during the \
         unrelated-port and protected-port floods, {:.0} while paused.",
        lines[2],
        median(knock_pps.clone()),
        lines[0],
        lines[1],
        lines[3]
    );
    csv.row(
        "flood",
        KINDS[2].name,
        None,
        "packets_per_second",
        median(knock_pps),
    );
    eprintln!("flood: done");
    rows
}
