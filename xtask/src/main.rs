//! Developer tasks: `cargo xtask build-ebpf`, `bench`, `man`, `deb`, `client`.

mod client;
mod deb;
mod man;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xknock developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the XDP object (with BTF) into target/bpfel-unknown-none/release/knock-ebpf.
    ///
    /// `cargo build` of the loader does the same through its build script; this is for
    /// inspecting the object (e.g. `bpftool btf dump file ...`, `llvm-objdump -S ...`).
    BuildEbpf,
    /// Benchmark the XDP program against an empty one and against iptables, nftables
    /// and knockd in the same run (needs root, about five minutes); prints the tables
    /// and writes bench/results/bench.{md,csv} and a chart per part.
    Bench {
        /// Passed to the benchmark: `cargo xtask bench -- --help` lists them (e.g.
        /// `-- --quick kernel` for a quick look at the in-kernel costs).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write the man pages: xknock(8), one per command (xknock-run(8), ...) and
    /// xknock.toml(5), generated from the command line's definitions and
    /// docs/configuration.md.
    Man {
        /// Where the pages go.
        #[arg(default_value = "target/man")]
        dir: PathBuf,
    },
    /// Build the Debian package: target/deb/xknock_VERSION_amd64.deb (needs Debian's
    /// dpkg-dev; `lintian` checks it). Everything it installs is generated from the
    /// sources: the release binary, the unit, the example config (a conffile), man
    /// pages and completions from the command line's definitions.
    Deb {
        /// Where the package goes.
        #[arg(long, default_value = "target/deb")]
        out: PathBuf,
        /// The package's version (default: knock-loader's).
        #[arg(long)]
        version: Option<String>,
    },
    /// Build the client for users' machines, without the daemon (no eBPF toolchain
    /// needed): target/client/xknock-client-VERSION-ARCH-linux.tar.gz, with the
    /// binary, its completions and a README.
    Client {
        /// Where the archive goes.
        #[arg(long, default_value = "target/client")]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf(),
        Task::Bench { args } => bench(&args),
        Task::Deb { out, version } => {
            let deb = deb::deb(&deb::Options {
                out: root().join(out),
                version,
            })?;
            println!("{}", deb.display());
            Ok(())
        }
        Task::Man { dir } => {
            for page in man::write_all(&root().join(dir))? {
                println!("{}", page.display());
            }
            Ok(())
        }
        Task::Client { out } => {
            println!("{}", client::client(&root().join(out))?.display());
            Ok(())
        }
    }
}

fn build_ebpf() -> Result<()> {
    // The same flags aya-build gives the object built for the loader.
    let arch = format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH);
    let rustflags = [arch.as_str(), "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    let status = Command::new("cargo")
        .args([
            "build",
            "--package",
            "knock-ebpf",
            "--bin",
            "knock-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building knock-ebpf failed ({status})");
    }
    println!("target/bpfel-unknown-none/release/knock-ebpf");
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    // The flood-resilience part runs the real `xknock knock` client.
    let built = Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "knock-loader"])
        .status()
        .context("cannot run cargo")?;
    if !built.success() {
        bail!("building xknock failed ({built})");
    }
    let status = Command::new("cargo")
        .args(["run", "--release", "--locked", "-p", "xknock-bench", "--"])
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the benchmark failed ({status}); it needs root");
    }
    Ok(())
}

/// The workspace's root (xtask's parent).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
}
