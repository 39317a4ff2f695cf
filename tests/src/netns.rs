//! Test hosts: a server namespace joined by veth pairs to client namespaces, with
//! addresses from 198.18.0.0/15 and fd00::/8. Everything is removed on drop.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{require_root, sh, unique};

/// One client host, connected to the server by its own veth pair.
pub struct Client {
    pub ns: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// A server namespace and its clients. `server_ifaces[i]` faces `clients[i]`.
pub struct Hosts {
    pub server: String,
    pub server_ifaces: Vec<String>,
    pub server_v4: Vec<IpAddr>,
    pub server_v6: Vec<IpAddr>,
    pub clients: Vec<Client>,
    children: Vec<Child>,
}

impl Hosts {
    pub fn new(n_clients: usize) -> Hosts {
        require_root();
        let server = unique("xksrv");
        sh(&["ip", "netns", "add", &server]);
        let mut hosts = Hosts {
            server: server.clone(),
            server_ifaces: vec![],
            server_v4: vec![],
            server_v6: vec![],
            clients: vec![],
            children: vec![],
        };
        sh(&["ip", "-n", &server, "link", "set", "lo", "up"]);
        for _ in 0..n_clients {
            hosts.add_client(&unique("xks"));
        }
        hosts
    }

    /// Adds client `clients.len()`: its namespace, and a veth pair whose server end
    /// is named `srv_if` (so a test can name it before it exists).
    pub fn add_client(&mut self, srv_if: &str) {
        let i = self.clients.len();
        let server = self.server.clone();
        let ns = unique("xkcli");
        sh(&["ip", "netns", "add", &ns]);
        let cli_if = unique("xkc");
        sh(&[
            "ip", "link", "add", srv_if, "netns", &server, "type", "veth", "peer", "name", &cli_if, "netns",
            &ns,
        ]);
        let (sv4, cv4) = (format!("198.18.{}.1", i + 1), format!("198.18.{}.2", i + 1));
        let (sv6, cv6) = (format!("fd00:{}::1", i + 1), format!("fd00:{}::2", i + 1));
        for (n, dev, v4, v6) in [(&server, srv_if, &sv4, &sv6), (&ns, cli_if.as_str(), &cv4, &cv6)] {
            sh(&["ip", "-n", n, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            sh(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            sh(&["ip", "-n", n, "link", "set", dev, "up"]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        self.server_ifaces.push(srv_if.to_owned());
        self.server_v4.push(sv4.parse().expect("v4"));
        self.server_v6.push(sv6.parse().expect("v6"));
        self.clients.push(Client {
            ns,
            v4: cv4.parse().expect("v4"),
            v6: cv6.parse().expect("v6"),
        });
    }

    /// Starts `args` inside namespace `ns` (network namespace only, so the mounts of
    /// this process, like a private bpffs, stay visible). Killed on drop.
    pub fn spawn_in(&mut self, ns: &str, args: &[&str], stdout: Stdio) -> &mut Child {
        self.spawn_logged(ns, args, stdout, Stdio::inherit())
    }

    /// `spawn_in`, with its standard error going to `stderr`.
    pub fn spawn_logged(&mut self, ns: &str, args: &[&str], stdout: Stdio, stderr: Stdio) -> &mut Child {
        self.children.push(spawn(ns, args, stdout, stderr));
        self.children.last_mut().expect("just pushed")
    }

    /// The pid of the process started last (nsenter execs it, so it is the command).
    pub fn last_child_pid(&self) -> u32 {
        self.children.last().expect("a started process").id()
    }

    /// Waits for the last started process to exit.
    pub fn wait_last_child(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.children.last_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Runs `args` to completion inside `ns`; returns (success, stdout and stderr).
    pub fn run_in(&self, ns: &str, args: &[&str]) -> (bool, String) {
        run_in(ns, args)
    }

    /// Starts OpenSSH's sshd in the server namespace on port 22, with a host key made
    /// for this run. Returns once it listens.
    pub fn start_sshd(&mut self, dir: &std::path::Path) {
        self.children
            .push(spawn_sshd(&self.server, dir, Stdio::inherit()));
    }
}

/// Starts `args` inside namespace `ns` (network namespace only, so the mounts of
/// this process, like a private bpffs, stay visible). nsenter execs the command, so
/// the child's pid is the command's.
pub fn spawn(ns: &str, args: &[&str], stdout: Stdio, stderr: Stdio) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(args)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"))
}

/// Runs `args` to completion inside `ns`; returns (success, stdout and stderr).
pub fn run_in(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts OpenSSH's sshd in namespace `ns` on port 22, with a host key and config
/// made in `dir` for this run, its log (`-e`: stderr) going to `log`. Returns once it
/// listens (10 s at most).
pub fn spawn_sshd(ns: &str, dir: &std::path::Path, log: Stdio) -> Child {
    std::fs::create_dir_all("/run/sshd").expect("sshd's privilege separation directory");
    let key = dir.join("host_key");
    if !key.exists() {
        sh(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            key.to_str().expect("utf-8"),
        ]);
    }
    let sshd_config = dir.join("sshd_config");
    std::fs::write(&sshd_config, format!(
        "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {}\nPidFile none\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
        key.display()
    )).expect("write sshd_config");
    let mut child = spawn(
        ns,
        &[
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
            sshd_config.to_str().expect("utf-8"),
        ],
        Stdio::null(),
        log,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run_in(ns, &["ss", "-ltn", "sport = :22"]).1.contains(":22") {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sshd did not start listening in {ns}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A network namespace named uniquely for the run (`prefix` + `unique`), its
/// loopback up; deleted on drop, with the veth ends in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair: `a_if` in namespace `a`, `b_if` in `b`, both up, no addresses.
pub fn veth(a: &str, a_if: &str, b: &str, b_if: &str) {
    sh(&[
        "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
    ]);
    sh(&["ip", "-n", a, "link", "set", a_if, "up"]);
    sh(&["ip", "-n", b, "link", "set", b_if, "up"]);
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM first so xknock detaches cleanly; then make sure. Only those
            // not reaped yet: the pid of one reaped may belong to another process.
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: kill on the pid of a child we own and have not reaped.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            }
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its veth ends and their XDP programs.
        for ns in self.clients.iter().map(|c| &c.ns).chain([&self.server]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from(format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: setns on this thread only, with a namespace fd we opened.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file.as_fd()), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("thread in network namespace panicked")
}

/// From inside `ns`: connects to `addr:port` and reads the SSH banner. `Some(stream)`
/// when the server answered, `None` when the connection timed out or was refused.
pub fn ssh_banner(ns: &str, addr: IpAddr, port: u16) -> Option<(TcpStream, String)> {
    in_netns(ns, move || {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_millis(1500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).ok()?;
        let banner = String::from_utf8_lossy(&buf[..n]).into_owned();
        banner.starts_with("SSH-").then_some((stream, banner))
    })
}

/// On a connection from `ssh_banner`: sends a client banner and waits for the
/// server's key exchange, proving that packets still flow both ways.
pub fn ssh_exchange(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"SSH-2.0-xknock_test\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(stream.read(&mut buf), Ok(n) if n > 0)
}
