//! The knock state machine through `BPF_PROG_TEST_RUN`: verdicts, the progress and
//! authorization maps, and the events, with time moved by hand.

#![allow(clippy::cloned_ref_to_slice_refs, reason = "test frames are cheap to clone")]

use std::time::Duration;

use knock_common::{Counter, EventKind, ResetReason};
use xknock_tests::{
    frame::{ACK, FIN, Frame, SYN},
    harness::{A, A6, B, DROP, Harness, PASS, SSH, WEB, ssh_knocks},
};

#[test]
fn full_sequence_opens_the_protected_ports_for_that_source_only() {
    let mut h = Harness::new();
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP);
    let [k1, k2, k3] = ssh_knocks(A);
    h.knock(&[k1]);
    assert_eq!(h.step(A, SSH), Some(1));
    h.knock(&[k2]);
    assert_eq!(h.step(A, SSH), Some(2));
    assert!(!h.authorized(A, SSH));
    h.knock(&[k3]);
    assert_eq!(
        h.step(A, SSH),
        None,
        "a completed sequence leaves the progress map"
    );
    assert!(h.authorized(A, SSH));
    assert_eq!(
        h.kinds(),
        vec![
            (EventKind::Knock, SSH, 1),
            (EventKind::Knock, SSH, 2),
            (EventKind::Knock, SSH, 3),
            (EventKind::Open, SSH, 0)
        ]
    );
    assert_eq!(h.send(&Frame::syn(A, 22)), PASS, "authorized source");
    assert_eq!(h.send(&Frame::syn(B, 22)), DROP, "another source");
    assert_eq!(h.send(&Frame::syn(A, 8080)), DROP, "another sequence's port");
    assert_eq!(h.counter(Counter::DropKnock), 3);
    assert_eq!(h.counter(Counter::PassAuthorized), 1);
    assert_eq!(h.counter(Counter::DropProtected), 3);
}

#[test]
fn ipv6_and_vlan_tagged_knocks_work_like_plain_ipv4() {
    let h = Harness::new();
    h.knock(&ssh_knocks(A6));
    assert!(h.authorized(A6, SSH));
    assert_eq!(h.send(&Frame::syn(A6, 22).ext(60)), PASS);
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP);
    for k in ssh_knocks(B) {
        h.knock(&[k.vlan(0x88a8).vlan(0x8100)]);
    }
    assert!(h.authorized(B, SSH));
    assert_eq!(h.send(&Frame::syn(B, 22).vlan(0x8100)), PASS);
}

#[test]
fn a_repeated_knock_neither_advances_nor_resets() {
    let mut h = Harness::new();
    let [k1, k2, k3] = ssh_knocks(A);
    h.knock(&[k1.clone(), k1.clone()]);
    assert_eq!(h.step(A, SSH), Some(1));
    h.knock(&[k2.clone(), k2.clone(), k2]);
    assert_eq!(h.step(A, SSH), Some(2));
    h.knock(&[k3]);
    assert!(h.authorized(A, SSH));
    assert!(h.kinds().iter().all(|(k, _, _)| *k != EventKind::Reset));
}

#[test]
fn an_out_of_order_knock_resets_and_counts_as_step_one_if_it_is() {
    let mut h = Harness::new();
    let [k1, k2, k3] = ssh_knocks(A);
    h.knock(&[k1.clone(), k3.clone()]);
    assert_eq!(h.step(A, SSH), None, "9000 after 7000 resets");
    let events = h.events();
    let reset = events
        .iter()
        .find(|e| e.kind == EventKind::Reset as u8)
        .expect("reset event");
    assert_eq!((reset.reason, reset.step), (ResetReason::Wrong as u8, 1));
    h.knock(&[k1.clone(), k2.clone(), k1.clone()]);
    assert_eq!(h.step(A, SSH), Some(1), "7000 after 7000 8000 restarts at step 1");
    h.knock(&[k2, k3]);
    assert!(h.authorized(A, SSH));
    // A TCP knock must be a SYN without ACK.
    h.knock(&[
        Frame::syn(B, 7000).flags(SYN | ACK),
        Frame::syn(B, 7000).flags(ACK),
        Frame::syn(B, 7000).flags(FIN),
    ]);
    assert_eq!(h.step(B, SSH), None, "only a plain SYN knocks");
    h.knock(&[Frame::syn(B, 7000).flags(SYN | 0x08)]);
    assert_eq!(
        h.step(B, SSH),
        Some(1),
        "SYN with PSH still counts (only ACK is excluded)"
    );
}

#[test]
fn step_timeout_and_sequence_timeout_forget_progress() {
    let mut h = Harness::new();
    let [k1, k2, k3] = ssh_knocks(A);
    h.knock(&[k1.clone()]);
    h.advance(Duration::from_millis(5100));
    h.knock(&[k2.clone()]);
    assert_eq!(h.step(A, SSH), None, "a gap past step_timeout (5s)");
    assert_eq!(h.reset_reason(), Some(ResetReason::Timeout as u8));

    // Each gap within step_timeout, but all together past sequence_timeout (8s).
    h.knock(&[k1.clone()]);
    h.advance(Duration::from_millis(4500));
    h.knock(&[k2.clone()]);
    h.advance(Duration::from_millis(4500));
    h.knock(&[k3.clone()]);
    assert!(!h.authorized(A, SSH));
    assert_eq!(h.step(A, SSH), None);

    // Within both: opens.
    h.knock(&[k1]);
    h.advance(Duration::from_millis(4900));
    h.knock(&[k2]);
    h.advance(Duration::from_millis(2900));
    h.knock(&[k3]);
    assert!(h.authorized(A, SSH));
}

#[test]
fn the_window_closes_for_new_connections_but_established_ones_stay() {
    let mut h = Harness::new();
    h.knock(&ssh_knocks(A));
    let conn = Frame::syn(A, 22).sport(50000);
    assert_eq!(h.send(&conn), PASS, "SYN in the window");
    assert_eq!(h.send(&conn.clone().flags(ACK)), PASS);
    h.advance(Duration::from_secs(31));
    assert!(!h.authorized(A, SSH));
    assert_eq!(
        h.send(&conn.clone().flags(ACK)),
        PASS,
        "established connection after the window"
    );
    assert_eq!(h.send(&conn.clone().flags(ACK | 0x08)), PASS);
    assert_eq!(
        h.send(&Frame::syn(A, 22).sport(50001)),
        DROP,
        "new connection after the window"
    );
    assert_eq!(
        h.send(&Frame::syn(A, 22).sport(50001).flags(ACK)),
        DROP,
        "ACK of a connection never opened"
    );
    assert_eq!(
        h.send(&conn.clone()),
        DROP,
        "a new SYN on the same ports needs a new knock"
    );
    assert_eq!(
        h.send(&Frame::syn(B, 22).sport(50000).flags(ACK)),
        DROP,
        "same ports, other source"
    );
    assert!(h.counter(Counter::PassEstablished) >= 2);
    // Idle past idle_timeout (60s): forgotten.
    h.advance(Duration::from_secs(61));
    assert_eq!(
        h.send(&conn.clone().flags(ACK)),
        DROP,
        "idle connection forgotten"
    );
}

#[test]
fn without_keep_established_the_window_closing_cuts_connections() {
    let mut h = Harness::new();
    h.knock(&[Frame::udp(A, 7100), Frame::udp(A, 7200)]);
    assert!(h.authorized(A, WEB));
    let conn = Frame::syn(A, 8080).sport(50000);
    assert_eq!(h.send(&conn), PASS);
    assert_eq!(h.send(&conn.clone().flags(ACK)), PASS);
    assert_eq!(
        h.send(&Frame::udp(A, 5353)),
        PASS,
        "UDP protected port of the same sequence"
    );
    h.advance(Duration::from_secs(31));
    assert_eq!(h.send(&conn.clone().flags(ACK)), DROP);
    assert_eq!(h.send(&Frame::udp(A, 5353)), DROP);
}

#[test]
fn strict_mode_resets_on_any_other_syn_or_datagram() {
    let mut h = Harness::new();
    // web is strict: an unrelated SYN in between resets it.
    h.knock(&[Frame::udp(A, 7100)]);
    assert_eq!(h.step(A, WEB), Some(1));
    assert_eq!(
        h.send(&Frame::syn(A, 80)),
        PASS,
        "the unrelated SYN itself passes"
    );
    assert_eq!(h.step(A, WEB), None);
    assert_eq!(h.reset_reason(), Some(ResetReason::Strict as u8));
    // A non-SYN packet does not reset, and another source's SYN does not either.
    h.knock(&[Frame::udp(A, 7100)]);
    assert_eq!(h.send(&Frame::syn(A, 80).flags(ACK)), PASS);
    assert_eq!(h.send(&Frame::syn(B, 80)), PASS);
    assert_eq!(h.step(A, WEB), Some(1));
    // A knock of another sequence is "another SYN" for the strict one.
    h.knock(&[Frame::syn(A, 7000)]);
    assert_eq!(h.step(A, WEB), None);
    assert_eq!(h.step(A, SSH), Some(1));
    // ssh is not strict: the unrelated SYN leaves it alone.
    assert_eq!(h.send(&Frame::syn(A, 80)), PASS);
    assert_eq!(h.step(A, SSH), Some(1));
}

/// Strict masks sit in every port rule, so a configuration that drops strict mode
/// must clear them everywhere, not only on the configured ports.
#[test]
fn turning_strict_mode_off_clears_it_from_every_port() {
    let mut h = Harness::new();
    let relaxed = xknock_tests::harness::CONFIG.replace("strict = true", "strict = false");
    let config =
        xknock::config::Config::parse(std::path::Path::new("relaxed.toml"), &relaxed).expect("config");
    h.state.apply(&config).expect("apply");
    h.knock(&[Frame::udp(A, 7100)]);
    assert_eq!(h.send(&Frame::syn(A, 80)), PASS);
    assert_eq!(h.step(A, WEB), Some(1), "web is no longer strict");
    let rule = |index| h.state.port_rules.get(&index, 0).expect("port rule");
    assert_eq!(rule(80).strict_mask, 0, "an unconfigured TCP port");
    assert_eq!(rule(65536 + 53).strict_mask, 0, "an unconfigured UDP port");
}

#[test]
fn sources_and_sequences_interleave_without_disturbing_each_other() {
    let h = Harness::new();
    let [a1, a2, a3] = ssh_knocks(A);
    let [b1, b2, b3] = ssh_knocks(B);
    let [c1, c2, c3] = ssh_knocks(A6);
    h.knock(&[
        a1,
        b1,
        c1,
        a2,
        c2,
        b2,
        a3,
        Frame::udp(A, 7100),
        b3,
        Frame::udp(A, 7200),
        c3,
    ]);
    for src in [A, B, A6] {
        assert!(h.authorized(src, SSH), "{src} completed ssh");
    }
    // web is strict, so A's own knocks must not interleave with it; other sources' may.
    assert!(h.authorized(A, WEB), "A completed web between the others' knocks");
    assert!(!h.authorized(B, WEB));
}

#[test]
fn allow_and_revoke_from_userspace() {
    let mut h = Harness::new();
    h.state
        .allow(B.parse().unwrap(), SSH, Duration::from_secs(10))
        .expect("allow");
    assert_eq!(h.send(&Frame::syn(B, 22)), PASS);
    assert_eq!(h.state.revoke(B.parse().unwrap(), None).expect("revoke"), 1);
    assert_eq!(h.send(&Frame::syn(B, 22).sport(40001)), DROP);
    assert_eq!(
        h.send(&Frame::syn(B, 22).flags(ACK)),
        DROP,
        "revoke also forgets kept connections"
    );
    h.state
        .allow(B.parse().unwrap(), SSH, Duration::from_secs(10))
        .expect("allow");
    h.advance(Duration::from_secs(11));
    assert_eq!(h.send(&Frame::syn(B, 22).sport(40002)), DROP, "allow expires");
}

#[test]
fn a_single_knock_sequence_and_a_knock_port_shared_by_two_sequences() {
    let h = Harness::with_config(
        r#"
[[sequence]]
name = "one"
knocks = ["6000/udp"]
protect = ["2222/tcp"]

[[sequence]]
name = "two"
knocks = ["6000/udp", "6001/tcp"]
protect = ["3333/tcp"]
"#,
    );
    h.knock(&[Frame::udp(A, 6000)]);
    assert!(h.authorized(A, 0));
    assert_eq!(
        h.step(A, 1),
        Some(1),
        "the same knock is step 1 of the second sequence"
    );
    h.knock(&[Frame::syn(A, 6001)]);
    assert!(h.authorized(A, 1));
    assert_eq!(h.send(&Frame::syn(A, 3333)), PASS);
}

/// The authorization hint counts each authorization of a source once, whoever adds
/// it, and drops back when they go; the kernel trusts a zero (so an authorization the
/// hint does not count is not honoured until `repair_hint` counts it).
#[test]
fn the_authorization_hint_counts_what_the_kernel_and_the_loader_add_and_remove() {
    let mut h = Harness::new();
    let hint = |h: &Harness, src: &str| {
        let addr = xknock::net::mapped(src.parse().expect("addr"));
        h.state.auth_hint.get(&addr)
    };
    assert_eq!(hint(&h, A), 0);
    h.knock(&ssh_knocks(A));
    assert_eq!(hint(&h, A), 1, "a completed sequence");
    h.knock(&ssh_knocks(A));
    assert_eq!(hint(&h, A), 1, "a renewal is the same authorization");
    h.state
        .allow(A.parse().expect("addr"), WEB, Duration::from_secs(60))
        .expect("allow");
    assert_eq!(hint(&h, A), 2, "`allow` for another sequence");
    assert_eq!(h.state.revoke(A.parse().expect("addr"), None).expect("revoke"), 2);
    assert_eq!(hint(&h, A), 0, "both revoked");
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP);

    // An authorization written behind the hint's back, as an older program would.
    let key = xknock::net::source_key(B.parse().expect("addr"), SSH);
    let auth = knock_common::Authorization::new(
        h.now_ns(),
        h.now_ns() + 60_000_000_000,
        knock_common::Origin::Allow,
    );
    h.state.authorized.insert(&key, &auth, 0).expect("insert");
    assert_eq!(h.send(&Frame::syn(B, 22)), DROP, "the kernel trusts a zero slot");
    h.state.repair_hint();
    assert_eq!(hint(&h, B), 1);
    assert_eq!(h.send(&Frame::syn(B, 22)), PASS, "counted by the repair");
}
