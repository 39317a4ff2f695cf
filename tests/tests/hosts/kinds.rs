//! Passing knocks (`PORT/tcp:pass`) and ICMP knocks (`SIZE/icmp`) end to end, knocked
//! with the stock tools (issue 18): two requests to a real HTTP server (Debian's
//! python3 `-m http.server` on ports 80 and 443), each served, then `ping -s 64`,
//! whose echo is dropped, open sshd; out of order they open nothing; ordinary pings
//! get their replies. Also `nc`, IPv6, a passing ICMP knock, and `xknock knock` from
//! a ping socket and from a raw one.

use std::{net::IpAddr, process::Stdio, time::Duration};

use xknock_tests::{
    netns::ssh_banner,
    setup::{SERIAL, Setup},
    xknock_bin,
};

/// The sequence under test, beside Setup's own "ssh" (7000, 8000/udp, 9000).
const WEB: &str = "\n[[sequence]]\nname = \"web\"\nknocks = [\"80/tcp:pass\", \"443/tcp:pass\", \"64/icmp\"]\nprotect = [\"22/tcp\"]\n";

/// What the web server serves at /door.txt.
const BODY: &str = "served through a passing knock\n";

/// Setup with `WEB` (and `extra`), and an HTTP server on ports 80 and 443 of the
/// server's every address, IPv4 and IPv6 (`--bind ::` is dual-stack).
fn web_setup(extra: &str) -> Setup {
    let mut s = Setup::with_config(&format!("{WEB}{extra}"));
    let www = s.dir.join("www");
    std::fs::create_dir_all(&www).expect("web root");
    std::fs::write(www.join("door.txt"), BODY).expect("web page");
    let server = s.hosts.server.clone();
    for port in ["80", "443"] {
        s.hosts.spawn_logged(
            &server,
            &[
                "/usr/bin/python3",
                "-m",
                "http.server",
                "--bind",
                "::",
                "--directory",
                www.to_str().expect("utf-8"),
                port,
            ],
            Stdio::null(),
            Stdio::null(),
        );
    }
    for port in ["80", "443"] {
        let mut tries = 0;
        while !s
            .hosts
            .run_in(&server, &["ss", "-ltn", &format!("sport = :{port}")])
            .1
            .contains(&format!(":{port} "))
        {
            tries += 1;
            assert!(tries < 200, "the web server does not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    s
}

/// Asserts sshd on `addr` does not answer client `i`: probes of its port 22 for a
/// moment (`probe`'s attempts, each waiting 50 ms) all go unanswered.
fn closed(s: &Setup, i: usize, addr: IpAddr, what: &str) {
    let probe = s.probe(i, addr, 22);
    std::thread::sleep(Duration::from_millis(300));
    probe.assert_never_answered(what);
}

/// `http://ADDR:PORT/door.txt`, IPv6 addresses in brackets.
fn url(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("http://{a}:{port}/door.txt"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/door.txt"),
    }
}

/// curl from client `i` to the web server on `addr`:`port`: asserts the request was
/// served (status 200, the page's body).
fn curl(s: &Setup, i: usize, addr: IpAddr, port: u16) {
    let (ok, out) = s.hosts.run_in(
        s.client(i),
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
            &url(addr, port),
        ],
    );
    assert!(
        ok && out == format!("{BODY}200"),
        "curl {port}: the request was not served: {out:?}"
    );
}

/// `ping -c 1 -W 1 -s SIZE` from client `i` to `addr`; whether the reply came.
fn ping(s: &Setup, i: usize, addr: IpAddr, size: u16) -> bool {
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    let (ok, out) = s.hosts.run_in(
        s.client(i),
        &[
            "ping",
            family,
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-s",
            &size.to_string(),
            &addr.to_string(),
        ],
    );
    // ping exits 1 when no reply came, 2 on errors.
    let replied = out.contains(" 1 received");
    assert!(
        ok == replied && (replied || out.contains(" 0 received")),
        "ping -s {size}: {out}"
    );
    replied
}

/// The (step, port) of `source`'s knock events in sequence `sequence`.
fn knocks(s: &Setup, source: IpAddr, sequence: &str) -> Vec<(u64, String)> {
    s.events()
        .iter()
        .filter(|e| e["event"] == "knock" && e["source"] == source.to_string() && e["sequence"] == sequence)
        .map(|e| {
            (
                e["step"].as_u64().expect("step"),
                e["port"].as_str().expect("port").to_owned(),
            )
        })
        .collect()
}

fn the_web_knocks() -> Vec<(u64, String)> {
    vec![
        (1, "80/tcp".to_owned()),
        (2, "443/tcp".to_owned()),
        (3, "64/icmp".to_owned()),
    ]
}

#[test]
fn curl_on_two_passing_ports_then_ping_of_the_knock_size_open_ssh() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = web_setup("");
    let server = s.hosts.server_v4[0];
    let client = s.hosts.clients[0].v4;
    // The other host probes sshd the whole time.
    let probe = s.probe(1, s.hosts.server_v4[1], 22);

    // Ordinary pings, of other sizes than the knock's, get their replies.
    assert!(ping(&s, 0, server, 56), "ping's default size is no knock");
    assert!(ping(&s, 0, server, 63), "nor is one byte less");
    closed(&s, 0, server, "sshd is invisible before the knocks");

    curl(&s, 0, server, 80);
    curl(&s, 0, server, 443);
    // An echo of another size passes, and leaves the progress alone.
    assert!(ping(&s, 0, server, 65), "one byte more is no knock either");
    assert!(!ping(&s, 0, server, 64), "the ICMP knock is dropped: no reply");
    let open = s.wait_event("open", client);
    assert_eq!(open["sequence"], "web", "{open}");
    assert_eq!(open["reason"], "knock", "{open}");
    // The ring reports the knocks before the open.
    assert_eq!(knocks(&s, client, "web"), the_web_knocks(), "{:?}", s.events());
    let (_, banner) = ssh_banner(s.client(0), server, 22).expect("sshd reachable after the knocks");
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "banner {banner:?}");
    // The page is still served, to the authorized source too (its SYN is step 1
    // of a new round).
    curl(&s, 0, server, 80);

    probe.assert_never_answered("the other host, while the first knocked");
    let counters = &s.status()["counters"];
    assert!(
        counters["pass_knock"].as_u64().unwrap_or(0) >= 2,
        "passing knocks and their connections pass: {counters}"
    );
    assert!(
        counters["drop_knock"].as_u64().unwrap_or(0) >= 1,
        "the ICMP knock was dropped: {counters}"
    );
}

#[test]
fn the_same_knocks_out_of_order_open_nothing_while_the_pages_are_served() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = web_setup("");
    let server = s.hosts.server_v4[0];
    let client = s.hosts.clients[0].v4;
    // The knocking host itself probes sshd while it knocks out of order.
    let probe = s.probe(0, server, 22);

    // The ICMP knock first, then the two passing ones backwards: 80 is step 1.
    assert!(!ping(&s, 0, server, 64), "a knock is dropped, in order or not");
    curl(&s, 0, server, 443);
    curl(&s, 0, server, 80);
    // Then the ICMP knock before 443, which resets: 443 and the ICMP knock after it
    // (which would complete the sequence if the wrong knock were ignored) are no
    // steps any more.
    assert!(!ping(&s, 0, server, 64));
    curl(&s, 0, server, 443);
    assert!(!ping(&s, 0, server, 64));
    probe.assert_never_answered("the host knocking out of order: nothing opened");
    let reset = s.wait_event("reset", client);
    assert_eq!(reset["reason"], "wrong", "the early ICMP knock: {reset}");
    assert_eq!(reset["port"], "64/icmp", "{reset}");
    let events = s.events();
    assert!(events.iter().all(|e| e["event"] != "open"), "no open: {events:?}");

    // In order, the same knocks open.
    curl(&s, 0, server, 80);
    curl(&s, 0, server, 443);
    assert!(!ping(&s, 0, server, 64));
    s.wait_event("open", client);
    assert!(s.reachable(0, server), "in order they open");
}

#[test]
fn nc_and_ping_over_ipv6_open_ssh_and_a_passing_echo_knock_is_answered() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // A second sequence knocked by pings alone: 100 bytes, which passes (ping gets its
    // reply), then the web sequence's 64, which is dropped.
    let s = web_setup(
        "\n[[sequence]]\nname = \"echo\"\nknocks = [\"100/icmp:pass\", \"64/icmp\"]\nprotect = [\"22/tcp\"]\n",
    );
    let (server, client) = (s.hosts.server_v6[0], s.hosts.clients[0].v6);
    let target = server.to_string();
    assert!(ping(&s, 0, server, 56), "an ordinary ping -6 gets its reply");
    closed(&s, 0, server, "closed over IPv6 before the knocks");

    // nc as the passing TCP knocks: a connection on 80, an HTTP request on 443.
    let (ok, out) = s
        .hosts
        .run_in(s.client(0), &["nc", "-6", "-z", "-w", "5", &target, "80"]);
    assert!(ok, "nc -z connects to the web server on 80: {out}");
    let request = format!("printf 'GET /door.txt HTTP/1.0\\r\\n\\r\\n' | nc -6 -N -w 5 {target} 443");
    let (ok, out) = s.hosts.run_in(s.client(0), &["sh", "-c", &request]);
    assert!(
        ok && out.starts_with("HTTP/1.0 200 ") && out.ends_with(&format!("\r\n\r\n{BODY}")),
        "nc's request on 443 is served: {out:?}"
    );
    assert!(!ping(&s, 0, server, 64), "the ICMP knock over IPv6 is dropped");
    let open = s.wait_event("open", client);
    assert_eq!(open["sequence"], "web", "{open}");
    assert!(s.reachable(0, server), "sshd open over IPv6");
    closed(
        &s,
        0,
        s.hosts.server_v4[0],
        "the same host's IPv4 address did not knock",
    );
    assert_eq!(knocks(&s, client, "web"), the_web_knocks(), "{:?}", s.events());

    // The passing echo knock: answered, and a step of "echo".
    let (server, client) = (s.hosts.server_v4[1], s.hosts.clients[1].v4);
    assert!(ping(&s, 1, server, 100), "a passing ICMP knock gets its reply");
    s.wait_event("knock", client);
    assert_eq!(
        knocks(&s, client, "echo"),
        [(1, "100/icmp".to_owned())],
        "{:?}",
        s.events()
    );
    closed(&s, 1, server, "one step opens nothing");
    assert!(!ping(&s, 1, server, 64));
    let open = s.wait_event("open", client);
    assert_eq!(open["sequence"], "echo", "{open}");
    assert!(s.reachable(1, server), "open after the two pings");
}

#[test]
fn xknock_knock_sends_the_icmp_knock_from_a_ping_socket_or_a_raw_one() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const SEQUENCE: [&str; 3] = ["80/tcp:pass", "443/tcp:pass", "64/icmp"];
    let s = web_setup("");
    let bin = xknock_bin();
    let bin = bin.to_str().expect("utf-8");
    let knock = |i: usize, addr: IpAddr, nobody: bool, knocks: &[&str]| {
        let target = addr.to_string();
        let mut args = vec![];
        if nobody {
            args.extend([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ]);
        }
        args.extend([bin, "knock", &target]);
        args.extend_from_slice(knocks);
        s.hosts.run_in(s.client(i), &args)
    };

    // Client 0 lets every group open ping sockets; nobody knocks, without privileges,
    // so the echo requests come from ping sockets.
    let (ok, out) = s.hosts.run_in(
        s.client(0),
        &["sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647"],
    );
    assert!(ok, "{out}");
    for server in [s.hosts.server_v4[0], s.hosts.server_v6[0]] {
        closed(&s, 0, server, "closed before the knock");
        let (ok, out) = knock(0, server, true, &SEQUENCE);
        assert!(ok, "xknock knock as nobody, from a ping socket: {out}");
        let client = if server.is_ipv4() {
            s.hosts.clients[0].v4
        } else {
            s.hosts.clients[0].v6
        };
        s.wait_event("open", client);
        assert!(
            s.reachable(0, server),
            "open after xknock knock from a ping socket"
        );
        assert_eq!(knocks(&s, client, "web"), the_web_knocks(), "{:?}", s.events());
    }

    // Client 1 keeps a namespace's default range, which allows no group: nobody
    // cannot knock on ICMP, and root sends from raw sockets.
    let (_, range) = s
        .hosts
        .run_in(s.client(1), &["sysctl", "-n", "net.ipv4.ping_group_range"]);
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "the default range"
    );
    let (ok, out) = knock(1, s.hosts.server_v4[1], true, &["64/icmp"]);
    assert!(
        !ok && out.contains("cannot send the ICMP knock 64/icmp") && out.contains("ping_group_range"),
        "nobody has neither socket: {out}"
    );
    for server in [s.hosts.server_v4[1], s.hosts.server_v6[1]] {
        closed(&s, 1, server, "closed before the knock");
        let (ok, out) = knock(1, server, false, &SEQUENCE);
        assert!(ok, "xknock knock as root, from a raw socket: {out}");
        let client = if server.is_ipv4() {
            s.hosts.clients[1].v4
        } else {
            s.hosts.clients[1].v6
        };
        s.wait_event("open", client);
        assert!(
            s.reachable(1, server),
            "open after xknock knock from a raw socket"
        );
        assert_eq!(knocks(&s, client, "web"), the_web_knocks(), "{:?}", s.events());
    }
}
