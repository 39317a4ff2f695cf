//! The XDP program through `BPF_PROG_TEST_RUN`: one crafted frame at a time, with the
//! verdict, the maps and the events checked. Time is moved with the program's clock
//! offset, so timeouts are exact and the tests never sleep.

#![allow(clippy::cloned_ref_to_slice_refs, reason = "test frames are cheap to clone")]

use std::{path::Path, time::Duration};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use knock_common::{Counter, Event, EventKind, ResetReason};
use xknock::{attach, config::Config, maps::State};
use xknock_tests::{
    BpfFs,
    frame::{ACK, FIN, Frame, SYN, arp},
};

const PASS: u32 = 2;
const DROP: u32 = 1;

const CONFIG: &str = r#"
[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
open_for = "30s"
step_timeout = "5s"
sequence_timeout = "8s"
idle_timeout = "60s"

[[sequence]]
name = "web"
knocks = ["7100/udp", "7200/udp"]
protect = ["8080/tcp", "5353/udp"]
strict = true
keep_established = false
"#;

const SSH: u8 = 0;
const WEB: u8 = 1;
const A: &str = "198.18.0.10";
const B: &str = "198.18.0.11";
const A6: &str = "fd00::10";

struct Harness {
    ebpf: Ebpf,
    state: State,
    events: RingBuf<MapData>,
    offset: Duration,
    // Last: unmounted after the program and maps are closed.
    _fs: BpfFs,
}

impl Harness {
    fn new() -> Harness {
        Self::with_config(CONFIG)
    }

    fn with_config(toml: &str) -> Harness {
        let fs = BpfFs::new();
        let config = Config::parse(Path::new("test.toml"), toml).expect("test config is valid");
        let mut ebpf = attach::load(&fs.pin_dir()).expect("load the XDP program");
        let mut state = State::from_ebpf(&mut ebpf).expect("maps");
        state.apply(&config).expect("apply config");
        let events = ebpf
            .take_map("XK_EVENTS")
            .expect("events map")
            .try_into()
            .expect("ring buffer");
        Harness {
            ebpf,
            state,
            events,
            offset: Duration::ZERO,
            _fs: fs,
        }
    }

    fn run(&self, bytes: &[u8]) -> u32 {
        let prog: &Xdp = self
            .ebpf
            .program("xknock")
            .expect("program")
            .try_into()
            .expect("xdp");
        let opts = TestRunOptions {
            data_in: Some(bytes),
            ..TestRunOptions::default()
        };
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }

    fn send(&self, frame: &Frame) -> u32 {
        self.run(&frame.build())
    }

    /// Sends each frame and asserts it was dropped (knocks always are).
    fn knock(&self, frames: &[Frame]) {
        for f in frames {
            assert_eq!(self.send(f), DROP, "knock {f:?} must be dropped");
        }
    }

    fn advance(&mut self, d: Duration) {
        self.offset += d;
        self.state
            .set_clock_offset(self.offset)
            .expect("set clock offset");
    }

    fn step(&self, src: &str, seq: u8) -> Option<u8> {
        let key = xknock::maps::source_key(src.parse().expect("addr"), seq);
        self.state.progress.get(&key, 0).ok().map(|p| p.step)
    }

    fn authorized(&self, src: &str, seq: u8) -> bool {
        let key = xknock::maps::source_key(src.parse().expect("addr"), seq);
        let now = self.state.now_ns().expect("clock");
        self.state
            .authorized
            .get(&key, 0)
            .is_ok_and(|a| a.expires_ns > now)
    }

    fn events(&mut self) -> Vec<Event> {
        let mut out = vec![];
        while let Some(item) = self.events.next() {
            out.push(*bytemuck::from_bytes::<Event>(&item));
        }
        out
    }

    fn kinds(&mut self) -> Vec<(EventKind, u8, u8)> {
        self.events()
            .iter()
            .map(|e| (EventKind::from_u8(e.kind).expect("kind"), e.seq, e.step))
            .collect()
    }

    fn counter(&self, c: Counter) -> u64 {
        self.state.counter(c).expect("counter")
    }
}

fn ssh_knocks(src: &str) -> [Frame; 3] {
    [
        Frame::syn(src, 7000),
        Frame::udp(src, 8000),
        Frame::syn(src, 9000),
    ]
}

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
    let reset = h
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::Reset as u8)
        .expect("reset");
    assert_eq!(reset.reason, ResetReason::Timeout as u8);

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
    let reset = h
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::Reset as u8)
        .expect("reset");
    assert_eq!(reset.reason, ResetReason::Strict as u8);
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
