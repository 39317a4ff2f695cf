//! xknock's userspace: loading and attaching the XDP program, the configuration, the
//! maps it shares with the kernel, its events, the knock client, Single Packet
//! Authorization (`spa`), the commands run on open and close (`commands`), and the
//! metrics `run` serves (`metrics`).

pub mod addr;
pub mod attach;
pub mod bpf;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod events;
pub mod fault;
pub mod hint;
pub mod ifaces;
pub mod knockd;
pub mod maps;
pub mod metrics;
pub mod onetime;
pub mod pins;
pub mod reconcile;
pub mod run;
pub mod spa;
pub mod status;
pub mod timed;

/// The XDP program, built by build.rs from the knock-ebpf crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-ebpf"));

/// The XDP program's name in the object.
pub const PROGRAM_NAME: &str = "xknock";
