//! Support for xknock's integration tests: crafted frames, a private bpffs, and test
//! hosts in network namespaces. Everything a test creates is named uniquely for the
//! run and removed on drop, also when the test panics.

pub mod cpu;
pub mod fleet;
pub mod frame;
pub mod fuzz;
pub mod harness;
pub mod model;
pub mod netns;
pub mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// The kernel's 16-byte form of an address written as text.
pub fn mapped(addr: &str) -> [u8; 16] {
    xknock::net::mapped(addr.parse().expect("an IP address"))
}

/// A name unique to this process and call: `xk<pid>-<n>` (short, for interface names).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Panics unless running as root: the tests load BPF programs and make namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load XDP programs and create network namespaces: run them as root (the README's test command does)"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private bpf filesystem mounted on a fresh temporary directory, unmounted on drop.
pub struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    pub fn new() -> BpfFs {
        require_root();
        let dir = std::env::temp_dir().join(unique("xknock-bpffs-"));
        std::fs::create_dir_all(&dir).expect("create bpffs mount point");
        sh(&["mount", "-t", "bpf", "bpf", dir.to_str().expect("utf-8 temp dir")]);
        BpfFs { dir }
    }

    /// The pin directory tests give xknock.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("xknock")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Default for BpfFs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A tmpfs of `size` (`64k`, `256m`) mounted on a fresh temporary directory, mode
/// 0700, unmounted (lazily, should something still hold it) on drop.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        require_root();
        let dir = std::env::temp_dir().join(unique("xknock-tmpfs-"));
        std::fs::create_dir_all(&dir).expect("create tmpfs mount point");
        let mount = Tmpfs { dir };
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "xknock-test",
            mount.dir.to_str().expect("utf-8 temp dir"),
        ]);
        mount
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The `xknock` binary of the same build: target/<profile>/xknock, beside a binary
/// or one level above a test executable (target/<profile>/deps/).
pub fn xknock_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target dir");
    let beside = dir.join("xknock");
    let bin = if beside.exists() {
        beside
    } else {
        dir.parent().expect("target dir").join("xknock")
    };
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build`, as scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Makes SPA client `name` (may open `ssh`) with `xknock keygen` in `dir`; returns
/// its `[[spa.client]]` stanza and key file.
pub fn spa_client(dir: &Path, name: &str) -> (String, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let out = Command::new(xknock_bin())
        .args(["keygen", "--name", name, "--sequence", "ssh", "--out"])
        .arg(&key)
        .output()
        .expect("run xknock keygen");
    assert!(out.status.success(), "keygen: {out:?}");
    (String::from_utf8(out.stdout).expect("utf-8"), key)
}
