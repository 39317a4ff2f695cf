//! Single Packet Authorization: every datagram to the SPA port is dropped. Within its
//! source's budget, one that could be a client's request is handed to `xknock run`
//! (which verifies it) through XK_SPA_REQUESTS, and any other is a `SpaRefused` event.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use knock_common::{
    ACCESS_DENY, Counter, Event, EventKind, PROTO_UDP, SPA_BUDGET, SPA_BUDGET_WINDOW_NS, SPA_KEY_ID_LEN,
    SPA_MAX_PAYLOAD, SPA_VERSION, SourceAddr, SpaBudget, SpaKeyId, SpaRefusal,
};

use crate::{
    access, count,
    maps::{XK_EVENTS, XK_SETTINGS, XK_SPA_BUDGETS, XK_SPA_KEYS, XK_SPA_REQUESTS},
    now_ns,
    parse::Transport,
};

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
    // The budget comes first, so what is refused below costs at most SPA_BUDGET
    // events per source and second, like what is handed over.
    let now = now_ns(settings);
    if !within_budget(&packet.src, now) {
        return Counter::SpaShed;
    }
    let len = transport.payload_len as usize;
    if let Err(refusal) = check(ctx, transport) {
        refused(&packet.src, refusal, transport.dst_port, now);
        return Counter::SpaRefused;
    }
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

/// Whether a client could have sent the datagram: its size, version and key id.
#[inline(always)]
fn check(ctx: &XdpContext, transport: &Transport) -> Result<(), SpaRefusal> {
    let len = transport.payload_len as usize;
    if len < 1 + SPA_KEY_ID_LEN || len > SPA_MAX_PAYLOAD {
        return Err(SpaRefusal::Malformed);
    }
    // The helper checks the bounds itself: the payload's offset is not a constant the
    // verifier could follow through a packet pointer.
    // Two words, not a byte array, which LLVM would clear with a call to memset (a
    // stack frame the verifier counts); bpfel, so byte 0 is the low byte of word 0.
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
    if read != 0 || head[0] as u8 != SPA_VERSION {
        return Err(SpaRefusal::Malformed);
    }
    let key = SpaKeyId {
        id: ((head[0] >> 8) | (head[1] << 56)).to_le_bytes(),
    };
    // SAFETY: only whether the key exists is used.
    if unsafe { XK_SPA_KEYS.get(&key) }.is_none() {
        return Err(SpaRefusal::UnknownKey);
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

/// Counts the request against its source's budget; false when it is spent.
#[inline(always)]
fn within_budget(src: &[u8; 16], now: u64) -> bool {
    let key = SourceAddr { addr: *src };
    if let Some(budget) = XK_SPA_BUDGETS.get_ptr_mut(&key) {
        // SAFETY: a map value; two CPUs racing here can only let a request or two
        // more through.
        let budget = unsafe { &mut *budget };
        if now.saturating_sub(budget.window_start_ns) < SPA_BUDGET_WINDOW_NS {
            if budget.requests >= SPA_BUDGET {
                return false;
            }
            budget.requests += 1;
            return true;
        }
    }
    let fresh = SpaBudget {
        window_start_ns: now,
        requests: 1,
        _pad: 0,
    };
    // A full LRU evicts the oldest budget: at worst a flood's source starts afresh.
    let _ = XK_SPA_BUDGETS.insert(&key, &fresh, 0);
    true
}
