//! What the kernel keeps per source: progress, authorizations, bans, kept
//! connections, spent one-time lines and the event budget.

use bytemuck::{Pod, Zeroable};

/// A source address alone: the key of the SPA budget map, and of the ban map, where an
/// IPv6 source stands cut to `Settings::ban_ipv6_prefix` bits (the rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceAddr {
    pub addr: [u8; 16],
}

/// A source's failures and ban. Written by the kernel; removed by `xknock unban`
/// and by `run` when the ban is over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Ban {
    /// When the current counting window started.
    pub window_start_ns: u64,
    /// Banned until this time (0 or past: not banned).
    pub until_ns: u64,
    /// Failures in the current window.
    pub failures: u32,
    pub _pad: u32,
}

/// A source address and a sequence index: the key of progress and authorizations.
/// IPv4 sources are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub seq: u8,
    pub _pad: [u8; 3],
}

/// A source's progress through one sequence. Written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Progress {
    /// When the first knock arrived (kernel clock, ns).
    pub first_ns: u64,
    /// When the latest accepted knock arrived.
    pub last_ns: u64,
    /// Knocks accepted so far (1..n-1; a completed sequence leaves the map).
    pub step: u8,
    pub _pad: [u8; 7],
}

/// An authorization. Written by the kernel on a completed sequence, by `allow`, and
/// removed by `revoke` or by `run` when it expires.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Authorization {
    /// New connections pass until this time (kernel clock, ns).
    pub expires_ns: u64,
    /// When it was granted (or last renewed): with the key, what tells one open
    /// from another.
    pub opened_ns: u64,
    /// How it came about: an [`Origin`].
    pub origin: u8,
    pub _pad: [u8; 7],
}

impl Authorization {
    pub const fn new(opened_ns: u64, expires_ns: u64, origin: Origin) -> Self {
        Authorization {
            expires_ns,
            opened_ns,
            origin: origin as u8,
            _pad: [0; 7],
        }
    }
}

u8_enum! {
    /// What granted an authorization (`Authorization::origin`), so that `run` labels an
    /// open it learns of from the map alone as the one it was.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Origin {
        /// A completed knock sequence (the kernel).
        Knock = 1,
        /// A verified SPA request (`run`).
        Spa = 2,
        /// `xknock allow`.
        Allow = 3,
        /// Another host of the fleet.
        Fleet = 4,
    }
}

/// A one-time line as the kernel knows it: the key of XK_SPENT, a hash of the file
/// and the line's knocks (never 0), made by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct OneTimeId {
    pub id: u64,
}

/// Entries of XK_SPENT: lines spent and not yet replaced by `run`. When it is full,
/// a completed one-time sequence does not open (fail closed).
pub const SPENT_ENTRIES: u32 = 1024;

/// One CPU's allowance of per-packet events (knock, reset): a token bucket counted
/// in nanoseconds of credit (entry 0 of the per-CPU XK_EVENT_BUDGET). Written by the
/// kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EventBudget {
    /// Credit: an event costs `Settings::event_cost_ns`; at most
    /// `Settings::event_burst_ns` is kept.
    pub credit_ns: u64,
    /// When the credit was last topped up.
    pub last_ns: u64,
}

/// A connection to a protected port opened while its source was authorized.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// When a kept connection was last seen, and how long it may stay silent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Flow {
    pub last_ns: u64,
    pub idle_timeout_ns: u64,
}
