//! `run --metrics` end to end: scraped over HTTP from inside the server namespace,
//! the metrics follow a client's knocks, its authorization and its connection. (A
//! refused `--metrics` address needs no root: knock-loader/tests/unprivileged/metrics.rs.)

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use xknock_tests::{
    netns::in_netns,
    setup::{SERIAL, Setup},
};

/// `GET path` on the server namespace's 127.0.0.1:PORT: (status line, headers and
/// body as one text).
fn get(s: &Setup, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    in_netns(&s.hosts.server, move || {
        let mut stream = TcpStream::connect(("127.0.0.1", PORT)).expect("connect to the metrics port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    })
}

const PORT: u16 = 9464;

/// The samples of a scrape, by name with labels (`xknock_counter_total{name="drop_knock"}`).
fn scrape(s: &Setup) -> HashMap<String, f64> {
    let response = get(s, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{response}"
    );
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("NAME VALUE");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:?}"))
}

#[test]
fn metrics_follow_knocks_authorizations_and_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let port = PORT.to_string();
    let s = Setup::with_run_args("", &["--metrics", &port]);
    let (server, client) = (s.hosts.server_v4[0], s.hosts.clients[0].v4);

    let before = scrape(&s);
    assert_eq!(value(&before, "xknock_authorized"), 0.0);
    assert_eq!(value(&before, "xknock_in_progress"), 0.0);
    assert_eq!(value(&before, "xknock_counter_total{name=\"drop_knock\"}"), 0.0);
    assert_eq!(value(&before, "xknock_counter_total{name=\"events_lost\"}"), 0.0);
    assert_eq!(value(&before, "xknock_counter_total{name=\"spa_lost\"}"), 0.0);
    for (map, capacity) in [
        ("XK_PROGRESS", 65536.0),
        ("XK_AUTHORIZED", 16384.0),
        ("XK_FLOWS", 65536.0),
        ("XK_BANS", 65536.0),
    ] {
        assert_eq!(
            value(&before, &format!("xknock_map_capacity{{map=\"{map}\"}}")),
            capacity,
            "the default [limits]"
        );
    }
    assert_eq!(value(&before, "xknock_commands_total{result=\"dropped\"}"), 0.0);

    // Two knocks of three: one source in progress.
    s.xknock(s.client(0), &["knock", &server.to_string(), "7000", "8000/udp"]);
    let wait = || std::thread::sleep(Duration::from_millis(300));
    wait();
    let partway = scrape(&s);
    assert_eq!(value(&partway, "xknock_in_progress"), 1.0);
    assert_eq!(value(&partway, "xknock_map_entries{map=\"XK_PROGRESS\"}"), 1.0);
    assert_eq!(
        value(&partway, "xknock_counter_total{name=\"drop_knock\"}"),
        4.0,
        "two knocks, two copies each"
    );

    s.xknock(
        s.client(0),
        &["knock", &server.to_string(), "7000", "8000/udp", "9000"],
    );
    s.wait_event("open", client);
    assert!(s.reachable(0, server), "sshd after the knock");
    let after = scrape(&s);
    assert_eq!(value(&after, "xknock_authorized"), 1.0);
    assert_eq!(value(&after, "xknock_map_entries{map=\"XK_AUTHORIZED\"}"), 1.0);
    assert_eq!(value(&after, "xknock_counter_total{name=\"drop_knock\"}"), 10.0);
    assert!(value(&after, "xknock_counter_total{name=\"pass_authorized\"}") >= 1.0);

    let other = get(&s, "/elsewhere");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}
