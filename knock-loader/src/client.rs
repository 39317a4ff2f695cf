//! The client side, for a user's machine: `xknock knock` and `xknock spa`. Needs no
//! privileges and nothing of the kernel side (no aya, no maps).

pub mod knock;
pub mod spa;

pub use knock::{Family, knock, resolve};
