//! The pinned maps' layout is versioned (`LAYOUT_VERSION`): a `run` adopts pinned
//! maps only of its own layout. This fails when a shared type changes without the
//! version changing, so that a new xknock never misreads an older one's maps.

use std::mem::{offset_of, size_of};

use knock_common::*;

/// Every shared type's size, and each field's name and offset.
macro_rules! describe {
    ($($t:ident { $($f:ident),* })*) => {{
        let mut s = String::new();
        $(
            s += &format!("{} {}:", stringify!($t), size_of::<$t>());
            $( s += &format!(" {}@{}", stringify!($f), offset_of!($t, $f)); )*
            s += "\n";
        )*
        s
    }};
}

/// FNV-1a, 64 bits: short enough to record below.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The layout version and the fingerprint of the types (and the counter slots' and
/// flags' values) it stands for.
const RECORDED: (u32, u64) = (7, 0xe369_4675_6cd1_2041);

#[test]
fn layout_snapshot() {
    let text = describe! {
        Meta { layout, _pad, created_by }
        SequenceConfig { step_timeout_ns, sequence_timeout_ns, open_for_ns, idle_timeout_ns, knocks,
            protect, n_knocks, n_protect, flags, tcp_flags_set, tcp_flags_clear, _pad, name, valid_until_ns, one_time_id }
        PortProto { port, proto, _pad }
        PortRule { knock_mask, protect_mask, strict_mask, flags }
        Settings { test_now_ns, ban_window_ns, ban_for_ns, ban_failures, auth_hint_shift,
            access_rules, ban_ipv6_prefix, spa_port, stealth, _pad2, event_cost_ns, event_burst_ns }
        SourceAddr { addr }
        SourceKey { addr, seq, _pad }
        Progress { first_ns, last_ns, step, _pad }
        Authorization { expires_ns, opened_ns, origin, _pad }
        OneTimeId { id }
        EventBudget { credit_ns, last_ns }
        Ban { window_start_ns, until_ns, failures, _pad }
        FlowKey { addr, src_port, dst_port, proto, _pad }
        Flow { last_ns, idle_timeout_ns }
        Event { ts_ns, addr, kind, seq, step, of, reason, proto, port }
        SpaKeyId { id }
        SpaCheckKey { k }
        SpaBudget { window_start_ns, requests, refusals }
        SpaCap { window_start_ns, requests, refusals }
        SpaRequest { ts_ns, addr, len, _pad, payload }
    };
    // What the values mean counts too: counter slots and array sizes.
    let text = format!(
        "{text}COUNTERS {COUNTERS} MAX_SEQUENCES {MAX_SEQUENCES} PORT_RULE_ENTRIES {PORT_RULE_ENTRIES}\n\
         counters {:?}\nflags SEQ {SEQ_STRICT} {SEQ_KEEP_ESTABLISHED} {SEQ_IGNORE_WRONG} RULE_SPA {RULE_SPA} RULE_STEALTH {RULE_STEALTH} RULE_FWKNOP {RULE_FWKNOP} RULE_PASS {RULE_PASS} {RULE_PASS_ANY_TCP} \
         ACCESS {ACCESS_ALLOW} {ACCESS_DENY} ORIGIN {} {} {} {} SPENT_ENTRIES {SPENT_ENTRIES}\n",
        Counter::ALL,
        Origin::Knock as u8,
        Origin::Spa as u8,
        Origin::Allow as u8,
        Origin::Fleet as u8,
    );
    let now = (LAYOUT_VERSION, fingerprint(&text));
    assert_eq!(
        now,
        RECORDED,
        "the shared types are not what LAYOUT_VERSION {} was recorded for. If they changed, \
         bump LAYOUT_VERSION in knock-common and record ({}, {:#x}) here.\n{text}",
        RECORDED.0,
        LAYOUT_VERSION + u32::from(LAYOUT_VERSION == RECORDED.0),
        now.1
    );
}
