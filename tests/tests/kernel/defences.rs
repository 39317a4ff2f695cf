//! Defences through `BPF_PROG_TEST_RUN`: the brute-force ban and `wrong_knock =
//! "ignore"`, with the maps and events checked and time moved by hand.

#![allow(clippy::cloned_ref_to_slice_refs, reason = "test frames are cheap to clone")]

use std::time::Duration;

use knock_common::{Counter, EventKind};
use xknock_tests::{
    frame::Frame,
    harness::{A, A6, B, DROP, Harness, PASS, SSH, ssh_knocks},
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

#[test]
fn an_ipv4_mapped_ipv6_source_is_dropped_before_anything_is_tracked() {
    let h = Harness::new();
    let mapped = "::ffff:198.18.0.10";
    // The whole ssh sequence over IPv6 from A's mapped form.
    h.knock(&ssh_knocks(mapped));
    assert_eq!(h.step(A, SSH), None, "no progress for A");
    assert!(!h.authorized(A, SSH), "the IPv4 address is not authorized");
    assert_eq!(h.state.progress.keys().count(), 0, "nothing tracked at all");
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP, "A over IPv4 is still closed");
    // Linux drops these whatever they carry; so does the filter.
    assert_eq!(h.send(&Frame::syn(mapped, 80)), DROP);
    assert_eq!(h.send(&Frame::udp(mapped, 53)), DROP);
    assert_eq!(h.counter(Counter::DropMapped), 5);
    // Other IPv6 sources and the IPv4 address itself are unaffected.
    assert_eq!(h.send(&Frame::syn("fd00::ffff:c612:a", 80)), PASS);
    h.knock(&ssh_knocks(A));
    assert_eq!(h.send(&Frame::syn(A, 22)), PASS);
    assert_eq!(h.counter(Counter::DropMapped), 5);
}

const MARTIANS: [&str; 9] = [
    "127.0.0.1",
    "0.0.0.0",
    "0.9.9.9",
    "224.0.0.5",
    "239.1.2.3",
    "255.255.255.255",
    "::1",
    "::",
    "ff02::1",
];

#[test]
fn a_martian_source_completing_a_sequence_authorizes_nothing() {
    let mut h = Harness::with_config(BAN_CONFIG);
    for src in MARTIANS {
        h.knock(&ssh_knocks(src));
        assert_eq!(h.step(src, SSH), None, "{src}: its knocks are not tracked");
        assert!(!h.authorized(src, SSH), "{src}: not authorized");
        assert_eq!(h.send(&Frame::syn(src, 22)), DROP, "{src}: 22 stays closed");
        // Knock ports drop as ever; unrelated traffic passes as ever.
        assert_eq!(h.send(&Frame::syn(src, 80)), PASS, "{src}: unrelated traffic");
        // Wrong knocks are no failures either: nothing is tracked to fail.
        fail_once(&h, src);
        assert!(!h.banned(src));
    }
    assert!(h.kinds().is_empty(), "no knock, open or reset events");
    assert_eq!(h.state.progress.keys().count(), 0);
    assert_eq!(h.state.authorized.keys().count(), 0);
    // Neighbours of the martian ranges knock as usual.
    for src in ["1.0.0.1", "126.255.255.255", "223.255.255.255", "fe80::1", "::2"] {
        h.knock(&ssh_knocks(src));
        assert_eq!(h.send(&Frame::syn(src, 22)), PASS, "{src} is no martian");
    }
}

#[test]
fn allow_refuses_a_martian_source() {
    let mut h = Harness::new();
    for src in MARTIANS.iter().chain(&["::ffff:127.0.0.1"]) {
        let err = h
            .state
            .allow(src.parse().unwrap(), SSH, Duration::from_secs(60))
            .expect_err(src);
        assert!(format!("{err:#}").contains("never authorized"), "{src}: {err:#}");
        assert_eq!(h.send(&Frame::syn(src, 22)), DROP);
    }
    assert_eq!(h.state.authorized.keys().count(), 0);
    h.state
        .allow(A.parse().unwrap(), SSH, Duration::from_secs(60))
        .expect("a real source may be allowed");
    assert_eq!(h.send(&Frame::syn(A, 22)), PASS);
}

const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

/// A knocks, opens a connection from port 40001 and the window closes: what is left
/// is the kept connection.
fn kept_connection(h: &mut Harness) -> Frame {
    h.knock(&ssh_knocks(A));
    assert_eq!(h.send(&Frame::syn(A, 22).sport(40001)), PASS);
    h.advance(Duration::from_secs(301));
    let ack = Frame::syn(A, 22).sport(40001).flags(ACK);
    assert_eq!(h.send(&ack), PASS, "kept past the window");
    assert_eq!(
        h.send(&Frame::syn(A, 22).sport(40002)),
        DROP,
        "the window is over"
    );
    ack
}

#[test]
fn a_ban_closes_kept_connections_too() {
    let mut h = Harness::with_config(BAN_CONFIG);
    let ack = kept_connection(&mut h);
    for _ in 0..4 {
        fail_once(&h, A);
    }
    assert!(h.banned(A));
    assert_eq!(h.send(&ack), DROP, "a banned source's kept connection is closed");
    assert_eq!(h.state.flows.keys().count(), 0, "and forgotten");
    assert!(h.state.unban(A.parse().unwrap()).expect("unban"));
    assert_eq!(h.send(&ack), DROP, "an unban does not bring it back");
    // B's kept connection is not touched by A's ban.
    let mut h = Harness::with_config(BAN_CONFIG);
    h.knock(&ssh_knocks(B));
    assert_eq!(h.send(&Frame::syn(B, 22).sport(40003)), PASS);
    let ack_a = kept_connection(&mut h);
    for _ in 0..4 {
        fail_once(&h, A);
    }
    assert_eq!(h.send(&ack_a), DROP);
    assert_eq!(h.send(&Frame::syn(B, 22).sport(40003).flags(ACK)), PASS);
}

#[test]
fn a_rst_ends_a_kept_connection_and_passes_itself() {
    let mut h = Harness::with_config(BAN_CONFIG);
    let ack = kept_connection(&mut h);
    assert_eq!(
        h.send(&ack.clone().flags(RST)),
        PASS,
        "the RST reaches the server"
    );
    assert_eq!(h.state.flows.keys().count(), 0, "the flow is gone");
    assert_eq!(h.send(&ack), DROP, "nothing passes on it after");
    // A RST while still authorized passes and keeps nothing either.
    h.knock(&ssh_knocks(A));
    assert_eq!(h.send(&Frame::syn(A, 22).sport(40005).flags(RST | ACK)), PASS);
    assert_eq!(h.state.flows.keys().count(), 0, "a RST opens no flow");
}

#[test]
fn a_fin_leaves_a_kept_connection_a_short_linger() {
    let mut h = Harness::with_config(BAN_CONFIG);
    let ack = kept_connection(&mut h);
    assert_eq!(h.send(&ack.clone().flags(FIN_ACK)), PASS, "the FIN passes");
    h.advance(Duration::from_secs(3));
    assert_eq!(h.send(&ack), PASS, "closing ACKs pass within the linger");
    h.advance(Duration::from_secs(4));
    assert_eq!(h.send(&ack), PASS, "each packet renews the linger");
    h.advance(Duration::from_secs(6));
    assert_eq!(h.send(&ack), DROP, "5 s after the last packet the flow is over");
    // Without a FIN the same silence is nothing against the hour's idle_timeout.
    let mut h = Harness::with_config(BAN_CONFIG);
    let ack = kept_connection(&mut h);
    h.advance(Duration::from_secs(600));
    assert_eq!(h.send(&ack), PASS);
}

#[test]
fn ipv6_bans_cover_the_whole_prefix_and_unban_takes_any_address_of_it() {
    let mut h = Harness::with_config(BAN_CONFIG);
    for _ in 0..4 {
        fail_once(&h, "fd00:1:2:3::1");
    }
    assert!(h.banned("fd00:1:2:3::1"));
    // Another address of the same /64: banned with it, its knocks ignored.
    h.knock(&ssh_knocks("fd00:1:2:3:ffff::9"));
    assert!(!h.authorized("fd00:1:2:3:ffff::9", SSH), "the /64 shares the ban");
    assert_eq!(h.send(&Frame::syn("fd00:1:2:3:ffff::9", 22)), DROP);
    // The next /64 is another identity.
    h.knock(&ssh_knocks("fd00:1:2:4::1"));
    assert_eq!(
        h.send(&Frame::syn("fd00:1:2:4::1", 22)),
        PASS,
        "another /64 is not banned"
    );
    // One record for the prefix, keyed on its first address; status shows the prefix.
    let bans = h.state.live_bans(h.now_ns());
    let key = xknock::net::mapped("fd00:1:2:3::".parse().unwrap());
    assert_eq!(bans.keys().copied().collect::<Vec<_>>(), vec![key]);
    let status = xknock::status::Status::read(&h.state, &h.pin_dir()).expect("status");
    assert!(status.render().contains("fd00:1:2:3::/64"), "{}", status.render());
    assert!(
        h.kinds().iter().any(|(k, _, _)| *k == EventKind::Ban),
        "the ban was announced"
    );
    // Lifted through any address of the prefix.
    assert!(
        h.state
            .unban("fd00:1:2:3:abcd::7".parse().unwrap())
            .expect("unban")
    );
    assert!(!h.banned("fd00:1:2:3::1"));
    h.knock(&ssh_knocks("fd00:1:2:3::1"));
    assert_eq!(h.send(&Frame::syn("fd00:1:2:3::1", 22)), PASS);
    // IPv4 sources stay one by one.
    for _ in 0..4 {
        fail_once(&h, A);
    }
    assert!(h.banned(A));
    h.knock(&ssh_knocks(B));
    assert_eq!(
        h.send(&Frame::syn(B, 22)),
        PASS,
        "a neighbour's IPv4 address is not banned"
    );
}

#[test]
fn the_ipv6_ban_prefix_is_configurable() {
    let h = Harness::with_config(&format!("{BAN_CONFIG}ipv6_prefix = 128\n"));
    for _ in 0..4 {
        fail_once(&h, "fd00:1:2:3::1");
    }
    assert!(h.banned("fd00:1:2:3::1"));
    h.knock(&ssh_knocks("fd00:1:2:3::2"));
    assert_eq!(
        h.send(&Frame::syn("fd00:1:2:3::2", 22)),
        PASS,
        "/128: one address only"
    );
    let h = Harness::with_config(&format!("{BAN_CONFIG}ipv6_prefix = 48\n"));
    for _ in 0..4 {
        fail_once(&h, "fd00:1:2:3::1");
    }
    h.knock(&ssh_knocks("fd00:1:2:ffff::1"));
    assert_eq!(
        h.send(&Frame::syn("fd00:1:2:ffff::1", 22)),
        DROP,
        "/48: the whole site"
    );
    h.knock(&ssh_knocks("fd00:1:3::1"));
    assert_eq!(h.send(&Frame::syn("fd00:1:3::1", 22)), PASS);
}

const STEALTH: &str = r#"
stealth = true
public = ["80/tcp", "443/tcp", "53/udp"]

[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
"#;

#[test]
fn stealth_drops_syns_and_datagrams_to_every_port_but_the_public_ones() {
    let h = Harness::with_config(STEALTH);
    for port in [21, 25, 81, 8080, 65535] {
        assert_eq!(h.send(&Frame::syn(A, port)), DROP, "SYN to {port}/tcp is hidden");
        assert_eq!(h.send(&Frame::syn(A6, port)), DROP, "over IPv6 too");
    }
    assert_eq!(
        h.send(&Frame::udp(A, 161)),
        DROP,
        "UDP outside the ephemeral range"
    );
    assert_eq!(h.counter(Counter::DropStealth), 11);
    // Public ports serve as ever.
    for f in [
        Frame::syn(A, 80),
        Frame::syn(A, 443),
        Frame::udp(A, 53),
        Frame::syn(A6, 443),
    ] {
        assert_eq!(h.send(&f), PASS, "{f:?} is public");
    }
    // Replies to the host's own connections: TCP without SYN, UDP to its ephemeral ports.
    let (low, high) = xknock::net::local_port_range();
    for port in [low, high, low / 2 + high / 2] {
        assert_eq!(h.send(&Frame::udp(A, port)), PASS, "{port}/udp is ephemeral");
        assert_eq!(
            h.send(&Frame::syn(A, port)),
            DROP,
            "a SYN to {port}/tcp is not a reply"
        );
    }
    assert_eq!(
        h.send(&Frame::syn(A, 81).flags(0x12)),
        PASS,
        "a SYN-ACK answers our SYN"
    );
    assert_eq!(
        h.send(&Frame::syn(A, 81).flags(0x10)),
        PASS,
        "ACKs of our connections"
    );
    // Knock and protected ports keep their own rules.
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP);
    h.knock(&ssh_knocks(A));
    assert_eq!(h.send(&Frame::syn(A, 22)), PASS, "knocks work behind the wall");
    assert_eq!(h.send(&Frame::syn(A, 81)), DROP, "authorization opens only 22");
}

#[test]
fn without_stealth_unconfigured_ports_pass() {
    let h = Harness::with_config(&STEALTH.replace("stealth = true", "stealth = false"));
    for f in [Frame::syn(A, 81), Frame::udp(A, 161), Frame::syn(A6, 8080)] {
        assert_eq!(h.send(&f), PASS, "{f:?}");
    }
    assert_eq!(h.counter(Counter::DropStealth), 0);
    assert_eq!(
        h.state.port_rules.get(&81, 0).expect("rule"),
        knock_common::PortRule::default()
    );
}

#[test]
fn turning_stealth_off_clears_every_entry() {
    let mut h = Harness::with_config(STEALTH);
    assert_eq!(h.send(&Frame::syn(A, 81)), DROP);
    let off = xknock::config::Config::parse(
        std::path::Path::new("off.toml"),
        &STEALTH.replace("stealth = true", "stealth = false"),
    )
    .expect("valid");
    h.state.apply(&off).expect("apply");
    assert_eq!(h.send(&Frame::syn(A, 81)), PASS);
    assert_eq!(h.send(&Frame::udp(A, 161)), PASS);
    assert_eq!(h.state.settings().expect("settings").stealth, 0);
}
