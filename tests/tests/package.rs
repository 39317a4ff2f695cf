//! The Debian package tier: the packages `cargo xtask deb` made (scripts/test.sh
//! makes them first: target/deb/xknock_VERSION_amd64.deb and, for the upgrade, one
//! of a later version in target/deb/upgrade/), inspected with dpkg-deb, checked by
//! lintian, and installed, upgraded, removed and purged in a scratch root with its
//! own dpkg database (`dpkg --root`, maintainer scripts run chrootless with
//! DPKG_ROOT set, so they touch no service of this machine).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use xknock_tests::{require_root, unique};

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/deb")
}

/// The one .deb in `dir`.
fn deb_in(dir: &Path) -> PathBuf {
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; make the package first (`cargo xtask deb`, as scripts/test.sh does)",
                dir.display()
            )
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package in {}: {debs:?}", dir.display());
    debs[0].clone()
}

/// Runs a command; (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(cmd: &mut Command) -> String {
    let (success, out, err) = run(cmd);
    assert!(success, "{cmd:?} failed: {out}{err}");
    out
}

#[test]
fn the_package_holds_what_it_should_and_lintian_finds_no_error() {
    let deb = deb_in(&target());
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/sbin/xknock"),
        ("-rw-------", "./etc/xknock/xknock.toml"),
        ("drwx------", "./var/lib/xknock/"),
        ("-rw-r--r--", "./lib/systemd/system/xknock.service"),
        ("-rw-r--r--", "./usr/share/man/man8/xknock.8.gz"),
        ("-rw-r--r--", "./usr/share/man/man8/xknock-run.8.gz"),
        ("-rw-r--r--", "./usr/share/man/man5/xknock.toml.5.gz"),
        ("-rw-r--r--", "./usr/share/bash-completion/completions/xknock"),
        ("-rw-r--r--", "./usr/share/zsh/vendor-completions/_xknock"),
        ("-rw-r--r--", "./usr/share/fish/vendor_completions.d/xknock.fish"),
        ("-rw-r--r--", "./usr/share/doc/xknock/copyright"),
        ("-rw-r--r--", "./usr/share/doc/xknock/changelog.gz"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.contains(" root/root ") && l.ends_with(path)),
            "{mode} root/root {path} in:\n{contents}"
        );
    }
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains(" Depends: libc6 (>= "), "{info}");
    assert!(info.contains(" conffiles"), "{info}");
    let package = ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"));
    assert_eq!(package.trim(), "xknock");
    let (clean, out, err) = run(Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb));
    assert!(clean, "lintian found errors:\n{out}{err}");
}

/// A scratch root with an empty dpkg database, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new() -> Root {
        let root = std::env::temp_dir().join(unique("xknock-dpkg-root-"));
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "usr/share"] {
            fs::create_dir_all(root.join(d)).expect("scratch root");
        }
        for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
            fs::write(root.join(f), "").expect("dpkg database");
        }
        Root(root)
    }

    /// dpkg on the scratch root: its own database, scripts chrootless (with
    /// DPKG_ROOT), the host's libc not registered there.
    fn dpkg(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new("dpkg")
            .arg(format!("--root={}", self.0.display()))
            .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"])
            .args(args)
            .env_remove("XKNOCK_REMOVE_FILTER"))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    fn mode(&self, p: &str) -> u32 {
        fs::metadata(self.path(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn installs_upgrades_keeping_an_edited_config_and_removes_in_a_scratch_root() {
    require_root();
    let (first, second) = (deb_in(&target()), deb_in(&target().join("upgrade")));
    let root = Root::new();
    let (installed, out, err) = root.dpkg(&["-i", first.to_str().expect("utf-8")]);
    assert!(installed, "install: {out}{err}");
    assert!(
        err.contains("xknock is installed and not started") && err.contains("systemctl enable --now xknock"),
        "postinst says how to start it: {err}"
    );
    assert_eq!(root.mode("usr/sbin/xknock"), 0o755);
    assert_eq!(root.mode("etc/xknock/xknock.toml"), 0o600);
    assert_eq!(root.mode("var/lib/xknock"), 0o700);
    let status = root.dpkg(&["-s", "xknock"]).1;
    assert!(
        status.contains("Conffiles:\n /etc/xknock/xknock.toml "),
        "{status}"
    );

    // What it installed works: the binary, the unit, the man pages, the completions.
    let bin = root.path("usr/sbin/xknock");
    let config = root.path("etc/xknock/xknock.toml");
    ok(Command::new(&bin).arg("--version"));
    // The unit as installed, but for ExecStart's path (the binary is in the scratch
    // root): systemd-analyze checks its keys and that the commands exist.
    let unit = fs::read_to_string(root.path("lib/systemd/system/xknock.service")).expect("unit");
    let units = root.path("verify");
    fs::create_dir_all(&units).expect("a directory for the unit");
    let bin_path = bin.to_str().expect("utf-8");
    fs::write(
        units.join("xknock.service"),
        unit.replace("/usr/sbin/xknock", bin_path),
    )
    .expect("unit copy");
    let (verified, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("xknock.service")));
    assert!(
        verified && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    for page in [
        "man8/xknock.8.gz",
        "man8/xknock-run.8.gz",
        "man5/xknock.toml.5.gz",
    ] {
        let (shown, text, err) = run(Command::new("man")
            .args(["--warnings=w", "-l"])
            .arg(root.path(&format!("usr/share/man/{page}")))
            .env("MANWIDTH", "80")
            .env_remove("MAN_KEEP_FORMATTING"));
        assert!(
            shown && text.len() > 200 && err.trim().is_empty(),
            "man -l {page}: {err}"
        );
        let wanted: &[&str] = match page {
            "man8/xknock.8.gz" => &["run", "status", "knock", "spa", "revoke", "completions"],
            "man8/xknock-run.8.gz" => &["--config", "--keep-attached", "--metrics"],
            _ => &["open_for", "[fleet]", "offline_spa", "[[spa.client]]"],
        };
        for word in wanted {
            assert!(text.contains(word), "{word} in man -l {page}:\n{text}");
        }
    }
    let completion = root.path("usr/share/bash-completion/completions/xknock");
    let script = format!("source {} && complete -p xknock", completion.display());
    let loaded = ok(Command::new("bash").args(["--norc", "--noprofile", "-c", &script]));
    assert!(loaded.contains("xknock"), "{loaded}");

    // An edited config survives an upgrade; the binary is replaced.
    let mut text = fs::read_to_string(&config).expect("config");
    text.push_str("\n# edited by the admin\n");
    fs::write(&config, &text).expect("edit the config");
    let (upgraded, out, err) = root.dpkg(&["-i", second.to_str().expect("utf-8")]);
    assert!(upgraded, "upgrade: {out}{err}");
    assert!(
        !err.contains("xknock is installed and not started"),
        "an upgrade says nothing: {err}"
    );
    assert_eq!(
        fs::read_to_string(&config).expect("config"),
        text,
        "the edit kept"
    );
    let version = ok(Command::new("dpkg-deb").arg("-f").arg(&second).arg("Version"));
    assert!(
        root.dpkg(&["-s", "xknock"])
            .1
            .contains(&format!("Version: {}", version.trim()))
    );

    // Removal keeps the config, purge removes it and the state.
    let (removed, out, err) = root.dpkg(&["-r", "xknock"]);
    assert!(removed, "remove: {out}{err}");
    assert!(!bin.exists() && !root.path("lib/systemd/system/xknock.service").exists());
    assert!(config.exists(), "a removal keeps the conffile");
    let (purged, out, err) = root.dpkg(&["-P", "xknock"]);
    assert!(purged, "purge: {out}{err}");
    assert!(
        !config.exists() && !root.path("var/lib/xknock").exists(),
        "purged"
    );
}

#[test]
fn the_client_archive_is_the_client_alone() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/client");
    let archive = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; make it first (`cargo xtask client`)", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-linux.tar.gz"))
        .expect("the client archive (`cargo xtask client`, as scripts/test.sh does)");
    let out = std::env::temp_dir().join(unique("xknock-client-"));
    fs::create_dir_all(&out).expect("temp dir");
    ok(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&out));
    let top = fs::read_dir(&out)
        .expect("extracted")
        .next()
        .expect("one directory")
        .expect("entry")
        .path();
    let bin = top.join("bin/xknock");
    let help = ok(Command::new(&bin).arg("--help"));
    for command in ["knock", "spa", "keygen", "secret", "check", "completions"] {
        assert!(help.contains(&format!("  {command} ")), "{command} in:\n{help}");
    }
    let (ran, _, err) = run(Command::new(&bin).args(["run", "--help"]));
    assert!(
        !ran && err.contains("unrecognized subcommand"),
        "no daemon in the client: {err}"
    );
    for file in [
        "completions/xknock.bash",
        "completions/_xknock",
        "completions/xknock.fish",
        "README",
    ] {
        let len = fs::metadata(top.join(file)).map_or(0, |m| m.len());
        assert!(len > 0, "{file} in the archive");
    }
    let libs = ok(Command::new("ldd").arg(&bin));
    assert!(!libs.contains("libssl") && libs.contains("libc.so"), "{libs}");
    let _ = fs::remove_dir_all(&out);
}
