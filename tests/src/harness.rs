//! A harness for the XDP program under `BPF_PROG_TEST_RUN`: the program loaded with
//! its maps pinned in a private bpffs, a test configuration applied, frames run one at
//! a time, and time frozen and moved by hand through the program's test clock.

use std::{path::Path, time::Duration};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use knock_common::{Counter, Event, EventKind};
use xknock::{config::Config, kernel::load as attach, kernel::maps::State};

use crate::{BpfFs, frame::Frame};

pub const PASS: u32 = 2;
pub const DROP: u32 = 1;

pub const CONFIG: &str = r#"
[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
open_for = "30s"
step_timeout = "5s"
sequence_timeout = "8s"
idle_timeout = "60s"

[[sequence]]
name = "web"
knocks = ["7100/udp", "7200/udp"]
protect = ["8080/tcp", "5353/udp"]
strict = true
keep_established = false
"#;

pub const SSH: u8 = 0;
pub const WEB: u8 = 1;
pub const A: &str = "198.18.0.10";
pub const B: &str = "198.18.0.11";
pub const A6: &str = "fd00::10";

/// Average time of one run of `bytes` through `prog`, over `repeat` runs.
pub fn time_program(prog: &Xdp, bytes: &[u8], repeat: u32) -> Duration {
    let opts = TestRunOptions {
        data_in: Some(bytes),
        repeat,
        ..TestRunOptions::default()
    };
    prog.test_run(opts).expect("BPF_PROG_TEST_RUN").duration
}

/// Where the frozen clock starts (any nonzero time).
const START: Duration = Duration::from_secs(1000);

pub struct Harness {
    ebpf: Ebpf,
    pub state: State,
    events: RingBuf<MapData>,
    step_events: RingBuf<MapData>,
    spa_requests: RingBuf<MapData>,
    /// The frozen policy clock.
    now: Duration,
    // Last: unmounted after the program and maps are closed.
    fs: BpfFs,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        Self::with_config(CONFIG)
    }

    pub fn with_config(toml: &str) -> Harness {
        let fs = BpfFs::new();
        let config = Config::parse(Path::new("test.toml"), toml).expect("test config is valid");
        let (mut ebpf, _) = attach::load(&fs.pin_dir(), &config.limits).expect("load the XDP program");
        let mut state = State::from_ebpf(&mut ebpf).expect("maps");
        state.apply(&config).expect("apply config");
        state.set_test_clock(Some(START)).expect("freeze the clock");
        let mut ring = |name: &str| -> RingBuf<MapData> {
            ebpf.take_map(name)
                .expect("events map")
                .try_into()
                .expect("ring buffer")
        };
        let events = ring(knock_common::map_names::EVENTS);
        let step_events = ring(knock_common::map_names::STEP_EVENTS);
        let spa_requests = ebpf
            .take_map(knock_common::map_names::SPA_REQUESTS)
            .expect("SPA request map")
            .try_into()
            .expect("ring buffer");
        let mut h = Harness {
            ebpf,
            state,
            events,
            step_events,
            spa_requests,
            now: START,
            fs,
        };
        // Every event, whatever the frozen clock: the budget has its own tests.
        h.set_event_budget(0, 0);
        h
    }

    /// Sets the per-packet events' budget as the loader would (`[events]`): each
    /// costs `cost_ns` of credit, of which a CPU keeps `burst_ns`; 0 is no limit.
    pub fn set_event_budget(&mut self, cost_ns: u64, burst_ns: u64) {
        let mut s = self.state.settings().expect("settings");
        (s.event_cost_ns, s.event_burst_ns) = (cost_ns, burst_ns);
        self.state.settings.set(0, &s, 0).expect("write the settings");
    }

    /// Where the maps are pinned (for `bpftool`).
    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.fs.pin_dir()
    }

    /// Average time of one run of `bytes` over `repeat` runs in the kernel.
    pub fn time(&self, bytes: &[u8], repeat: u32) -> Duration {
        time_program(self.program(), bytes, repeat)
    }

    /// Instructions the verifier processed to accept the program (its limit is 1M).
    pub fn verified_instructions(&self) -> u32 {
        self.program()
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("kernel reports it")
    }

    /// The loaded program, to attach it somewhere (the live benchmark).
    pub fn program_mut(&mut self) -> &mut Xdp {
        let prog = self
            .ebpf
            .program_mut(xknock::kernel::PROGRAM_NAME)
            .expect("the xknock program");
        prog.try_into().expect("an XDP program")
    }

    fn program(&self) -> &Xdp {
        let prog = self
            .ebpf
            .program(xknock::kernel::PROGRAM_NAME)
            .expect("the xknock program");
        prog.try_into().expect("an XDP program")
    }

    pub fn run(&self, bytes: &[u8]) -> u32 {
        let prog = self.program();
        let opts = TestRunOptions {
            data_in: Some(bytes),
            ..TestRunOptions::default()
        };
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }

    pub fn send(&self, frame: &Frame) -> u32 {
        self.run(&frame.build())
    }

    /// Sends each frame and asserts it was dropped (knocks always are).
    pub fn knock(&self, frames: &[Frame]) {
        for f in frames {
            assert_eq!(self.send(f), DROP, "knock {f:?} must be dropped");
        }
    }

    /// The frozen clock, in ns.
    pub fn now_ns(&self) -> u64 {
        self.now.as_nanos() as u64
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.state
            .set_test_clock(Some(self.now))
            .expect("move the test clock");
    }

    pub fn step(&self, src: &str, seq: u8) -> Option<u8> {
        let key = xknock::net::source_key(src.parse().expect("addr"), seq);
        self.state.progress.get(&key, 0).ok().map(|p| p.step)
    }

    pub fn banned(&self, src: &str) -> bool {
        let key = self.state.ban_key(src.parse().expect("addr")).expect("settings");
        let now = self.state.now_ns().expect("clock");
        self.state.bans.get(&key, 0).is_ok_and(|b| b.until_ns > now)
    }

    pub fn authorized(&self, src: &str, seq: u8) -> bool {
        let key = xknock::net::source_key(src.parse().expect("addr"), seq);
        let now = self.state.now_ns().expect("clock");
        self.state
            .authorized
            .get(&key, 0)
            .is_ok_and(|a| a.expires_ns > now)
    }

    /// The events of both rings since the last call, in the order they were made
    /// (per-packet ones first at the same time: a knock comes before its open).
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = vec![];
        for ring in [&mut self.step_events, &mut self.events] {
            while let Some(item) = ring.next() {
                out.push(bytemuck::pod_read_unaligned::<Event>(&item));
            }
        }
        out.sort_by_key(|e| e.ts_ns);
        out
    }

    /// The SPA requests the kernel handed over since the last call.
    pub fn spa_requests(&mut self) -> Vec<knock_common::SpaRequest> {
        let mut out = vec![];
        while let Some(item) = self.spa_requests.next() {
            out.push(bytemuck::pod_read_unaligned(&item));
        }
        out
    }

    /// The reason of the first reset among the pending events.
    pub fn reset_reason(&mut self) -> Option<u8> {
        self.events()
            .into_iter()
            .find(|e| e.kind == EventKind::Reset as u8)
            .map(|e| e.reason)
    }

    pub fn kinds(&mut self) -> Vec<(EventKind, u8, u8)> {
        self.events()
            .iter()
            .map(|e| (EventKind::from_u8(e.kind).expect("kind"), e.seq, e.step))
            .collect()
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.state.counter(c).expect("counter")
    }
}

/// The three knocks of the test config's ssh sequence.
pub fn ssh_knocks(src: &str) -> [Frame; 3] {
    [
        Frame::syn(src, 7000),
        Frame::udp(src, 8000),
        Frame::syn(src, 9000),
    ]
}
