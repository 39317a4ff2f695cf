//! Types shared by the XDP program and userspace: map keys and values, the per-sequence
//! configuration and the events. Every type is `#[repr(C)]` with explicit padding, so
//! both sides agree byte for byte; the size assertions in `layout` catch any drift.
//!
//! By theme: `tables` (what the loader writes: sequences, port rules, settings),
//! `state` (what the kernel keeps per source), `events`, `counters`, `spa`, and
//! `layout` (map names, the layout version, sizes). Everything is re-exported here.
#![no_std]

/// A `#[repr(u8)]` enum and its `from_u8`, from one list of variants.
macro_rules! u8_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$doc:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[repr(u8)]
        pub enum $name {
            $($(#[$doc])* $variant = $value,)*
        }

        impl $name {
            pub fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($value => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

mod counters;
mod events;
mod layout;
mod spa;
mod state;
mod tables;

pub use counters::*;
pub use events::*;
pub use layout::*;
pub use spa::*;
pub use state::*;
pub use tables::*;

#[cfg(feature = "user")]
mod user {
    use super::{
        Authorization, Ban, Event, EventBudget, Flow, FlowKey, Meta, OneTimeId, PortProto, PortRule,
        Progress, SequenceConfig, Settings, SourceAddr, SourceKey, SpaBudget, SpaCap, SpaCheckKey, SpaKeyId,
        SpaRequest,
    };
    // SAFETY: all of these are #[repr(C)] plain data with no padding the compiler adds
    // (bytemuck's Pod derive checks that) and every bit pattern is valid.
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for PortProto {}
    unsafe impl aya::Pod for SequenceConfig {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for Progress {}
    unsafe impl aya::Pod for Authorization {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for SourceAddr {}
    unsafe impl aya::Pod for Ban {}
    unsafe impl aya::Pod for SpaKeyId {}
    unsafe impl aya::Pod for SpaBudget {}
    unsafe impl aya::Pod for SpaCap {}
    unsafe impl aya::Pod for SpaCheckKey {}
    unsafe impl aya::Pod for SpaRequest {}
    unsafe impl aya::Pod for OneTimeId {}
    unsafe impl aya::Pod for EventBudget {}
}
