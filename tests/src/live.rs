//! Live throughput for the benchmark: a generator namespace sends frames with
//! `BPF_PROG_TEST_RUN` live frames (the xdp-gen program, XDP_TX) over a veth pair to
//! a receiver namespace where the program under test is attached in native mode. The
//! receiver's veth statistics count what arrived.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};

use crate::{sh, unique};

/// Two namespaces joined by a veth pair; removed on drop.
pub struct Pair {
    pub gen_ns: String,
    pub rx_ns: String,
    pub gen_if: String,
    pub rx_if: String,
}

impl Pair {
    pub fn new() -> Pair {
        let (gen_ns, rx_ns) = (unique("xkgen"), unique("xkrx"));
        let (gen_if, rx_if) = (unique("xkg"), unique("xkr"));
        sh(&["ip", "netns", "add", &gen_ns]);
        sh(&["ip", "netns", "add", &rx_ns]);
        sh(&[
            "ip", "link", "add", &gen_if, "netns", &gen_ns, "type", "veth", "peer", "name", &rx_if, "netns",
            &rx_ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &gen_ns,
            "addr",
            "add",
            "198.18.100.2/24",
            "dev",
            &gen_if,
        ]);
        sh(&[
            "ip",
            "-n",
            &rx_ns,
            "addr",
            "add",
            "198.18.100.1/24",
            "dev",
            &rx_if,
        ]);
        for (ns, dev) in [(&gen_ns, &gen_if), (&rx_ns, &rx_if)] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        Pair {
            gen_ns,
            rx_ns,
            gen_if,
            rx_if,
        }
    }

    /// Packets the receiver's XDP program has seen so far.
    pub fn received(&self) -> u64 {
        let stats = sh(&["ip", "netns", "exec", &self.rx_ns, "ethtool", "-S", &self.rx_if]);
        stats
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_packets:"))
            .map(|v| v.trim().parse::<u64>().expect("a count"))
            .sum()
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.gen_ns, &self.rx_ns] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Runs `f` with this thread in network namespace `ns`, then moves it back.
pub fn in_netns_here<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    let original = File::open("/proc/self/task/thread-self/ns/net")
        .or_else(|_| File::open("/proc/thread-self/ns/net"))
        .expect("this thread's network namespace");
    let target = File::open(format!("/run/netns/{ns}")).expect("the namespace");
    // SAFETY: setns on this thread with namespace fds we hold open.
    assert_eq!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns into {ns}"
    );
    let out = f();
    // SAFETY: as above, back to where the thread was.
    assert_eq!(
        unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns back"
    );
    out
}

/// Attaches `prog` natively to the pair's receiving interface: a silent fallback to
/// generic mode would measure something else, so it fails instead.
pub fn attach_native(pair: &Pair, prog: &mut Xdp) {
    in_netns_here(&pair.rx_ns, || {
        let name = std::ffi::CString::new(pair.rx_if.as_str()).expect("name");
        prog.attach(name.as_c_str(), XdpMode::Driver)
            .expect("native XDP on the receiver");
    });
}

/// The generator: xdp-gen loaded once, run with live frames.
pub struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    pub fn new() -> Generator {
        let mut ebpf = Ebpf::load(xknock::GEN_OBJECT).expect("load the generator");
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_gen")
            .expect("xdp_gen")
            .try_into()
            .expect("xdp");
        prog.load().expect("the generator loads");
        Generator { ebpf }
    }

    /// Sends `count` copies of `frame` from the pair's generator side, each from a new
    /// source address if `vary`. Returns the wall time the generator took.
    pub fn send(&mut self, pair: &Pair, frame: &[u8], count: u32, vary: bool) -> Duration {
        let mut flag: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("GEN_VARY").expect("GEN_VARY")).expect("array");
        flag.set(0, &u32::from(vary), 0).expect("set GEN_VARY");
        let prog: &Xdp = self
            .ebpf
            .program("xdp_gen")
            .expect("xdp_gen")
            .try_into()
            .expect("xdp");
        in_netns_here(&pair.gen_ns, || {
            let ifindex = {
                let name = std::ffi::CString::new(pair.gen_if.as_str()).expect("name");
                // SAFETY: a NUL-terminated name, only read.
                unsafe { libc::if_nametoindex(name.as_ptr()) }
            };
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
            let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect();
            let started = Instant::now();
            let opts = TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: count,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..TestRunOptions::default()
            };
            prog.test_run(opts).expect("live frames");
            started.elapsed()
        })
    }
}

impl Default for Generator {
    fn default() -> Self {
        Self::new()
    }
}
