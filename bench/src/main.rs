//! `cargo xtask bench`: xknock's in-kernel cost per packet through
//! `BPF_PROG_TEST_RUN` with `repeat`, for every path, with 1k, 64k and 1M sources
//! tracked, next to an empty XDP program measured in the same run; the kernel memory
//! each tracked source costs; live throughput on a veth pair; a SYN flood side by side
//! with iptables `recent`, nftables and knockd; and legitimate knocks during a knock
//! flood, for xknock and the same three; and the live cost under random-source floods
//! with the real `xknock run` consuming events; and the fleet's latency from host A
//! to host B through etcd. Writes bench/results/bench.{md,csv} and
//! one SVG chart per part but the fleet's. Ratios only, but for the fleet's
//! latencies, whose targets are in milliseconds: absolute numbers depend on the machine.
//!
//! The empty program and the traffic generator are this crate's own XDP programs
//! (bench/ebpf), built by build.rs: the shipped `xknock` binary carries neither.

mod chart;
mod fleet;
mod flood;
mod kernel;
mod live;
mod resilience;
mod rig;
mod setups;

use std::{fmt::Write as _, fs, path::Path};

use chart::Bars;
use clap::{Parser, ValueEnum};
use xknock_tests::require_root;

/// An XDP program that passes everything: the baseline the benchmark compares against
/// (bench/ebpf/src/bin/xdp_pass.rs).
pub static PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));

/// The traffic generator (bench/ebpf/src/bin/xdp_gen.rs).
pub static GEN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-gen"));

#[derive(Parser)]
#[command(about = "Benchmark xknock against an empty XDP program, iptables, nftables and knockd")]
struct Args {
    /// Only the 1k-sources case of the in-kernel table (for trying changes).
    #[arg(long)]
    quick: bool,
    /// Parts to run (default: all). A partial run prints its tables but writes no
    /// files, so bench/results always holds one whole run.
    #[arg(value_enum)]
    parts: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// In-kernel cost per path (BPF_PROG_TEST_RUN) and memory per source.
    Kernel,
    /// Live throughput on a veth pair, xknock against the empty program.
    Live,
    /// A SYN flood side by side with iptables `recent`, nftables and knockd.
    SideBySide,
    /// Legitimate knocks during a knock flood, for xknock and the alternatives.
    Resilience,
    /// Live cost under random-source floods, with the real `xknock run` consuming events.
    Flood,
    /// The fleet: from a knock or SPA request on host A to host B admitting, through etcd.
    Fleet,
}

/// bench.csv: one measurement per row.
pub struct Csv(pub String);

impl Default for Csv {
    fn default() -> Self {
        Csv("part,case,sources,metric,value\n".into())
    }
}

impl Csv {
    pub fn row(&mut self, part: &str, case: &str, sources: Option<u32>, metric: &str, value: f64) {
        let sources = sources.map(|n| n.to_string()).unwrap_or_default();
        let _ = writeln!(self.0, "{part},{case},{sources},{metric},{value:.3}");
    }
}

fn main() {
    let args = Args::parse();
    require_root();
    let run = |part| args.parts.is_empty() || args.parts.contains(&part);
    let sources = if args.quick {
        &kernel::SOURCES[..1]
    } else {
        &kernel::SOURCES[..]
    };
    let (mut md, mut csv) = (String::new(), Csv::default());
    let over_by_path = if run(Part::Kernel) {
        kernel::kernel(&mut md, &mut csv, sources)
    } else {
        vec![]
    };
    let live_rows = if run(Part::Live) {
        live::live(&mut md, &mut csv)
    } else {
        vec![]
    };
    let flood_rows = if run(Part::SideBySide) {
        live::side_by_side(&mut md, &mut csv)
    } else {
        vec![]
    };
    let resilience_rows = if run(Part::Resilience) {
        resilience::resilience(&mut md, &mut csv)
    } else {
        vec![]
    };
    let flood_cost = if run(Part::Flood) {
        flood::flood_table(&mut md, &mut csv)
    } else {
        vec![]
    };
    if run(Part::Fleet) {
        fleet::fleet(&mut md, &mut csv);
    }
    print!("{md}");
    if !args.parts.is_empty() || args.quick {
        eprintln!("a partial run: bench/results left as it was");
        return;
    }
    let dir = &Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    fs::create_dir_all(dir).expect("bench/results");
    fs::write(dir.join("bench.md"), &md).expect("write bench.md");
    fs::write(dir.join("bench.csv"), &csv.0).expect("write bench.csv");
    charts(
        dir,
        &over_by_path,
        &live_rows,
        &flood_rows,
        &resilience_rows,
        &flood_cost,
    )
    .expect("draw the charts");
}

/// kernel.svg, live.svg, side-by-side.svg, resilience.svg and flood.svg under `dir`.
fn charts(
    dir: &Path,
    kernel: &[(&str, u32, f64)],
    live: &[live::LiveRow],
    flood: &[(String, (f64, f64))],
    resilience: &[resilience::Row],
    flood_cost: &[flood::Row],
) -> Result<(), chart::Error> {
    chart::kernel_cost(&dir.join("kernel.svg"), kernel)?;
    Bars {
        title: "Live throughput on a veth pair: packets per second that reached the receiver",
        y_desc: "Mpps",
        groups: live.iter().map(|r| r.0.to_owned()).collect(),
        series: vec![
            ("xknock".into(), live.iter().map(|r| r.1.0).collect()),
            ("empty XDP program".into(), live.iter().map(|r| r.2.0).collect()),
        ],
    }
    .draw(&dir.join("live.svg"))?;
    Bars {
        title: "SYN flood at the protected port: packets each filter processed per second",
        y_desc: "Mpps",
        groups: flood.iter().map(|r| r.0.clone()).collect(),
        series: vec![("filtered".into(), flood.iter().map(|r| r.1.0).collect())],
    }
    .draw(&dir.join("side-by-side.svg"))?;
    Bars {
        title: "Legitimate knocks that opened during a random-source knock flood",
        y_desc: "per cent of attempts",
        groups: resilience.iter().map(|r| r.0.clone()).collect(),
        series: vec![(
            "succeeded".into(),
            resilience
                .iter()
                .map(|r| 100.0 * r.1.0 as f64 / resilience::ATTEMPTS as f64)
                .collect(),
        )],
    }
    .draw(&dir.join("resilience.svg"))?;
    Bars {
        title: "Random-source floods with `xknock run` consuming events: XDP time per packet",
        y_desc: "x the empty program",
        groups: flood_cost.iter().map(|r| r.0.to_owned()).collect(),
        series: vec![("x empty program".into(), flood_cost.iter().map(|r| r.2).collect())],
    }
    .draw(&dir.join("flood.svg"))
}
