//! `cargo xtask client`: the client for users' machines, as a tar archive: `xknock`
//! built without the daemon feature (knock, spa, keygen, secret, check, the
//! importers; no aya, no eBPF toolchain needed), its completions, and a README.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::root;

const README: &str = "xknock's client: knock on and send SPA requests to xknock servers.\n\n\
    Install:  install -m 0755 bin/xknock /usr/local/bin/xknock\n\
    Bash:     install -m 0644 completions/xknock.bash /etc/bash_completion.d/xknock\n\
    Zsh:      copy completions/_xknock into a directory of your $fpath\n\
    Fish:     copy completions/xknock.fish into ~/.config/fish/completions/\n\n\
    Use:      xknock knock HOST 7000 8000/udp 9000\n          \
    xknock spa HOST --key ~/.config/xknock/client.key\n\
    `xknock COMMAND --help` says more. The server side (xknock run) is not in this\n\
    build: it is the Debian package's (cargo xtask deb).\n";

/// Builds the archive in `out`; returns its path.
pub fn client(out: &Path) -> Result<PathBuf> {
    let root = root();
    let target = root.join("target/client");
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "knock-loader",
            "--no-default-features",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the client failed ({status})");
    }
    let version = crate::deb::crate_version(&root)?;
    let name = format!("xknock-client-{version}-{}-linux", std::env::consts::ARCH);
    let stage = target.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let binary = stage.join("bin/xknock");
    fs::create_dir_all(stage.join("bin"))?;
    fs::copy(target.join("release/xknock"), &binary)?;
    let strip = Command::new("strip")
        .arg("--strip-unneeded")
        .arg(&binary)
        .status()?;
    if !strip.success() {
        bail!("strip failed ({strip})");
    }
    fs::create_dir_all(stage.join("completions"))?;
    for (shell, file) in [
        ("bash", "xknock.bash"),
        ("zsh", "_xknock"),
        ("fish", "xknock.fish"),
    ] {
        let script = Command::new(&binary).args(["completions", shell]).output()?;
        if !script.status.success() {
            bail!("xknock completions {shell} failed");
        }
        fs::write(stage.join("completions").join(file), script.stdout)?;
    }
    fs::write(stage.join("README"), README)?;
    fs::create_dir_all(out)?;
    let archive = out.join(format!("{name}.tar.gz"));
    let tar = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(&target)
        .arg(&name)
        .status()?;
    if !tar.success() {
        bail!("tar failed ({tar})");
    }
    Ok(archive)
}
