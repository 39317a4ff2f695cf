//! Fail closed, end to end: each fault made to happen to `run` while a second host
//! probes a protected port the whole time, and no probe is ever answered. Descriptor
//! exhaustion through `--metrics`, a failed upgrade, reloads that reorder and remove
//! sequences, a reload failing part way, a process that holds the program without
//! being `run`. (The expiry sweep racing a renewal, which needs no hosts, is in
//! tests/tests/kernel/faults.rs.)

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use xknock_tests::{
    netns::{in_netns, ssh_banner, ssh_exchange},
    setup::{SERIAL, Setup},
};

fn knock(s: &Setup, i: usize, knocks: &[&str]) {
    let server = s.hosts.server_v4[i].to_string();
    let mut args = vec!["knock", &server, "--delay", "20ms"];
    args.extend_from_slice(knocks);
    s.xknock(s.client(i), &args);
}

const SSH_KNOCKS: [&str; 3] = ["7000", "8000/udp", "9000"];

fn sequence(name: &str, knocks: &str, port: u16) -> String {
    format!(
        "[[sequence]]\nname = \"{name}\"\nknocks = [{knocks}]\nprotect = [\"{port}/tcp\"]\nopen_for = \"60s\"\n\
         step_timeout = \"10s\"\n"
    )
}

/// (soft, hard) descriptor limits of process `pid`.
fn nofile(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let mut words = line.split_whitespace().skip(3);
    let soft = words.next().expect("soft").to_owned();
    (soft, words.next().expect("hard").to_owned())
}

fn raise_own_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
    }
}

#[test]
fn descriptor_exhaustion_through_metrics_leaves_the_filter_attached() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_own_limit();
    let s = Setup::with_run_args("", &["--metrics", "9464"]);
    let pid = s.hosts.last_child_pid();
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "run raised its soft descriptor limit to the hard one");
    let first = s.prog_id(0).expect("attached");
    let probe = s.probe(1, s.hosts.server_v4[1], 22);

    // Only a few descriptors left to run, then a local user's idle connections to
    // the metrics port: without the cap they would take every one of them.
    let open = fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").count();
    let limit = format!("--nofile={}:{hard}", open + 4);
    let pid_arg = pid.to_string();
    xknock_tests::sh(&["prlimit", "--pid", &pid_arg, &limit]);
    let conns = in_netns(&s.hosts.server, || {
        let target = SocketAddr::from(([127, 0, 0, 1], 9464));
        (0..400)
            .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok())
            .collect::<Vec<_>>()
    });
    assert!(conns.len() > 100, "{} connections made", conns.len());
    s.wait_log("cannot accept a connection");
    // An interface appearing (netlink), a reload (which must open the config file)
    // and three polls of the interfaces, all out of descriptors.
    let server = s.hosts.server.clone();
    let (ok, out) = s.hosts.run_in(
        &server,
        &[
            "ip", "link", "add", "xkd0", "type", "veth", "peer", "name", "xkd1",
        ],
    );
    assert!(ok, "{out}");
    s.reload(1, "reload refused");
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.prog_id(0).as_deref(),
        Some(first.as_str()),
        "still attached:\n{}",
        s.log()
    );
    assert!(!s.log().contains("is gone"), "{}", s.log());
    // The kernel's part needs no descriptor of run's: a knock opens meanwhile.
    knock(&s, 0, &SSH_KNOCKS);
    s.wait_event("open", s.hosts.clients[0].v4);
    assert!(s.reachable(0, s.hosts.server_v4[0]), "the knock opened");

    drop(conns);
    xknock_tests::sh(&["prlimit", "--pid", &pid_arg, &format!("--nofile={soft}:{hard}")]);
    probe.assert_never_answered("out of descriptors");
    // And the metrics answer again once the connections are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = in_netns(&s.hosts.server, || {
            use std::io::{Read as _, Write as _};
            let mut c = TcpStream::connect(("127.0.0.1", 9464)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut text = String::new();
            c.read_to_string(&mut text).ok()?;
            Some(text)
        });
        if scraped.is_some_and(|t| t.contains("xknock_")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not come back:\n{}",
            s.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_failed_upgrade_leaves_the_old_program_filtering() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::with_run_args("", &["--keep-attached"]);
    knock(&s, 0, &SSH_KNOCKS);
    s.wait_event("open", s.hosts.clients[0].v4);
    let (mut established, _) =
        ssh_banner(s.client(0), s.hosts.server_v4[0], 22).expect("open after the knock");
    let first = s.prog_id(0).expect("attached");
    let probe = s.probe(1, s.hosts.server_v4[1], 22);
    assert!(s.signal_run(libc::SIGTERM).success());

    // The new run's program is refused by the kernel at the link update.
    s.run_env = vec!["XKNOCK_FAULTS=link-update".into()];
    s.start_run("upgrade.jsonl");
    let status = s
        .hosts
        .wait_last_child(Duration::from_secs(20))
        .expect("the upgrade gives up");
    assert!(!status.success(), "a refused upgrade is an error");
    assert!(
        s.log().contains("the program it had goes on filtering"),
        "{}",
        s.log()
    );
    assert_eq!(
        s.prog_id(0).as_deref(),
        Some(first.as_str()),
        "the old program stays"
    );
    let link = s.fs.pin_dir().join(format!("link_{}", s.hosts.server_ifaces[0]));
    assert!(link.exists(), "the link is still pinned");
    assert!(ssh_exchange(&mut established), "the kept connection works");
    assert!(s.reachable(0, s.hosts.server_v4[0]), "the authorization works");

    // The next run without the fault takes over as usual.
    s.run_env.clear();
    s.start_run("second.jsonl");
    s.wait_prog_change(0, Some(&first));
    s.wait_log("adopted the state pinned");
    probe.assert_never_answered("a failed upgrade");
    assert!(s.reachable(0, s.hosts.server_v4[0]), "still authorized");
}

#[test]
fn reloads_that_reorder_and_remove_sequences_never_admit_on_another_sequences_authorization() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = Setup::new();
    let config = s.dir.join("xknock.toml");
    let (a, b, c) = (
        sequence("a", "\"7000\", \"8000/udp\", \"9000\"", 22),
        // Nothing listens on 2222 or 2223: a SYN that gets through is answered
        // with a reset, which the probe counts.
        sequence("b", "\"11000\", \"12000/udp\"", 2222),
        sequence("c", "\"13000\", \"14000/udp\"", 2223),
    );
    // d protects b's and c's ports in every config, so that removing b or c leaves
    // them protected; nobody knocks d.
    let d = "[[sequence]]\nname = \"d\"\nknocks = [\"15000\", \"16000/udp\"]\nprotect = [\"2222/tcp\", \"2223/tcp\"]\n";
    fs::write(&config, a.clone() + &b + &c + d).expect("write");
    s.reload(1, "reloaded");
    knock(&s, 0, &SSH_KNOCKS);
    assert_eq!(s.wait_event("open", s.hosts.clients[0].v4)["sequence"], "a");
    // Client 0, authorized for a, keeps sending SYNs to b's and c's ports; client 1,
    // authorized for nothing, to a's.
    let (srv0, srv1) = (s.hosts.server_v4[0], s.hosts.server_v4[1]);
    let probes = [
        s.probe(0, srv0, 2222),
        s.probe(0, srv0, 2223),
        s.probe(1, srv1, 22),
    ];
    let orders = [
        b.clone() + &a + &c,
        c.clone() + &b + &a,
        b.clone() + &a,
        a.clone() + &c,
        c.clone() + &a + &b,
        a.clone() + &b + &c,
    ];
    for (i, order) in orders.iter().enumerate() {
        fs::write(&config, order.clone() + d).expect("write");
        s.reload(i + 2, "reloaded");
        thread::sleep(Duration::from_millis(300));
    }
    for (probe, what) in probes
        .into_iter()
        .zip(["b's port", "c's port", "a's port, unauthorized"])
    {
        probe.assert_never_answered(what);
    }
    assert!(
        s.reachable(0, srv0),
        "a's authorization followed a through every reload"
    );
}

#[test]
fn a_reload_failing_part_way_stays_closed_and_completes_on_retry() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::new();
    // Six failures: the first attempt and five retries, about 2.5 s.
    s.run_env = vec!["XKNOCK_FAULTS=reload-midway:6".into()];
    s.restart_run("faulty.jsonl");
    let config = s.dir.join("xknock.toml");
    let other = sequence("other", "\"11000\", \"12000/udp\"", 2222);
    let ssh = sequence("ssh", "\"7000\", \"8000/udp\", \"9000\"", 22);
    fs::write(&config, other.clone() + &ssh).expect("write");
    s.reload(1, "reloaded");
    knock(&s, 0, &SSH_KNOCKS);
    assert_eq!(s.wait_event("open", s.hosts.clients[0].v4)["sequence"], "ssh");
    let (srv0, srv1) = (s.hosts.server_v4[0], s.hosts.server_v4[1]);
    let probes = [s.probe(0, srv0, 2222), s.probe(1, srv1, 22)];

    // ssh and other swap slots: the move of client 0's authorization fails part way.
    fs::write(&config, ssh + &other).expect("write");
    s.reload(1, "reload failed part way");
    assert!(
        !s.reachable(0, srv0),
        "while the reload is not done, the moved authorization admits nothing new"
    );
    s.reload(2, "reloaded");
    assert!(s.reachable(0, srv0), "once done, it is back:\n{}", s.log());
    let status = s.status();
    assert_eq!(status["authorized"][0]["sequence"], "ssh", "{status}");
    for (probe, what) in probes
        .into_iter()
        .zip(["other's port", "ssh's port, unauthorized"])
    {
        probe.assert_never_answered(what);
    }
}

#[test]
fn a_process_holding_the_program_is_not_taken_for_run() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut s = Setup::with_run_args("", &["--keep-attached"]);
    let pin_dir = s.fs.pin_dir();
    let pin = pin_dir.to_str().expect("utf-8").to_owned();
    let run_pid = s.hosts.last_child_pid();
    // `xknock COMMAND --pin-dir PIN`, which must fail: its output.
    let refused = |s: &Setup, command: &str| {
        let bin = xknock_tests::xknock_bin();
        let args = [bin.to_str().expect("utf-8"), command, "--pin-dir", &pin];
        let (ok, out) = s.hosts.run_in(&s.hosts.server, &args);
        assert!(!ok, "{command} succeeded: {out}");
        out
    };
    let out = refused(&s, "down");
    assert!(out.contains(&format!("pid {run_pid}")), "down names run: {out}");
    assert!(s.signal_run(libc::SIGTERM).success());
    // This process holds the link (and so the program), as bpftool would.
    let link = aya::programs::links::PinnedLink::from_pin(
        pin_dir.join(format!("link_{}", s.hosts.server_ifaces[0])),
    )
    .expect("open the pinned link");
    let out = refused(&s, "reload");
    assert!(out.contains("no xknock run is using"), "{out}");
    s.start_run("second.jsonl");
    s.wait_log("adopted the state pinned");
    drop(link);
}
