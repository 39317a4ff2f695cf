//! xknock's userspace, in layers that depend only on the ones above them:
//!
//! - basic types: `clock` (the kernel's clock, durations), `net` (ports, protocols,
//!   addresses), `secret_file` (0600 files never overwritten), `fault` (fault
//!   injection in debug builds);
//! - protocols and formats, without I/O beyond their files: `spa` (the SPA wire
//!   format and keys), `timed` (time-based sequences), `onetime` (one-time sequence
//!   files), `config` (the TOML, validated whole), `knockd` (`import-knockd`),
//!   `fwknopd` (`import-fwknopd`), `fleet` (the fleet's records and decisions,
//!   without I/O: `daemon::fleet` talks to etcd);
//! - `client`: `xknock knock` and `xknock spa`, which need nothing of the kernel;
//! - `kernel`: everything that touches the XDP program and its maps (loading, pins,
//!   adoption, links and interfaces, typed map access);
//! - `status` (what `xknock status` and the metrics read from the maps), and
//!   `daemon` (`xknock run`: events, SPA verification, commands, metrics, the
//!   fleet);
//! - `cli`: the command line, one function per command.
//!
//! `kernel`, `status` and `daemon` need the `daemon` feature (the default); without
//! it the crate is the client alone, with neither aya nor tokio.

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod fault;
pub mod fleet;
pub mod fwknopd;
#[cfg(feature = "daemon")]
pub mod kernel;
pub mod knockd;
pub mod net;
pub mod onetime;
pub mod secret_file;
pub mod spa;
#[cfg(feature = "daemon")]
pub mod status;
pub mod timed;
