//! Builds the XDP program (knock-ebpf) with the pinned eBPF toolchain and puts the
//! object in OUT_DIR, where `kernel::EBPF_OBJECT` includes it (with the `daemon`
//! feature only).

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // The client alone (`--no-default-features`) has no kernel side to build.
    if std::env::var_os("CARGO_FEATURE_DAEMON").is_none() {
        return Ok(());
    }
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
        name: "knock-ebpf",
        root_dir: "../knock-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(channel))
}
