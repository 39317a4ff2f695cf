//! Operations end to end: a restart that takes over the pinned state without a gap
//! (as an upgrade does), one refused for maps of another layout or size, `down`,
//! reload, and interfaces that go down, appear late, or are created again.

use std::fs;

use aya::maps::{Array, Map, MapData};
use knock_common::{LAYOUT_VERSION, Meta, map_names};
use xknock_tests::{
    netns::{ssh_banner, ssh_exchange},
    setup::{SERIAL, Setup},
    unique, xknock_bin,
};

fn knock(s: &Setup, i: usize, knocks: &[&str]) {
    let server = s.hosts.server_v4[i].to_string();
    let mut args = vec!["knock", &server, "--delay", "20ms"];
    args.extend_from_slice(knocks);
    s.xknock(s.client(i), &args);
}

#[test]
fn a_restart_with_keep_attached_has_no_gap_and_keeps_every_authorization() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::with_run_args("", &["--keep-attached"]);
    knock(&s, 0, &["7000", "8000/udp", "9000"]);
    s.wait_event("open", s.hosts.clients[0].v4);
    let (mut established, _) =
        ssh_banner(s.client(0), s.hosts.server_v4[0], 22).expect("open after the knock");
    let first = s.prog_id(0).expect("attached");
    // Client 1 never knocks: it must not get through at any moment of the restart.
    let probe = s.probe(1, s.hosts.server_v4[1], 22);

    assert!(s.signal_run(libc::SIGTERM).success(), "run exits 0");
    assert!(
        s.log().contains("exiting with the filter attached"),
        "{}",
        s.log()
    );
    assert_eq!(s.prog_id(0).as_deref(), Some(first.as_str()), "still attached");
    assert!(
        ssh_exchange(&mut established),
        "the connection works with run gone"
    );

    // The next run (a newer xknock of the same layout would do the same) takes over.
    s.start_run("second.jsonl");
    s.wait_prog_change(0, Some(&first));
    s.wait_log("adopted the state pinned");
    probe.assert_never_answered("the restart");
    assert!(s.reachable(0, s.hosts.server_v4[0]), "the authorization survived");
    assert!(ssh_exchange(&mut established), "and the connection");
    knock(&s, 1, &["7000", "8000/udp", "9000"]);
    s.wait_event("open", s.hosts.clients[1].v4);
    assert!(
        s.reachable(1, s.hosts.server_v4[1]),
        "the prober's path works: it was the filter that kept it out"
    );
}

#[test]
fn maps_of_another_layout_or_size_are_refused_and_down_removes_everything() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::new();
    let pin_dir = s.fs.pin_dir();
    let first = s.prog_id(0).expect("attached");
    s.signal_run(libc::SIGKILL);

    // Maps as an xknock of another layout would have left them.
    let meta_path = pin_dir.join(map_names::META);
    let set_layout = |layout: u32| {
        let map = Map::from_map_data(MapData::from_pin(&meta_path).expect("meta pin")).expect("map");
        let mut meta: Array<MapData, Meta> = Array::try_from(map).expect("meta array");
        let mut m = meta.get(&0, 0).expect("meta");
        m.layout = layout;
        meta.set(0, &m, 0).expect("write meta");
    };
    set_layout(LAYOUT_VERSION + 1);
    let config = s.dir.join("xknock.toml");
    let try_run = |config: &std::path::Path| {
        let (bin, iface) = (xknock_bin(), &s.hosts.server_ifaces[0]);
        let args = [
            "timeout",
            "20",
            bin.to_str().expect("utf-8"),
            "run",
            "--config",
            config.to_str().expect("utf-8"),
            "--pin-dir",
            pin_dir.to_str().expect("utf-8"),
            "--iface",
            iface,
        ];
        s.hosts.run_in(&s.hosts.server, &args)
    };
    let (ok, out) = try_run(&config);
    assert!(!ok, "run refused: {out}");
    let layout = format!("layout {}", LAYOUT_VERSION + 1);
    assert!(out.contains(&layout) && out.contains("xknock down"), "{out}");
    assert_eq!(s.prog_id(0), Some(first.clone()), "the old filter stays in force");
    assert!(!s.reachable(1, s.hosts.server_v4[1]), "and filters");

    // The same layout with maps of another size: other [limits].
    set_layout(LAYOUT_VERSION);
    let smaller = s.dir.join("smaller.toml");
    let text = fs::read_to_string(&config).expect("config");
    fs::write(&smaller, format!("{text}\n[limits]\nin_progress = 1024\n")).expect("write");
    let (ok, out) = try_run(&smaller);
    assert!(!ok, "run refused: {out}");
    assert!(
        out.contains("XK_PROGRESS") && out.contains("max_entries"),
        "{out}"
    );
    assert_eq!(s.prog_id(0), Some(first), "the old filter stays in force");

    // down: nothing filters, nothing is left pinned.
    let pin = pin_dir.to_str().expect("utf-8");
    let out = s.xknock(&s.hosts.server, &["down", "--pin-dir", pin]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(s.prog_id(0), None, "detached");
    assert!(!pin_dir.exists(), "the pin directory is gone");
    assert!(s.reachable(1, s.hosts.server_v4[1]), "no filter any more");

    // A fresh run starts over, and down is refused while it runs.
    s.start_run("fresh.jsonl");
    s.wait_prog_change(0, None);
    let bin = xknock_bin();
    let (ok, out) = s.hosts.run_in(
        &s.hosts.server,
        &[bin.to_str().expect("utf-8"), "down", "--pin-dir", pin],
    );
    assert!(!ok && out.contains("is using"), "{out}");
    assert!(!s.reachable(1, s.hosts.server_v4[1]), "filtering again");
}

/// A sequence protecting sshd, open for a minute.
fn sequence(name: &str, knocks: &str) -> String {
    format!(
        "[[sequence]]\nname = \"{name}\"\nknocks = [{knocks}]\nprotect = [\"22/tcp\"]\nopen_for = \"60s\"\n\
         step_timeout = \"10s\"\n"
    )
}

#[test]
fn reload_moves_authorizations_with_their_sequence_and_refuses_an_invalid_config() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = Setup::new();
    let config = s.dir.join("xknock.toml");
    let reload = |times: usize, expect: &str| s.reload(times, expect);
    let (c0, c1) = (s.hosts.clients[0].v4, s.hosts.clients[1].v4);
    fs::write(
        &config,
        sequence("other", "\"11000\", \"12000/udp\"") + &sequence("ssh", "\"7000\", \"8000/udp\", \"9000\""),
    )
    .expect("write");
    reload(1, "reloaded");
    knock(&s, 0, &["7000", "8000/udp", "9000"]);
    assert_eq!(s.wait_event("open", c0)["sequence"], "ssh");
    knock(&s, 1, &["11000", "12000/udp"]);
    assert_eq!(s.wait_event("open", c1)["sequence"], "other");

    // ssh moves to the first slot with new knocks; other goes; new comes.
    fs::write(
        &config,
        sequence("ssh", "\"7100\", \"8100/udp\", \"9100\"") + &sequence("new", "\"13000\""),
    )
    .expect("write");
    reload(2, "reloaded");
    let close = s.wait_event("close", c1);
    assert_eq!(
        (&close["sequence"], &close["reason"]),
        (&"other".into(), &"removed".into())
    );
    assert!(s.reachable(0, s.hosts.server_v4[0]), "ssh's authorization kept");
    assert!(!s.reachable(1, s.hosts.server_v4[1]), "other's is gone");
    let status = s.status();
    assert_eq!(status["authorized"][0]["sequence"], "ssh", "{status}");
    knock(&s, 1, &["7000", "8000/udp", "9000"]);
    assert!(
        !s.reachable(1, s.hosts.server_v4[1]),
        "the old knocks open nothing"
    );
    knock(&s, 1, &["7100", "8100/udp", "9100"]);
    assert!(s.reachable(1, s.hosts.server_v4[1]), "the new ones do");

    // An invalid config is refused whole; the running one stays.
    fs::write(&config, sequence("ssh", "\"99999\"")).expect("write");
    reload(1, "reload refused");
    assert!(
        s.log().contains("99999"),
        "the refusal says what is wrong:\n{}",
        s.log()
    );
    let names: Vec<String> = s.status()["sequences"]
        .as_array()
        .expect("sequences")
        .iter()
        .map(|q| q["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["ssh", "new"]);
    assert!(s.reachable(0, s.hosts.server_v4[0]), "still authorized");
}

#[test]
fn interfaces_that_go_down_appear_late_or_are_created_again_are_filtered() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let late = unique("xks");
    let mut s = Setup::with_run_args("", &["--iface", &late]);
    s.wait_log("no such interface (yet)");

    // Down and up again: the link stays.
    let (server, dev) = (s.hosts.server.clone(), s.hosts.server_ifaces[0].clone());
    let before = s.prog_id(0);
    assert!(before.is_some(), "attached");
    for state in ["down", "up"] {
        let (ok, out) = s
            .hosts
            .run_in(&server, &["ip", "link", "set", "dev", &dev, state]);
        assert!(ok, "ip link set {state}: {out}");
    }
    assert_eq!(s.prog_id(0), before, "the same program after down and up");
    assert!(
        !s.reachable(0, s.hosts.server_v4[0]),
        "filtered after down and up"
    );
    knock(&s, 0, &["7000", "8000/udp", "9000"]);
    assert!(s.reachable(0, s.hosts.server_v4[0]), "and knocks work");

    // The late interface appears: attached within a second or two.
    s.hosts.add_client(&late);
    let first = s.wait_prog_change(2, None);
    assert!(!s.reachable(2, s.hosts.server_v4[2]), "filtered once it appears");
    knock(&s, 2, &["7000", "8000/udp", "9000"]);
    assert!(s.reachable(2, s.hosts.server_v4[2]), "knocks work on it");

    // Deleted and created again (a new index): attached again.
    s.hosts.run_in(&server, &["ip", "link", "del", "dev", &late]);
    s.wait_log("the interface is gone");
    s.hosts.add_client(&late);
    s.wait_prog_change(3, None);
    assert!(
        !s.reachable(3, s.hosts.server_v4[3]),
        "filtered once created again"
    );
    knock(&s, 3, &["7000", "8000/udp", "9000"]);
    assert!(s.reachable(3, s.hosts.server_v4[3]), "knocks work on it");
    assert_eq!(s.prog_id(3), Some(first), "the same program: one state for all");
}
