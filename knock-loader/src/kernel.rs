//! The kernel interface, in one place: the XDP object and loading it (`load`), pin
//! paths and the pinned state's layout and lock (`pins`), links and interfaces
//! (`ifaces`), typed access to the maps (`maps`, `reconcile` for a new config over
//! existing state, `hint` for the authorization hint), and the bpf(2) commands aya
//! lacks (`bpf`).

pub mod bpf;
pub mod hint;
pub mod ifaces;
pub mod load;
pub mod maps;
pub mod pins;
pub mod reconcile;

/// The XDP program, built by build.rs from the knock-ebpf crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-ebpf"));

/// The XDP program's name in the object.
pub const PROGRAM_NAME: &str = "xknock";
