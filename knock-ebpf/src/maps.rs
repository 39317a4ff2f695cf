//! Every map of the program, pinned by name under the loader's pin directory. Sizes
//! here are defaults: the loader may resize the tracking maps before loading.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use knock_common::{
    ACCESS_ENTRIES, AUTH_HINT_MIN_SLOTS, Authorization, Ban, COUNTERS, Event, EventBudget, Flow, FlowKey,
    MAX_SEQUENCES, Meta, OneTimeId, PORT_RULE_ENTRIES, PortRule, Progress, SPA_KEYS, SPENT_ENTRIES,
    SequenceConfig, Settings, SourceAddr, SourceKey, SpaBudget, SpaCap, SpaCheckKey, SpaKeyId, SpaRequest,
};

/// What the pinned maps are (layout version, creator) in entry 0. Written by the
/// loader; never read here.
#[btf_map(pin_by_name)]
pub static XK_META: Array<Meta, 1> = Array::new();

/// The configured sequences, by index. Written by the loader; read per knock.
#[btf_map(pin_by_name)]
pub static XK_SEQUENCES: Array<SequenceConfig, MAX_SEQUENCES> = Array::new();

/// Which sequences knock on or protect each (protocol, port), the SPA port, and the
/// ports stealth hides. Written by the loader; the one lookup every TCP and UDP
/// packet pays.
#[btf_map(pin_by_name)]
pub static XK_PORT_RULES: Array<PortRule, { PORT_RULE_ENTRIES as usize }> = Array::new();

/// Global settings in entry 0 (ban policy and IPv6 ban prefix, test clock, the
/// loader's records). Written by the loader.
#[btf_map(pin_by_name)]
pub static XK_SETTINGS: Array<Settings, 1> = Array::new();

/// Knock progress per (source, sequence). Written by the kernel; LRU, so a flood of
/// half-finished knocks evicts the oldest progress and nothing else.
#[btf_map(pin_by_name)]
pub static XK_PROGRESS: LruHashMap<SourceKey, Progress, 65536> = LruHashMap::new();

/// Authorizations per (source, sequence). Written by the kernel on a completed
/// sequence and by `xknock allow`; removed by `revoke` and by `run` on expiry. A plain
/// hash, so knock floods cannot evict it.
#[btf_map(pin_by_name)]
pub static XK_AUTHORIZED: HashMap<SourceKey, Authorization, 16384> = HashMap::new();

/// How many authorizations have a source in each slot (`auth_hint_slot`): a zero
/// drops a packet to a protected port without the lookup in XK_AUTHORIZED. Kept by
/// whoever adds or removes an authorization (kernel and loader, atomically; the loader
/// maps it, hence BPF_F_MMAPABLE); never lower than the truth.
#[btf_map(pin_by_name)]
pub static XK_AUTH_HINT: Array<u64, { AUTH_HINT_MIN_SLOTS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

/// Connections to protected ports opened while authorized, kept past the window.
/// Written by the kernel; LRU, entries also age out by their idle timeout.
#[btf_map(pin_by_name)]
pub static XK_FLOWS: LruHashMap<FlowKey, Flow, 65536> = LruHashMap::new();

/// Failures and bans per source address (IPv6 ones cut to the ban prefix). Written
/// by the kernel; removed by `xknock unban` and by `run` when a ban is over. LRU: a
/// flood of failing sources evicts the oldest records, never an authorization.
#[btf_map(pin_by_name)]
pub static XK_BANS: LruHashMap<SourceAddr, Ban, 65536> = LruHashMap::new();

/// The allow and deny lists: source prefixes (IPv4-mapped) to ACCESS_ALLOW or
/// ACCESS_DENY, longest prefix winning. Written by the loader.
#[btf_map(pin_by_name)]
pub static XK_ACCESS: LpmTrie<[u8; 16], u8, { ACCESS_ENTRIES as usize }> = LpmTrie::new();

/// Per-CPU count of every verdict and lost event, indexed by `Counter`. Written by
/// the kernel; summed by `status`.
#[btf_map(pin_by_name)]
pub static XK_COUNTERS: PerCpuArray<u64, { COUNTERS as usize }> = PerCpuArray::new();

/// The rare events someone acts on, for `xknock run`: open, open-failed, ban and
/// SPA-refused. Written by the kernel; each wakes `run` (none is lost to noise: the
/// per-packet ones go to XK_STEP_EVENTS).
#[btf_map(pin_by_name)]
pub static XK_EVENTS: RingBuf<Event, { 256 * 1024 }> = RingBuf::new();

/// Per-packet events (knock, reset), within each CPU's budget (XK_EVENT_BUDGET).
/// Written by the kernel without a wake-up: `run` reads it on a short interval.
#[btf_map(pin_by_name)]
pub static XK_STEP_EVENTS: RingBuf<Event, { 64 * 1024 }> = RingBuf::new();

/// Per CPU, the token bucket of per-packet events. Written by the kernel.
#[btf_map(pin_by_name)]
pub static XK_EVENT_BUDGET: PerCpuArray<EventBudget, 1> = PerCpuArray::new();

/// One-time lines used, by identity, with when: the open that completes a line adds
/// it (BPF_NOEXIST, so two CPUs cannot both open it), and a line found here never
/// opens. Written by the kernel; removed by `run` once the line is replaced.
#[btf_map(pin_by_name)]
pub static XK_SPENT: HashMap<OneTimeId, u64, { SPENT_ENTRIES as usize }> = HashMap::new();

/// The configured SPA clients' key ids, each with its check key. Written by the
/// loader; a request with another key id, or without its client's check value, is
/// refused here, before it reaches the verifier or counts against any budget.
#[btf_map(pin_by_name)]
pub static XK_SPA_KEYS: HashMap<SpaKeyId, SpaCheckKey, { SPA_KEYS as usize }> = HashMap::new();

/// SPA requests handed over and refusal events per source in the current second,
/// the per-source budgets. Written by the kernel; LRU, so a flood from many sources
/// evicts only budgets.
#[btf_map(pin_by_name)]
pub static XK_SPA_BUDGETS: LruHashMap<SourceAddr, SpaBudget, 65536> = LruHashMap::new();

/// SPA requests for `xknock run` to verify. Written by the kernel.
#[btf_map(pin_by_name)]
pub static XK_SPA_REQUESTS: RingBuf<SpaRequest, { 64 * 1024 }> = RingBuf::new();

/// Per CPU, SPA requests handed over and refusal events made in the current second,
/// whatever their sources: the global cap. Written by the kernel.
#[btf_map(pin_by_name)]
pub static XK_SPA_CAP: PerCpuArray<SpaCap, 1> = PerCpuArray::new();
