//! Flood resilience: how many legitimate knocks still open while a flood of first
//! knocks (7000/tcp) from the generator's 130,816 source addresses in turn runs at the
//! highest rate the generator reaches, for xknock and for each alternative. The client
//! is the real `xknock knock`, run in the generator's namespace on the generator's CPU.

use std::{cell::RefCell, fmt::Write as _, net::IpAddr, time::Duration};

use knock_common::Counter;
use xknock_tests::{frame::Frame, harness::Harness, sh};

use crate::{
    Csv,
    rig::{Flood, GENERATOR_CPU, Knockd, Netfilter, Pair, send_probes},
    setups::{netfilter_pair, passing_pair, xknock_harness, xknock_harness_large, xknock_pair_with},
};

/// Attempts per setup: enough to tell 99% from 100%.
pub const ATTEMPTS: usize = 100;

/// A setup's name, and how many attempts opened with the flood rate it saw (Mpps).
pub type Row = (String, (usize, f64));

const SERVER: &str = "198.18.100.1";
const CLIENT: &str = "198.18.100.2";

/// How the benchmark watches one filter.
struct Watch<'a> {
    /// Packets the filter has looked at so far.
    seen: &'a dyn Fn() -> u64,
    /// Whether the client is authorized now.
    opened: &'a dyn Fn() -> bool,
    /// Forgets the client: its authorization and any progress (the flood's state
    /// stays, as it would).
    forget: &'a dyn Fn(),
}

/// The flood's frame: the first knock, to the receiver's MAC (so that netfilter and
/// knockd see it too); the generator gives every copy a new source.
fn first_knock(pair: &Pair) -> Vec<u8> {
    let mut frame = Frame::syn(CLIENT, 7000)
        .dst(SERVER.parse().expect("addr"))
        .build();
    frame[..6].copy_from_slice(&pair.rx_mac());
    frame
}

/// One run of the real client: the sequence with 20 ms between knocks.
fn knock(pair: &Pair, copies: u32) {
    let bin = xknock_tests::xknock_bin();
    let (cpu, copies) = (GENERATOR_CPU.to_string(), copies.to_string());
    let ns = ["taskset", "-c", &cpu, "ip", "netns", "exec", &pair.gen_ns];
    let bin = bin.to_str().expect("utf-8");
    let args = [
        bin, "knock", SERVER, "7000", "8000/udp", "9000", "--delay", "20ms", "--copies", &copies,
    ];
    sh(&[&ns[..], &args[..]].concat());
    // Let the last knock land before looking.
    std::thread::sleep(Duration::from_millis(50));
}

/// ATTEMPTS knocks during a flood whose sources send `per_source` knocks each;
/// returns how many opened and the flood rate the filter saw.
fn attempts(pair: &Pair, copies: u32, per_source: u32, watch: &Watch) -> (usize, f64) {
    // Without a flood the setup must work, or its numbers would mean nothing.
    knock(pair, copies);
    assert!(
        (watch.opened)(),
        "a knock without any flood did not open: the setup is broken"
    );
    (watch.forget)();
    let flood = Flood::start(pair, first_knock(pair), per_source);
    std::thread::sleep(Duration::from_millis(300));
    let (seen, started) = ((watch.seen)(), std::time::Instant::now());
    let mut ok = 0;
    for _ in 0..ATTEMPTS {
        knock(pair, copies);
        if (watch.opened)() {
            ok += 1;
        }
        (watch.forget)();
    }
    let rate = ((watch.seen)() - seen) as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(flood);
    (ok, rate)
}

/// What xknock's program sees of a probe to an unrelated port during the flood: the
/// benchmark is only fair if the link delivers the client's packets.
fn link_check(pair: &Pair, h: &Harness) -> u64 {
    let flood = Flood::start(pair, first_knock(pair), 1);
    std::thread::sleep(Duration::from_millis(300));
    let before = h.state.counter(Counter::PassOther).expect("counter");
    send_probes(pair, format!("{SERVER}:5555").parse().expect("addr"), 1000);
    std::thread::sleep(Duration::from_millis(50));
    drop(flood);
    // The counter also counts the client's ARP.
    (h.state.counter(Counter::PassOther).expect("counter") - before).min(1000)
}

/// xknock's rows: on `h`, with each (name, the client's copies per knock, the flood's
/// knocks per source).
fn xknock_rows(rows: &mut Vec<Row>, h: Harness, runs: &[(&str, u32, u32)]) {
    let (pair, h) = xknock_pair_with(h);
    let client: IpAddr = CLIENT.parse().expect("addr");
    let h = RefCell::new(h);
    let watch = Watch {
        seen: &|| pair.received(),
        opened: &|| h.borrow().authorized(CLIENT, 0),
        forget: &|| {
            let mut h = h.borrow_mut();
            let _ = h.state.revoke(client, None);
            // Absent (no partial progress) is fine.
            let _ = h.state.progress.remove(&xknock::net::source_key(client, 0));
        },
    };
    for (name, copies, per_source) in runs {
        rows.push(((*name).into(), attempts(&pair, *copies, *per_source, &watch)));
    }
}

pub fn resilience(md: &mut String, csv: &mut Csv) -> Vec<Row> {
    {
        let (pair, h) = xknock_pair_with(xknock_harness());
        let delivered = link_check(&pair, &h);
        let _ = writeln!(
            md,
            "\nDuring the knock flood the link delivered {delivered} of 1000 probe datagrams to the filter."
        );
        assert!(
            delivered >= 990,
            "the flood made the link drop {} of 1000 probes: the rig, not the filters, would decide",
            1000 - delivered.min(1000)
        );
    }
    let _ = writeln!(
        md,
        "\n| legitimate knocks during a knock flood | succeeded | flood the filter saw, Mpps |\n|---|---:|---:|"
    );
    let mut rows: Vec<Row> = vec![];
    // Default [limits]: 65,536 sources in progress, half the flood's sources.
    xknock_rows(
        &mut rows,
        xknock_harness(),
        &[
            ("xknock (XDP)", 2, 1),
            ("xknock (XDP), one copy per knock", 1, 1),
            ("xknock (XDP), the flood knocks twice per source", 2, 2),
        ],
    );
    xknock_rows(
        &mut rows,
        xknock_harness_large(),
        &[(
            "xknock (XDP), in_progress > the flood's sources, one copy, flood twice per source",
            1,
            2,
        )],
    );
    // The alternatives' clients send each knock once (knockd's `knock` does).
    for nf in [Netfilter::IptablesRecent, Netfilter::NftablesSets] {
        let (pair, _pass) = netfilter_pair(nf);
        let watch = Watch {
            seen: &|| nf.packets(&pair),
            opened: &|| nf.authorized(&pair, CLIENT),
            forget: &|| nf.forget(&pair, CLIENT),
        };
        rows.push((nf.name().into(), attempts(&pair, 1, 1, &watch)));
    }
    {
        let (pair, _pass) = passing_pair();
        let knockd = Knockd::start(&pair);
        // knockd filters nothing itself: what reached the host is what its capture saw.
        let watch = Watch {
            seen: &|| pair.received(),
            opened: &|| knockd.authorized(&pair, CLIENT),
            forget: &|| knockd.forget(&pair, CLIENT),
        };
        rows.push((
            "knockd (libpcap + iptables)".into(),
            attempts(&pair, 1, 1, &watch),
        ));
    }
    for (name, (ok, rate)) in &rows {
        let _ = writeln!(md, "| {name} | {ok}/{ATTEMPTS} | {rate:.2} |");
        csv.row("resilience", name, None, "succeeded", *ok as f64);
        csv.row("resilience", name, None, "attempts", ATTEMPTS as f64);
        csv.row("resilience", name, None, "flood_mpps", *rate);
    }
    eprintln!("flood resilience: done");
    rows
}
