//! The knock state machine: one source's progress through one sequence.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::warn;
use knock_common::{
    Authorization, Counter, EventKind, MAX_KNOCKS, MAX_SEQUENCES, PROTO_TCP, PortProto, Progress,
    ResetReason, SequenceConfig, SourceKey,
};

use crate::{
    count, emit, event,
    maps::{XK_AUTHORIZED, XK_PROGRESS, XK_SEQUENCES},
    parse::Packet,
};

/// Updates the source's progress in every sequence that `packet` concerns: those it is
/// a knock of (`knock_mask`) and the strict ones that see all its SYNs and datagrams.
#[inline(always)]
pub fn track(ctx: &XdpContext, packet: &Packet, knock_mask: u8, strict_mask: u8, now: u64) {
    for seq in 0..MAX_SEQUENCES as u8 {
        let bit = 1u8 << seq;
        if (knock_mask | strict_mask) & bit == 0 {
            continue;
        }
        let Some(config) = XK_SEQUENCES.get(seq as u32) else {
            continue;
        };
        let is_knock = knock_mask & bit != 0 && flags_match(config, packet);
        if is_knock || strict_mask & bit != 0 {
            step(ctx, seq, config, packet, is_knock, now);
        }
    }
}

#[inline(always)]
fn flags_match(config: &SequenceConfig, packet: &Packet) -> bool {
    packet.proto != PROTO_TCP
        || (packet.tcp_flags & config.tcp_flags_set == config.tcp_flags_set
            && packet.tcp_flags & config.tcp_flags_clear == 0)
}

/// Knock `index` of the sequence, if it has that many.
#[inline(always)]
fn knock_at(config: &SequenceConfig, index: u8) -> Option<PortProto> {
    if index >= config.n_knocks {
        return None;
    }
    config.knocks.get(index as usize % MAX_KNOCKS).copied()
}

#[inline(always)]
fn step(ctx: &XdpContext, seq: u8, config: &SequenceConfig, packet: &Packet, is_knock: bool, now: u64) {
    let key = SourceKey {
        addr: packet.src,
        seq,
        _pad: [0; 3],
    };
    let of = config.n_knocks;
    // Steps accepted so far that still count, and when the first of them came.
    let mut done = 0u8;
    let mut first_ns = now;
    // SAFETY: the value is copied out before the map is changed.
    let stored = unsafe { XK_PROGRESS.get(&key) }.copied();
    if let Some(progress) = stored {
        let stale = now.saturating_sub(progress.last_ns) > config.step_timeout_ns
            || now.saturating_sub(progress.first_ns) > config.sequence_timeout_ns;
        if stale {
            reset(&key, packet, now, progress.step, of, ResetReason::Timeout);
        } else {
            done = progress.step;
            first_ns = progress.first_ns;
        }
    }

    if !is_knock {
        // Strict mode: some other SYN or datagram from this source.
        if stored.is_some() {
            let _ = XK_PROGRESS.remove(&key);
            if done > 0 {
                reset(&key, packet, now, done, of, ResetReason::Strict);
            }
        }
        return;
    }

    let this = Some(PortProto::new(packet.dst_port, packet.proto));
    if knock_at(config, done) == this {
        advance(ctx, &key, config, packet, done + 1, first_ns, now);
    } else if done > 0 && knock_at(config, done - 1) == this {
        // A retransmitted or duplicated copy of the knock just accepted.
    } else {
        if done > 0 {
            reset(&key, packet, now, done, of, ResetReason::Wrong);
        }
        if knock_at(config, 0) == this {
            advance(ctx, &key, config, packet, 1, now, now);
        } else if stored.is_some() {
            let _ = XK_PROGRESS.remove(&key);
        }
    }
}

/// Records `done` accepted steps; the last one authorizes the source.
#[inline(always)]
fn advance(
    ctx: &XdpContext,
    key: &SourceKey,
    config: &SequenceConfig,
    packet: &Packet,
    done: u8,
    first_ns: u64,
    now: u64,
) {
    let mut knock = event(EventKind::Knock, key, packet, now);
    knock.step = done;
    knock.of = config.n_knocks;
    emit(&knock);
    if done < config.n_knocks {
        let progress = Progress {
            first_ns,
            last_ns: now,
            step: done,
            _pad: [0; 7],
        };
        // An LRU insert only fails if the kernel cannot allocate; the source then
        // simply starts over.
        let _ = XK_PROGRESS.insert(key, &progress, 0);
        return;
    }
    let _ = XK_PROGRESS.remove(key);
    let auth = Authorization {
        expires_ns: now.saturating_add(config.open_for_ns),
        opened_ns: now,
    };
    let mut open = event(EventKind::Open, key, packet, now);
    if XK_AUTHORIZED.insert(key, &auth, 0).is_err() {
        // Full: existing authorizations are kept, this one is refused loudly.
        count(Counter::AuthFull);
        open.kind = EventKind::OpenFailed as u8;
        warn!(ctx, "authorization map full: sequence {} not opened", key.seq);
    }
    emit(&open);
}

#[inline(always)]
fn reset(key: &SourceKey, packet: &Packet, now: u64, step: u8, of: u8, reason: ResetReason) {
    let mut ev = event(EventKind::Reset, key, packet, now);
    ev.step = step;
    ev.of = of;
    ev.reason = reason as u8;
    emit(&ev);
}
