//! One server namespace running OpenSSH's sshd behind `xknock run`, and two client
//! namespaces, for the end-to-end tests.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    BpfFs,
    netns::{Hosts, in_netns, ssh_banner},
    unique, xknock_bin,
};

/// Connection attempts from a client to a port on the server, on four threads, all
/// the time until `finish`: what a second host probing the protected port sees.
pub struct Probe {
    stop: Arc<AtomicBool>,
    /// Attempts, and those answered (connected, or refused by a reset: either way
    /// the SYN got through the filter).
    counts: Arc<[AtomicU32; 2]>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts probing `target` from namespace `ns`, on four threads, for `max` at most
/// (or until `finish`, or the probe is dropped).
pub fn probe(ns: &str, target: SocketAddr, max: Duration) -> Probe {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let threads = (0..4)
        .map(|_| {
            let (ns, stop, counts) = (ns.to_owned(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                in_netns(&ns, move || {
                    let deadline = Instant::now() + max;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        counts[0].fetch_add(1, Ordering::Relaxed);
                        let answered = match TcpStream::connect_timeout(&target, Duration::from_millis(50)) {
                            Ok(_) => true,
                            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                        };
                        if answered {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            })
        })
        .collect();
    Probe {
        stop,
        counts,
        threads,
    }
}

impl Probe {
    /// Stops the probe; returns (attempts, answered).
    pub fn finish(mut self) -> (u32, u32) {
        self.stop();
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }

    /// (attempts, answered) so far; the probe goes on.
    pub fn counts(&self) -> (u32, u32) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("prober");
        }
    }

    /// Stops the probe and asserts it ran and nothing answered it.
    pub fn assert_never_answered(self, what: &str) {
        let (tried, answered) = self.finish();
        assert!(tried >= 8, "{what}: the probe ran ({tried} attempts)");
        assert_eq!(answered, 0, "{what}: {answered} of {tried} probes were answered");
    }
}

impl Drop for Probe {
    /// A test that failed with a probe running stops it too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            // A prober that panicked was reported by its own thread already.
            let _ = t.join();
        }
    }
}

/// The machine has two cores: one end-to-end test at a time keeps timing honest.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub const OPEN_FOR: Duration = Duration::from_secs(3);

/// A server with sshd behind `xknock run`, and two clients: 0 knocks, 1 does not.
pub struct Setup {
    pub hosts: Hosts,
    pub fs: BpfFs,
    pub dir: PathBuf,
    pub events: PathBuf,
    /// More arguments for every `xknock run` (say, `--metrics`).
    pub run_args: Vec<String>,
    /// Environment for the next `xknock run`s (say, `XKNOCK_FAULTS=...`).
    pub run_env: Vec<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Setup {
    pub fn new() -> Setup {
        Self::with_config("")
    }

    /// Like `new`, with `extra` TOML appended to the sequence (more keys of it, or
    /// further tables such as `[ban]`).
    pub fn with_config(extra: &str) -> Setup {
        Self::with_run_args(extra, &[])
    }

    /// Like `with_config`, with `run_args` added to `xknock run`'s arguments.
    pub fn with_run_args(extra: &str, run_args: &[&str]) -> Setup {
        let mut hosts = Hosts::new(2);
        let fs = BpfFs::new();
        let dir = std::env::temp_dir().join(unique("xknock-e2e-"));
        fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("xknock.toml");
        fs::write(&config, format!(
            "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000/tcp\", \"8000/udp\", \"9000/tcp\"]\nprotect = [\"22/tcp\"]\nopen_for = \"{}s\"\nstep_timeout = \"10s\"\nsequence_timeout = \"15s\"\n{extra}",
            OPEN_FOR.as_secs()
        )).expect("write config");
        hosts.start_sshd(&dir);
        let events = dir.join("events.jsonl");
        let mut setup = Setup {
            hosts,
            fs,
            dir,
            events,
            run_args: run_args.iter().map(ToString::to_string).collect(),
            run_env: vec![],
        };
        setup.start_run("events.jsonl");
        setup.wait_attached();
        setup
    }

    /// Starts `xknock run --json` on every server interface, its events going to
    /// `file` in the test's directory (which becomes the file `events()` reads) and
    /// its log to `file` + ".log".
    pub fn start_run(&mut self, file: &str) {
        self.events = self.dir.join(file);
        let out = fs::File::create(&self.events).expect("events file");
        let log = fs::File::create(self.log_path()).expect("log file");
        let (bin, config, pin_dir) = (xknock_bin(), self.dir.join("xknock.toml"), self.fs.pin_dir());
        let env = self.run_env.clone();
        // env(1) execs run: the pid stays the one nsenter was started as.
        let mut args: Vec<&str> = if env.is_empty() { vec![] } else { vec!["env"] };
        args.extend(env.iter().map(String::as_str));
        args.extend([bin.to_str().expect("utf-8"), "run", "--json"]);
        args.extend([
            "--config",
            config.to_str().expect("utf-8"),
            "--pin-dir",
            pin_dir.to_str().expect("utf-8"),
        ]);
        let ifaces = self.hosts.server_ifaces.clone();
        for iface in &ifaces {
            args.extend(["--iface", iface.as_str()]);
        }
        let run_args = self.run_args.clone();
        args.extend(run_args.iter().map(String::as_str));
        let server = self.hosts.server.clone();
        self.hosts
            .spawn_logged(&server, &args, Stdio::from(out), Stdio::from(log));
    }

    fn log_path(&self) -> PathBuf {
        let mut name = self.events.clone().into_os_string();
        name.push(".log");
        name.into()
    }

    /// What the current `run` logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the current `run` logged a line containing `text`.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "run did not log {text:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to `run` (the process started last) and waits for it to exit.
    pub fn signal_run(&mut self, signal: i32) -> std::process::ExitStatus {
        let pid = self.hosts.last_child_pid();
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(pid as i32, signal) };
        self.hosts
            .wait_last_child(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("run did not exit on signal {signal}"))
    }

    /// Stops `run` with SIGTERM (it detaches) and starts a new one, its events going
    /// to `file`; returns once it is attached.
    pub fn restart_run(&mut self, file: &str) {
        let status = self.signal_run(libc::SIGTERM);
        assert!(status.success(), "run exit status {status}");
        self.start_run(file);
        self.wait_attached();
    }

    pub fn wait_attached(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attached = (0..self.hosts.server_ifaces.len()).all(|i| self.prog_id(i).is_some());
            if attached {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "xknock run did not attach within 20s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The id of the XDP program on server interface `i`, if one is attached.
    pub fn prog_id(&self, i: usize) -> Option<String> {
        let dev = &self.hosts.server_ifaces[i];
        let link = self
            .hosts
            .run_in(&self.hosts.server, &["ip", "link", "show", "dev", dev])
            .1;
        link.split("prog/xdp id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Waits until server interface `i` runs a program other than `old` (None: any).
    pub fn wait_prog_change(&self, i: usize, old: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.prog_id(i) {
                Some(id) if old != Some(id.as_str()) => return id,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no new program on {} within 20s; run's log:\n{}",
                self.hosts.server_ifaces[i],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `xknock reload`, then waits until `expect` is in run's log `times` times.
    pub fn reload(&self, times: usize, expect: &str) {
        let pin = self.fs.pin_dir();
        let out = self.xknock(
            &self.hosts.server,
            &["reload", "--pin-dir", pin.to_str().expect("utf-8")],
        );
        assert!(out.contains("asked xknock run"), "{out}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(expect).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {expect:?} in run's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts probing `addr`:`port` from client `i` (60 s at most).
    pub fn probe(&self, i: usize, addr: IpAddr, port: u16) -> Probe {
        probe(
            self.client(i),
            SocketAddr::new(addr, port),
            Duration::from_secs(60),
        )
    }

    /// An hping3 flood of TCP SYNs from random spoofed sources, from client `i` to
    /// `port` of the server's address on its link, for `secs` seconds (then killed);
    /// returns how long it ran once joined.
    pub fn flood(&self, i: usize, port: u16, secs: u32) -> std::thread::JoinHandle<Duration> {
        let (ns, dst) = (self.client(i).to_owned(), self.hosts.server_v4[i].to_string());
        std::thread::spawn(move || {
            let started = Instant::now();
            let status = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .args([
                    "--",
                    "timeout",
                    &secs.to_string(),
                    "hping3",
                    "--flood",
                    "--rand-source",
                    "-q",
                ])
                .args(["-S", "-p", &port.to_string(), &dst])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("start hping3");
            // timeout(1) exits 124 when it had to stop the flood, as intended.
            assert!(status.code() == Some(124), "hping3 failed: {status}");
            started.elapsed()
        })
    }

    pub fn client(&self, i: usize) -> &str {
        &self.hosts.clients[i].ns
    }

    pub fn reachable(&self, client: usize, addr: IpAddr) -> bool {
        ssh_banner(self.client(client), addr, 22).is_some()
    }

    pub fn xknock(&self, ns: &str, args: &[&str]) -> String {
        let bin = xknock_bin();
        let mut full = vec![bin.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        let (ok, out) = self.hosts.run_in(ns, &full);
        assert!(ok, "xknock {args:?} failed: {out}");
        out
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.events)
            .expect("events file")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// `xknock status --json`, run from the server's namespace.
    pub fn status(&self) -> serde_json::Value {
        let pin_dir = self.fs.pin_dir();
        let out = self.xknock(
            &self.hosts.server,
            &["status", "--json", "--pin-dir", pin_dir.to_str().expect("utf-8")],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }

    pub fn wait_event(&self, event: &str, source: IpAddr) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["event"] == event && e["source"] == source.to_string())
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} event for {source}; events: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
