//! `cargo xtask deb`: the Debian package, assembled from the sources and built by
//! dpkg-deb. Every file it installs is generated here or taken from the tree: the
//! release binary, the unit (dist/xknock.service with Debian's paths), the example
//! config as a conffile, man pages and completions from the clap definitions and
//! docs/configuration.md, the copyright and changelog Debian expects, and the
//! maintainer scripts in dist/debian/.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{man, root};

/// The package's name and architecture (the binary is built for this machine).
const PACKAGE: &str = "xknock";
const ARCH: &str = "amd64";
const MAINTAINER: &str = "xknock maintainers <maintainers@xknock.example.org>";

pub struct Options {
    /// Where the .deb goes.
    pub out: PathBuf,
    /// The package version (default: knock-loader's).
    pub version: Option<String>,
}

/// Builds the package; returns its path.
pub fn deb(options: &Options) -> Result<PathBuf> {
    let root = root();
    let version = match &options.version {
        Some(v) => v.clone(),
        None => crate_version(&root)?,
    };
    cargo(&root, &["build", "--release", "--locked", "-p", "knock-loader"])?;
    let stage = root.join("target/deb").join(format!("{PACKAGE}_{version}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let binary = root.join("target/release/xknock");
    files(&root, &stage, &binary)?;
    debian(&root, &stage, &binary, &version)?;
    fs::create_dir_all(&options.out)?;
    // The directory holds the package just built, not one of an older version.
    for old in fs::read_dir(&options.out)?.filter_map(Result::ok) {
        let (path, name) = (old.path(), old.file_name().to_string_lossy().into_owned());
        if name.starts_with(&format!("{PACKAGE}_")) && path.extension().is_some_and(|e| e == "deb") {
            fs::remove_file(path)?;
        }
    }
    let deb = options.out.join(format!("{PACKAGE}_{version}_{ARCH}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// What the package installs.
fn files(root: &Path, stage: &Path, binary: &Path) -> Result<()> {
    let sbin = stage.join("usr/sbin/xknock");
    copy(binary, &sbin, 0o755)?;
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment"])
        .arg(&sbin))?;
    // dist/'s files say how install.sh installs them; the package says its own.
    let unit = fs::read_to_string(root.join("dist/xknock.service"))?;
    let unit = edit(&unit, "/usr/local/sbin/xknock", "/usr/sbin/xknock")?;
    let unit = edit(
        &unit,
        "scripts/install.sh installs this as\n# /etc/systemd/system/xknock.service (with ExecStart's path following --prefix).",
        "the Debian package installs this\n# as /lib/systemd/system/xknock.service.",
    )?;
    write(&stage.join("lib/systemd/system/xknock.service"), &unit, 0o644)?;
    let example = edit(
        &fs::read_to_string(root.join("dist/xknock.toml"))?,
        "scripts/install.sh puts this example in\n# /etc/xknock/xknock.toml (only when there is none).",
        "the Debian package installs this example as\n# /etc/xknock/xknock.toml (a conffile: an upgrade keeps your edits).",
    )?;
    write(&stage.join("etc/xknock/xknock.toml"), &example, 0o600)?;
    fs::set_permissions(stage.join("etc/xknock"), fs::Permissions::from_mode(0o700))?;
    dir(&stage.join("var/lib/xknock"), 0o700)?;

    let man_dir = stage.with_extension("man");
    dir(&man_dir, 0o755)?;
    for page in man::write_all(&man_dir)? {
        let name = page
            .file_name()
            .context("a man page's name")?
            .to_string_lossy()
            .into_owned();
        let section = name.rsplit('.').next().context("a man page's section")?;
        let to = stage.join(format!("usr/share/man/man{section}/{name}"));
        copy(&page, &to, 0o644)?;
        gzip(&to)?;
    }
    fs::remove_dir_all(&man_dir)?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/xknock"),
        ("zsh", "usr/share/zsh/vendor-completions/_xknock"),
        ("fish", "usr/share/fish/vendor_completions.d/xknock.fish"),
    ] {
        let out = Command::new(binary)
            .args(["completions", shell])
            .output()
            .context("cannot run xknock completions")?;
        if !out.status.success() {
            bail!(
                "xknock completions {shell} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        write(&stage.join(path), &String::from_utf8(out.stdout)?, 0o644)?;
    }

    let doc = stage.join("usr/share/doc/xknock");
    write(&doc.join("copyright"), &copyright(), 0o644)?;
    copy(
        &root.join("dist/debian/lintian-overrides"),
        &stage.join("usr/share/lintian/overrides/xknock"),
        0o644,
    )?;
    write(
        &doc.join("changelog"),
        &fs::read_to_string(root.join("dist/debian/changelog"))?,
        0o644,
    )?;
    gzip(&doc.join("changelog"))?;
    Ok(())
}

/// DEBIAN/: control (with the shared libraries' dependencies from dpkg-shlibdeps),
/// conffiles, and the maintainer scripts.
fn debian(root: &Path, stage: &Path, binary: &Path, version: &str) -> Result<()> {
    let control_dir = stage.join("DEBIAN");
    dir(&control_dir, 0o755)?;
    let depends = shlibdeps(stage, binary)?;
    let size_kib = installed_size(stage)?;
    let control = format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {size_kib}\nDepends: {depends}\nSection: net\nPriority: optional\n\
         Description: port-knocking firewall in XDP (eBPF)\n \
         xknock hides services such as SSH behind closed ports: only a source that\n \
         knocks a secret sequence of ports, or sends one valid Single Packet\n \
         Authorization packet (its own, or fwknop's), gets through. The filter is an\n \
         XDP program: unauthorized packets are dropped before the kernel's network\n \
         stack sees them. The same binary is the client (xknock knock, xknock spa).\n \
         .\n \
         Nothing starts on installation: edit /etc/xknock/xknock.toml, then\n \
         systemctl enable --now xknock.\n"
    );
    write(&control_dir.join("control"), &control, 0o644)?;
    write(&control_dir.join("conffiles"), "/etc/xknock/xknock.toml\n", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &root.join("dist/debian").join(script),
            &control_dir.join(script),
            0o755,
        )?;
    }
    Ok(())
}

/// `Depends:` for the binary's shared libraries, as dpkg-shlibdeps works them out
/// (it wants a debian/control beside it).
fn shlibdeps(stage: &Path, binary: &Path) -> Result<String> {
    let work = stage.with_extension("shlibdeps");
    dir(&work.join("debian"), 0o755)?;
    write(
        &work.join("debian/control"),
        &format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: {ARCH}\n"),
        0o644,
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(binary)
        .current_dir(&work)
        .output()
        .context("cannot run dpkg-shlibdeps (Debian's dpkg-dev)")?;
    fs::remove_dir_all(&work)?;
    if !out.status.success() {
        bail!("dpkg-shlibdeps failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps named no dependency")
}

fn installed_size(stage: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sk", "--apparent-size"])
        .arg(stage)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du gave no size")
}

/// The machine-readable copyright file (DEP-5).
fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: xknock\n\n\
     Files: *\n\
     Copyright: 2026 the xknock authors\n\
     License: MIT or Apache-2.0\n \
     Licensed under either of the MIT license or the Apache License, Version\n \
     2.0, at your option.\n \
     .\n \
     On Debian systems, the full text of the Apache License, Version 2.0 can\n \
     be found in /usr/share/common-licenses/Apache-2.0.\n \
     .\n \
     The MIT license: Permission is hereby granted, free of charge, to any\n \
     person obtaining a copy of this software and associated documentation\n \
     files (the \"Software\"), to deal in the Software without restriction,\n \
     including without limitation the rights to use, copy, modify, merge,\n \
     publish, distribute, sublicense, and/or sell copies of the Software, and\n \
     to permit persons to whom the Software is furnished to do so, subject to\n \
     the following conditions: The above copyright notice and this permission\n \
     notice shall be included in all copies or substantial portions of the\n \
     Software. THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND.\n"
        .to_owned()
}

pub(crate) fn crate_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("knock-loader/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in knock-loader/Cargo.toml")
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("cargo").args(args).current_dir(root))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let text = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    write_bytes(to, &text, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let parent = to.parent().context("a path with a directory")?;
    fs::create_dir_all(parent)?;
    fs::write(to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `text` with `from` replaced by `to`; an error when `from` is not there (dist/
/// changed, and the package would say what install.sh does).
fn edit(text: &str, from: &str, to: &str) -> Result<String> {
    if !text.contains(from) {
        bail!("dist/ changed: {from:?} is not there any more; update xtask/src/deb.rs");
    }
    Ok(text.replace(from, to))
}

/// gzip -9n, as Debian wants man pages and changelogs (no name or time stamp).
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))
}
