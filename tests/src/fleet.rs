//! The fleet's test hosts (issue 16): a three-member etcd cluster, two xknock servers
//! that share authorizations through it, a client and a probe, each in a network
//! namespace of its own, all removed on drop (also when the test panics).
//!
//! | namespace | address (on its lo)    | runs                                                  |
//! |-----------|------------------------|-------------------------------------------------------|
//! | E         | 198.18.100.1           | etcd members m0, m1, m2 (clients on 2379, 2381, 2383) |
//! | A, B      | 198.19.1.1, 198.19.2.1 | sshd on port 22, `xknock run` (fleet names "a", "b")  |
//! | C         | 198.19.0.10            | the client (more clients: .11, .12, ...)              |
//! | P         | 198.19.0.200           | the probe                                             |
//!
//! Links: E–A on 198.18.101.0/24 and E–B on 198.18.102.0/24 (E is .1), without XDP;
//! a veth without addresses from each of A and B to each client and to P, with
//! `run` attached to the server's end.
//!
//! A client has one address, on its lo, and a veth to each server without addresses:
//! its routes to A's and B's addresses name that address as their source, so A and B
//! see the same source for it, as two hosts of a real fleet would. The servers route
//! back to it over the veth it came from, and reach etcd's address over their own
//! link to E; etcd's members talk to each other on E's lo.
//!
//! Each server's `xknock run --json` prints its events to `run-N.jsonl` (N counts the
//! runs of that server) and its log to `run-N.log` in the server's directory, which
//! [`Fleet::events`] and [`Fleet::log`] read. Runs are started with
//! `--keep-attached`, so that a stop or a restart never leaves port 22 unfiltered.
//! etcd's data and logs live on a tmpfs.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    BpfFs, Tmpfs,
    netns::{Netns, run_in, spawn, spawn_sshd, ssh_banner, veth},
    setup::{Probe, probe},
    unique, xknock_bin,
};

/// Index of server A in [`Fleet::servers`] (its fleet name is "a").
pub const A: usize = 0;
/// Index of server B (fleet name "b").
pub const B: usize = 1;
/// Where etcd's members listen, in namespace E: clients on [`CLIENT_PORTS`], peers
/// on the port after each.
pub const ETCD_ADDR: &str = "198.18.100.1";
pub const CLIENT_PORTS: [u16; 3] = [2379, 2381, 2383];
/// The sequence both servers have, and the knocks that complete it.
pub const SEQUENCE: &str = "ssh";
pub const KNOCKS: [&str; 3] = ["7000/tcp", "8000/udp", "9000/tcp"];
/// The sequence's `open_for`: long enough that nothing a test waits for expires.
pub const OPEN_FOR: Duration = Duration::from_secs(60);
/// The default wait for what a server reports.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a probe runs at most (a test stops it sooner).
const PROBE_MAX: Duration = Duration::from_secs(180);

/// What to build.
pub struct Options {
    /// Give both servers a `[fleet]` section (name "a" and "b", the three members,
    /// the run's prefix). Without it they are two independent xknock hosts.
    pub fleet: bool,
    /// More TOML for both configs, after the sequence and before `[fleet]`: whole
    /// tables (it must start with a table header). `@DIR@` becomes the server's
    /// own directory (for files such as `[spa] replay_file`).
    pub extra: String,
    /// How many clients (each with its own address, 198.19.0.10 onwards).
    pub clients: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fleet: true,
            extra: String::new(),
            clients: 1,
        }
    }
}

/// A child process started in a namespace; on drop, SIGTERM, then SIGKILL after 3 s.
struct Proc {
    child: Child,
}

impl Proc {
    fn start(ns: &str, args: &[&str], stdout: Stdio, stderr: Stdio) -> Proc {
        Proc {
            child: spawn(ns, args, stdout, stderr),
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` unless it has exited (once reaped, its pid may be another's).
    fn signal(&mut self, signal: i32) {
        if self.running() {
            // SAFETY: kill on the pid of a child we own and have not reaped.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if self.wait(Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A client or the probe: a namespace and its one address.
pub struct Host {
    pub addr: IpAddr,
    pub ns: Netns,
}

/// One xknock server: sshd on port 22 behind `xknock run`.
pub struct Server {
    /// Its fleet name: "a" or "b".
    pub name: &'static str,
    /// Its address (on its lo), what clients knock on and connect to.
    pub addr: IpAddr,
    /// The interfaces `run` attaches to: one per client, in order, then the probe's.
    pub ifaces: Vec<String>,
    /// Its end of the link to E, and E's address on that link.
    pub etcd_if: String,
    pub etcd_gw: String,
    /// Its config, host key, events and logs.
    pub dir: PathBuf,
    pub config: PathBuf,
    runs: usize,
    /// The programs attached when the current run started (left by the one before).
    before: Vec<Option<String>>,
    run: Option<Proc>,
    sshd: Option<Proc>,
    pub fs: BpfFs,
    pub ns: Netns,
}

impl Server {
    fn events_path(&self) -> PathBuf {
        self.dir.join(format!("run-{}.jsonl", self.runs))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("run-{}.log", self.runs))
    }

    pub fn pin_dir(&self) -> String {
        self.fs.pin_dir().to_str().expect("utf-8").to_owned()
    }
}

/// One etcd member: its name (`m0`..), client port, and process while it runs.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    proc: Option<Proc>,
    starts: usize,
}

/// The etcd cluster in namespace E.
pub struct Etcd {
    pub members: Vec<Member>,
    /// The cluster's `--initial-cluster-token`, unique to the run.
    pub token: String,
    /// The members' data directories and logs.
    pub data: Tmpfs,
    pub ns: Netns,
}

impl Etcd {
    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{ETCD_ADDR}:{}", m.name, m.client_port + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let (ns, data) = (self.ns.name.clone(), self.data.path().to_owned());
        let member = &mut self.members[i];
        assert!(member.proc.is_none(), "etcd member {} runs already", member.name);
        member.starts += 1;
        let log = fs::File::create(data.join(format!("{}-{}.log", member.name, member.starts)))
            .expect("etcd log file");
        let dir = data.join(&member.name);
        let client = format!("http://{ETCD_ADDR}:{}", member.client_port);
        let peer = format!("http://{ETCD_ADDR}:{}", member.client_port + 1);
        let args = [
            // Nothing of this process's environment (ETCD_* would configure it).
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "etcd",
            "--name",
            &member.name,
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
            // Ignored once the data directory holds the member (a restart).
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.token,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ];
        member.proc = Some(Proc::start(&ns, &args, Stdio::null(), Stdio::from(log)));
    }

    /// SIGKILL, and waits for it to be gone.
    fn kill(&mut self, i: usize) {
        let member = &mut self.members[i];
        let mut proc = member
            .proc
            .take()
            .unwrap_or_else(|| panic!("etcd member {} is not running", member.name));
        proc.signal(libc::SIGKILL);
        assert!(
            proc.wait(Duration::from_secs(5)).is_some(),
            "etcd member {} outlived SIGKILL",
            member.name
        );
    }
}

impl Drop for Etcd {
    /// SIGKILL to every member at once: its data is thrown away, and a member
    /// that led can take seconds over SIGTERM.
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(proc) = &mut member.proc {
                proc.signal(libc::SIGKILL);
            }
        }
    }
}

/// Two xknock servers sharing through etcd, their clients and a probe.
pub struct Fleet {
    pub servers: Vec<Server>,
    pub etcd: Etcd,
    pub clients: Vec<Host>,
    /// The probe: never knocks.
    pub prober: Host,
    /// The fleet's key prefix, unique to the run: `/xk-test-<pid>-<n>`.
    pub prefix: String,
    pub fleet: bool,
    dir: Dir,
}

impl Fleet {
    /// Builds it all, and returns once etcd is healthy from both servers and both
    /// runs are attached.
    pub fn new(options: &Options) -> Fleet {
        crate::require_root();
        let dir = Dir(std::env::temp_dir().join(unique("xknock-fleet-")));
        fs::create_dir_all(&dir.0).expect("temp dir");
        let prefix = format!("/{}", unique("xk-test-"));

        // E and its members (started now, waited for below).
        let e = Netns::new("xkfe");
        sh_in(
            &e.name,
            &["ip", "addr", "add", &format!("{ETCD_ADDR}/32"), "dev", "lo"],
        );
        let mut etcd = Etcd {
            members: CLIENT_PORTS
                .iter()
                .enumerate()
                .map(|(i, &client_port)| Member {
                    name: format!("m{i}"),
                    client_port,
                    proc: None,
                    starts: 0,
                })
                .collect(),
            token: unique("xk-cluster-"),
            data: Tmpfs::new("1g"),
            ns: e,
        };
        for i in 0..etcd.members.len() {
            etcd.start(i);
        }

        // The servers, each with its link to E.
        let mut servers = Vec::new();
        for (s, name) in ["a", "b"].into_iter().enumerate() {
            let ns = Netns::new(&format!("xkf{name}"));
            let addr: IpAddr = format!("198.19.{}.1", s + 1).parse().expect("address");
            sh_in(
                &ns.name,
                &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
            );
            let (etcd_if, e_if) = (unique("xkv"), unique("xkv"));
            veth(&ns.name, &etcd_if, &etcd.ns.name, &e_if);
            let (gw, own) = (format!("198.18.{}.1", 101 + s), format!("198.18.{}.2", 101 + s));
            sh_in(
                &etcd.ns.name,
                &["ip", "addr", "add", &format!("{gw}/24"), "dev", &e_if],
            );
            sh_in(
                &ns.name,
                &["ip", "addr", "add", &format!("{own}/24"), "dev", &etcd_if],
            );
            sh_in(
                &ns.name,
                &[
                    "ip",
                    "route",
                    "add",
                    &format!("{ETCD_ADDR}/32"),
                    "via",
                    &gw,
                    "dev",
                    &etcd_if,
                ],
            );
            let sdir = dir.0.join(name);
            fs::create_dir_all(&sdir).expect("server dir");
            servers.push(Server {
                name,
                addr,
                ifaces: vec![],
                etcd_if,
                etcd_gw: gw,
                config: sdir.join("xknock.toml"),
                dir: sdir,
                runs: 0,
                before: vec![],
                run: None,
                sshd: None,
                fs: BpfFs::new(),
                ns,
            });
        }

        // The clients, then the probe, each linked to both servers.
        let mut hosts = Vec::new();
        for k in 0..=options.clients {
            let probe = k == options.clients;
            let ns = Netns::new(if probe { "xkfp" } else { "xkfc" });
            let addr: IpAddr = if probe {
                "198.19.0.200".parse().expect("address")
            } else {
                format!("198.19.0.{}", 10 + k).parse().expect("address")
            };
            sh_in(
                &ns.name,
                &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
            );
            for server in &mut servers {
                let (s_if, c_if) = (unique("xkv"), unique("xkv"));
                veth(&server.ns.name, &s_if, &ns.name, &c_if);
                let (to_client, to_server) = (format!("{addr}/32"), format!("{}/32", server.addr));
                let server_addr = server.addr.to_string();
                sh_in(
                    &server.ns.name,
                    &[
                        "ip",
                        "route",
                        "add",
                        &to_client,
                        "dev",
                        &s_if,
                        "src",
                        &server_addr,
                    ],
                );
                let client_addr = addr.to_string();
                sh_in(
                    &ns.name,
                    &[
                        "ip",
                        "route",
                        "add",
                        &to_server,
                        "dev",
                        &c_if,
                        "src",
                        &client_addr,
                    ],
                );
                server.ifaces.push(s_if);
            }
            hosts.push(Host { addr, ns });
        }
        let prober = hosts.pop().expect("the probe host");

        let mut fleet = Fleet {
            servers,
            etcd,
            clients: hosts,
            prober,
            prefix,
            fleet: options.fleet,
            dir,
        };
        for s in [A, B] {
            let server = &mut fleet.servers[s];
            let log = fs::File::create(server.dir.join("sshd.log")).expect("sshd log");
            server.sshd = Some(Proc {
                child: spawn_sshd(&server.ns.name, &server.dir, Stdio::from(log)),
            });
        }
        fleet.wait_etcd_healthy(A);
        fleet.wait_etcd_healthy(B);
        for s in [A, B] {
            let config = fleet.config_text(s, &options.extra);
            fs::write(&fleet.servers[s].config, config).expect("write config");
            fleet.start_run(s);
        }
        for s in [A, B] {
            fleet.wait_attached(s);
        }
        fleet
    }

    /// The config server `s` runs with.
    fn config_text(&self, s: usize, extra: &str) -> String {
        let server = &self.servers[s];
        let knocks = KNOCKS.map(|k| format!("\"{k}\"")).join(", ");
        let mut text = format!(
            "[[sequence]]\nname = \"{SEQUENCE}\"\nknocks = [{knocks}]\nprotect = [\"22/tcp\"]\nopen_for = \"{}s\"\n",
            OPEN_FOR.as_secs()
        );
        text.push_str(&extra.replace("@DIR@", server.dir.to_str().expect("utf-8")));
        if self.fleet {
            let endpoints = self
                .etcd_endpoints()
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ");
            text.push_str(&format!(
                "\n[fleet]\nname = \"{}\"\netcd = [{endpoints}]\nprefix = \"{}\"\n",
                server.name, self.prefix
            ));
        }
        text
    }

    /// The config server `s` runs with, as written.
    pub fn config(&self, s: usize) -> String {
        fs::read_to_string(&self.servers[s].config).expect("config")
    }

    /// `http://198.18.100.1:2379` and the others: every member's client URL.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd
            .members
            .iter()
            .map(|m| format!("http://{ETCD_ADDR}:{}", m.client_port))
            .collect()
    }

    // --- etcd ---

    /// `etcdctl` (v3 API, 1 s dial and 3 s command timeouts) in namespace `ns`
    /// against every member; returns (success, stdout and stderr).
    pub fn etcdctl_in(&self, ns: &str, args: &[&str]) -> (bool, String) {
        self.etcdctl_at(ns, &self.etcd_endpoints().join(","), args)
    }

    fn etcdctl_at(&self, ns: &str, endpoints: &str, args: &[&str]) -> (bool, String) {
        run_in(ns, &etcdctl_args(endpoints, args))
    }

    /// `etcdctl watch --prefix KEY` (from `rev` on, if given) in server `s`'s
    /// namespace, printing to a file, until dropped: a client of etcd on that
    /// server's link, to see what a cut-off or a compaction does to a watch.
    pub fn watch(&self, s: usize, key: &str, rev: Option<i64>) -> Watch {
        let out = self.dir.0.join(unique("watch-"));
        let file = fs::File::create(&out).expect("watch output");
        let mut args = vec!["watch", "--prefix", key];
        let rev = rev.map(|r| r.to_string());
        if let Some(rev) = &rev {
            args.extend(["--rev", rev]);
        }
        let endpoints = self.etcd_endpoints().join(",");
        let full = etcdctl_args(&endpoints, &args);
        let err = file.try_clone().expect("watch output");
        Watch {
            proc: Proc::start(
                &self.servers[s].ns.name,
                &full,
                Stdio::from(file),
                Stdio::from(err),
            ),
            out,
        }
    }

    /// `etcdctl` in E; panics (with the report) if it fails; returns its output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let (ok, out) = self.etcdctl_in(&self.etcd.ns.name, args);
        assert!(ok, "etcdctl {args:?} failed: {out}\n{}", self.report());
        out
    }

    /// The keys under `prefix` (the fleet's prefix + `under`, e.g. `/auth/`).
    pub fn keys(&self, under: &str) -> Vec<String> {
        let prefix = format!("{}{under}", self.prefix);
        self.etcdctl(&["get", "--prefix", &prefix, "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The value of `key` (the whole key), if it has one.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| value.to_owned())
    }

    /// etcd's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "--prefix", &self.prefix, "--keys-only", "-w", "json"]);
        let json: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl get -w json ({e}): {out}"));
        json["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in {out}"))
    }

    /// Compacts etcd's history up to the current revision (`etcdctl compact
    /// --physical`); returns that revision.
    pub fn compact(&self) -> i64 {
        let rev = self.revision();
        self.etcdctl(&["compact", &rev.to_string(), "--physical"]);
        rev
    }

    pub fn member_running(&mut self, i: usize) -> bool {
        self.etcd.members[i].proc.as_mut().is_some_and(Proc::running)
    }

    /// kill -9 of member `i`; returns once it is gone.
    pub fn kill_member(&mut self, i: usize) {
        self.etcd.kill(i);
    }

    /// Starts member `i` again on its data directory (does not wait: see
    /// [`Fleet::wait_etcd_healthy`]).
    pub fn start_member(&mut self, i: usize) {
        self.etcd.start(i);
    }

    pub fn kill_all_members(&mut self) {
        for i in 0..self.etcd.members.len() {
            self.etcd.kill(i);
        }
    }

    pub fn start_all_members(&mut self) {
        for i in 0..self.etcd.members.len() {
            self.etcd.start(i);
        }
    }

    /// Waits (15 s at most) until every running member answers `endpoint health`
    /// (a quorum read) from server `s`'s namespace.
    pub fn wait_etcd_healthy(&mut self, s: usize) {
        let endpoints = self.etcd_endpoints();
        let running: Vec<String> = (0..self.etcd.members.len())
            .filter(|&i| self.member_running(i))
            .map(|i| endpoints[i].clone())
            .collect();
        assert!(!running.is_empty(), "no etcd member is running");
        let ns = self.servers[s].ns.name.clone();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (ok, out) = self.etcdctl_at(&ns, &running.join(","), &["endpoint", "health"]);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy from {} within 15s: {out}\n{}",
                self.servers[s].name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts server `s` off etcd: its link to E down (so no route to etcd), and its
    /// connections to etcd aborted (`ss -K`), so its watch breaks now rather than at
    /// some keepalive timeout. Its clients still reach it.
    pub fn cut_etcd(&self, s: usize) {
        let server = &self.servers[s];
        sh_in(&server.ns.name, &["ip", "link", "set", &server.etcd_if, "down"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, out) = run_in(&server.ns.name, &["ss", "-K", "-tn", "dst", ETCD_ADDR]);
            let (_, left) = run_in(
                &server.ns.name,
                &["ss", "-Htn", "state", "established", "dst", ETCD_ADDR],
            );
            if left.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connections of {} to etcd survive ss -K: {out}{left}",
                server.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Undoes `cut_etcd`: the link up, the route to etcd back.
    pub fn restore_etcd(&self, s: usize) {
        let server = &self.servers[s];
        let ns = &server.ns.name;
        sh_in(ns, &["ip", "link", "set", &server.etcd_if, "up"]);
        sh_in(
            ns,
            &[
                "ip",
                "route",
                "replace",
                &format!("{ETCD_ADDR}/32"),
                "via",
                &server.etcd_gw,
                "dev",
                &server.etcd_if,
            ],
        );
    }

    // --- the servers ---

    /// Starts `xknock run --json --keep-attached` on server `s` (its client-facing
    /// interfaces), its events going to a new `run-N.jsonl`. Does not wait: see
    /// `wait_attached`.
    pub fn start_run(&mut self, s: usize) {
        let before = self.servers[s]
            .ifaces
            .iter()
            .map(|i| self.prog_id(s, i))
            .collect();
        let server = &mut self.servers[s];
        server.before = before;
        assert!(server.run.is_none(), "{} has a run already", server.name);
        server.runs += 1;
        let out = fs::File::create(server.events_path()).expect("events file");
        let log = fs::File::create(server.log_path()).expect("log file");
        let (bin, pin) = (xknock_bin(), server.pin_dir());
        let mut args = vec![
            bin.to_str().expect("utf-8"),
            "run",
            "--json",
            "--config",
            server.config.to_str().expect("utf-8"),
            "--pin-dir",
            &pin,
            // A stop or a restart leaves no gap for the probe; the namespaces'
            // deletion detaches it at the end.
            "--keep-attached",
        ];
        for iface in &server.ifaces {
            args.extend(["--iface", iface.as_str()]);
        }
        server.run = Some(Proc::start(
            &server.ns.name,
            &args,
            Stdio::from(out),
            Stdio::from(log),
        ));
    }

    /// SIGTERM to server `s`'s run; returns its exit status (10 s at most).
    pub fn stop_run(&mut self, s: usize) -> ExitStatus {
        let mut run = self.servers[s]
            .run
            .take()
            .unwrap_or_else(|| panic!("{} has no run", self.servers[s].name));
        run.signal(libc::SIGTERM);
        let status = run.wait(Duration::from_secs(10));
        status.unwrap_or_else(|| {
            panic!(
                "{}'s run ignored SIGTERM\n{}",
                self.servers[s].name,
                self.report()
            )
        })
    }

    /// Stops server `s`'s run (it must exit 0) and starts another; returns once it
    /// is attached.
    pub fn restart_run(&mut self, s: usize) {
        let status = self.stop_run(s);
        assert!(
            status.success(),
            "{}'s run exited {status}\n{}",
            self.servers[s].name,
            self.report()
        );
        self.start_run(s);
        self.wait_attached(s);
    }

    /// Whether server `s`'s run is still running.
    pub fn run_alive(&mut self, s: usize) -> bool {
        self.servers[s].run.as_mut().is_some_and(Proc::running)
    }

    /// The id of the XDP program on interface `iface` of server `s`, if any.
    pub fn prog_id(&self, s: usize, iface: &str) -> Option<String> {
        let link = run_in(&self.servers[s].ns.name, &["ip", "link", "show", "dev", iface]).1;
        link.split("prog/xdp id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Waits (20 s at most) until server `s`'s run has attached to each of its
    /// client-facing interfaces: a program there, another than the one a previous
    /// run left attached.
    pub fn wait_attached(&mut self, s: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let server = &self.servers[s];
            let attached = server.ifaces.iter().zip(&server.before).all(|(iface, before)| {
                let now = self.prog_id(s, iface);
                now.is_some() && now != *before
            });
            if attached {
                return;
            }
            let alive = self.run_alive(s);
            assert!(
                alive && Instant::now() < deadline,
                "{}'s run did not attach within 20s (running: {alive})\n{}",
                self.servers[s].name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The events server `s`'s current run printed so far (complete lines).
    pub fn events(&self, s: usize) -> Vec<Value> {
        let text = fs::read_to_string(self.servers[s].events_path()).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line {l:?} is not JSON: {e}")))
            .collect()
    }

    /// What server `s`'s current run logged (its stderr).
    pub fn log(&self, s: usize) -> String {
        fs::read_to_string(self.servers[s].log_path()).unwrap_or_default()
    }

    /// Waits until the run of server `s` printed an event, at index `since` or
    /// later, for which `pred` holds; returns it. Fails after `timeout` with the
    /// report, saying `what` it waited for.
    pub fn wait_event(
        &self,
        s: usize,
        since: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events(s).into_iter().skip(since).find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{} printed no {what} within {timeout:?}\n{}",
                self.servers[s].name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Watches server `s`'s events for `during`, failing at once on one at index
    /// `since` or later for which `pred` holds.
    pub fn assert_no_event(
        &self,
        s: usize,
        since: usize,
        during: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + during;
        loop {
            if let Some(e) = self.events(s).into_iter().skip(since).find(|e| pred(e)) {
                panic!("{} printed {what}: {e}\n{}", self.servers[s].name, self.report());
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many events server `s`'s current run printed: the `since` of a wait for
    /// what comes next.
    pub fn seen(&self, s: usize) -> usize {
        self.events(s).len()
    }

    /// Waits (`WAIT`) for an `open` on server `s` for `source`, with `reason`.
    pub fn wait_open(&self, s: usize, since: usize, source: IpAddr, reason: &str) -> Value {
        self.wait_event(s, since, WAIT, &format!("open for {source} ({reason})"), |e| {
            is(e, "open", source) && e["reason"] == reason
        })
    }

    /// Waits (`WAIT`) for a `close` on server `s` for `source`, with `reason`.
    pub fn wait_close(&self, s: usize, since: usize, source: IpAddr, reason: &str) -> Value {
        self.wait_event(s, since, WAIT, &format!("close for {source} ({reason})"), |e| {
            is(e, "close", source) && e["reason"] == reason
        })
    }

    /// `xknock ARGS` in namespace `ns`; panics (with the report) if it fails.
    pub fn xknock(&self, ns: &str, args: &[&str]) -> String {
        let bin = xknock_bin();
        let mut full = vec![bin.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        let (ok, out) = run_in(ns, &full);
        assert!(ok, "xknock {args:?} in {ns} failed: {out}\n{}", self.report());
        out
    }

    /// `xknock knock` of the sequence from client `c` to server `s`.
    pub fn knock(&self, c: usize, s: usize) {
        let addr = self.servers[s].addr.to_string();
        let mut args = vec!["knock", addr.as_str()];
        args.extend(KNOCKS);
        self.xknock(&self.clients[c].ns.name, &args);
    }

    /// Whether client `c` gets sshd's banner from server `s` (a new connection).
    pub fn reachable(&self, c: usize, s: usize) -> bool {
        ssh_banner(&self.clients[c].ns.name, self.servers[s].addr, 22).is_some()
    }

    /// Waits (`WAIT`) until client `c` reaches server `s` (`true`) or does not.
    pub fn wait_reachable(&self, c: usize, s: usize, want: bool) {
        let deadline = Instant::now() + WAIT;
        while self.reachable(c, s) != want {
            assert!(
                Instant::now() < deadline,
                "client {c} {} {} within {WAIT:?}\n{}",
                if want { "does not reach" } else { "still reaches" },
                self.servers[s].name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `xknock revoke ADDR` on server `s`; returns its output.
    pub fn revoke(&self, s: usize, addr: IpAddr) -> String {
        let server = &self.servers[s];
        self.xknock(
            &server.ns.name,
            &["revoke", &addr.to_string(), "--pin-dir", &server.pin_dir()],
        )
    }

    /// `xknock status --json` on server `s`.
    pub fn status(&self, s: usize) -> Value {
        let server = &self.servers[s];
        let out = self.xknock(
            &server.ns.name,
            &["status", "--json", "--pin-dir", &server.pin_dir()],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }

    /// Sends one UDP `datagram` from client `c` to `port` of server `s`.
    pub fn send_udp(&self, c: usize, s: usize, port: u16, datagram: Vec<u8>) {
        let target = SocketAddr::new(self.servers[s].addr, port);
        crate::netns::in_netns(&self.clients[c].ns.name, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
            sock.send_to(&datagram, target).expect("send");
        });
    }

    /// Starts probing port 22 of both servers from the probe host (see
    /// [`Probe`]); nothing should ever answer it.
    pub fn probe(&self) -> FleetProbe {
        let ns = &self.prober.ns.name;
        FleetProbe([A, B].map(|s| probe(ns, SocketAddr::new(self.servers[s].addr, 22), PROBE_MAX)))
    }

    /// Everything a failure message needs: per server its run's state, events and
    /// log; per member whether it runs and the end of its log.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (s, server) in self.servers.iter().enumerate() {
            out.push_str(&format!(
                "--- {} ({}), run {}: events:\n",
                server.name, server.addr, server.runs
            ));
            let events = fs::read_to_string(server.events_path()).unwrap_or_default();
            out.push_str(&tail(&events, 80));
            out.push_str(&format!("--- {}'s log:\n{}", server.name, tail(&self.log(s), 60)));
        }
        for m in &self.etcd.members {
            let log = fs::read_to_string(self.etcd.data.path().join(format!("{}-{}.log", m.name, m.starts)))
                .unwrap_or_default();
            out.push_str(&format!(
                "--- etcd {} (started {} times, {}), its log's end:\n{}",
                m.name,
                m.starts,
                if m.proc.is_some() { "should run" } else { "killed" },
                tail(&log, 8)
            ));
        }
        out
    }

    /// The test's directory (servers' configs, events and logs under `a/`, `b/`).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Fleet {
    /// SIGTERM to the servers' processes at once; the fields' drops then wait for
    /// each, SIGKILL what lingers, stop etcd, unmount, and delete the namespaces.
    fn drop(&mut self) {
        for server in &mut self.servers {
            for proc in [&mut server.run, &mut server.sshd].into_iter().flatten() {
                proc.signal(libc::SIGTERM);
            }
        }
    }
}

/// An `etcdctl watch` (see [`Fleet::watch`]), killed on drop.
pub struct Watch {
    proc: Proc,
    out: PathBuf,
}

impl Watch {
    /// What it printed so far (events, and errors).
    pub fn text(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits (`WAIT`) until it printed `text`.
    pub fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the watch printed no {text:?}: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }
}

/// The probes of both servers' port 22.
pub struct FleetProbe([Probe; 2]);

impl FleetProbe {
    /// Stops both and asserts each ran and nothing answered.
    pub fn assert_never_answered(self, what: &str) {
        let [a, b] = self.0;
        a.assert_never_answered(&format!("{what}: the probe of a"));
        b.assert_never_answered(&format!("{what}: the probe of b"));
    }

    /// (attempts, answered) of each so far.
    pub fn counts(&self) -> [(u32, u32); 2] {
        [self.0[0].counts(), self.0[1].counts()]
    }
}

/// Whether `e` is event `event` about `source`.
pub fn is(e: &Value, event: &str, source: IpAddr) -> bool {
    e["event"] == event && e["source"] == source.to_string()
}

/// `etcdctl` with the v3 API, 1 s dial and 3 s command timeouts, against
/// `endpoints`, and nothing of this process's environment.
fn etcdctl_args<'a>(endpoints: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec![
        "env",
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "ETCDCTL_API=3",
        "etcdctl",
        "--dial-timeout",
        "1s",
        "--command-timeout",
        "3s",
        "--endpoints",
        endpoints,
    ];
    full.extend_from_slice(args);
    full
}

fn sh_in(ns: &str, args: &[&str]) {
    let (ok, out) = run_in(ns, args);
    assert!(ok, "{args:?} in {ns} failed: {out}");
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("  {l}\n")).collect()
}
