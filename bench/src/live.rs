//! Live throughput on a veth pair (xknock against the empty program) and a SYN flood
//! side by side with iptables `recent` and nftables.

use std::{fmt::Write as _, time::Duration};

use aya::programs::Xdp;

use xknock_tests::frame::{ACK, Frame};

use crate::{
    Csv,
    rig::{Generator, Knockd, Netfilter, Pair, receiver_cpu_ns},
    setups::{empty_program, netfilter_pair, passing_pair, xknock_pair},
};

pub const LIVE_FRAMES: u32 = 2_000_000;

/// One live measurement: `LIVE_FRAMES` of `frame` sent at the generator's full rate;
/// returns the packets per second `processed` counted (in millions) and the receiver's
/// CPU time per packet in ns.
fn flood(
    generator: &mut Generator,
    pair: &Pair,
    frame: &[u8],
    per_source: u32,
    processed: &dyn Fn(&Pair) -> u64,
) -> (f64, f64) {
    // A warm-up, then the measured run.
    generator.send(pair, frame, LIVE_FRAMES / 10, per_source);
    std::thread::sleep(Duration::from_millis(100));
    let (before, cpu_before) = (processed(pair), receiver_cpu_ns());
    let took = generator.send(pair, frame, LIVE_FRAMES, per_source);
    std::thread::sleep(Duration::from_millis(200));
    let n = (processed(pair) - before) as f64;
    (
        n / took.as_secs_f64() / 1e6,
        (receiver_cpu_ns() - cpu_before) / n.max(1.0),
    )
}

/// Rounds of each live measurement: side by side, the best (highest rate) counts;
/// xknock against the empty program, the median of the rounds' ratios.
const LIVE_ROUNDS: usize = 7;

/// The middle value (of an odd count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The measurement with the higher rate.
fn better(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    if b.0 > a.0 { b } else { a }
}

/// A live row: the traffic kind and, for xknock and the empty program, Mpps and
/// receiver CPU ns per packet.
pub type LiveRow = (&'static str, (f64, f64), (f64, f64));

/// The XDP program's own time per run over `run`, from the kernel's statistics.
fn xdp_ns_per_packet(prog: &Xdp, run: impl FnOnce() -> (f64, f64)) -> f64 {
    let before = prog.info().expect("program info");
    run();
    let after = prog.info().expect("program info");
    let ns = after.run_time().saturating_sub(before.run_time()).as_nanos() as f64;
    ns / after.run_count().saturating_sub(before.run_count()).max(1) as f64
}

/// Live throughput on a veth pair: packets per second that reached the receiver's XDP
/// program and receiver CPU per packet, xknock against the empty program (rounds
/// interleaved), per traffic kind. Frames are addressed to the receiver, so what
/// passes goes through its IP stack.
pub fn live(md: &mut String, csv: &mut Csv) -> Vec<LiveRow> {
    let to = |f: Frame| f.dst("198.18.100.1".parse().expect("addr"));
    let kinds = [
        (
            "legitimate mix (unrelated TCP)",
            to(Frame::syn("198.18.100.2", 80).flags(ACK)),
            0,
        ),
        (
            "SYN flood at the protected port",
            to(Frame::syn("198.18.100.2", 22)),
            0,
        ),
        (
            "first-knock flood from random sources",
            to(Frame::syn("198.18.100.2", 7000)),
            1,
        ),
        (
            "stray-knock flood from random sources",
            to(Frame::udp("198.18.100.2", 8000)),
            1,
        ),
        // A served port that is a passing knock: its connections' packets, and new
        // visitors, each of whom takes a progress entry.
        (
            "ACKs to a passing knock port",
            to(Frame::syn("198.18.100.2", 443).flags(ACK)),
            0,
        ),
        (
            "SYN flood at a passing knock port from random sources",
            to(Frame::syn("198.18.100.2", 443)),
            1,
        ),
        (
            "ICMP-knock flood from random sources",
            to(Frame::echo("198.18.100.2", 64)),
            1,
        ),
    ];
    let _ = writeln!(
        md,
        "\n| live traffic | xknock Mpps | empty Mpps | ratio (rounds' range) | xknock CPU ns/packet | empty CPU ns/packet \
         | xknock XDP ns/packet | empty XDP ns/packet |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut generator = Generator::new();
    let mut rows = vec![];
    for (name, frame, per_source) in kinds {
        let received = |p: &Pair| p.received();
        let (base_pair, mut pass) = passing_pair();
        let (our_pair, mut h) = xknock_pair();
        let mut run = |pair: &Pair| {
            let mut bytes = frame.build();
            bytes[..6].copy_from_slice(&pair.rx_mac());
            flood(&mut generator, pair, &bytes, per_source, &received)
        };
        // Interleaved rounds, so that a slow spell of the shared CPUs hits both sides
        // of a ratio, each side going first in turn; the medians are reported.
        let rounds: Vec<_> = (0..LIVE_ROUNDS)
            .map(|i| {
                if i % 2 == 0 {
                    let base = run(&base_pair);
                    (base, run(&our_pair))
                } else {
                    let ours = run(&our_pair);
                    (run(&base_pair), ours)
                }
            })
            .collect();
        let ratios: Vec<f64> = rounds.iter().map(|(b, o)| o.0 / b.0).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        let ratio = median(ratios);
        let base = (
            median(rounds.iter().map(|(b, _)| b.0).collect()),
            median(rounds.iter().map(|(b, _)| b.1).collect()),
        );
        let ours = (
            median(rounds.iter().map(|(_, o)| o.0).collect()),
            median(rounds.iter().map(|(_, o)| o.1).collect()),
        );
        // Then one more run of each with the kernel's run-time statistics on (they
        // cost both programs a clock read or two, so not during the rounds above).
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time statistics");
        let base_xdp = xdp_ns_per_packet(empty_program(&mut pass), || run(&base_pair));
        let our_xdp = xdp_ns_per_packet(h.program_mut(), || run(&our_pair));
        drop(stats);
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.2} | {ratio:.2} ({low:.2}-{high:.2}) | {:.0} | {:.0} | {our_xdp:.0} | {base_xdp:.0} |",
            ours.0, base.0, ours.1, base.1
        );
        csv.row("live", name, None, "xknock_xdp_ns_per_packet", our_xdp);
        csv.row("live", name, None, "empty_xdp_ns_per_packet", base_xdp);
        csv.row("live", name, None, "ratio", ratio);
        csv.row("live", name, None, "xknock_mpps", ours.0);
        csv.row("live", name, None, "empty_mpps", base.0);
        csv.row("live", name, None, "xknock_cpu_ns_per_packet", ours.1);
        csv.row("live", name, None, "empty_cpu_ns_per_packet", base.1);
        eprintln!("live: {name}");
        rows.push((name, ours, base));
    }
    rows
}

/// A SYN flood at the protected port from one source that never knocked: packets the
/// filter processed per second, and receiver CPU per packet; xknock against the
/// ArchWiki iptables `recent` recipe, an nftables set-based ruleset and knockd with
/// its iptables rules, on the same generator and veth pair.
pub fn side_by_side(md: &mut String, csv: &mut Csv) -> Vec<(String, (f64, f64))> {
    let _ = writeln!(
        md,
        "\n| SYN flood at the protected port | filtered Mpps | receiver CPU ns per packet |\n|---|---:|---:|"
    );
    let mut generator = Generator::new();
    let mut run = |pair: &Pair, processed: &dyn Fn(&Pair) -> u64| {
        let mut frame = Frame::syn("198.18.100.2", 22)
            .dst("198.18.100.1".parse().expect("addr"))
            .build();
        frame[..6].copy_from_slice(&pair.rx_mac());
        (0..LIVE_ROUNDS).fold((0.0, 0.0), |best, _| {
            better(best, flood(&mut generator, pair, &frame, 0, processed))
        })
    };
    let mut rows: Vec<(String, (f64, f64))> = vec![];
    {
        let (pair, _h) = xknock_pair();
        rows.push(("xknock (XDP)".into(), run(&pair, &|p: &Pair| p.received())));
    }
    for nf in [Netfilter::IptablesRecent, Netfilter::NftablesSets] {
        let (pair, _pass) = netfilter_pair(nf);
        rows.push((nf.name().into(), run(&pair, &|p: &Pair| nf.packets(p))));
    }
    {
        let (pair, _pass) = passing_pair();
        let knockd = Knockd::start(&pair);
        rows.push((
            "knockd (libpcap + iptables)".into(),
            run(&pair, &|p: &Pair| knockd.packets(p)),
        ));
    }
    for (name, (mpps, cpu)) in &rows {
        let _ = writeln!(md, "| {name} | {mpps:.2} | {cpu:.0} |");
        csv.row("side-by-side", name, None, "filtered_mpps", *mpps);
        csv.row("side-by-side", name, None, "cpu_ns_per_packet", *cpu);
    }
    if let (Some((_, (ours, ours_cpu))), Some((_, (nft, nft_cpu)))) = (rows.first(), rows.get(2)) {
        let _ = writeln!(
            md,
            "\nxknock drops {:.1}x the rate of the nftables ruleset (its rate is the generator's ceiling: \
             they share a CPU) and needs {:.1}x less CPU per packet (target ≥ 3).",
            ours / nft,
            nft_cpu / ours_cpu
        );
    }
    eprintln!("side by side: done");
    rows
}
