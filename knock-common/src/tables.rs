//! What the loader writes and the kernel reads: the sequences, the port rules, the
//! settings and the access lists.

use bytemuck::{Pod, Zeroable};

/// Sequences the kernel tracks at once (one bit each in [`PortRule`] masks).
pub const MAX_SEQUENCES: usize = 8;
/// Knocks in one sequence.
pub const MAX_KNOCKS: usize = 16;
/// Protected ports of one sequence.
pub const MAX_PROTECTED: usize = 16;
/// Bytes of a sequence name kept in the kernel (for `status` and `allow`).
pub const NAME_LEN: usize = 32;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// An ICMP knock: an ICMP (IPv4) or ICMPv6 echo request, the same knock for both
/// families. Its "port" is the size of the echo's data (what `ping -s` sets).
pub const PROTO_ICMP: u8 = 1;

/// The largest ICMP knock: an echo request with this much data fits one unfragmented
/// IPv6 packet on a 1500-byte link (1500 - 40 - 8). A fragmented echo's size cannot be
/// read from its first fragment, so larger ones could never knock.
pub const MAX_ICMP_KNOCK_SIZE: u16 = 1452;

/// Entries of the port-rule array: one per (protocol, port) for TCP and UDP, then one
/// per ICMP knock size.
pub const PORT_RULE_ENTRIES: u32 = 2 * 65536 + MAX_ICMP_KNOCK_SIZE as u32 + 1;

/// Index of (protocol, port) in the port-rule array, for ICMP of (PROTO_ICMP, echo
/// data size); `None` for other protocols and larger echoes.
#[inline(always)]
pub fn port_rule_index(proto: u8, port: u16) -> Option<u32> {
    match proto {
        PROTO_TCP => Some(u32::from(port)),
        PROTO_UDP => Some(65536 + u32::from(port)),
        PROTO_ICMP if port <= MAX_ICMP_KNOCK_SIZE => Some(2 * 65536 + u32::from(port)),
        _ => None,
    }
}

// TCP flag bits as they sit in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// One knock or protected port: a port and its IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortProto {
    pub port: u16,
    /// [`PROTO_TCP`], [`PROTO_UDP`] or (knocks only) [`PROTO_ICMP`], whose `port` is
    /// the echo's data size; 0 marks an unused slot.
    pub proto: u8,
    pub _pad: u8,
}

impl PortProto {
    pub const fn new(port: u16, proto: u8) -> Self {
        Self { port, proto, _pad: 0 }
    }
}

/// `SequenceConfig::flags`: any other SYN or datagram from the source resets progress.
pub const SEQ_STRICT: u8 = 1;
/// `SequenceConfig::flags`: connections opened while authorized outlive the window.
pub const SEQ_KEEP_ESTABLISHED: u8 = 2;
/// `SequenceConfig::flags`: a knock of the sequence out of order is ignored instead
/// of resetting progress (spoofed knocks cannot reset a source).
pub const SEQ_IGNORE_WRONG: u8 = 4;

/// One configured sequence, as the kernel sees it. Written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SequenceConfig {
    /// Longest gap between two consecutive knocks.
    pub step_timeout_ns: u64,
    /// Longest time from the first knock to the last.
    pub sequence_timeout_ns: u64,
    /// How long a completed sequence authorizes its source.
    pub open_for_ns: u64,
    /// How long a kept connection may stay silent before it is forgotten.
    pub idle_timeout_ns: u64,
    pub knocks: [PortProto; MAX_KNOCKS],
    pub protect: [PortProto; MAX_PROTECTED],
    pub n_knocks: u8,
    pub n_protect: u8,
    /// `SEQ_*` bits.
    pub flags: u8,
    /// TCP flags that must be set for a TCP knock to count.
    pub tcp_flags_set: u8,
    /// TCP flags that must be clear for a TCP knock to count.
    pub tcp_flags_clear: u8,
    pub _pad: [u8; 3],
    /// NUL-padded UTF-8 name; the kernel never reads it.
    pub name: [u8; NAME_LEN],
    /// Nonzero: the knocks count only before this time (policy clock, ns). A
    /// time-based sequence's period and grace end here whether or not `run` is up.
    pub valid_until_ns: u64,
    /// Nonzero: a one-time line's identity ([`OneTimeId`]). The open that completes
    /// it records it in XK_SPENT; a line found there never opens again.
    pub one_time_id: u64,
}

/// What the kernel needs to know about one (protocol, port): which sequences use it
/// as a knock, which protect it, which strict sequences see a SYN or datagram to it,
/// and whether it takes SPA requests. Zero for every port nobody configured while no
/// sequence is strict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortRule {
    /// Bit `s` set: the port is a knock of sequence `s`.
    pub knock_mask: u8,
    /// Bit `s` set: sequence `s` protects the port.
    pub protect_mask: u8,
    /// Bit `s` set: sequence `s` is strict. The same in every entry; kept here so that
    /// unrelated traffic needs this one lookup and no other.
    pub strict_mask: u8,
    /// `RULE_*` bits.
    pub flags: u8,
}

/// `PortRule::flags`: the (UDP) port takes Single Packet Authorization requests.
pub const RULE_SPA: u8 = 1;
/// `PortRule::flags`: stealth is on and the port is none of the configured or public
/// ones: a TCP SYN or a UDP datagram to it is dropped, so that a scan sees one
/// uniform wall. Never set on UDP ports of the local ephemeral range.
pub const RULE_STEALTH: u8 = 2;
/// `PortRule::flags`, with `RULE_SPA`: the port also takes fwknop's requests (from
/// `[[spa.fwknop]]` clients), which the kernel can only tell by their shape.
pub const RULE_FWKNOP: u8 = 4;
/// `PortRule::flags`: the port is a passing knock (`:pass`) of the sequences in
/// `knock_mask`: its packets advance them, then get the verdict they would get
/// without xknock (they pass). Set for every packet, not only SYNs and datagrams.
pub const RULE_PASS: u8 = 8;
/// `PortRule::flags`, with `RULE_PASS` on a TCP port: some sequence counts TCP packets
/// other than a SYN there (its `tcp_flags` allow them). Without it only SYNs are
/// tracked, and the rest of a connection to the serving port passes at once.
pub const RULE_PASS_ANY_TCP: u8 = 16;

/// Global settings, entry 0 of the settings array. Written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Settings {
    /// Zero in service: the policy clock is the kernel's monotonic clock. Tests set
    /// it to drive time themselves: every timeout then reads this value instead.
    pub test_now_ns: u64,
    /// Failures (resets) counted within this long...
    pub ban_window_ns: u64,
    /// ...ban the source this long...
    pub ban_for_ns: u64,
    /// ...once there are more than this many. Zero: no bans.
    pub ban_failures: u32,
    /// `32 - log2(slots of the authorization hint)`, for [`auth_hint_slot`]; zero
    /// until the loader has set it, which makes every slot "maybe" (no shortcut).
    pub auth_hint_shift: u32,
    /// Nonzero when the allow/deny map has entries (else it is not looked up).
    pub access_rules: u8,
    /// Bans of IPv6 sources key on the address's first this many bits (1..=128; 0
    /// counts as 128); IPv4 sources are banned by address.
    pub ban_ipv6_prefix: u8,
    /// The SPA port (0: none). The kernel reads `PortRule::flags`; this is the
    /// loader's record of which entry to clear when the port changes.
    pub spa_port: u16,
    /// Nonzero while port rules may carry RULE_STEALTH: the loader's record of
    /// whether the whole array must be rewritten when the config changes.
    pub stealth: u8,
    pub _pad2: [u8; 3],
    /// Credit one per-packet event (knock, reset) costs, per CPU: 1e9 / rate.
    /// 0: no limit (before the loader has written it); u64::MAX: none pass.
    pub event_cost_ns: u64,
    /// Most credit a CPU keeps: burst events' worth.
    pub event_burst_ns: u64,
}

/// Slots of the authorization hint: a power of two, at least this many, and at
/// least a quarter as many as the authorizations the map holds.
pub const AUTH_HINT_MIN_SLOTS: u32 = 4096;

/// The authorization-hint slot of a source address (Fibonacci hashing of its four
/// words folded into one). Kernel and userspace must agree on it exactly: the slot
/// counts the authorizations whose source lands there, and a zero count lets the
/// kernel drop a packet to a protected port without looking up the authorization map.
/// `shift` 0 gives an index past any slot (the kernel then always looks up).
#[inline(always)]
pub fn auth_hint_slot(addr: &[u8; 16], shift: u32) -> u32 {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = word(0) ^ word(4) ^ word(8) ^ word(12);
    let hash = folded.wrapping_mul(0x9e37_79b1);
    if shift == 0 { u32::MAX } else { hash >> shift }
}

/// Values of the allow/deny map (longest prefix wins).
pub const ACCESS_ALLOW: u8 = 1;
pub const ACCESS_DENY: u8 = 2;
/// Entries the allow/deny map holds.
pub const ACCESS_ENTRIES: u32 = 4096;
