//! xknock's XDP program: parse → classify → decide. Knock packets advance per-source
//! progress and are dropped; packets to protected ports pass only for authorized
//! sources (or on connections they opened while authorized); the rest passes.
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
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::lpm_trie::Key,
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use knock_common::{
    ACCESS_ALLOW, ACCESS_DENY, Counter, Event, EventKind, Flow, FlowKey, MAX_SEQUENCES, PROTO_TCP, PROTO_UDP,
    RULE_SPA, SEQ_KEEP_ESTABLISHED, Settings, SourceKey, TCP_ACK, TCP_SYN, auth_hint_slot, port_rule_index,
};
use maps::{
    XK_ACCESS, XK_AUTH_HINT, XK_AUTHORIZED, XK_COUNTERS, XK_EVENTS, XK_FLOWS, XK_PORT_RULES, XK_SEQUENCES,
    XK_SETTINGS,
};
use parse::{Packet, Parsed, Transport};

/// A kept connection's last-seen time is refreshed at most this often, so that a busy
/// connection does not write the map on every packet.
const FLOW_REFRESH_NS: u64 = 1_000_000_000;

#[xdp]
pub fn xknock(ctx: XdpContext) -> u32 {
    let (action, counter) = match parse::parse(&ctx) {
        Ok(Parsed::Other) => (XDP_PASS, Counter::PassOther),
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
    // Strict sequences see every SYN and datagram from a source they track.
    let strict_mask = if opens_connection(transport.proto, transport.tcp_flags) {
        rule.strict_mask
    } else {
        0
    };
    if rule.knock_mask | rule.protect_mask | strict_mask | rule.flags == 0 {
        return (XDP_PASS, Counter::PassOther);
    }
    if rule.flags & RULE_SPA != 0 {
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
            ACCESS_DENY if rule.knock_mask | rule.protect_mask != 0 => {
                return (XDP_DROP, Counter::DropDenied);
            }
            ACCESS_ALLOW if rule.knock_mask != 0 => return (XDP_DROP, Counter::DropKnock),
            ACCESS_ALLOW if rule.protect_mask != 0 => return (XDP_PASS, Counter::PassAllowed),
            // Listed sources are not tracked, so strict mode has nothing to reset.
            ACCESS_DENY | ACCESS_ALLOW => return (XDP_PASS, Counter::PassOther),
            _ => {}
        }
    }
    if rule.knock_mask | strict_mask != 0 {
        let knocker = knock::Knocker {
            packet,
            settings: &settings,
            now: now_ns(&settings),
        };
        knocker.track(rule.knock_mask, strict_mask);
    }
    if rule.knock_mask != 0 {
        (XDP_DROP, Counter::DropKnock)
    } else if rule.protect_mask != 0 {
        guard(packet, rule.protect_mask, &settings)
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

/// The verdict for a packet to a protected port. Out of line, so that its stack is
/// not added to the knock path's (the verifier allows 512 bytes along a call chain).
#[inline(never)]
fn guard(packet: &Packet, protect_mask: u8, settings: &Settings) -> (u32, Counter) {
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
        let now = now();
        let idle = now.saturating_sub(flow.last_ns);
        if idle <= flow.idle_timeout_ns {
            if idle > FLOW_REFRESH_NS {
                flow.last_ns = now;
            }
            return (XDP_PASS, Counter::PassEstablished);
        }
    }
    if !maybe_authorized(&packet.src, settings) {
        return (XDP_DROP, Counter::DropProtected);
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
        {
            let flow = Flow {
                last_ns: now,
                idle_timeout_ns: config.idle_timeout_ns,
            };
            // A full LRU evicts the oldest kept connection; nothing to handle.
            let _ = XK_FLOWS.insert(&flow_key, &flow, 0);
        }
        return (XDP_PASS, Counter::PassAuthorized);
    }
    (XDP_DROP, Counter::DropProtected)
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

/// Out of line: a call per event site keeps the verifier's work small.
#[inline(never)]
pub(crate) fn emit(event: &Event) {
    if XK_EVENTS.output(event, 0).is_err() {
        count(Counter::EventsLost);
    }
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
