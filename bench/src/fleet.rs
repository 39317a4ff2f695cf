//! The fleet: how long after a completed knock (and after an SPA request) on host A
//! host B admits the client, over many trials, and how many authorizations a second
//! the fleet carries from A to B. The test rig's hosts (xknock_tests::fleet): a
//! three-member etcd cluster, two `xknock run`s with `[fleet]`, and a client whose
//! namespace may send from any address of a /18, so that every trial is a new source.
//!
//! B "admits" a source when its kernel's authorization map holds it: polled from
//! here every 100 µs for the trials; for the sustained rate, B's `open` events
//! (stamped to the millisecond) against the time each knock was sent.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use socket2::{Domain, Socket, Type};
use xknock::{
    client::spa::{request, seal},
    kernel::maps::State,
    net::source_key,
    spa::ClientKey,
};
use xknock_tests::{
    fleet::{A, B, Fleet, Options},
    netns::in_netns,
    sh,
};

use crate::Csv;

/// Trials of each kind.
const TRIALS: u32 = 100;
/// The sustained part: this many authorizations a second, for this long.
const RATE: u32 = 1_000;
const SUSTAIN: Duration = Duration::from_secs(3);
const SPA_PORT: u16 = 62201;
/// The client's sources: 198.19.64.0/18, routed to it by A and B.
const SOURCES: &str = "198.19.64.0/18";
const FIRST_SOURCE: u32 = u32::from_be_bytes([198, 19, 64, 1]);
/// How long a trial waits for B at most.
const TRIAL_WAIT: Duration = Duration::from_secs(2);

/// One table row: what, p50 and p99 (ms), and a rate (authorizations/s, the
/// sustained part only).
pub type Row = (String, f64, f64, Option<f64>);

pub fn fleet(md: &mut String, csv: &mut Csv) -> Vec<Row> {
    let keys = tempdir();
    let (stanza, key_file) = xknock_tests::spa_client(&keys, "bench");
    let extra = format!("[spa]\nport = {SPA_PORT}\nreplay_file = \"@DIR@/replay\"\n{stanza}");
    let rig = Fleet::new(&Options {
        fleet: true,
        extra,
        clients: 1,
    });
    let client = rig.clients[0].ns.name.clone();
    sh(&["ip", "-n", &client, "route", "add", "local", SOURCES, "dev", "lo"]);
    for s in [A, B] {
        let server = &rig.servers[s];
        sh(&[
            "ip",
            "-n",
            &server.ns.name,
            "route",
            "add",
            SOURCES,
            "dev",
            &server.ifaces[0],
        ]);
    }
    let a = rig.servers[A].addr;
    let b_pins = rig.servers[B].pin_dir();
    let key = ClientKey::load(&key_file).expect("the bench's SPA key");

    let mut rows = vec![];
    let mut next = FIRST_SOURCE;
    for (what, spa) in [
        ("knock on A, admitted on B", false),
        ("SPA request to A, admitted on B", true),
    ] {
        let (first, key, pins, ns) = (next, key.clone(), b_pins.clone(), client.clone());
        next += TRIALS;
        let mut ms = in_netns(&ns, move || {
            let b = State::from_pins(Path::new(&pins)).expect("B's pinned maps");
            let slot = b.sequence_index("ssh").expect("B has ssh");
            (first..first + TRIALS)
                .filter_map(|n| {
                    let src = IpAddr::V4(Ipv4Addr::from(n));
                    let sent = if spa {
                        send_spa(&key, src, a)
                    } else {
                        knock(src, a)
                    };
                    let admitted = wait_admitted(&b, &source_key(src, slot), sent);
                    std::thread::sleep(Duration::from_millis(10));
                    admitted.map(|d| d.as_secs_f64() * 1e3)
                })
                .collect::<Vec<f64>>()
        });
        let missed = TRIALS as usize - ms.len();
        assert!(missed == 0, "{what}: {missed} of {TRIALS} trials never reached B");
        ms.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&ms, 50), percentile(&ms, 99));
        csv.row("fleet", what, None, "p50_ms", p50);
        csv.row("fleet", what, None, "p99_ms", p99);
        rows.push((what.to_owned(), p50, p99, None));
    }

    let (first, ns) = (next, client.clone());
    let seen_before = rig.events(B).len();
    let sent: Vec<(IpAddr, SystemTime)> = in_netns(&ns, move || sustain(first, a));
    let (ms, rate) = sustained(&rig, seen_before, &sent);
    let what = format!("{RATE} knocks/s on A for {}s, admitted on B", SUSTAIN.as_secs());
    csv.row("fleet", &what, None, "p50_ms", ms.0);
    csv.row("fleet", &what, None, "p99_ms", ms.1);
    csv.row("fleet", &what, None, "per_second", rate);
    rows.push((what, ms.0, ms.1, Some(rate)));

    let _ = writeln!(
        md,
        "\n## Fleet: from host A to host B through etcd\n\nA three-member etcd cluster \
         (Debian's etcd 3.4, data on tmpfs) and two `xknock run`s, all in namespaces of this \
         machine; each trial a new source. {TRIALS} trials of each kind, then a sustained \
         rate. B admits when its kernel's authorization map holds the source.\n\n\
         | what | p50 | p99 | sustained |\n|---|---|---|---|"
    );
    for (what, p50, p99, rate) in &rows {
        let rate = rate.map_or_else(|| "—".to_owned(), |r| format!("{r:.0}/s"));
        let _ = writeln!(md, "| {what} | {p50:.1} ms | {p99:.1} ms | {rate} |");
    }
    let _ = std::fs::remove_dir_all(&keys);
    rows
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(xknock_tests::unique("xknock-bench-fleet-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The rig's knocks (7000/tcp, 8000/udp, 9000/tcp) from `src` to `dst`; returns
/// when the last one left.
fn knock(src: IpAddr, dst: IpAddr) -> Instant {
    syn(src, dst, 7000);
    let udp = UdpSocket::bind(SocketAddr::new(src, 0)).expect("a UDP socket");
    udp.send_to(b"", (dst, 8000)).expect("send the UDP knock");
    let sent = Instant::now();
    syn(src, dst, 9000);
    sent
}

/// One SYN: a non-blocking connect, dropped at once (a socket in SYN-SENT sends
/// nothing when closed).
fn syn(src: IpAddr, dst: IpAddr, port: u16) {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
    sock.bind(&SocketAddr::new(src, 0).into())
        .expect("bind the source");
    sock.set_nonblocking(true).expect("non-blocking");
    let _ = sock.connect(&SocketAddr::new(dst, port).into());
}

fn send_spa(key: &ClientKey, src: IpAddr, dst: IpAddr) -> Instant {
    let req = request(vec![], None, None, SystemTime::now()).expect("a request");
    let datagram = seal(key, &req).expect("sealed");
    let udp = UdpSocket::bind(SocketAddr::new(src, 0)).expect("a UDP socket");
    let sent = Instant::now();
    udp.send_to(&datagram, (dst, SPA_PORT)).expect("send the request");
    sent
}

fn wait_admitted(b: &State, key: &knock_common::SourceKey, sent: Instant) -> Option<Duration> {
    while sent.elapsed() < TRIAL_WAIT {
        if b.authorized.get(key, 0).is_ok() {
            return Some(sent.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

/// Knocks from a new source every 1/RATE s for SUSTAIN; returns each source with
/// the wall time its last knock left.
fn sustain(first: u32, dst: IpAddr) -> Vec<(IpAddr, SystemTime)> {
    let n = RATE * SUSTAIN.as_secs() as u32;
    let start = Instant::now();
    let every = Duration::from_secs(1) / RATE;
    (0..n)
        .map(|i| {
            if let Some(wait) = (every * i).checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let src = IpAddr::V4(Ipv4Addr::from(first + i));
            let sent = knock(src, dst);
            (src, SystemTime::now() - sent.elapsed())
        })
        .collect()
}

/// B's opens for `sent` (waiting 10 s at most for the last): the latencies' p50
/// and p99 (ms), and the rate B admitted them at.
fn sustained(rig: &Fleet, since: usize, sent: &[(IpAddr, SystemTime)]) -> ((f64, f64), f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut opened: HashMap<IpAddr, SystemTime> = HashMap::new();
    while opened.len() < sent.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        opened = rig.events(B)[since..]
            .iter()
            .filter(|e| e["event"] == "open" && e["reason"] == "fleet")
            .filter_map(|e| {
                let src = e["source"].as_str()?.parse().ok()?;
                let ts = humantime::parse_rfc3339(e["ts"].as_str()?).ok()?;
                Some((src, ts))
            })
            .collect();
    }
    let missed = sent.len() - opened.len();
    assert!(
        missed == 0,
        "sustained: {missed} of {} never reached B",
        sent.len()
    );
    let mut ms: Vec<f64> = sent
        .iter()
        .map(|(src, at)| {
            let open = opened[src];
            open.duration_since(*at).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let first = sent.iter().map(|(_, t)| *t).min().expect("sent some");
    let last = opened.values().max().copied().expect("opened some");
    let span = last.duration_since(first).unwrap_or_default().as_secs_f64();
    (
        (percentile(&ms, 50), percentile(&ms, 99)),
        sent.len() as f64 / span.max(1e-3),
    )
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted.get(i).copied().unwrap_or(f64::NAN)
}
