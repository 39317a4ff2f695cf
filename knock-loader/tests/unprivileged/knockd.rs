//! `xknock import-knockd`: real knockd configurations become TOML that xknock's own
//! parser takes, with the sequences, ports and timeouts knockd had, and a report of
//! what did not translate.
//!
//! Fixtures: knockd-archwiki.conf is the example of the ArchWiki's "Port Knocking"
//! page, as it is there; knockd-debian.conf is /etc/knockd.conf of Debian's knockd
//! package (0.8-2).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::xknock_bin;
use knock_common::{TCP_ACK, TCP_SYN};
use xknock::{
    config::{Config, Sequence},
    knockd::{Imported, import, import_file},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Debian's knockd helper, which this machine does not have: xknock refuses an
/// `on_open` whose program does not exist, so the line is blanked (not removed, to
/// keep line numbers) where a test parses the TOML.
const KNOCK_ADD: &str = "on_open = \"/usr/local/sbin/knock_add";

fn without_knock_add(toml: &str) -> String {
    let kept: Vec<&str> = toml
        .lines()
        .map(|l| if l.starts_with(KNOCK_ADD) { "" } else { l })
        .collect();
    kept.join("\n")
}

/// The TOML as xknock's Config reads it.
fn parse(toml: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/xknock/imported.toml"), toml).map_err(|e| format!("{e:#}"))
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn timeouts(s: &Sequence) -> (Duration, Duration, Duration) {
    (s.open_for, s.sequence_timeout, s.step_timeout)
}

fn notes(imported: &Imported) -> Vec<String> {
    strings(&imported.notes)
}

#[test]
fn the_archwiki_example() {
    let imported = import_file(&fixture("knockd-archwiki.conf")).expect("imports");
    let config = parse(&imported.toml).expect("xknock takes it");
    assert_eq!(imported.sequences, 1);
    let s = &config.sequences[0];
    assert_eq!(s.name, "opencloseSSH");
    assert_eq!(strings(&s.knocks), ["8881/tcp", "7777/tcp", "9991/tcp"]);
    assert_eq!(strings(&s.protect), ["22/tcp"], "from start_command's --dport");
    assert_eq!(
        timeouts(s),
        (
            Duration::from_secs(10),
            Duration::from_secs(15),
            Duration::from_secs(15)
        ),
        "open_for from cmd_timeout, both timeouts from seq_timeout"
    );
    assert_eq!((s.tcp_flags_set, s.tcp_flags_clear), (TCP_SYN | TCP_ACK, 0));
    assert!(!imported.toml.contains("on_open") && !imported.toml.contains("on_close"));
    let report = notes(&imported);
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].starts_with("line 2: logfile: not translated: "),
        "{report:?}"
    );
    assert!(imported.toml.contains("#   line 2: logfile: not translated:"));
}

#[test]
fn debian_s_default_config() {
    let imported = import_file(&fixture("knockd-debian.conf")).expect("imports");
    let toml = &imported.toml;
    // [openHTTPS] runs a helper whose port cannot be read: its protect is a
    // placeholder that check refuses, pointing at it.
    let err = parse(&without_knock_add(toml)).expect_err("placeholder");
    let placeholder = toml
        .lines()
        .position(|l| l.starts_with("protect = []"))
        .expect("placeholder")
        + 1;
    assert!(
        err.contains(&format!(":{placeholder}: protect: must list at least one")),
        "{err}"
    );
    let filled = toml.replacen("protect = []", "protect = [\"443/tcp\"]", 1);
    let missing = parse(&filled).expect_err("knock_add is not installed here");
    assert!(missing.contains("knock_add"), "{missing}");
    let config = parse(&without_knock_add(&filled)).expect("xknock takes it once filled in");
    assert_eq!(imported.sequences, 2);
    let names: Vec<_> = config.sequences.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["openSSH", "openHTTPS"],
        "[closeSSH] is no sequence of its own"
    );
    let ssh = &config.sequences[0];
    assert_eq!(strings(&ssh.knocks), ["7000/tcp", "8000/tcp", "9000/tcp"]);
    assert_eq!(strings(&ssh.protect), ["22/tcp"]);
    assert_eq!(
        timeouts(ssh),
        (
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_secs(5)
        )
    );
    assert_eq!((ssh.tcp_flags_set, ssh.tcp_flags_clear), (TCP_SYN, TCP_ACK));
    let https = &config.sequences[1];
    assert_eq!(
        strings(&https.knocks),
        ["12345/tcp", "54321/tcp", "24680/tcp", "13579/tcp"]
    );
    assert!(
        toml.contains("\non_open = \"/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%\"\n"),
        "the helper is kept, %IP% and all:\n{toml}"
    );
    let report = notes(&imported);
    assert_eq!(report.len(), 3, "{report:?}");
    assert!(report[0].starts_with("line 2: UseSyslog: not translated: "));
    assert!(
        report[1].starts_with("line 10: [closeSSH]: not translated: it closes what [openSSH] opens")
            && report[1].contains("one sequence, \"openSSH\""),
        "{report:?}"
    );
    assert!(
        report[2].starts_with("line 19: command: not translated: no port to protect"),
        "{report:?}"
    );
}

#[test]
fn commands_that_need_a_shell_are_commented_out() {
    let text = "[options]\n\tInterface = eth1\n[notify]\n\tsequence = 5000 6000:udp\n\
                \tstart_command = /sbin/iptables -I INPUT -s %IP% -p udp --dport 53 -j ACCEPT\n\
                \tstop_command = /usr/bin/logger -t knockd closing for %IP%\n\
                \tcmd_timeout = 60\n[log]\n\tsequence = 1111,2222\n\
                \tcommand = echo %IP% >> /var/log/knocks\n";
    let imported = import(Path::new("knockd.conf"), text).expect("imports");
    let toml = &imported.toml;
    assert!(toml.contains("\ninterface = \"eth1\"\n"), "{toml}");
    assert!(toml.contains("\nprotect = [\"53/udp\"]\n"), "{toml}");
    assert!(toml.contains("\non_close = \"/usr/bin/logger -t knockd closing for %IP%\"\n"));
    assert!(toml.contains("\nopen_for = \"60s\"\n"), "cmd_timeout: {toml}");
    assert!(
        toml.contains("\n# on_open = \"echo %IP% >> /var/log/knocks\"\n"),
        "{toml}"
    );
    let report = notes(&imported);
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].starts_with("line 10: command: not translated: needs a shell (a redirection, `>`)")
            && report[0].ends_with("list the ports it opens in protect"),
        "{report:?}"
    );
    let config = parse(&toml.replacen("protect = []", "protect = [\"80/tcp\"]", 1))
        .expect("xknock takes it once filled in, on_close and all");
    assert!(
        config.sequences[0].on_close.is_some(),
        "the logger command is kept"
    );
    assert_eq!(config.interfaces, ["eth1"]);
}

#[test]
fn the_command_writes_a_new_file_and_reports_on_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("xknock.toml");
    let run = |args: &[&str]| {
        let o = Command::new(xknock_bin())
            .args(args)
            .output()
            .expect("runs xknock");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let conf = fixture("knockd-debian.conf");
    let conf = conf.to_str().expect("utf-8 path");
    let out_s = out.to_str().expect("utf-8 path");
    let (ok, stdout, stderr) = run(&["import-knockd", conf, "--out", out_s]);
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty());
    for want in [
        "line 2: UseSyslog: not translated: ",
        "line 10: [closeSSH]: not translated: ",
        "line 19: command: not translated: ",
        "imported 2 sequence(s)",
    ] {
        assert!(stderr.contains(want), "{want:?} in {stderr}");
    }
    let written = std::fs::read_to_string(&out).expect("written");
    let (ok, stdout, _) = run(&["import-knockd", conf]);
    assert!(ok);
    assert_eq!(stdout, written, "stdout and --out get the same TOML");

    let (ok, _, stderr) = run(&["import-knockd", conf, "--out", out_s]);
    assert!(!ok && stderr.contains("exists"), "never overwrites: {stderr}");
    assert_eq!(std::fs::read_to_string(&out).expect("still there"), written);

    // The ArchWiki example needs nothing filled in: `xknock check` takes it as it is.
    let wiki = dir.path().join("wiki.toml");
    let wiki_s = wiki.to_str().expect("utf-8 path");
    let fixture_wiki = fixture("knockd-archwiki.conf");
    let (ok, _, stderr) = run(&[
        "import-knockd",
        fixture_wiki.to_str().expect("utf-8"),
        "--out",
        wiki_s,
    ]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run(&["check", "--config", wiki_s]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("opencloseSSH: knocks 8881/tcp 7777/tcp 9991/tcp open 22/tcp for 10s"));

    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "[openSSH]\nsequence = 7000,8000:sctp\n").expect("write");
    let (ok, _, stderr) = run(&["import-knockd", bad.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:2: sequence: \"8000:sctp\": unknown protocol",
            bad.display()
        )),
        "{stderr}"
    );
}
