//! End to end: `xknock run` attached to veth interfaces of a server namespace running
//! OpenSSH's sshd, with client namespaces knocking through `xknock knock`, knockd's
//! `knock` and `nmap`, and connecting with real TCP.

use std::time::Duration;

use xknock_tests::{
    netns::{ssh_banner, ssh_exchange},
    setup::{SERIAL, Setup},
    xknock_bin,
};

#[test]
fn sshd_opens_only_after_the_knock_and_only_for_the_knocker() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = Setup::new();
    let server = s.hosts.server_v4[0];
    let other_server = s.hosts.server_v4[1];
    let (client, other) = (s.hosts.clients[0].v4, s.hosts.clients[1].v4);
    assert!(!s.reachable(0, server), "sshd must be invisible before the knock");
    assert!(
        !s.reachable(1, other_server),
        "sshd must be invisible to the other host"
    );

    s.xknock(
        s.client(0),
        &["knock", &server.to_string(), "7000", "8000/udp", "9000/tcp"],
    );
    s.wait_event("open", client);
    let (mut established, banner) =
        ssh_banner(s.client(0), server, 22).expect("sshd reachable after the knock");
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "banner {banner:?}");
    assert!(
        !s.reachable(1, other_server),
        "the other host did not knock: still closed"
    );

    // status and bpftool read the pinned maps while run is running.
    let pin_dir = s.fs.pin_dir();
    let status: serde_json::Value = s.status();
    assert_eq!(
        status["authorized"][0]["source"],
        client.to_string(),
        "status: {status}"
    );
    assert_eq!(status["authorized"][0]["sequence"], "ssh");
    assert_eq!(
        status["counters"]["drop_knock"], 6,
        "two copies of each knock (`--copies` defaults to 2), which add no step (events below)"
    );
    let human = s.xknock(
        &s.hosts.server,
        &["status", "--pin-dir", pin_dir.to_str().unwrap()],
    );
    assert!(
        human.contains(&client.to_string()) && human.contains("left"),
        "status: {human}"
    );
    let dump = xknock_tests::sh(&[
        "bpftool",
        "map",
        "dump",
        "pinned",
        pin_dir.join("XK_AUTHORIZED").to_str().unwrap(),
    ]);
    assert!(
        dump.contains("\"expires_ns\"") && dump.contains("\"seq\""),
        "bpftool shows field names: {dump}"
    );

    // The window closes for new connections; the established one keeps working.
    s.wait_event("close", client);
    assert!(
        !s.reachable(0, server),
        "closed again for new connections after open_for"
    );
    assert!(
        ssh_exchange(&mut established),
        "the connection opened in the window still works"
    );

    let events = s.events();
    let steps: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "knock" && e["source"] == client.to_string())
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3], "events: {events:?}");
    assert!(
        events.iter().all(|e| e["source"] != other.to_string()),
        "the other host caused no event"
    );
}

#[test]
fn knockd_knock_and_nmap_work_as_clients_over_ipv4_and_ipv6() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = Setup::new();
    let (v4, v6) = (s.hosts.server_v4[0], s.hosts.server_v6[0]);

    // knockd's client, IPv6.
    assert!(!s.reachable(0, v6));
    let (ok, out) = s.hosts.run_in(
        s.client(0),
        &[
            "knock",
            "-6",
            "-d",
            "100",
            &v6.to_string(),
            "7000",
            "8000:udp",
            "9000",
        ],
    );
    assert!(ok, "knock failed: {out}");
    s.wait_event("open", s.hosts.clients[0].v6);
    assert!(s.reachable(0, v6), "open over IPv6 after knockd's knock");
    assert!(
        !s.reachable(0, v4),
        "the IPv4 address of the same host did not knock"
    );

    // nmap as the ArchWiki recipe uses it (plus -n: no DNS), IPv4 from the second client.
    let v4b = s.hosts.server_v4[1];
    for (port, udp) in [("7000", false), ("8000", true), ("9000", false)] {
        let mut args = vec![
            "nmap",
            "-n",
            "-Pn",
            "--host-timeout",
            "201",
            "--max-retries",
            "0",
            "-p",
            port,
        ];
        if udp {
            args.push("-sU");
        }
        let target = v4b.to_string();
        args.push(&target);
        let (ok, out) = s.hosts.run_in(s.client(1), &args);
        assert!(ok, "nmap failed: {out}");
    }
    s.wait_event("open", s.hosts.clients[1].v4);
    assert!(s.reachable(1, v4b), "open after knocking with nmap");

    // xknock's own client over IPv6, unprivileged path (plain sockets).
    let v6b = s.hosts.server_v6[1];
    s.xknock(
        s.client(1),
        &["knock", "-6", &v6b.to_string(), "7000", "8000/udp", "9000"],
    );
    s.wait_event("open", s.hosts.clients[1].v6);
    assert!(s.reachable(1, v6b));
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::new();
    let status = s.signal_run(libc::SIGTERM);
    assert!(status.success(), "run exit status {status}");
    assert_eq!(s.prog_id(0), None, "program still attached");
    assert!(
        s.reachable(0, s.hosts.server_v4[0]),
        "without the filter sshd is reachable again"
    );
}

#[test]
fn a_killed_run_keeps_filtering_and_the_next_run_adopts_its_state() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::new();
    let server = s.hosts.server_v4[0];
    let client = s.hosts.clients[0].v4;
    s.xknock(
        s.client(0),
        &["knock", &server.to_string(), "7000", "8000/udp", "9000"],
    );
    s.wait_event("open", client);
    let (mut established, _) = ssh_banner(s.client(0), server, 22).expect("open after the knock");
    // Half a sequence from the other client, to see progress survive too.
    let other_server = s.hosts.server_v4[1];
    s.xknock(s.client(1), &["knock", &other_server.to_string(), "7000"]);

    let first_prog = s.prog_id(0).expect("program attached");
    s.signal_run(libc::SIGKILL);
    assert_eq!(
        s.prog_id(0).as_deref(),
        Some(first_prog.as_str()),
        "the pinned link keeps the same filter attached"
    );
    assert!(!s.reachable(1, other_server), "still filtering with run dead");
    assert!(
        ssh_exchange(&mut established),
        "the authorized connection keeps working"
    );

    // A new run adopts the pins: same maps, the program swapped behind the same link.
    s.start_run("second.jsonl");
    s.wait_prog_change(0, Some(&first_prog));
    s.wait_log("adopted the state pinned");
    let st: serde_json::Value = s.status();
    assert_eq!(
        st["in_progress"][0]["source"],
        s.hosts.clients[1].v4.to_string(),
        "progress survived: {st}"
    );
    assert_eq!(st["in_progress"][0]["step"], 1);
    // The other client finishes the sequence it started before the restart.
    s.xknock(
        s.client(1),
        &["knock", &other_server.to_string(), "8000/udp", "9000"],
    );
    s.wait_event("open", s.hosts.clients[1].v4);
    assert!(
        s.reachable(1, other_server),
        "a sequence completes across the restart"
    );
    assert!(
        ssh_exchange(&mut established),
        "and the first client's connection still works"
    );
}

#[test]
fn allow_and_revoke_from_a_second_shell() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = Setup::new();
    let server = s.hosts.server_v6[0];
    let client = s.hosts.clients[0].v6;
    let pin_dir = s.fs.pin_dir();
    let pin = pin_dir.to_str().unwrap();
    assert!(!s.reachable(0, server));
    let out = s.xknock(
        &s.hosts.server,
        &[
            "allow",
            &client.to_string(),
            "--sequence",
            "ssh",
            "--for",
            "1m",
            "--pin-dir",
            pin,
        ],
    );
    assert!(out.contains("may connect"), "{out}");
    assert!(s.reachable(0, server), "allowed without knocking");
    let open = s.wait_event("open", client);
    assert_eq!(open["reason"], "allow", "{open}");
    s.xknock(
        &s.hosts.server,
        &["revoke", &client.to_string(), "--pin-dir", pin],
    );
    assert!(!s.reachable(0, server), "closed again after revoke");
    let close = s.wait_event("close", client);
    assert_eq!(close["reason"], "revoked", "{close}");
    let (ok, err) = s.hosts.run_in(
        &s.hosts.server,
        &[
            xknock_bin().to_str().unwrap(),
            "allow",
            "fd00::9",
            "--sequence",
            "nope",
            "--pin-dir",
            pin,
        ],
    );
    assert!(
        !ok && err.contains("no sequence named \"nope\"; configured: ssh"),
        "{err}"
    );
}

#[test]
fn a_brute_forcer_is_banned_and_unban_lifts_it() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = Setup::with_config("\n[ban]\nfailures = 2\nwindow = \"1m\"\nban_for = \"10m\"\n");
    let server = s.hosts.server_v4[0].to_string();
    let client = s.hosts.clients[0].v4;
    let pin = s.fs.pin_dir().to_str().expect("utf-8").to_owned();
    // Three wrong guesses (step 1, then a knock out of order) ban the source.
    for _ in 0..3 {
        s.xknock(s.client(0), &["knock", &server, "7000", "9000"]);
    }
    let ban = s.wait_event("ban", client);
    assert_eq!(ban["for"], "10m", "{ban}");
    assert_eq!(s.status()["banned"][0]["source"], client.to_string());
    // Banned: even the right sequence opens nothing.
    s.xknock(s.client(0), &["knock", &server, "7000", "8000/udp", "9000"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.reachable(0, s.hosts.server_v4[0]),
        "a banned source stays locked out"
    );
    let out = s.xknock(
        &s.hosts.server,
        &["unban", &client.to_string(), "--pin-dir", &pin],
    );
    assert!(out.contains("no longer banned"), "{out}");
    let unban = s.wait_event("unban", client);
    assert_eq!(unban["reason"], "lifted", "{unban}");
    s.xknock(s.client(0), &["knock", &server, "7000", "8000/udp", "9000"]);
    s.wait_event("open", client);
    assert!(
        s.reachable(0, s.hosts.server_v4[0]),
        "knocking works again after unban"
    );
}

/// A SYN scan (`nmap -sS`) from client 1 of a few ports of the server's address on its
/// link (`target`), in nmap's
/// grepable form.
fn syn_scan(s: &Setup, target: std::net::IpAddr) -> String {
    let target = target.to_string();
    let (ok, out) = s.hosts.run_in(
        s.client(1),
        &[
            "nmap",
            "-n",
            "-Pn",
            "-sS",
            "--max-retries",
            "1",
            "--max-rtt-timeout",
            "300ms",
            "--host-timeout",
            "60s",
            "-p",
            "21-23,25,80,81,443,7000,8000,9000",
            "-oG",
            "-",
            &target,
        ],
    );
    assert!(ok, "nmap failed: {out}");
    out
}

#[test]
fn stealth_shows_a_syn_scan_one_wall_with_only_the_public_port_open() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::new();
    let server = s.hosts.server_v4[0];
    // Something to serve on the public port: the kernel completes handshakes into
    // the backlog, which is all a SYN scan looks at.
    let _listener = xknock_tests::netns::in_netns(&s.hosts.server.clone(), || {
        std::net::TcpListener::bind(("0.0.0.0", 80)).expect("listen on 80")
    });
    // Without stealth the scan tells xknock's silent ports from the closed ones.
    let scanned = s.hosts.server_v4[1];
    let plain = syn_scan(&s, scanned);
    assert!(
        plain.contains("21/closed/"),
        "unconfigured ports answer RST: {plain}"
    );
    assert!(plain.contains("80/open/"), "{plain}");

    let config = s.dir.join("xknock.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("stealth = true\npublic = [\"80/tcp\"]\n{text}")).expect("config");
    s.restart_run("stealth.jsonl");
    let scan = syn_scan(&s, scanned);
    assert!(scan.contains("80/open/"), "the public port serves: {scan}");
    assert!(!scan.contains("/closed/"), "no port answers RST: {scan}");
    let open = scan.matches("/open/").count();
    assert_eq!(open, 1, "only the public port is open: {scan}");
    assert!(s.status()["counters"]["drop_stealth"].as_u64().unwrap_or(0) > 0);

    // Behind the wall, knocking still opens sshd.
    s.xknock(
        s.client(0),
        &["knock", &server.to_string(), "7000", "8000/udp", "9000/tcp"],
    );
    s.wait_event("open", s.hosts.clients[0].v4);
    assert!(s.reachable(0, server), "open after the knock");
}
