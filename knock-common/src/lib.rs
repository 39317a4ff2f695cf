//! Types shared by the XDP program and userspace: map keys and values, the per-sequence
//! configuration and the events. Every type is `#[repr(C)]` with explicit padding, so
//! both sides agree byte for byte; the size assertions below catch any drift.
#![no_std]

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

/// Entries of the port-rule array: one per (protocol, port) for TCP and UDP.
pub const PORT_RULE_ENTRIES: u32 = 2 * 65536;

/// Index of (protocol, port) in the port-rule array; `None` for other protocols.
#[inline(always)]
pub fn port_rule_index(proto: u8, port: u16) -> Option<u32> {
    match proto {
        PROTO_TCP => Some(port as u32),
        PROTO_UDP => Some(65536 + port as u32),
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
    /// [`PROTO_TCP`] or [`PROTO_UDP`]; 0 marks an unused slot.
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

/// The SPA request format's version (the first payload byte); see the README.
pub const SPA_VERSION: u8 = 1;
/// Bytes of a client's key id, after the version byte.
pub const SPA_KEY_ID_LEN: usize = 8;
/// Longest SPA payload the kernel hands to userspace; longer datagrams are refused.
pub const SPA_MAX_PAYLOAD: usize = 512;
/// SPA requests (with a good check value) one source may have handed to userspace
/// per SPA_BUDGET_WINDOW_NS, and refusal events it may cause, each; the kernel sheds
/// (and counts) the rest.
pub const SPA_BUDGET: u32 = 4;
pub const SPA_BUDGET_WINDOW_NS: u64 = 1_000_000_000;
/// Requests each CPU hands to userspace per SPA_BUDGET_WINDOW_NS, whatever their
/// sources (XK_SPA_CAP): what bounds `run`'s work when many sources flood.
pub const SPA_CAP_REQUESTS: u32 = 1024;
/// Refusal events each CPU makes per SPA_BUDGET_WINDOW_NS, whatever their sources.
pub const SPA_CAP_EVENTS: u32 = 1024;
/// SPA clients (key ids) the kernel knows.
pub const SPA_KEYS: u32 = 1024;

/// Bytes of the request's nonce, after the key id; its last SPA_CHECK_LEN bytes are
/// the check value ([`spa_check`]).
pub const SPA_NONCE_LEN: usize = 24;
/// Bytes of the check value at the end of the nonce.
pub const SPA_CHECK_LEN: usize = 8;
/// Version, key id and nonce: the clear header every request starts with.
pub const SPA_HEADER_LEN: usize = 1 + SPA_KEY_ID_LEN + SPA_NONCE_LEN;

/// The value of a configured key id in XK_SPA_KEYS: the client's check key, derived
/// from its secret key (`Key::check_key` in the loader), under which the kernel checks
/// a request's check value before it counts against the source's budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SpaCheckKey {
    /// SipHash-2-4's key, as two little-endian words.
    pub k: [u64; 2],
}

/// The check value of a request: SipHash-2-4 under the client's check key of its key
/// id and the first 16 bytes of its nonce (24 bytes, as three little-endian words),
/// which the client puts in the nonce's last 8 bytes (little-endian). Someone
/// without the key cannot make one: a blind flood under a client's key id and a
/// victim's address is refused in the kernel, before it costs the victim's budget.
#[inline(always)]
pub fn spa_check(key: &SpaCheckKey, key_id: u64, nonce0: u64, nonce1: u64) -> u64 {
    siphash24(key.k[0], key.k[1], &[key_id, nonce0, nonce1], 0, 24)
}

/// SipHash-2-4 (Aumasson and Bernstein) of a message of `len` bytes: `words` its
/// whole little-endian words, `tail` the remaining `len % 8` bytes (little-endian,
/// zero above). Plain word arithmetic, so the kernel program can run it.
#[inline(always)]
pub fn siphash24(k0: u64, k1: u64, words: &[u64], tail: u64, len: u8) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    for &m in words {
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let last = (u64::from(len) << 56) | tail;
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// A configured SPA key id: the key of the key-id map, which lets the kernel drop
/// requests no client could have sent before they cost userspace anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SpaKeyId {
    pub id: [u8; SPA_KEY_ID_LEN],
}

/// A source's SPA requests in the current budget window. Written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SpaBudget {
    pub window_start_ns: u64,
    /// Requests handed over in the window (a good check value only).
    pub requests: u32,
    /// Refusal events made in the window.
    pub refusals: u32,
}

/// One CPU's SPA handovers and refusal events in the current window, the global cap
/// (entry 0 of the per-CPU XK_SPA_CAP). Written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SpaCap {
    pub window_start_ns: u64,
    pub requests: u32,
    pub refusals: u32,
}

/// An SPA request as the kernel hands it to `xknock run`: the source and the UDP
/// payload (`len` bytes of `payload`), unverified.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SpaRequest {
    /// Kernel clock, ns (without the settings' clock offset).
    pub ts_ns: u64,
    /// IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    pub len: u32,
    pub _pad: u32,
    pub payload: [u8; SPA_MAX_PAYLOAD],
}

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

/// What granted an authorization (`Authorization::origin`), so that `run` labels an
/// open it learns of from the map alone as the one it was.
#[repr(u8)]
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

impl Origin {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Knock,
            2 => Self::Spa,
            3 => Self::Allow,
            4 => Self::Fleet,
            _ => return None,
        })
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

/// Kinds of [`Event`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A step accepted: `step` of `of`.
    Knock = 1,
    /// Progress lost; `reason` says why.
    Reset = 2,
    /// The source completed the sequence and is authorized.
    Open = 3,
    /// An authorization ended (sent by userspace, never by the kernel).
    Close = 4,
    /// A completed sequence could not be authorized; `reason` is an [`OpenFailure`].
    OpenFailed = 5,
    /// The source failed too often and is banned (`reason` holds nothing).
    Ban = 6,
    /// A ban ended (sent by userspace, never by the kernel).
    Unban = 7,
    /// A datagram to the SPA port that no configured client could have sent;
    /// `reason` is a [`SpaRefusal`], `port` the SPA port.
    SpaRefused = 8,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Knock,
            2 => Self::Reset,
            3 => Self::Open,
            4 => Self::Close,
            5 => Self::OpenFailed,
            6 => Self::Ban,
            7 => Self::Unban,
            8 => Self::SpaRefused,
            _ => return None,
        })
    }
}

/// Why progress was reset ([`Event::reason`]).
#[repr(u8)]
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

/// Why a completed sequence did not open (`Event::reason` of `OpenFailed`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenFailure {
    /// The authorization map is full.
    MapFull = 0,
    /// A one-time line that was used already (or XK_SPENT is full).
    Spent = 1,
}

/// Why the kernel refused a datagram to the SPA port (`Event::reason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaRefusal {
    /// Too short or too long for a request, or another version.
    Malformed = 1,
    /// No configured client has the key id.
    UnknownKey = 2,
    /// The nonce's check value is not the client's ([`spa_check`]).
    BadCheck = 3,
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

/// Verdict and event counters: indexes of the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not TCP or UDP over IP, or to a port nobody configured.
    PassOther = 0,
    /// To a protected port from an authorized source.
    PassAuthorized = 1,
    /// To a protected port on a connection kept from an earlier authorization.
    PassEstablished = 2,
    /// A non-first fragment (its first fragment carried the verdict).
    PassFragment = 3,
    /// To a knock port (every packet there is dropped).
    DropKnock = 4,
    /// To a protected port, not authorized.
    DropProtected = 5,
    /// Headers that could not be followed safely.
    DropUnparsed = 6,
    /// A fragment that could rewrite the L4 header of its first fragment (RFC 1858).
    DropFragment = 7,
    /// Events a ring (XK_EVENTS or XK_STEP_EVENTS) had no room for.
    EventsLost = 8,
    /// Completed sequences that found the authorization map full.
    AuthFull = 9,
    /// Knock packets from banned sources (ignored).
    BannedKnock = 10,
    /// To a protected port from an `allow` source.
    PassAllowed = 11,
    /// To a knock or protected port from a `deny` source.
    DropDenied = 12,
    /// SPA requests handed to `xknock run` (and dropped, like every packet to the SPA
    /// port).
    DropSpa = 13,
    /// To the SPA port but no request a client could have sent: empty, longer than
    /// SPA_MAX_PAYLOAD, another version, or an unknown key id.
    SpaRefused = 14,
    /// SPA requests over their source's budget (SPA_BUDGET per second).
    SpaShed = 15,
    /// SPA requests the ring buffer to `xknock run` had no room for.
    SpaLost = 16,
    /// IPv6 from an IPv4-mapped source (`::ffff:a.b.c.d`), which Linux drops too.
    DropMapped = 17,
    /// A TCP SYN or UDP datagram to a port stealth hides (not public, not configured).
    DropStealth = 18,
    /// Knock events not made: over the per-CPU event budget (`[events]`).
    SuppressedKnock = 19,
    /// Reset events not made, likewise.
    SuppressedReset = 20,
    /// Completed one-time sequences refused: the line was used (a replay).
    OneTimeSpent = 21,
}

pub const COUNTERS: u32 = 22;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::PassOther,
        Counter::PassAuthorized,
        Counter::PassEstablished,
        Counter::PassFragment,
        Counter::DropKnock,
        Counter::DropProtected,
        Counter::DropUnparsed,
        Counter::DropFragment,
        Counter::EventsLost,
        Counter::AuthFull,
        Counter::BannedKnock,
        Counter::PassAllowed,
        Counter::DropDenied,
        Counter::DropSpa,
        Counter::SpaRefused,
        Counter::SpaShed,
        Counter::SpaLost,
        Counter::DropMapped,
        Counter::DropStealth,
        Counter::SuppressedKnock,
        Counter::SuppressedReset,
        Counter::OneTimeSpent,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassOther => "pass_other",
            Counter::PassAuthorized => "pass_authorized",
            Counter::PassEstablished => "pass_established",
            Counter::PassFragment => "pass_fragment",
            Counter::DropKnock => "drop_knock",
            Counter::DropProtected => "drop_protected",
            Counter::DropUnparsed => "drop_unparsed",
            Counter::DropFragment => "drop_fragment",
            Counter::EventsLost => "events_lost",
            Counter::AuthFull => "auth_full",
            Counter::BannedKnock => "banned_knock",
            Counter::PassAllowed => "pass_allowed",
            Counter::DropDenied => "drop_denied",
            Counter::DropSpa => "drop_spa",
            Counter::SpaRefused => "spa_refused",
            Counter::SpaShed => "spa_shed",
            Counter::SpaLost => "spa_lost",
            Counter::DropMapped => "drop_mapped",
            Counter::DropStealth => "drop_stealth",
            Counter::SuppressedKnock => "suppressed_knock",
            Counter::SuppressedReset => "suppressed_reset",
            Counter::OneTimeSpent => "one_time_spent",
        }
    }
}

/// Pinned map names: `bpftool map dump pinned PIN_DIR/<name>` shows each.
pub mod map_names {
    pub const META: &str = "XK_META";
    pub const SEQUENCES: &str = "XK_SEQUENCES";
    pub const PORT_RULES: &str = "XK_PORT_RULES";
    pub const SETTINGS: &str = "XK_SETTINGS";
    pub const PROGRESS: &str = "XK_PROGRESS";
    pub const AUTHORIZED: &str = "XK_AUTHORIZED";
    pub const FLOWS: &str = "XK_FLOWS";
    pub const COUNTERS: &str = "XK_COUNTERS";
    pub const EVENTS: &str = "XK_EVENTS";
    pub const BANS: &str = "XK_BANS";
    pub const ACCESS: &str = "XK_ACCESS";
    pub const AUTH_HINT: &str = "XK_AUTH_HINT";
    pub const SPA_KEYS: &str = "XK_SPA_KEYS";
    pub const SPA_BUDGETS: &str = "XK_SPA_BUDGETS";
    pub const SPA_REQUESTS: &str = "XK_SPA_REQUESTS";
    pub const SPA_CAP: &str = "XK_SPA_CAP";
    pub const STEP_EVENTS: &str = "XK_STEP_EVENTS";
    pub const EVENT_BUDGET: &str = "XK_EVENT_BUDGET";
    pub const SPENT: &str = "XK_SPENT";

    /// Every map, in the order a check reports them.
    pub const ALL: [&str; 19] = [
        META,
        SEQUENCES,
        PORT_RULES,
        SETTINGS,
        PROGRESS,
        AUTHORIZED,
        FLOWS,
        COUNTERS,
        EVENTS,
        BANS,
        ACCESS,
        AUTH_HINT,
        SPA_KEYS,
        SPA_BUDGETS,
        SPA_REQUESTS,
        SPA_CAP,
        STEP_EVENTS,
        EVENT_BUDGET,
        SPENT,
    ];
}

/// The layout of the pinned maps: every key and value type above, their sizes and
/// meanings. Bump it with any change to them: a `run` adopts pinned maps only of its
/// own layout (`layout_snapshot` in the tests fails until it is bumped).
pub const LAYOUT_VERSION: u32 = 5;

/// Entry 0 of XK_META: what the pinned maps are. Written by the loader that created
/// them. Its own layout never changes: it is how the others' are told apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the xknock that created the maps (0: not yet written).
    pub layout: u32,
    pub _pad: u32,
    /// That xknock's version, NUL-padded.
    pub created_by: [u8; 24],
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Meta>() == 32);
    assert!(size_of::<PortProto>() == 4);
    assert!(size_of::<SequenceConfig>() == 32 + 4 * (MAX_KNOCKS + MAX_PROTECTED) + 8 + NAME_LEN + 16);
    assert!(size_of::<PortRule>() == 4);
    assert!(size_of::<Settings>() == 56);
    assert!(size_of::<SourceAddr>() == 16);
    assert!(size_of::<Ban>() == 24);
    assert!(size_of::<SourceKey>() == 20);
    assert!(size_of::<Progress>() == 24);
    assert!(size_of::<Authorization>() == 24);
    assert!(size_of::<OneTimeId>() == 8);
    assert!(size_of::<EventBudget>() == 16);
    assert!(size_of::<FlowKey>() == 24);
    assert!(size_of::<Flow>() == 16);
    assert!(size_of::<Event>() == 32);
    assert!(size_of::<SpaKeyId>() == SPA_KEY_ID_LEN);
    assert!(size_of::<SpaBudget>() == 16);
    assert!(size_of::<SpaCap>() == 16);
    assert!(size_of::<SpaCheckKey>() == 16);
    assert!(SPA_HEADER_LEN == 33 && SPA_CHECK_LEN * 3 == SPA_NONCE_LEN);
    assert!(size_of::<SpaRequest>() == 32 + SPA_MAX_PAYLOAD);
    assert!(MAX_SEQUENCES <= 8, "sequence masks are u8");
};

#[cfg(feature = "user")]
mod user {
    use super::*;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vectors of the SipHash paper (key 00..0f, message 00..len-1),
    /// and one of 24 bytes, the length of a check.
    #[test]
    fn siphash24_matches_the_reference() {
        let word = |from: u64, n: u64| (0..n).fold(0u64, |w, i| w | ((from + i) << (8 * i)));
        let (k0, k1) = (word(0, 8), word(8, 8));
        assert_eq!(siphash24(k0, k1, &[], 0, 0), 0x726f_db47_dd0e_0e31);
        assert_eq!(
            siphash24(k0, k1, &[word(0, 8)], word(8, 7), 15),
            0xa129_ca61_49be_45e5
        );
        let key = SpaCheckKey { k: [k0, k1] };
        assert_eq!(
            spa_check(&key, word(0, 8), word(8, 8), word(16, 8)),
            0xb8ad_50c6_f649_af94
        );
    }
}
