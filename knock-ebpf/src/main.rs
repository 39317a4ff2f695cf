//! xknock's XDP program: parse → classify → decide. Knock packets advance per-source
//! progress and are dropped (passing knocks pass on); packets to protected ports pass
//! only for authorized sources (or on connections they opened while authorized); the
//! rest passes.
#![no_std]
// atomic_xadd: the hint counters (core::sync::atomic has no fetch_add on BPF).
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod runtime;

mod knock;
mod maps;
mod parse;
mod spa;

use aya_ebpf::{
    bindings::{
        BPF_RB_NO_WAKEUP,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    btf_maps::lpm_trie::Key,
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use knock_common::{
    ACCESS_ALLOW, ACCESS_DENY, Counter, Event, EventKind, Flow, FlowKey, MAX_SEQUENCES, PROTO_TCP, PROTO_UDP,
    RULE_PASS, RULE_PASS_ANY_TCP, RULE_SPA, RULE_STEALTH, SEQ_KEEP_ESTABLISHED, Settings, SourceKey, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN, auth_hint_slot, port_rule_index,
};
use maps::{
    XK_ACCESS, XK_AUTH_HINT, XK_AUTHORIZED, XK_COUNTERS, XK_EVENT_BUDGET, XK_EVENTS, XK_FLOWS, XK_PORT_RULES,
    XK_SEQUENCES, XK_SETTINGS, XK_STEP_EVENTS,
};
use parse::{Packet, Parsed, Transport};

/// A kept connection's last-seen time is refreshed at most this often, so that a busy
/// connection does not write the map on every packet.
const FLOW_REFRESH_NS: u64 = 1_000_000_000;
/// How long a kept connection lives on after a FIN from its source, counted from its
/// latest packet: long enough for the closing ACKs, short enough that the flow does
/// not outlive the connection (docs/design.md, "What the filter does").
const FLOW_LINGER_NS: u64 = 5_000_000_000;

#[xdp]
pub fn xknock(ctx: XdpContext) -> u32 {
    let (action, counter) = match parse::parse(&ctx) {
        Ok(Parsed::Other) => (XDP_PASS, Counter::PassOther),
        Ok(Parsed::MappedSource) => (XDP_DROP, Counter::DropMapped),
        Ok(Parsed::LaterFragment) => (XDP_PASS, Counter::PassFragment),
        Ok(Parsed::OverlappingFragment) => (XDP_DROP, Counter::DropFragment),
        Ok(Parsed::Transport(transport)) => decide(&ctx, &transport),
        Err(parse::Unparsed) => (XDP_DROP, Counter::DropUnparsed),
    };
    count(counter);
    action
}

/// A TCP SYN without ACK: the first packet of a new connection.
#[inline(always)]
fn is_syn(proto: u8, tcp_flags: u8) -> bool {
    proto == PROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A packet that may open something: a UDP datagram or a TCP SYN.
#[inline(always)]
fn opens_connection(proto: u8, tcp_flags: u8) -> bool {
    proto == PROTO_UDP || is_syn(proto, tcp_flags)
}

#[inline(always)]
fn decide(ctx: &XdpContext, transport: &Transport) -> (u32, Counter) {
    let rule = port_rule_index(transport.proto, transport.dst_port)
        .and_then(|index| XK_PORT_RULES.get(index))
        .copied()
        .unwrap_or_default();
    // Strict sequences see every SYN and datagram from a source they track; stealth
    // drops only those (replies to the host's own connections pass). The SPA flag is
    // on UDP ports only, which always open. A passing knock port's flag counts for
    // every packet.
    let (strict_mask, flags) = if opens_connection(transport.proto, transport.tcp_flags) {
        (rule.strict_mask, rule.flags)
    } else if transport.proto == PROTO_TCP && rule.flags & (RULE_PASS | RULE_PASS_ANY_TCP) == RULE_PASS {
        // The rest of a connection to a serving port, which no sequence counts.
        return (XDP_PASS, Counter::PassKnock);
    } else {
        (0, rule.flags & RULE_PASS)
    };
    if rule.knock_mask | rule.protect_mask | strict_mask | flags == 0 {
        return (XDP_PASS, Counter::PassOther);
    }
    // Stealth ports carry no knock or protect bits; strict mode still sees them.
    if flags & RULE_STEALTH != 0 && strict_mask == 0 {
        return (XDP_DROP, Counter::DropStealth);
    }
    if flags & RULE_SPA != 0 {
        // Only UDP ports carry RULE_SPA, and no sequence uses them (so strict mode
        // does not see these datagrams either).
        return (XDP_DROP, spa::request(ctx, transport));
    }
    let settings = XK_SETTINGS.get(0).copied().unwrap_or_default();
    let Ok(packet) = transport.with_source(ctx) else {
        return (XDP_DROP, Counter::DropUnparsed);
    };
    let packet = &packet;
    if settings.access_rules != 0 {
        match access(&packet.src) {
            // Listed sources are not tracked; a passing knock port serves them as it
            // would without xknock.
            ACCESS_DENY | ACCESS_ALLOW if flags & RULE_PASS != 0 => return (XDP_PASS, Counter::PassOther),
            ACCESS_DENY if rule.knock_mask | rule.protect_mask != 0 => {
                return (XDP_DROP, Counter::DropDenied);
            }
            ACCESS_ALLOW if rule.knock_mask != 0 => return (XDP_DROP, Counter::DropKnock),
            ACCESS_ALLOW if rule.protect_mask != 0 => return (XDP_PASS, Counter::PassAllowed),
            // Listed sources are not tracked, so strict mode has nothing to reset.
            ACCESS_DENY | ACCESS_ALLOW => return unconfigured(flags),
            _ => {}
        }
    }
    // A martian source (loopback, unspecified, multicast, broadcast) is never
    // tracked, so its knocks authorize nothing; checked on the knock path only.
    if rule.knock_mask | strict_mask != 0 && !knock::is_martian(&packet.src) {
        let knocker = knock::Knocker {
            packet,
            settings: &settings,
            now: now_ns(&settings),
            passes: flags & RULE_PASS,
        };
        knocker.track(rule.knock_mask, strict_mask);
    }
    if rule.knock_mask != 0 {
        knock_verdict(flags)
    } else if rule.protect_mask != 0 {
        let counter = guard(packet, rule.protect_mask, &settings);
        let action = match counter {
            Counter::PassAuthorized | Counter::PassEstablished => XDP_PASS,
            _ => XDP_DROP,
        };
        (action, counter)
    } else {
        unconfigured(flags)
    }
}

/// The verdict for a knock: dropped, or passed on for a passing knock. Without a
/// branch, so that the verifier does not follow the knock path twice.
#[inline(always)]
fn knock_verdict(flags: u8) -> (u32, Counter) {
    const _: () = assert!(XDP_PASS == XDP_DROP + 1 && RULE_PASS == 8);
    let passes = u32::from(flags & RULE_PASS) >> 3;
    let counter = if passes != 0 {
        Counter::PassKnock
    } else {
        Counter::DropKnock
    };
    (XDP_DROP + passes, counter)
}

/// The verdict for a port no sequence uses: it passes unless stealth hides it.
#[inline(always)]
fn unconfigured(flags: u8) -> (u32, Counter) {
    if flags & RULE_STEALTH != 0 {
        (XDP_DROP, Counter::DropStealth)
    } else {
        (XDP_PASS, Counter::PassOther)
    }
}

/// The allow/deny list entry for `src` (longest prefix), or 0 when none matches.
#[inline(always)]
pub(crate) fn access(src: &[u8; 16]) -> u8 {
    let key = Key::new(128, *src);
    XK_ACCESS.get(&key).copied().unwrap_or(0)
}

/// The verdict for a packet to a protected port, as its counter (PassAuthorized,
/// PassEstablished or DropProtected): a plain value, since a returned pair goes
/// through the caller's stack, which the verifier refuses. Out of line, so that its
/// stack is not added to the knock path's (the verifier allows 512 bytes along a
/// call chain).
#[inline(never)]
fn guard(packet: &Packet, protect_mask: u8, settings: &Settings) -> Counter {
    // Read the clock only once something is found to compare with: a source with no
    // connection and no authorization is dropped without it.
    let mut clock = 0u64;
    let mut now = || {
        if clock == 0 {
            clock = now_ns(settings);
        }
        clock
    };
    let flow_key = FlowKey {
        addr: packet.src,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        proto: packet.proto,
        _pad: [0; 3],
    };
    // A TCP SYN is a new connection and needs an authorization; anything else may
    // belong to a connection opened while the source was authorized.
    if !is_syn(packet.proto, packet.tcp_flags)
        && let Some(flow) = XK_FLOWS.get_ptr_mut(&flow_key)
    {
        // SAFETY: the pointer is to a map value; concurrent refreshes only race on
        // which of two current times is stored.
        let flow = unsafe { &mut *flow };
        match kept(flow, &flow_key, packet, settings, now()) {
            Kept::Pass => return Counter::PassEstablished,
            Kept::Closed => return Counter::DropProtected,
            Kept::Over => {}
        }
    }
    if !maybe_authorized(&packet.src, settings) {
        return Counter::DropProtected;
    }
    for seq in 0..MAX_SEQUENCES as u8 {
        if protect_mask & (1 << seq) == 0 {
            continue;
        }
        let key = SourceKey {
            addr: packet.src,
            seq,
            _pad: [0; 3],
        };
        // SAFETY: the value is copied out at once.
        let Some(auth) = (unsafe { XK_AUTHORIZED.get(&key) }).copied() else {
            continue;
        };
        // A ban closes the ports to a source even if it holds an authorization; it is
        // checked only here, so drops of unauthorized sources cost no extra lookup.
        let now = now();
        if now >= auth.expires_ns || knock::banned(&packet.src, settings, now) {
            continue;
        }
        if let Some(config) = XK_SEQUENCES.get(seq as u32)
            && config.flags & SEQ_KEEP_ESTABLISHED != 0
            && packet.tcp_flags & TCP_RST == 0
        {
            let flow = Flow {
                last_ns: now,
                idle_timeout_ns: flow_idle(config.idle_timeout_ns, packet.tcp_flags),
            };
            // A full LRU evicts the oldest kept connection; nothing to handle.
            let _ = XK_FLOWS.insert(&flow_key, &flow, 0);
        }
        return Counter::PassAuthorized;
    }
    Counter::DropProtected
}

/// What a kept connection says about a packet on it.
enum Kept {
    /// It passes.
    Pass,
    /// Its source is banned: the connection is closed (and forgotten).
    Closed,
    /// The flow is over (idle too long): judge the packet as a new one.
    Over,
}

/// A kept connection's verdict for a packet on it. A ban (only looked up when bans
/// are on) ends the flow and drops the packet; a RST from the source ends it and
/// passes; a FIN cuts what is left of it to FLOW_LINGER_NS after the last packet, so
/// the closing ACKs still pass.
#[inline(always)]
fn kept(flow: &mut Flow, key: &FlowKey, packet: &Packet, settings: &Settings, now: u64) -> Kept {
    let idle = now.saturating_sub(flow.last_ns);
    if idle > flow.idle_timeout_ns {
        return Kept::Over;
    }
    if knock::banned(&packet.src, settings, now) {
        let _ = XK_FLOWS.remove(key);
        return Kept::Closed;
    }
    if packet.tcp_flags & TCP_RST != 0 {
        let _ = XK_FLOWS.remove(key);
    } else if packet.tcp_flags & TCP_FIN != 0 && flow.idle_timeout_ns > FLOW_LINGER_NS {
        flow.idle_timeout_ns = FLOW_LINGER_NS;
        flow.last_ns = now;
    } else if idle > FLOW_REFRESH_NS {
        flow.last_ns = now;
    }
    Kept::Pass
}

/// A new kept connection's idle timeout: a FIN on its first packet lingers only.
#[inline(always)]
fn flow_idle(idle_timeout_ns: u64, tcp_flags: u8) -> u64 {
    if tcp_flags & TCP_FIN != 0 {
        idle_timeout_ns.min(FLOW_LINGER_NS)
    } else {
        idle_timeout_ns
    }
}

/// False when no authorization has `src`'s hint slot, so none can be `src`'s; this
/// one array read replaces the hash lookups for most packets that will be dropped.
#[inline(always)]
fn maybe_authorized(src: &[u8; 16], settings: &Settings) -> bool {
    XK_AUTH_HINT
        .get(auth_hint_slot(src, settings.auth_hint_shift))
        .is_none_or(|count| *count != 0)
}

/// The policy clock: the kernel's monotonic clock, unless a test drives time.
#[inline(always)]
pub(crate) fn now_ns(settings: &Settings) -> u64 {
    match settings.test_now_ns {
        // SAFETY: a helper with no arguments.
        0 => unsafe { bpf_ktime_get_ns() },
        test_now => test_now,
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(value) = XK_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while we do.
        unsafe { *value += 1 };
    }
}

/// A rare event (open, open-failed, ban): always made, and it wakes `run`.
/// Out of line: a call per event site keeps the verifier's work small.
#[inline(never)]
pub(crate) fn emit(event: &Event) {
    if XK_EVENTS.output(event, 0).is_err() {
        count(Counter::EventsLost);
    }
}

/// A per-packet event (knock, reset): made only within this CPU's budget, else
/// counted as `suppressed`; it wakes nobody (`run` reads the ring on an interval), so
/// a flood costs neither a wake-up nor a line per packet.
#[inline(never)]
pub(crate) fn emit_step(event: &Event, settings: &Settings, suppressed: Counter) {
    if !within_event_budget(settings, event.ts_ns) {
        count(suppressed);
    } else if XK_STEP_EVENTS.output(event, BPF_RB_NO_WAKEUP.into()).is_err() {
        count(Counter::EventsLost);
    }
}

/// Takes one event's cost from this CPU's token bucket, topped up by the time since
/// its last use (up to the burst).
#[inline(always)]
fn within_event_budget(settings: &Settings, now: u64) -> bool {
    let cost = settings.event_cost_ns;
    if cost == 0 {
        return true;
    }
    let Some(budget) = XK_EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot; nothing else on this CPU runs while we do.
    let budget = unsafe { &mut *budget };
    let credit = budget
        .credit_ns
        .saturating_add(now.saturating_sub(budget.last_ns))
        .min(settings.event_burst_ns);
    budget.last_ns = now;
    let within = credit >= cost;
    budget.credit_ns = if within { credit - cost } else { credit };
    within
}

#[inline(always)]
pub(crate) fn event(kind: EventKind, key: &SourceKey, packet: &Packet, now: u64) -> Event {
    Event {
        ts_ns: now,
        addr: key.addr,
        kind: kind as u8,
        seq: key.seq,
        step: 0,
        of: 0,
        reason: 0,
        proto: packet.proto,
        port: packet.dst_port,
    }
}
