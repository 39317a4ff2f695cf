//! The kernel's event records and the reasons they carry.

use bytemuck::{Pod, Zeroable};

u8_enum! {
    /// Kinds of [`Event`]: what the kernel reports. (`close` and `unban` are told by
    /// `run`, which watches the maps; 4 and 7 were theirs once and stay unused.)
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum EventKind {
        /// A step accepted: `step` of `of`.
        Knock = 1,
        /// Progress lost; `reason` says why.
        Reset = 2,
        /// The source completed the sequence and is authorized.
        Open = 3,
        /// A completed sequence could not be authorized; `reason` is an [`OpenFailure`].
        OpenFailed = 5,
        /// The source failed too often and is banned (`reason` holds nothing).
        Ban = 6,
        /// A datagram to the SPA port that no configured client could have sent;
        /// `reason` is a [`SpaRefusal`], `port` the SPA port.
        SpaRefused = 8,
    }
}

u8_enum! {
    /// Why progress was reset ([`Event::reason`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ResetReason {
        None = 0,
        /// A knock of the sequence out of order.
        Wrong = 1,
        /// `step_timeout` or `sequence_timeout` passed.
        Timeout = 2,
        /// Another SYN or datagram while the sequence is strict.
        Strict = 3,
    }
}

u8_enum! {
    /// Why a completed sequence did not open (`Event::reason` of `OpenFailed`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum OpenFailure {
        /// The authorization map is full.
        MapFull = 0,
        /// A one-time line that was used already (or XK_SPENT is full).
        Spent = 1,
    }
}

u8_enum! {
    /// Why the kernel refused a datagram to the SPA port (`Event::reason`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum SpaRefusal {
        /// Too short or too long for a request, or another version.
        Malformed = 1,
        /// No configured client has the key id.
        UnknownKey = 2,
        /// The nonce's check value is not the client's ([`spa_check`]).
        BadCheck = 3,
    }
}

/// One record in the events ring buffer. Written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Event {
    /// Kernel clock, ns (without the settings' clock offset).
    pub ts_ns: u64,
    pub addr: [u8; 16],
    /// An [`EventKind`].
    pub kind: u8,
    pub seq: u8,
    /// Steps accepted after this packet.
    pub step: u8,
    /// Knocks in the sequence.
    pub of: u8,
    /// A [`ResetReason`], or for `SpaRefused` a [`SpaRefusal`].
    pub reason: u8,
    /// The packet's protocol and destination port.
    pub proto: u8,
    pub port: u16,
}
