//! Defences through `BPF_PROG_TEST_RUN`: the brute-force ban and `wrong_knock =
//! "ignore"`, with the maps and events checked and time moved by hand.

#![allow(clippy::cloned_ref_to_slice_refs, reason = "test frames are cheap to clone")]

use std::time::Duration;

use knock_common::{Counter, EventKind};
use xknock_tests::{
    frame::Frame,
    harness::{A, B, DROP, Harness, PASS, SSH, ssh_knocks},
};

const BAN_CONFIG: &str = r#"
[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
open_for = "5m"

[ban]
failures = 3
window = "1m"
ban_for = "10m"
"#;

/// One failure: step 1, then a knock of the sequence out of order.
fn fail_once(h: &Harness, src: &str) {
    h.knock(&[Frame::syn(src, 7000), Frame::syn(src, 9000)]);
}

#[test]
fn more_than_n_failures_in_the_window_ban_the_source() {
    let mut h = Harness::with_config(BAN_CONFIG);
    for _ in 0..3 {
        fail_once(&h, A);
    }
    assert!(!h.banned(A), "three failures are allowed");
    fail_once(&h, A);
    assert!(h.banned(A), "the fourth bans");
    assert!(h.kinds().iter().any(|(k, _, _)| *k == EventKind::Ban));
    // Banned: the right sequence is ignored (and still dropped), nothing opens.
    h.knock(&ssh_knocks(A));
    assert_eq!(h.step(A, SSH), None, "a banned source's knocks are ignored");
    assert!(!h.authorized(A, SSH));
    assert!(h.counter(Counter::BannedKnock) >= 3);
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP);
    // Others are not affected.
    h.knock(&ssh_knocks(B));
    assert_eq!(h.send(&Frame::syn(B, 22)), PASS);
    // The ban ends after ban_for.
    h.advance(Duration::from_secs(601));
    assert!(!h.banned(A));
    h.knock(&ssh_knocks(A));
    assert_eq!(
        h.send(&Frame::syn(A, 22)),
        PASS,
        "knocking works again after the ban"
    );
}

#[test]
fn failures_spread_wider_than_the_window_do_not_ban() {
    let mut h = Harness::with_config(BAN_CONFIG);
    for _ in 0..10 {
        fail_once(&h, A);
        fail_once(&h, A);
        h.advance(Duration::from_secs(61));
    }
    assert!(!h.banned(A));
    // Timeouts count too: progress abandoned and picked up stale.
    for _ in 0..4 {
        h.knock(&[Frame::syn(A, 7000)]);
        h.advance(Duration::from_secs(6));
    }
    h.knock(&[Frame::syn(A, 7000)]);
    assert!(h.banned(A), "four timeouts within a minute ban");
}

#[test]
fn a_ban_closes_the_ports_even_to_an_authorized_source_and_unban_lifts_it() {
    let mut h = Harness::with_config(BAN_CONFIG);
    h.knock(&ssh_knocks(A));
    assert_eq!(h.send(&Frame::syn(A, 22)), PASS);
    for _ in 0..4 {
        fail_once(&h, A);
    }
    assert!(h.banned(A));
    assert_eq!(
        h.send(&Frame::syn(A, 22).sport(40001)),
        DROP,
        "authorized but banned"
    );
    assert!(h.state.unban(A.parse().unwrap()).expect("unban"), "it was banned");
    assert_eq!(
        h.send(&Frame::syn(A, 22).sport(40002)),
        PASS,
        "the authorization is still there"
    );
}

#[test]
fn bans_can_be_turned_off() {
    let h = Harness::with_config(&BAN_CONFIG.replace("failures = 3", "failures = 0"));
    for _ in 0..20 {
        fail_once(&h, A);
    }
    assert!(!h.banned(A));
    h.knock(&ssh_knocks(A));
    assert_eq!(h.send(&Frame::syn(A, 22)), PASS);
}

#[test]
fn ignore_mode_leaves_progress_alone_on_out_of_order_knocks() {
    let mut h = Harness::with_config(&BAN_CONFIG.replace("open_for", "wrong_knock = \"ignore\"\nopen_for"));
    let [k1, k2, k3] = ssh_knocks(A);
    // A spoofed knock of the sequence, out of order, between the victim's knocks.
    h.knock(&[
        k1.clone(),
        k3.clone(),
        k2.clone(),
        Frame::syn(A, 7000),
        k3.clone(),
    ]);
    assert!(h.authorized(A, SSH), "out-of-order knocks were ignored");
    assert!(h.kinds().iter().all(|(k, _, _)| *k != EventKind::Reset));
    assert!(!h.banned(A), "ignored knocks are not failures");
    // Timeouts still reset.
    h.knock(&[k1.clone()]);
    h.advance(Duration::from_secs(6));
    h.knock(&[k2]);
    assert_eq!(h.step(A, SSH), None);
}

const LISTS: &str = r#"
allow = ["198.18.0.0/24", "fd00:1::/64"]
deny = ["198.18.0.11", "fd00::/16"]

[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
"#;

#[test]
fn allow_and_deny_lists_decide_by_longest_prefix() {
    let h = Harness::with_config(LISTS);
    // Allowed without knocking, IPv4 and IPv6 (fd00:1::/64 inside the denied fd00::/16).
    assert_eq!(
        h.send(&Frame::syn(A, 22)),
        PASS,
        "198.18.0.10 is in the allowed /24"
    );
    assert_eq!(
        h.send(&Frame::syn("fd00:1::5", 22)),
        PASS,
        "the /64 beats the denied /16"
    );
    assert_eq!(h.counter(Counter::PassAllowed), 2);
    // Denied: the /32 inside the allowed /24, and the rest of fd00::/16. Their knocks
    // are ignored, so even the right sequence opens nothing.
    for src in [B, "fd00:2::9"] {
        h.knock(&ssh_knocks(src));
        assert_eq!(h.step(src, SSH), None, "{src}'s knocks are ignored");
        assert!(!h.authorized(src, SSH));
        assert_eq!(h.send(&Frame::syn(src, 22)), DROP, "{src} is denied");
        assert_eq!(
            h.send(&Frame::syn(src, 80)),
            PASS,
            "unrelated traffic still passes for {src}"
        );
    }
    assert!(h.counter(Counter::DropDenied) >= 8);
    // Unlisted sources knock as usual.
    h.knock(&ssh_knocks("198.18.9.9"));
    assert_eq!(h.send(&Frame::syn("198.18.9.9", 22)), PASS);
    assert_eq!(h.send(&Frame::syn("198.18.9.8", 22)), DROP);
}

#[test]
fn a_full_authorization_map_refuses_new_ones_loudly_and_keeps_the_old() {
    let mut h = Harness::with_config(&format!("{BAN_CONFIG}\n[limits]\nauthorized = 2\n"));
    for src in ["198.18.5.1", "198.18.5.2"] {
        h.knock(&ssh_knocks(src));
    }
    let _ = h.events();
    h.knock(&ssh_knocks("198.18.5.3"));
    assert!(!h.authorized("198.18.5.3", SSH), "no room: refused");
    assert!(
        h.kinds().iter().any(|(k, _, _)| *k == EventKind::OpenFailed),
        "refused loudly"
    );
    assert_eq!(h.counter(Counter::AuthFull), 1);
    for src in ["198.18.5.1", "198.18.5.2"] {
        assert_eq!(
            h.send(&Frame::syn(src, 22)),
            PASS,
            "{src} keeps its authorization"
        );
    }
    assert_eq!(h.send(&Frame::syn("198.18.5.3", 22)), DROP);
}

#[test]
fn a_flood_that_evicts_progress_authorizes_nobody_by_accident() {
    let h = Harness::with_config(&format!("{BAN_CONFIG}\n[limits]\nin_progress = 64\n"));
    // A source part-way through, then a flood of first knocks from 2,000 others.
    h.knock(&[Frame::syn(A, 7000), Frame::udp(A, 8000)]);
    let flood: Vec<String> = (0..2000)
        .map(|i| format!("198.19.{}.{}", i / 250, i % 250 + 1))
        .collect();
    for src in &flood {
        h.knock(&[Frame::syn(src, 7000)]);
    }
    let tracked = h.state.progress.keys().count();
    assert!(tracked <= 64 + 64, "the map holds about its limit, not {tracked}");
    // Each flooding source now sends the last knock only: nothing may open for it.
    for src in &flood {
        h.knock(&[Frame::syn(src, 9000)]);
        assert!(!h.authorized(src, SSH), "{src} never sent 8000/udp");
    }
    // A's progress was evicted (or not): it is authorized only if it really completes.
    h.knock(&[Frame::syn(A, 9000)]);
    let evicted = !h.authorized(A, SSH);
    h.knock(&ssh_knocks(A));
    assert!(
        h.authorized(A, SSH),
        "a full sequence still opens after the flood"
    );
    println!(
        "A's progress was {}evicted by the flood",
        if evicted { "" } else { "not " }
    );
}
