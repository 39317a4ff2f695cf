//! Builds the benchmark's XDP programs (bench/ebpf: the empty program and the traffic
//! generator) with the pinned eBPF toolchain and puts the objects in OUT_DIR, where
//! `PASS_OBJECT` and `GEN_OBJECT` include them. As knock-loader/build.rs does for
//! xknock's own program.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let toolchain_file = "../rust-toolchain.toml";
    println!("cargo:rerun-if-changed={toolchain_file}");
    let text = std::fs::read_to_string(toolchain_file).context("cannot read rust-toolchain.toml")?;
    let parsed: toml::Table = text.parse().context("rust-toolchain.toml is not TOML")?;
    let channel = parsed
        .get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| anyhow!("rust-toolchain.toml has no toolchain.channel"))?;
    let package = aya_build::Package {
        name: "xknock-bench-ebpf",
        root_dir: "ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(channel))
}
