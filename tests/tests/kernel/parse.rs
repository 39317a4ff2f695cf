//! Parsing through `BPF_PROG_TEST_RUN`: a fixture table of (frame, what it is, verdict)
//! for a source that never knocked, truncation at every byte, and the verdict counters.

use knock_common::Counter;
use xknock_tests::{
    frame::{ACK, Frame, arp},
    harness::{A, A6, DROP, Harness, PASS},
};

#[test]
fn fixture_table_for_a_source_that_never_knocked() {
    let h = Harness::new();
    let cases: Vec<(Vec<u8>, &str, u32)> = vec![
        (arp(), "ARP is not IP", PASS),
        (Frame::syn(A, 80).build(), "SYN to an unrelated port", PASS),
        (Frame::syn(A6, 443).build(), "IPv6 SYN to an unrelated port", PASS),
        (Frame::udp(A, 53).build(), "UDP to an unrelated port", PASS),
        (Frame::other(A, 1).build(), "ICMP", PASS),
        (Frame::other(A6, 58).build(), "ICMPv6", PASS),
        (
            Frame::echo(A, 56).build(),
            "an echo request (no ICMP knocks)",
            PASS,
        ),
        (Frame::echo(A6, 56).build(), "an ICMPv6 echo request", PASS),
        (
            Frame::echo(A, 56).l4_bytes(3).build(),
            "ICMP header cut short",
            PASS,
        ),
        (Frame::syn(A, 22).build(), "SYN to the protected port", DROP),
        (
            Frame::syn(A, 22).flags(ACK).build(),
            "ACK to the protected port",
            DROP,
        ),
        (Frame::syn(A6, 22).build(), "IPv6 SYN to the protected port", DROP),
        (
            Frame::syn(A, 22).vlan(0x8100).build(),
            "802.1Q-tagged SYN to the protected port",
            DROP,
        ),
        (
            Frame::syn(A, 80).vlan(0x8100).build(),
            "802.1Q-tagged SYN to an unrelated port",
            PASS,
        ),
        (
            Frame::syn(A6, 22).vlan(0x88a8).vlan(0x8100).build(),
            "QinQ IPv6 SYN to the protected port",
            DROP,
        ),
        (
            Frame::syn(A, 80).vlan(0x88a8).vlan(0x8100).vlan(0x8100).build(),
            "three VLAN tags: not followed",
            DROP,
        ),
        (
            Frame::syn(A, 22).ipv4_options(10).build(),
            "IPv4 options, protected port",
            DROP,
        ),
        (
            Frame::syn(A, 80).ipv4_options(10).build(),
            "IPv4 options, unrelated port",
            PASS,
        ),
        (Frame::udp(A, 5353).build(), "UDP to a protected port", DROP),
        (Frame::udp(A, 7100).build(), "a UDP knock port", DROP),
        (
            Frame::syn(A, 7000).flags(ACK).build(),
            "ACK to a knock port",
            DROP,
        ),
        (
            Frame::syn(A6, 22).ext(0).ext(60).build(),
            "IPv6 hop-by-hop + destination options, protected",
            DROP,
        ),
        (
            Frame::syn(A6, 80).ext(0).ext(43).ext(60).build(),
            "IPv6 three extension headers, unrelated",
            PASS,
        ),
        (Frame::syn(A6, 80).ext(51).build(), "IPv6 AH, unrelated", PASS),
        (
            Frame::syn(A6, 80)
                .ext(0)
                .ext(43)
                .ext(60)
                .ext(44)
                .ext(51)
                .ext(60)
                .build(),
            "IPv6 six extension headers (the most followed), unrelated",
            PASS,
        ),
        (
            Frame::syn(A6, 22)
                .ext(0)
                .ext(43)
                .ext(60)
                .ext(44)
                .ext(51)
                .ext(60)
                .build(),
            "IPv6 six extension headers, protected",
            DROP,
        ),
        (
            Frame::syn(A6, 80)
                .ext(0)
                .ext(60)
                .ext(60)
                .ext(60)
                .ext(60)
                .ext(60)
                .ext(60)
                .build(),
            "IPv6 chain longer than followed",
            DROP,
        ),
        (
            Frame::syn(A, 22).fragment(0, true).l4_bytes(8).build(),
            "tiny first fragment (8 bytes of TCP)",
            DROP,
        ),
        (
            Frame::syn(A, 80).fragment(0, true).l4_bytes(16).build(),
            "tiny first fragment to an unrelated port",
            DROP,
        ),
        (
            Frame::syn(A, 22).fragment(1, false).build(),
            "IPv4 fragment at offset 1 (RFC 1858)",
            DROP,
        ),
        (
            Frame::syn(A6, 22).fragment(1, false).build(),
            "IPv6 fragment at offset 1",
            DROP,
        ),
        (
            Frame::syn(A, 22).fragment(0, true).build(),
            "complete first fragment, protected",
            DROP,
        ),
        (
            Frame::syn(A, 80).fragment(0, true).build(),
            "complete first fragment, unrelated",
            PASS,
        ),
        (
            Frame::syn(A, 22).fragment(185, false).build(),
            "later IPv4 fragment",
            PASS,
        ),
        (
            Frame::syn(A6, 22).fragment(185, false).build(),
            "later IPv6 fragment",
            PASS,
        ),
        (
            Frame::syn(A, 22).l4_bytes(12).build(),
            "TCP header cut short",
            DROP,
        ),
        (
            Frame::udp(A, 53).l4_bytes(6).build(),
            "UDP header cut short",
            DROP,
        ),
    ];
    for (frame, what, want) in &cases {
        assert_eq!(h.run(frame), *want, "{what}");
    }
    let mut v4_bad_ihl = Frame::syn(A, 80).build();
    v4_bad_ihl[14] = 0x44;
    assert_eq!(h.run(&v4_bad_ihl), DROP, "IPv4 IHL below 5");
    let mut v4_short_total = Frame::syn(A, 80).build();
    v4_short_total[16..18].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(
        h.run(&v4_short_total),
        DROP,
        "IPv4 total length shorter than its headers"
    );
    let mut bad_doff = Frame::syn(A, 80).build();
    bad_doff[14 + 20 + 12] = 0x40;
    assert_eq!(h.run(&bad_doff), DROP, "TCP data offset below 5");
}

#[test]
fn truncation_at_every_byte_never_passes_a_protected_port() {
    let h = Harness::new();
    for frame in [
        Frame::syn(A, 22).vlan(0x8100).ipv4_options(3),
        Frame::syn(A6, 22).vlan(0x88a8).vlan(0x8100).ext(0).ext(60),
        Frame::udp(A6, 5353).ext(44),
    ] {
        let bytes = frame.build();
        // The kernel refuses XDP test input shorter than an Ethernet header.
        for len in 14..=bytes.len() {
            assert_eq!(h.run(&bytes[..len]), DROP, "{frame:?} cut to {len} bytes");
        }
    }
}

#[test]
fn counters_count_every_verdict() {
    let h = Harness::new();
    h.send(&Frame::syn(A, 80));
    h.send(&Frame::syn(A, 22));
    h.send(&Frame::syn(A, 22).fragment(1, false));
    h.send(&Frame::syn(A, 22).fragment(100, false));
    h.send(&Frame::syn(A, 22).l4_bytes(4));
    h.send(&Frame::syn(A, 7000));
    for (c, n) in [
        (Counter::PassOther, 1),
        (Counter::DropProtected, 1),
        (Counter::DropFragment, 1),
        (Counter::PassFragment, 1),
        (Counter::DropUnparsed, 1),
        (Counter::DropKnock, 1),
        (Counter::PassAuthorized, 0),
    ] {
        assert_eq!(h.counter(c), n, "{}", c.name());
    }
}

#[test]
fn the_verifier_has_headroom() {
    let h = Harness::new();
    let n = h.verified_instructions();
    println!("verifier processed {n} instructions");
    // The kernel gives up at 1,000,000; a change that nears it must be restructured
    // (for example an out-of-line helper) before it lands, not when it stops loading.
    assert!(
        n < 600_000,
        "the verifier processed {n} instructions: too close to its limit"
    );
}
