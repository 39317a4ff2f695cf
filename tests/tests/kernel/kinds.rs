//! Passing knocks (`PORT/tcp:pass`, `PORT/udp:pass`) and ICMP knocks (`SIZE/icmp`)
//! through `BPF_PROG_TEST_RUN`: what advances, what passes, and what stays untouched.

use knock_common::{Counter, EventKind, ResetReason};
use xknock_tests::{
    frame::{ACK, FIN, Frame},
    harness::{A, A6, B, DROP, Harness, PASS},
};

/// Knocks from a hotel network: the web ports, which serve, then an echo request.
const CONFIG: &str = r#"
allow = ["198.18.0.20"]
deny = ["198.18.0.21"]

[[sequence]]
name = "hotel"
knocks = ["443/tcp:pass", "80/tcp:pass", "64/icmp"]
protect = ["22/tcp"]
step_timeout = "5s"

[[sequence]]
name = "dns"
knocks = ["53/udp:pass", "100/icmp:pass", "7000/tcp"]
protect = ["2222/tcp"]

[ban]
failures = 1
window = "60s"
ban_for = "60s"
"#;

const HOTEL: u8 = 0;
const DNS: u8 = 1;
const ALLOWED: &str = "198.18.0.20";
const DENIED: &str = "198.18.0.21";

fn hotel(src: &str) -> [Frame; 3] {
    [Frame::syn(src, 443), Frame::syn(src, 80), Frame::echo(src, 64)]
}

#[test]
fn passing_knocks_advance_and_pass_and_an_echo_request_completes_the_sequence() {
    for src in [A, A6] {
        let mut h = Harness::with_config(CONFIG);
        let [k443, k80, echo] = hotel(src);
        assert_eq!(h.send(&k443), PASS, "{src}: the web server gets its SYN");
        assert_eq!(h.step(src, HOTEL), Some(1));
        assert_eq!(
            h.send(&k443.clone().flags(ACK)),
            PASS,
            "the rest of the connection"
        );
        assert_eq!(h.send(&k443.clone().flags(ACK | FIN)), PASS);
        assert_eq!(h.step(src, HOTEL), Some(1), "{src}: ACKs change nothing");
        assert_eq!(h.send(&k80), PASS);
        assert_eq!(h.step(src, HOTEL), Some(2));
        assert_eq!(h.send(&Frame::syn(src, 22)), DROP, "{src}: not yet");
        assert_eq!(h.send(&echo), DROP, "{src}: the ICMP knock gets no reply");
        assert!(h.authorized(src, HOTEL), "{src}");
        assert_eq!(h.send(&Frame::syn(src, 22)), PASS, "{src}: SSH opens");
        assert_eq!(
            h.kinds(),
            vec![
                (EventKind::Knock, HOTEL, 1),
                (EventKind::Knock, HOTEL, 2),
                (EventKind::Knock, HOTEL, 3),
                (EventKind::Open, HOTEL, 0)
            ]
        );
        assert_eq!(h.counter(Counter::PassKnock), 4, "{src}: two SYNs and two ACKs");
        assert_eq!(h.counter(Counter::DropKnock), 1, "{src}: the echo request");
    }
}

#[test]
fn icmp_knocks_count_only_whole_echo_requests_of_their_size() {
    let h = Harness::with_config(CONFIG);
    h.send(&Frame::syn(A, 443));
    h.send(&Frame::syn(A, 80));
    let mut bad_checksum = Frame::echo(A, 64).build();
    bad_checksum[14 + 20 + 2] = 0xff;
    let padded = [Frame::echo(B, 64).build(), vec![0; 20]].concat();
    let truncated = Frame::echo(A, 64).build();
    let truncated = truncated[..truncated.len() - 1].to_vec();
    let not_knocks: Vec<(Vec<u8>, &str)> = vec![
        (Frame::echo(A, 56).build(), "ping's default size"),
        (Frame::echo(A, 63).build(), "a byte short"),
        (Frame::echo(A, 65).build(), "a byte long"),
        (Frame::echo(A, 64).icmp_type(0).build(), "an echo reply"),
        (
            Frame::echo(A, 64).icmp_type(128).build(),
            "ICMPv6's request type over ICMP",
        ),
        (Frame::echo(A, 64).fragment(0, true).build(), "a first fragment"),
        (truncated, "a frame shorter than its IP length"),
        (Frame::echo(A, 64).l4_bytes(4).build(), "four bytes of ICMP"),
        (Frame::echo(A, 1500).build(), "larger than any ICMP knock"),
    ];
    for (frame, what) in &not_knocks {
        assert_eq!(h.run(frame), PASS, "{what} passes as before");
        assert_eq!(h.step(A, HOTEL), Some(2), "{what} is no knock");
    }
    // The checksum is not checked (docs/configuration.md), and Ethernet padding past
    // the IP length is not data.
    assert_eq!(h.run(&bad_checksum), DROP, "the checksum is not checked");
    assert!(h.authorized(A, HOTEL));
    assert!(!h.authorized(B, HOTEL));
    h.send(&Frame::syn(B, 443));
    h.send(&Frame::syn(B, 80));
    assert_eq!(h.run(&padded), DROP, "a padded echo request knocks");
    assert!(h.authorized(B, HOTEL));
    assert_eq!(h.counter(Counter::DropKnock), 2);
}

#[test]
fn the_same_icmp_knock_works_over_icmpv6_and_only_there() {
    let h = Harness::with_config(CONFIG);
    h.send(&Frame::syn(A6, 443));
    h.send(&Frame::syn(A6, 80));
    let fragmented = Frame::echo(A6, 64).fragment(0, false);
    let ipv4_type = Frame::echo(A6, 64).icmp_type(8);
    let mut icmp_in_ipv6 = Frame::echo(A6, 64).icmp_type(8);
    icmp_in_ipv6.proto = 1;
    for (f, what) in [
        (fragmented, "behind a fragment header"),
        (ipv4_type, "ICMP's request type over ICMPv6"),
        (icmp_in_ipv6, "ICMP (not ICMPv6) over IPv6"),
    ] {
        assert_eq!(h.send(&f), PASS, "{what}");
        assert_eq!(h.step(A6, HOTEL), Some(2), "{what} is no knock");
    }
    assert_eq!(
        h.send(&Frame::echo(A6, 64).ext(60)),
        DROP,
        "after destination options"
    );
    assert!(h.authorized(A6, HOTEL));
}

#[test]
fn a_passing_icmp_knock_gets_its_reply_and_udp_knocks_pass_too() {
    let h = Harness::with_config(CONFIG);
    assert_eq!(h.send(&Frame::udp(A, 53)), PASS, "the DNS server gets its query");
    assert_eq!(h.send(&Frame::echo(A, 100)), PASS, "ping gets its reply");
    assert_eq!(h.step(A, DNS), Some(2));
    assert_eq!(
        h.send(&Frame::syn(A, 7000)),
        DROP,
        "the closed port's knock is dropped"
    );
    assert!(h.authorized(A, DNS));
    assert_eq!(h.send(&Frame::syn(A, 2222)), PASS);
}

#[test]
fn ordinary_visitors_advance_but_open_nothing_and_are_never_banned() {
    let mut h = Harness::with_config(CONFIG);
    // A browser following http:// to https:// many times, and pinging the host.
    for _ in 0..5 {
        assert_eq!(h.send(&Frame::syn(B, 80)), PASS);
        assert_eq!(h.send(&Frame::syn(B, 443)), PASS);
        assert_eq!(h.send(&Frame::echo(B, 56)), PASS);
    }
    assert_eq!(h.step(B, HOTEL), Some(1));
    assert!(!h.banned(B), "resets that passing knocks cause are no failures");
    // The right knocks in the wrong order open nothing.
    for f in [Frame::echo(A, 64), Frame::syn(A, 80), Frame::syn(A, 443)] {
        h.send(&f);
    }
    assert!(!h.authorized(A, HOTEL));
    assert_eq!(h.send(&Frame::syn(A, 22)), DROP);
    // A wrong knock that does not pass still counts towards a ban: 443, 80, then
    // the echo out of order (after a reset to 443).
    h.events();
    h.send(&Frame::syn(A, 443));
    assert_eq!(h.send(&Frame::echo(A, 64)), DROP);
    assert_eq!(h.reset_reason(), Some(ResetReason::Wrong as u8));
    h.send(&Frame::syn(A, 443));
    h.send(&Frame::echo(A, 64));
    assert!(h.banned(A), "two failures within the window");
}

#[test]
fn listed_sources_are_served_on_passing_ports_and_not_tracked() {
    let h = Harness::with_config(CONFIG);
    for src in [ALLOWED, DENIED] {
        assert_eq!(h.send(&Frame::syn(src, 443)), PASS, "{src}");
        assert_eq!(h.send(&Frame::udp(src, 53)), PASS, "{src}");
        assert_eq!(h.send(&Frame::echo(src, 100)), PASS, "{src}");
        assert_eq!(h.step(src, HOTEL), None, "{src} is not tracked");
        assert_eq!(h.step(src, DNS), None, "{src} is not tracked");
        assert_eq!(
            h.send(&Frame::echo(src, 64)),
            DROP,
            "{src}: a knock that does not pass"
        );
    }
    assert_eq!(h.send(&Frame::syn(ALLOWED, 22)), PASS);
    assert_eq!(h.send(&Frame::syn(DENIED, 22)), DROP);
    assert_eq!(
        h.counter(Counter::PassKnock),
        0,
        "listed sources pass as unrelated traffic"
    );
}

#[test]
fn a_sequence_that_counts_acks_tracks_every_packet_of_a_passing_port() {
    let h = Harness::with_config(
        r#"
[[sequence]]
name = "acks"
knocks = ["8443/tcp:pass", "64/icmp"]
protect = ["22/tcp"]
tcp_flags = "ack"
"#,
    );
    assert_eq!(h.send(&Frame::syn(A, 8443)), PASS, "a SYN is no knock here");
    assert_eq!(h.step(A, 0), None);
    assert_eq!(h.send(&Frame::syn(A, 8443).flags(ACK)), PASS);
    assert_eq!(h.step(A, 0), Some(1), "the ACK counted");
    h.send(&Frame::echo(A, 64));
    assert!(h.authorized(A, 0));
}

#[test]
fn strict_mode_does_not_see_echo_requests() {
    let h = Harness::with_config(
        r#"
[[sequence]]
name = "strict"
knocks = ["7000/tcp", "64/icmp", "8000/udp"]
protect = ["22/tcp"]
strict = true
"#,
    );
    h.knock(&[Frame::syn(A, 7000)]);
    assert_eq!(h.send(&Frame::echo(A, 56)), PASS, "an ordinary ping");
    assert_eq!(h.step(A, 0), Some(1), "does not reset a strict sequence");
    h.knock(&[Frame::echo(A, 64), Frame::udp(A, 8000)]);
    assert!(h.authorized(A, 0));
}

#[test]
fn truncating_an_echo_knock_never_knocks() {
    let h = Harness::with_config(CONFIG);
    h.send(&Frame::syn(A, 443));
    h.send(&Frame::syn(A, 80));
    for frame in [
        Frame::echo(A, 64).vlan(0x8100).ipv4_options(2),
        Frame::echo(A6, 64).ext(0),
    ] {
        let bytes = frame.build();
        for len in 14..bytes.len() {
            h.run(&bytes[..len]);
        }
    }
    assert!(!h.authorized(A, HOTEL) && h.step(A, HOTEL) == Some(2));
    assert_eq!(h.step(A6, HOTEL), None);
}
