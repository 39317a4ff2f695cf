//! The benchmark's rig for live throughput: a generator namespace sends frames with
//! `BPF_PROG_TEST_RUN` live frames (the xdp-gen program, XDP_TX) over a veth pair to
//! a receiver namespace where the program under test is attached in native mode. The
//! generator runs pinned to one CPU, and the receiver's packet processing (veth's NAPI
//! poll: the XDP program and any stack work after it) runs there too, as softirq work
//! when the generator's batches end: the receiver's CPU time is that CPU's softirq
//! time. The receiver's veth statistics count what arrived.

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

use xknock_tests::{
    cpu::{pin, unpin},
    sh, unique,
};

/// Two namespaces joined by a veth pair; removed on drop.
pub struct Pair {
    pub gen_ns: String,
    pub rx_ns: String,
    pub gen_if: String,
    pub rx_if: String,
}

/// Where the generator (and so the receiver's processing) runs.
pub const GENERATOR_CPU: usize = 0;

/// Softirq time of the generator's CPU so far, in ns (from /proc/stat; USER_HZ 100).
pub fn receiver_cpu_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = format!("cpu{GENERATOR_CPU} ");
    let cpu = stat
        .lines()
        .find(|l| l.starts_with(&line))
        .expect("the generator CPU's line");
    // cpuN user nice system idle iowait irq softirq ...
    let ticks: f64 = cpu
        .split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .expect("softirq");
    ticks * 1e7
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

    /// Runs `args` in the receiver's namespace; returns its output.
    pub fn rx(&self, args: &[&str]) -> String {
        sh(&[&["ip", "netns", "exec", &self.rx_ns][..], args].concat())
    }

    /// Packets the receiver's XDP program has seen so far.
    pub fn received(&self) -> u64 {
        let stats = self.rx(&["ethtool", "-S", &self.rx_if]);
        stats
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_packets:"))
            .map(|v| v.trim().parse::<u64>().expect("a count"))
            .sum()
    }
}

impl Pair {
    /// The names of a pair another owner keeps (and removes): for a second thread.
    pub fn borrowed(gen_ns: String, gen_if: String) -> std::mem::ManuallyDrop<Pair> {
        std::mem::ManuallyDrop::new(Pair {
            gen_ns,
            rx_ns: String::new(),
            gen_if,
            rx_if: String::new(),
        })
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

/// Sets this thread's scheduling policy (SCHED_IDLE or SCHED_OTHER).
fn set_policy(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes this thread's scheduling policy only.
    let ok = unsafe { libc::sched_setscheduler(0, policy, &raw const param) };
    assert_eq!(ok, 0, "sched_setscheduler: {}", std::io::Error::last_os_error());
}

/// The generator: xdp-gen loaded once, run with live frames.
pub struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    pub fn new() -> Generator {
        let mut ebpf = Ebpf::load(crate::GEN_OBJECT).expect("load the generator");
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_gen")
            .expect("xdp_gen")
            .try_into()
            .expect("xdp");
        prog.load().expect("the generator loads");
        Generator { ebpf }
    }

    /// Sends `count` copies of `frame` from the pair's generator side. With
    /// `per_source` nonzero, each source address of the generator's range (130,816 of
    /// them, in turn: xdp_gen's SOURCES) sends that many frames in a row; with 0 all
    /// keep the frame's own. Returns the wall time the generator took. It runs at
    /// idle priority, so that the receiver's processing on the same CPU always goes
    /// first: the generator then sends as fast as the receiver takes it, rather than
    /// as fast as the scheduler's split of the CPU between the two allows, and it does
    /// not overrun veth's ring (which would drop a legitimate client's packets before
    /// any filter saw them).
    pub fn send(&mut self, pair: &Pair, frame: &[u8], count: u32, per_source: u32) -> Duration {
        let mut flag: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("GEN_VARY").expect("GEN_VARY")).expect("array");
        flag.set(0, &per_source, 0).expect("set GEN_VARY");
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
            // Unpinned afterwards: processes this thread starts must not inherit it.
            let unpinned = pin(GENERATOR_CPU);
            set_policy(libc::SCHED_IDLE);
            let started = Instant::now();
            let opts = TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: count,
                // Batches as large as veth's ring.
                attrs: TestRunAttrs::new().xdp_live_frames(256),
                ..TestRunOptions::default()
            };
            prog.test_run(opts).expect("live frames");
            let took = started.elapsed();
            set_policy(libc::SCHED_OTHER);
            unpin(&unpinned);
            took
        })
    }
}

impl Default for Generator {
    fn default() -> Self {
        Self::new()
    }
}

/// A flood from a background thread: `frame` from the generator's source addresses in
/// turn, `per_source` frames each, at the generator's full rate (see
/// `Generator::send`); stopped on drop.
pub struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    pub fn start(pair: &Pair, frame: Vec<u8>, per_source: u32) -> Flood {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (gen_ns, gen_if, flag) = (pair.gen_ns.clone(), pair.gen_if.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let pair = Pair::borrowed(gen_ns, gen_if);
            let mut generator = Generator::new();
            // Bounded: at most 400 batches of 500k frames (a few minutes).
            for _ in 0..400 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                generator.send(&pair, &frame, 500_000, per_source);
            }
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // A generator that panicked must fail the run, not leave rows measured
        // without their flood.
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Sends `count` empty UDP datagrams to `dst`, a millisecond apart, from the pair's
/// generator side and the generator's CPU (where a legitimate client competes with
/// a flood).
pub fn send_probes(pair: &Pair, dst: std::net::SocketAddr, count: u32) {
    in_netns_here(&pair.gen_ns, || {
        let unpinned = pin(GENERATOR_CPU);
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        for _ in 0..count {
            sock.send_to(&[], dst).expect("send a probe");
            std::thread::sleep(Duration::from_millis(1));
        }
        unpin(&unpinned);
    });
}

/// The ArchWiki `recent` recipe, for the sequence 7000/tcp 8000/udp 9000/tcp
/// protecting 22/tcp: each gate remembers the source in a list, the next knock moves it
/// on, anything else sends it back to the first gate.
pub const IPTABLES_RECENT: &str = "*filter
:INPUT ACCEPT [0:0]
:KNOCKING - [0:0]
:GATE1 - [0:0]
:GATE2 - [0:0]
:GATE3 - [0:0]
:PASSED - [0:0]
-A INPUT -j KNOCKING
-A GATE1 -p tcp --dport 7000 -m recent --name AUTH1 --set -j DROP
-A GATE1 -j DROP
-A GATE2 -m recent --name AUTH1 --remove
-A GATE2 -p udp --dport 8000 -m recent --name AUTH2 --set -j DROP
-A GATE2 -j GATE1
-A GATE3 -m recent --name AUTH2 --remove
-A GATE3 -p tcp --dport 9000 -m recent --name AUTH3 --set -j DROP
-A GATE3 -j GATE1
-A PASSED -m recent --name AUTH3 --remove
-A PASSED -p tcp --dport 22 -j ACCEPT
-A PASSED -j GATE1
-A KNOCKING -m recent --rcheck --seconds 30 --name AUTH3 -j PASSED
-A KNOCKING -m recent --rcheck --seconds 10 --name AUTH2 -j GATE3
-A KNOCKING -m recent --rcheck --seconds 10 --name AUTH1 -j GATE2
-A KNOCKING -j GATE1
COMMIT
";

/// The same sequence with nftables sets (timeouts on the set elements).
pub const NFTABLES_SETS: &str = "table inet knock {
  set stage1 { type ipv4_addr; flags timeout; timeout 10s; }
  set stage2 { type ipv4_addr; flags timeout; timeout 10s; }
  set allowed { type ipv4_addr; flags timeout; timeout 30s; }
  chain input {
    type filter hook input priority 0; policy accept;
    counter
    tcp dport 22 ip saddr @allowed accept
    tcp dport 22 drop
    tcp dport 7000 add @stage1 { ip saddr } drop
    udp dport 8000 ip saddr @stage1 add @stage2 { ip saddr } drop
    tcp dport 9000 ip saddr @stage2 add @allowed { ip saddr } drop
  }
}
";

/// A netfilter knocking ruleset in the receiver, behind an XDP program that passes all.
#[derive(Clone, Copy)]
pub enum Netfilter {
    IptablesRecent,
    NftablesSets,
}

impl Netfilter {
    pub fn name(self) -> &'static str {
        match self {
            Netfilter::IptablesRecent => "iptables recent (ArchWiki)",
            Netfilter::NftablesSets => "nftables sets",
        }
    }

    /// Installs the ruleset in the pair's receiver namespace.
    pub fn install(self, pair: &Pair) {
        let (tool, text) = match self {
            Netfilter::IptablesRecent => ("iptables-restore", IPTABLES_RECENT),
            Netfilter::NftablesSets => ("nft", NFTABLES_SETS),
        };
        let path = std::env::temp_dir().join(unique("xknock-rules-"));
        std::fs::write(&path, text).expect("write the ruleset");
        let path_str = path.to_str().expect("utf-8");
        match self {
            Netfilter::IptablesRecent => pair.rx(&[tool, path_str]),
            Netfilter::NftablesSets => pair.rx(&[tool, "-f", path_str]),
        };
        let _ = std::fs::remove_file(path);
    }

    /// Packets the ruleset has looked at so far (its INPUT entry counter).
    pub fn packets(self, pair: &Pair) -> u64 {
        let out = match self {
            Netfilter::IptablesRecent => pair.rx(&["iptables", "-L", "INPUT", "-v", "-x", "-n"]),
            Netfilter::NftablesSets => pair.rx(&["nft", "list", "chain", "inet", "knock", "input"]),
        };
        match self {
            // "  pkts bytes target ..." rows: the KNOCKING jump is the only rule.
            Netfilter::IptablesRecent => out
                .lines()
                .find(|l| l.contains("KNOCKING"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .expect("the INPUT counter"),
            Netfilter::NftablesSets => out
                .split("counter packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .expect("the chain counter"),
        }
    }
}

impl Pair {
    /// The receiver's MAC address, so generated frames reach its IP stack.
    pub fn rx_mac(&self) -> [u8; 6] {
        let out = sh(&["ip", "-n", &self.rx_ns, "link", "show", "dev", &self.rx_if]);
        let mac = out
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("a MAC");
        let bytes: Vec<u8> = mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect();
        bytes.try_into().expect("six bytes")
    }
}

impl Netfilter {
    /// Whether the ruleset has authorized `addr` (it completed the sequence).
    pub fn authorized(self, pair: &Pair, addr: &str) -> bool {
        let out = match self {
            Netfilter::IptablesRecent => pair.rx(&["cat", "/proc/net/xt_recent/AUTH3"]),
            Netfilter::NftablesSets => pair.rx(&["nft", "list", "set", "inet", "knock", "allowed"]),
        };
        out.contains(&format!("{addr} "))
            || out.contains(&format!("{addr},"))
            || out.contains(&format!("{addr} }}"))
    }

    /// Forgets `addr`: its authorization and its progress through the sequence (what
    /// others, such as a flood, put in the ruleset stays).
    pub fn forget(self, pair: &Pair, addr: &str) {
        match self {
            Netfilter::IptablesRecent => {
                let cmd = format!(
                    "for l in AUTH1 AUTH2 AUTH3; do echo -{addr} > /proc/net/xt_recent/$l || true; done"
                );
                pair.rx(&["sh", "-c", &cmd]);
            }
            Netfilter::NftablesSets => {
                for set in ["stage1", "stage2", "allowed"] {
                    // Absent already is fine.
                    let element = format!("{{ {addr} }}");
                    let _ = std::process::Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &pair.rx_ns,
                            "nft",
                            "delete",
                            "element",
                            "inet",
                            "knock",
                        ])
                        .args([set, &element])
                        .output();
                }
            }
        }
    }
}

/// knockd listening on the pair's receiver, set up like the ArchWiki page's (there the
/// accepting rule goes into a chain consulted before the firewall's final reject):
/// iptables drops 22/tcp, and the sequence makes knockd insert a rule accepting the
/// source before that (its `command`). Stopped on drop.
pub struct Knockd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Knockd {
    pub fn start(pair: &Pair) -> Knockd {
        pair.rx(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP",
        ]);
        let dir = std::env::temp_dir().join(unique("xknock-knockd-"));
        std::fs::create_dir_all(&dir).expect("knockd dir");
        let config = dir.join("knockd.conf");
        std::fs::write(
            &config,
            format!(
                "[options]\n    logfile = {}\n[open]\n    sequence = 7000:tcp,8000:udp,9000:tcp\n    seq_timeout = 15\n    \
                 tcpflags = syn\n    command = /usr/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n",
                dir.join("knockd.log").display()
            ),
        )
        .expect("knockd.conf");
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", pair.rx_ns))
            .args(["--", "knockd", "-i", &pair.rx_if, "-c"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start knockd");
        // knockd opens its capture asynchronously.
        std::thread::sleep(Duration::from_millis(500));
        Knockd { child, dir }
    }

    /// Whether knockd has run its command for `addr`.
    pub fn authorized(&self, pair: &Pair, addr: &str) -> bool {
        pair.rx(&["iptables", "-S", "INPUT"])
            .contains(&format!("-s {addr}/32"))
    }

    /// Removes the rules knockd added for `addr`: its authorizations (its own state
    /// for a source ends when the sequence completes).
    pub fn forget(&self, pair: &Pair, addr: &str) {
        let cmd =
            format!("while iptables -D INPUT -s {addr} -p tcp --dport 22 -j ACCEPT 2>/dev/null; do :; done");
        pair.rx(&["sh", "-c", &cmd]);
    }

    /// Packets the iptables rules have looked at so far (those to 22/tcp).
    pub fn packets(&self, pair: &Pair) -> u64 {
        let out = pair.rx(&["iptables", "-L", "INPUT", "-v", "-x", "-n"]);
        // "  pkts bytes target ..." rows, one per rule.
        out.lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Knockd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
