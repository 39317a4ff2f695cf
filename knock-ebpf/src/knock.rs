//! The knock state machine: one source's progress through one sequence, and the
//! failures that get a source banned.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, cty::c_void, helpers::generated::bpf_loop};
use aya_log_ebpf::warn;
use knock_common::{
    Authorization, Ban, Counter, Event, EventKind, MAX_KNOCKS, MAX_SEQUENCES, OneTimeId, OpenFailure, Origin,
    PROTO_TCP, PortProto, Progress, ResetReason, SEQ_IGNORE_WRONG, SequenceConfig, Settings, SourceAddr,
    SourceKey, auth_hint_slot,
};

use crate::{
    count, emit, emit_step, event,
    maps::{XK_AUTH_HINT, XK_AUTHORIZED, XK_BANS, XK_PROGRESS, XK_SEQUENCES, XK_SPENT},
    parse::Packet,
};

/// What every step of one packet needs.
pub struct Knocker<'a> {
    pub packet: &'a Packet,
    pub settings: &'a Settings,
    pub now: u64,
    /// RULE_PASS for a packet to a passing knock port, else 0: ordinary traffic to a
    /// serving port, as likely a visitor's, whose resets count towards no ban.
    pub passes: u8,
}

/// What `track` hands each round of its loop over the sequences.
struct Round {
    packet: Packet,
    settings: Settings,
    now: u64,
    passes: u8,
    knock_mask: u8,
    strict_mask: u8,
}

/// bpf_loop's callback: sequence `index` of one packet. Returns 0 to go on.
extern "C" fn one_sequence(index: u64, round: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Round` that `track` gave it.
    let round = unsafe { &*(round as *const Round) };
    let knocker = Knocker {
        packet: &round.packet,
        settings: &round.settings,
        now: round.now,
        passes: round.passes,
    };
    knocker.sequence(index as u8, round.knock_mask, round.strict_mask);
    0
}

/// Whether `src` can never be a knocking peer: IPv4 0.0.0.0/8, 127.0.0.0/8,
/// 224.0.0.0/4 and 255.255.255.255 (IPv4-mapped), IPv6 `::`, `::1` and ff00::/8.
/// userspace's `addr::is_martian` says the same.
#[inline(always)]
pub fn is_martian(src: &[u8; 16]) -> bool {
    let word = |i: usize| {
        let at = i % 4 * 4;
        u32::from_be_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]])
    };
    let (w0, w1, w2, w3) = (word(0), word(1), word(2), word(3));
    if w0 | w1 == 0 && w2 == 0xffff {
        let first = w3 >> 24;
        first == 0 || first == 127 || (224..240).contains(&first) || w3 == u32::MAX
    } else {
        (w0 | w1 | w2 == 0 && w3 <= 1) || w0 >> 24 == 0xff
    }
}

/// Whether `src` is banned now. Costs nothing while bans are off.
#[inline(always)]
pub fn banned(src: &[u8; 16], settings: &Settings, now: u64) -> bool {
    settings.ban_failures != 0 && ban_in_force(src, settings.ban_ipv6_prefix, now)
}

/// `banned`'s lookup, out of line: the verifier then checks the key's arithmetic once,
/// not on every path that asks.
#[inline(never)]
fn ban_in_force(src: &[u8; 16], prefix: u8, now: u64) -> bool {
    // SAFETY: the value is read at once.
    unsafe { XK_BANS.get(&ban_key(src, prefix)) }.is_some_and(|b| now < b.until_ns)
}

/// The ban map's key for `src`: an IPv4 (mapped) address whole, an IPv6 address cut
/// to its first `prefix` bits (0, unset, counts as 128), so that one network's
/// addresses share one ban. userspace's `addr::ban_key` does the same.
#[inline(always)]
fn ban_key(src: &[u8; 16], prefix: u8) -> SourceAddr {
    // SAFETY: [u8; 16] and [u64; 2] have the same size, any bits are valid.
    let [hi, lo] = unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(*src) };
    let (hi, lo) = (u64::from_be(hi), u64::from_be(lo));
    if hi == 0 && lo >> 32 == 0xffff {
        return SourceAddr { addr: *src };
    }
    let bits = if prefix == 0 || prefix > 128 {
        128
    } else {
        u32::from(prefix)
    };
    let mask = |bits: u32| match bits {
        0 => 0,
        64.. => u64::MAX,
        n => u64::MAX << (64 - n),
    };
    let (hi, lo) = (hi & mask(bits.min(64)), lo & mask(bits.saturating_sub(64)));
    let words = [hi.to_be(), lo.to_be()];
    // SAFETY: as above.
    let addr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) };
    SourceAddr { addr }
}

impl Knocker<'_> {
    /// Updates the source's progress in every sequence the packet concerns: those it
    /// is a knock of (`knock_mask`) and the strict ones, which see all its SYNs and
    /// datagrams. A banned source's packets change nothing; every reset counts as a
    /// failure towards a ban, except those a passing knock causes.
    #[inline(always)]
    pub fn track(&self, knock_mask: u8, strict_mask: u8) {
        if banned(&self.packet.src, self.settings, self.now) {
            if knock_mask != 0 {
                count(Counter::BannedKnock);
            }
            return;
        }
        let mut round = Round {
            packet: *self.packet,
            settings: *self.settings,
            now: self.now,
            passes: self.passes,
            knock_mask,
            strict_mask,
        };
        // bpf_loop, not a Rust loop: the verifier checks the callback once, where an
        // unrolled loop would be checked once per sequence and per path into it.
        // SAFETY: the callback has bpf_loop's signature and reads `round` only.
        unsafe {
            bpf_loop(
                // Up to the highest sequence concerned, usually the first few.
                (u8::BITS - (knock_mask | strict_mask).leading_zeros()).min(MAX_SEQUENCES as u32),
                one_sequence as *mut c_void,
                (&raw mut round).cast(),
                0,
            );
        }
    }

    /// Sequence `seq`'s part of `track`.
    #[inline(always)]
    fn sequence(&self, seq: u8, knock_mask: u8, strict_mask: u8) {
        let bit = 1u8 << (seq & 7);
        if (knock_mask | strict_mask) & bit == 0 {
            return;
        }
        let Some(config) = XK_SEQUENCES.get(seq as u32) else {
            return;
        };
        // A time-based slot past its period and grace: closed even while `run`,
        // which would have rewritten it, is not there.
        if config.valid_until_ns != 0 && self.now >= config.valid_until_ns {
            return;
        }
        let is_knock = knock_mask & bit != 0 && self.flags_match(config);
        if is_knock || strict_mask & bit != 0 {
            self.step(seq, config, is_knock);
        }
    }

    #[inline(always)]
    fn flags_match(&self, config: &SequenceConfig) -> bool {
        let flags = self.packet.tcp_flags;
        self.packet.proto != PROTO_TCP
            || (flags & config.tcp_flags_set == config.tcp_flags_set && flags & config.tcp_flags_clear == 0)
    }

    #[inline(always)]
    fn step(&self, seq: u8, config: &SequenceConfig, is_knock: bool) {
        let key = SourceKey {
            addr: self.packet.src,
            seq,
            _pad: [0; 3],
        };
        let now = self.now;
        // Steps accepted so far that still count, and when the first of them came.
        let mut done = 0u8;
        let mut first_ns = now;
        // SAFETY: the value is copied out before the map is changed.
        let stored = unsafe { XK_PROGRESS.get(&key) }.copied();
        if let Some(progress) = stored {
            let stale = now.saturating_sub(progress.last_ns) > config.step_timeout_ns
                || now.saturating_sub(progress.first_ns) > config.sequence_timeout_ns;
            if stale {
                self.reset(&key, config, progress.step, ResetReason::Timeout);
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
                    self.reset(&key, config, done, ResetReason::Strict);
                }
            }
            return;
        }

        let this = Some(PortProto::new(self.packet.dst_port, self.packet.proto));
        if knock_at(config, done) == this {
            self.advance(&key, config, done + 1, first_ns);
        } else if done > 0 && knock_at(config, done - 1) == this {
            // A retransmitted or duplicated copy of the knock just accepted.
        } else if done > 0 && config.flags & SEQ_IGNORE_WRONG != 0 {
            // Out of order, but progress stands: a spoofed knock cannot reset it.
        } else {
            if done > 0 {
                self.reset(&key, config, done, ResetReason::Wrong);
            }
            if knock_at(config, 0) == this {
                self.advance(&key, config, 1, now);
            } else if stored.is_some() {
                let _ = XK_PROGRESS.remove(&key);
            }
        }
    }

    /// Records `done` accepted steps; the last one authorizes the source.
    #[inline(always)]
    fn advance(&self, key: &SourceKey, config: &SequenceConfig, done: u8, first_ns: u64) {
        let now = self.now;
        let mut knock = event(EventKind::Knock, key, self.packet, now);
        knock.step = done;
        knock.of = config.n_knocks;
        emit_step(&knock, self.settings, Counter::SuppressedKnock);
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
        let open = event(EventKind::Open, key, self.packet, now);
        authorize(key, &open, config, self.settings.auth_hint_shift);
    }

    /// Progress lost: an event, and maybe a failure towards a ban (`fail`).
    #[inline(always)]
    fn reset(&self, key: &SourceKey, config: &SequenceConfig, step: u8, reason: ResetReason) {
        let mut ev = event(EventKind::Reset, key, self.packet, self.now);
        ev.step = step;
        ev.of = config.n_knocks;
        ev.reason = reason as u8;
        emit_step(&ev, self.settings, Counter::SuppressedReset);
        fail(&self.packet.src, self.settings, self.now, self.passes);
    }
}

/// Records one-time line `id` as used; false if it was already (or cannot be
/// recorded: fail closed). The insert is atomic, so of two CPUs completing the same
/// line at once only one opens. Out of line, like `fail`.
#[inline(never)]
fn spend(id: u64, now: u64) -> bool {
    XK_SPENT
        .insert(&OneTimeId { id }, &now, BPF_NOEXIST.into())
        .is_ok()
}

/// Counts a failure, unless bans are off or a passing knock (`passes` nonzero) made
/// it; more than `ban_failures` within `ban_window` bans the source. Kept out of
/// line, with every check inside: the verifier then sees one call per reset, not
/// its branches.
#[inline(never)]
fn fail(src: &[u8; 16], s: &Settings, now: u64, passes: u8) {
    if s.ban_failures == 0 || passes != 0 {
        return;
    }
    let addr = ban_key(src, s.ban_ipv6_prefix);
    // SAFETY: the value is copied out before the map is changed.
    let mut ban: Ban = unsafe { XK_BANS.get(&addr) }.copied().unwrap_or_default();
    if now.saturating_sub(ban.window_start_ns) > s.ban_window_ns {
        ban.window_start_ns = now;
        ban.failures = 0;
    }
    ban.failures += 1;
    if ban.failures > s.ban_failures {
        ban.until_ns = now.saturating_add(s.ban_for_ns);
        ban.failures = 0;
        ban.window_start_ns = now;
        // The key, not the source: for IPv6 the ban is the prefix's.
        emit(&Event {
            ts_ns: now,
            addr: addr.addr,
            kind: EventKind::Ban as u8,
            ..Event::default()
        });
    }
    // A full LRU evicts the oldest record; nothing to handle.
    let _ = XK_BANS.insert(&addr, &ban, 0);
}

/// Authorizes `key` for its sequence's `open_for` and reports it with `open` (or, if
/// the map is full or the sequence's one-time line was used, reports that: existing
/// authorizations are kept, this one is refused loudly). A new authorization is
/// counted in its hint slot before it exists, so the hint is never below the truth.
/// Out of line, like `fail`.
#[inline(never)]
fn authorize(key: &SourceKey, open: &Event, config: &SequenceConfig, hint_shift: u32) {
    let mut open = *open;
    if config.one_time_id != 0 && !spend(config.one_time_id, open.ts_ns) {
        count(Counter::OneTimeSpent);
        open.kind = EventKind::OpenFailed as u8;
        open.reason = OpenFailure::Spent as u8;
        emit(&open);
        return;
    }
    let expires_ns = open.ts_ns.saturating_add(config.open_for_ns);
    let auth = Authorization::new(open.ts_ns, expires_ns, Origin::Knock);
    if let Some(existing) = XK_AUTHORIZED.get_ptr_mut(key) {
        // A renewal: the entry (and its count) stays. Racing with a revoke, the
        // revoke wins, as it would a moment later.
        // SAFETY: a map value; a concurrent reader sees the old or the new times.
        unsafe { *existing = auth };
    } else {
        let slot = XK_AUTH_HINT.get_ptr_mut(auth_hint_slot(&key.addr, hint_shift));
        hint_add(slot, 1);
        match XK_AUTHORIZED.insert(key, &auth, BPF_NOEXIST.into()) {
            Ok(()) => {}
            // Another CPU authorized the same source at the same moment, and counted it.
            Err(EEXIST) => hint_add(slot, u64::MAX),
            Err(_) => {
                hint_add(slot, u64::MAX);
                count(Counter::AuthFull);
                open.kind = EventKind::OpenFailed as u8;
                // aya-log 0.4 does not use the context it is given.
                warn!(&(), "authorization map full: sequence {} not opened", key.seq);
            }
        }
    }
    emit(&open);
}

/// -EEXIST, as map updates return it.
const EEXIST: i32 = -17;

/// Adds `n` (wrapping: u64::MAX subtracts one) to a hint slot, atomically: the loader
/// changes slots at the same time.
#[inline(always)]
fn hint_add(slot: Option<*mut u64>, n: u64) {
    if let Some(slot) = slot {
        // SAFETY: a map value, aligned; every writer uses atomics. The intrinsic
        // because core's atomic types lack fetch_add on BPF (no compare-and-swap).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
    }
}

/// Knock `index` of the sequence, if it has that many.
#[inline(always)]
fn knock_at(config: &SequenceConfig, index: u8) -> Option<PortProto> {
    if index >= config.n_knocks {
        return None;
    }
    config.knocks.get(index as usize % MAX_KNOCKS).copied()
}
