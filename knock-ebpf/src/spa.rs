//! Single Packet Authorization: every datagram to the SPA port is dropped. One that
//! could be a client's request (size, version, a configured key id, and the check
//! value at the end of its nonce, which only the key's holder can make) is handed to
//! `xknock run` through XK_SPA_REQUESTS, within its source's budget and the CPU's
//! cap; any other is refused here, with a `SpaRefused` event within the source's
//! (separate) budget for those and the CPU's cap. So a spoofer that knows a client's
//! address and key id, but not its key, never spends that client's budget.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use knock_common::{
    ACCESS_DENY, Counter, Event, EventKind, FWKNOP_MIN_PAYLOAD, PROTO_UDP, RULE_FWKNOP, SPA_BUDGET,
    SPA_BUDGET_WINDOW_NS, SPA_CAP_EVENTS, SPA_CAP_REQUESTS, SPA_HEADER_LEN, SPA_KEY_ID_LEN, SPA_MAX_PAYLOAD,
    SPA_VERSION, SourceAddr, SpaBudget, SpaKeyId, SpaRefusal, port_rule_index, spa_check,
};

use crate::{
    access, count,
    maps::{XK_EVENTS, XK_PORT_RULES, XK_SETTINGS, XK_SPA_BUDGETS, XK_SPA_CAP, XK_SPA_KEYS, XK_SPA_REQUESTS},
    now_ns,
    parse::Transport,
};

/// Which of a source's (and a CPU's) two allowances a datagram spends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spend {
    Request,
    Refusal,
}

/// The counter for a datagram to the SPA port (the verdict is always drop). Out of
/// line: its stack is not added to the knock path's.
#[inline(never)]
pub fn request(ctx: &XdpContext, transport: &Transport) -> Counter {
    let Ok(packet) = transport.with_source(ctx) else {
        return Counter::DropUnparsed;
    };
    let Some(settings) = XK_SETTINGS.get(0) else {
        return Counter::SpaRefused;
    };
    if settings.access_rules != 0 && access(&packet.src) == ACCESS_DENY {
        return Counter::DropDenied;
    }
    let now = now_ns(settings);
    // What no client could have sent is refused before it touches the request
    // budget: an event at most SPA_BUDGET times a second per source.
    // Looked up again rather than passed: the verdict's frame has no byte to spare.
    let fwknop = port_rule_index(PROTO_UDP, transport.dst_port)
        .and_then(|index| XK_PORT_RULES.get(index))
        .is_some_and(|rule| rule.flags & RULE_FWKNOP != 0);
    if let Err(refusal) = check(ctx, transport, fwknop) {
        if within(&packet.src, now, Spend::Refusal) {
            refused(&packet.src, refusal, transport.dst_port, now);
        }
        return Counter::SpaRefused;
    }
    if !within(&packet.src, now, Spend::Request) {
        return Counter::SpaShed;
    }
    let len = transport.payload_len as usize;
    let Some(mut entry) = XK_SPA_REQUESTS.reserve(0) else {
        return Counter::SpaLost;
    };
    // The same length, in a form whose bounds (1..=SPA_MAX_PAYLOAD) the verifier can
    // see at the copy: black_box keeps LLVM from dropping the mask as redundant.
    let size = (core::hint::black_box(len as u32).wrapping_sub(1) & (SPA_MAX_PAYLOAD as u32 - 1)) + 1;
    let request = entry.as_mut_ptr();
    // SAFETY: the entry is reserved for us and big enough; bpf_xdp_load_bytes copies
    // `size` (1..=SPA_MAX_PAYLOAD) bytes into the payload array, which holds that many.
    let copied = unsafe {
        (*request).ts_ns = now;
        (*request).addr = packet.src;
        (*request).len = len as u32;
        (*request)._pad = 0;
        bpf_xdp_load_bytes(
            ctx.ctx,
            u32::from(transport.payload_at),
            (*request).payload.as_mut_ptr().cast(),
            size,
        )
    };
    if copied != 0 {
        // The UDP length claimed more than the frame holds.
        entry.discard(0);
        refused(&packet.src, SpaRefusal::Malformed, transport.dst_port, now);
        return Counter::SpaRefused;
    }
    entry.submit(0);
    Counter::DropSpa
}

/// Whether a client could have sent the datagram: its size, version, key id and the
/// check value under that key id's check key; or, when fwknop's clients are
/// configured, the shape of their requests (base64 text whose first character is
/// one a salted blob's starts with, FWKNOP_MIN_PAYLOAD bytes or more), which carry
/// nothing the kernel could check further: `run` checks their HMAC first.
#[inline(always)]
fn check(ctx: &XdpContext, transport: &Transport, fwknop: bool) -> Result<(), SpaRefusal> {
    let len = transport.payload_len as usize;
    if len < SPA_HEADER_LEN || len > SPA_MAX_PAYLOAD {
        return Err(SpaRefusal::Malformed);
    }
    // The helper checks the bounds itself: the payload's offset is not a constant the
    // verifier could follow through a packet pointer.
    // Words, not byte arrays, which LLVM would clear with a call to memset (a stack
    // frame the verifier counts); bpfel, so byte 0 is the low byte of word 0.
    let mut head = [0u64; 2];
    // SAFETY: copies 1 + SPA_KEY_ID_LEN (9) bytes into the 16 of `head`.
    let read = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            u32::from(transport.payload_at),
            head.as_mut_ptr().cast(),
            (1 + SPA_KEY_ID_LEN) as u32,
        )
    };
    if read != 0 {
        return Err(SpaRefusal::Malformed);
    }
    let first = head[0] as u8;
    if first != SPA_VERSION {
        return if fwknop && matches!(first, b'8' | b'9' | b'+' | b'/') && len >= FWKNOP_MIN_PAYLOAD {
            Ok(())
        } else {
            Err(SpaRefusal::Malformed)
        };
    }
    let key_id = (head[0] >> 8) | (head[1] << 56);
    let key = SpaKeyId {
        id: key_id.to_le_bytes(),
    };
    // SAFETY: a map value, only read.
    let Some(check_key) = (unsafe { XK_SPA_KEYS.get(&key) }) else {
        return Err(SpaRefusal::UnknownKey);
    };
    let check_key = *check_key;
    // The nonce: three little-endian words, the last the check value.
    let mut nonce = [0u64; 3];
    // SAFETY: copies 24 bytes into the 24 of `nonce`; the payload holds them (its
    // length is at least SPA_HEADER_LEN).
    let read = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            u32::from(transport.payload_at) + (1 + SPA_KEY_ID_LEN) as u32,
            nonce.as_mut_ptr().cast(),
            24,
        )
    };
    if read != 0 {
        return Err(SpaRefusal::Malformed);
    }
    if spa_check(&check_key, key_id, nonce[0], nonce[1]) != nonce[2] {
        return Err(SpaRefusal::BadCheck);
    }
    Ok(())
}

/// The `SpaRefused` event, written in place in the ring: this path's stack has no
/// room for another copy of an event.
#[inline(never)]
fn refused(src: &[u8; 16], refusal: SpaRefusal, port: u16, now: u64) {
    let Some(mut entry) = XK_EVENTS.reserve(0) else {
        count(Counter::EventsLost);
        return;
    };
    entry.write(Event {
        ts_ns: now,
        addr: *src,
        kind: EventKind::SpaRefused as u8,
        reason: refusal as u8,
        proto: PROTO_UDP,
        port,
        ..Event::default()
    });
    entry.submit(0);
}

const _: () = assert!(SPA_MAX_PAYLOAD.is_power_of_two(), "the copy's length is masked");

/// Counts a request or a refusal against its source's budget and then the CPU's
/// cap; false when either is spent (a source over budget costs the cap nothing).
#[inline(always)]
fn within(src: &[u8; 16], now: u64, spend: Spend) -> bool {
    within_budget(src, now, spend) && within_cap(now, spend)
}

/// The source's budget (SPA_BUDGET a second of each kind).
#[inline(always)]
fn within_budget(src: &[u8; 16], now: u64, spend: Spend) -> bool {
    let key = SourceAddr { addr: *src };
    let request = u32::from(spend == Spend::Request);
    if let Some(budget) = XK_SPA_BUDGETS.get_ptr_mut(&key) {
        // SAFETY: a map value; two CPUs racing here can only let a request or two
        // more through.
        let budget = unsafe { &mut *budget };
        if now.saturating_sub(budget.window_start_ns) < SPA_BUDGET_WINDOW_NS {
            let used = if request == 1 {
                &mut budget.requests
            } else {
                &mut budget.refusals
            };
            if *used >= SPA_BUDGET {
                return false;
            }
            *used += 1;
            return true;
        }
    }
    let fresh = SpaBudget {
        window_start_ns: now,
        requests: request,
        refusals: 1 - request,
    };
    // A full LRU evicts the oldest budget: at worst a flood's source starts afresh.
    let _ = XK_SPA_BUDGETS.insert(&key, &fresh, 0);
    true
}

/// The CPU's cap (SPA_CAP_REQUESTS and SPA_CAP_EVENTS a second).
#[inline(always)]
fn within_cap(now: u64, spend: Spend) -> bool {
    let Some(cap) = XK_SPA_CAP.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; nothing else on this CPU runs while we do.
    let cap = unsafe { &mut *cap };
    if now.saturating_sub(cap.window_start_ns) >= SPA_BUDGET_WINDOW_NS {
        cap.window_start_ns = now;
        cap.requests = 0;
        cap.refusals = 0;
    }
    let (used, limit) = match spend {
        Spend::Request => (&mut cap.requests, SPA_CAP_REQUESTS),
        Spend::Refusal => (&mut cap.refusals, SPA_CAP_EVENTS),
    };
    if *used >= limit {
        return false;
    }
    *used += 1;
    true
}
