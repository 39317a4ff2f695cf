//! In-kernel cost per packet through `BPF_PROG_TEST_RUN` with `repeat`, for every
//! path, next to an empty XDP program, and kernel memory per tracked source.

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use aya::programs::Xdp;
use knock_common::{Authorization, Progress, map_names};
use xknock_tests::{
    frame::{ACK, Frame},
    harness::{Harness, time_program},
};

use crate::{
    Csv,
    setups::{empty_program, load_empty_program, xknock_harness_large},
};

const REPEAT: u32 = 200_000;
/// Rounds per measurement, xknock and the empty program interleaved; the fastest round
/// of each counts (the least disturbed by whatever else the machine does).
const ROUNDS: usize = 15;
pub const SOURCES: [u32; 3] = [1_000, 65_536, 1_048_576];

/// The frame of each path, from a source prepared for it.
fn paths() -> Vec<(&'static str, Frame)> {
    vec![
        ("unrelated TCP SYN", Frame::syn("198.18.1.1", 80)),
        ("unrelated TCP ACK", Frame::syn("198.18.1.1", 80).flags(ACK)),
        ("unrelated UDP", Frame::udp("198.18.1.1", 53)),
        ("stray knock (no progress)", Frame::syn("198.18.1.2", 9000)),
        ("knock, repeat of the step taken", Frame::udp("198.18.1.3", 8000)),
        ("knock completing a sequence", Frame::udp("198.18.1.4", 6000)),
        ("protected port, dropped", Frame::syn("198.18.1.5", 22)),
        ("protected port, authorized SYN", Frame::syn("198.18.1.6", 22)),
        (
            "established connection",
            Frame::syn("198.18.1.6", 22).sport(40001).flags(ACK),
        ),
        ("echo request, not a knock", Frame::echo("198.18.1.7", 56)),
        ("ICMP knock (no progress)", Frame::echo("198.18.1.7", 64)),
        (
            "passing knock, repeat of the step taken",
            Frame::syn("198.18.1.8", 443),
        ),
        (
            "ACK to a passing knock port",
            Frame::syn("198.18.1.8", 443).flags(ACK),
        ),
    ]
}

/// Fills the progress and authorization maps with `n` other sources each, and sets up
/// the sources the paths need.
fn prepare(h: &mut Harness, n: u32) {
    let now = h.state.now_ns().expect("clock");
    for i in 0..n {
        let addr = std::net::Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 | u128::from(i));
        let key = xknock::net::source_key(addr.into(), 0);
        let progress = Progress {
            first_ns: now,
            last_ns: now,
            step: 1,
            _pad: [0; 7],
        };
        h.state
            .progress
            .insert(&key, &progress, 0)
            .expect("prefill progress");
        let auth = Authorization::new(now, now + 3_600_000_000_000, knock_common::Origin::Allow);
        h.state.authorize(&key, &auth).expect("prefill authorizations");
    }
    h.knock(&[Frame::syn("198.18.1.3", 7000)]);
    // A passing knock passes; its repeats are the path measured.
    h.run(&Frame::syn("198.18.1.8", 443).build());
    h.state
        .allow("198.18.1.6".parse().expect("addr"), 0, Duration::from_secs(3600))
        .expect("allow");
    h.run(&Frame::syn("198.18.1.6", 22).sport(40001).build());
}

/// The fastest of ROUNDS interleaved rounds of xknock and of the empty program, in ns.
fn measure(h: &Harness, pass: &Xdp, bytes: &[u8]) -> (f64, f64) {
    let (mut ours, mut base) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        ours = ours.min(h.time(bytes, REPEAT));
        base = base.min(time_program(pass, bytes, REPEAT));
    }
    (ours.as_secs_f64() * 1e9, base.as_secs_f64() * 1e9)
}

/// bytes_memlock and max_entries of a pinned map, from bpftool.
fn map_memory(pin_dir: &Path, map: &str) -> (f64, f64) {
    let out = Command::new("bpftool")
        .args(["--json", "map", "show", "pinned"])
        .arg(pin_dir.join(map))
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let memlock = v["bytes_memlock"].as_f64().expect("bytes_memlock");
    (memlock, v["max_entries"].as_f64().expect("max_entries"))
}

fn bytes_per_entry(pin_dir: &Path, map: &str) -> f64 {
    let (memlock, entries) = map_memory(pin_dir, map);
    memlock / entries
}

/// In-kernel cost per path with each number of sources tracked, and memory per
/// source; returns (path, sources, ns over empty) for the chart.
pub fn kernel(md: &mut String, csv: &mut Csv, sources: &[u32]) -> Vec<(&'static str, u32, f64)> {
    let mut empty = load_empty_program();
    let pass: &Xdp = empty_program(&mut empty);

    md.push_str(
        "| path | sources tracked | xknock ns | empty ns | ns over empty | x empty |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut over_by_path = vec![];
    for &n in sources {
        let mut h = xknock_harness_large();
        prepare(&mut h, n);
        for (name, frame) in paths() {
            let bytes = frame.build();
            let (ours, base) = measure(&h, pass, &bytes);
            let (over, ratio) = (ours - base, ours / base);
            let _ = writeln!(
                md,
                "| {name} | {n} | {ours:.1} | {base:.1} | {over:.1} | {ratio:.2} |"
            );
            csv.row("kernel", name, Some(n), "xknock_ns", ours);
            csv.row("kernel", name, Some(n), "empty_ns", base);
            csv.row("kernel", name, Some(n), "x_empty", ratio);
            over_by_path.push((name, n, over));
        }
        if Some(&n) == sources.last() {
            let _ = writeln!(md, "\n| map | kernel bytes per entry |\n|---|---:|");
            for map in [
                map_names::PROGRESS,
                map_names::AUTHORIZED,
                map_names::FLOWS,
                map_names::BANS,
            ] {
                let b = bytes_per_entry(&h.pin_dir(), map);
                let _ = writeln!(md, "| {map} | {b:.0} |");
                csv.row("memory", map, None, "bytes_per_entry", b);
            }
            // The hint's slots are sized by the authorizations the map can hold.
            let (hint, _) = map_memory(&h.pin_dir(), map_names::AUTH_HINT);
            let (_, authorized) = map_memory(&h.pin_dir(), map_names::AUTHORIZED);
            let b = hint / authorized;
            let _ = writeln!(md, "| {} (per authorization) | {b:.0} |", map_names::AUTH_HINT);
            csv.row("memory", map_names::AUTH_HINT, None, "bytes_per_authorization", b);
        }
        eprintln!("measured with {n} sources tracked");
    }
    let over = |path: &str, n: u32| {
        over_by_path
            .iter()
            .find(|(p, m, _)| *p == path && *m == n)
            .map_or(f64::NAN, |(_, _, o)| *o)
    };
    let (least, most) = (sources[0], sources[sources.len() - 1]);
    let knock = |n| over("knock, repeat of the step taken", n);
    let _ = writeln!(
        md,
        "\nTargets (issue 4), with {least} sources: unrelated {:.1} ns over empty (≤ 10), protected drop {:.1} (≤ 40), \
         knock {:.1} (≤ 150); knock at {most} / {least}: {:.2} (≤ 2).",
        over("unrelated TCP SYN", least),
        over("protected port, dropped", least),
        knock(least),
        knock(most).max(1.0) / knock(least).max(1.0),
    );
    over_by_path
}
