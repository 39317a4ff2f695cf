//! scripts/install.sh into a staging directory (DESTDIR) with the binary of this
//! build: the files land where the unit expects them, the installed example passes
//! `xknock check`, a second run keeps the configuration, and the unit passes
//! `systemd-analyze verify` where that is installed.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::xknock_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn install(destdir: &Path, args: &[&str]) -> Output {
    let out = Command::new(repo().join("scripts/install.sh"))
        .args(args)
        .env("DESTDIR", destdir)
        .env("XKNOCK_BIN", xknock_bin())
        .output()
        .expect("runs install.sh");
    assert!(
        out.status.success(),
        "install.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn installs_into_destdir_and_keeps_the_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let stderr = String::from_utf8_lossy(&install(d, &[]).stderr).into_owned();
    assert!(
        stderr.contains("DESTDIR given: run systemctl daemon-reload"),
        "{stderr}"
    );

    let bin = d.join("usr/local/sbin/xknock");
    let unit = d.join("etc/systemd/system/xknock.service");
    let conf = d.join("etc/xknock/xknock.toml");
    assert_eq!(
        std::fs::metadata(&bin).expect("binary").len(),
        std::fs::metadata(xknock_bin()).expect("built").len()
    );
    assert_eq!((mode(&bin), mode(&unit), mode(&conf)), (0o755, 0o644, 0o600));
    assert!(read(&unit).contains(
        "\nExecStart=/usr/local/sbin/xknock run --config /etc/xknock/xknock.toml --keep-attached\n"
    ));
    assert_eq!(read(&conf), read(&repo().join("dist/xknock.toml")));
    assert!(
        !d.join("usr/local/sbin/.xknock.new").exists(),
        "no temporary file left"
    );

    let check = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&conf)
        .output()
        .expect("runs the installed xknock");
    assert!(
        check.status.success(),
        "the example must pass check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("ssh: knocks"));

    // The unit's command line is one this xknock takes (a flag it does not know
    // fails before --help is reached).
    let unit_text = read(&unit);
    let exec = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let help = Command::new(&bin)
        .args(&args)
        .arg("--help")
        .output()
        .expect("runs");
    assert!(
        help.status.success(),
        "ExecStart's arguments {args:?}: {}",
        String::from_utf8_lossy(&help.stderr)
    );

    // Again, over an edited configuration and elsewhere: the configuration stays.
    let edited = format!("{}# mine\n", read(&conf));
    std::fs::write(&conf, &edited).expect("edit");
    let stderr = String::from_utf8_lossy(&install(d, &["--prefix", "/opt/xknock"]).stderr).into_owned();
    assert!(stderr.contains("kept"), "{stderr}");
    assert_eq!(read(&conf), edited);
    assert!(d.join("opt/xknock/sbin/xknock").exists());
    assert!(read(&unit).contains("\nExecStart=/opt/xknock/sbin/xknock run "));
    assert!(read(&unit).contains("\nExecReload=/opt/xknock/sbin/xknock check "));
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed: not verified");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().join("root");
    install(&d, &[]);
    // verify wants ExecStart's binary to exist: point it at the staged one.
    let bin = d.join("usr/local/sbin/xknock");
    let unit = read(&d.join("etc/systemd/system/xknock.service"))
        .replace("/usr/local/sbin/xknock", bin.to_str().expect("utf-8 path"));
    let path = dir.path().join("xknock.service");
    std::fs::write(&path, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("runs systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
