//! The tests that need neither root nor the kernel, run by a plain `cargo test` as any
//! user: the configuration (`config`, and the parser under hostile input,
//! `config_fuzz`), `import-knockd` on real knockd configurations (`knockd`, with
//! ../fixtures), the pinned maps' layout version (`layout`), `scripts/install.sh` into
//! a staging directory (`install`), and a refused `run --metrics` address (`metrics`).
//! The tests that load XDP programs or make network namespaces are in the xknock-tests
//! package (tests/tests/kernel and tests/tests/hosts), run as root by scripts/test.sh.

mod config;
mod config_fuzz;
mod fwknopd;
mod install;
mod knockd;
mod layout;
mod metrics;

use std::path::PathBuf;

/// The `xknock` binary of this build (cargo builds it for the package's integration
/// tests).
pub fn xknock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xknock"))
}
