//! The kernel's half of Single Packet Authorization through `BPF_PROG_TEST_RUN`: what
//! reaches the SPA request ring buffer, what is refused or shed, and that every
//! datagram to the SPA port is dropped.

use std::{path::Path, time::Duration};

use knock_common::{
    Counter, EventKind, RULE_FWKNOP, RULE_SPA, SPA_BUDGET, SPA_CAP_EVENTS, SPA_CAP_REQUESTS, SPA_HEADER_LEN,
    SPA_MAX_PAYLOAD, SpaKeyId, SpaRefusal, port_rule_index,
};
use xknock::{
    config::Config,
    spa::{Key, KeyId, packet::checked_nonce},
};
use xknock_tests::{
    frame::Frame,
    harness::{A, A6, B, DROP, Harness, PASS},
    mapped,
};

const SPA_PORT: u16 = 62201;
const KEY_ID: [u8; 8] = *b"alice-01";
/// alice's key ("ab" repeated, below).
const KEY: [u8; 32] = [0xab; 32];

/// `[spa]` on `port`, with one client whose key id is KEY_ID ("alice-01").
fn spa_config(port: u16) -> String {
    format!(
        "{}\n[spa]\nport = {port}\n[[spa.client]]\nname = \"alice\"\nkey_id = \"616c6963652d3031\"\n\
         key = \"{}\"\nsequences = [\"ssh\"]\n",
        xknock_tests::harness::CONFIG,
        "ab".repeat(32)
    )
}

/// A harness whose UDP port SPA_PORT takes requests from KEY_ID.
fn harness() -> Harness {
    Harness::with_config(&spa_config(SPA_PORT))
}

fn spa_rule(h: &Harness, port: u16) -> bool {
    let index = port_rule_index(17, port).expect("udp");
    h.state.port_rules.get(&index, 0).expect("rule").flags & RULE_SPA != 0
}

#[test]
fn the_config_marks_the_spa_port_and_a_new_port_clears_the_old() {
    let mut h = harness();
    assert!(spa_rule(&h, SPA_PORT));
    let keys: Vec<SpaKeyId> = h.state.spa_keys.keys().map(|k| k.expect("key")).collect();
    assert_eq!(keys, [SpaKeyId { id: KEY_ID }]);
    let moved = Config::parse(Path::new("moved.toml"), &spa_config(4000)).expect("valid");
    h.state.apply(&moved).expect("apply");
    assert!(spa_rule(&h, 4000));
    assert!(!spa_rule(&h, SPA_PORT), "the old port is a plain port again");
    assert_eq!(h.send(&request(A, &payload(KEY_ID, 60))), PASS);
    let without = Config::parse(Path::new("none.toml"), xknock_tests::harness::CONFIG).expect("valid");
    h.state.apply(&without).expect("apply");
    assert!(!spa_rule(&h, 4000));
    assert_eq!(h.state.spa_keys.keys().count(), 0, "no key ids left");
}

/// A request-shaped payload: version 1, `key_id`, then `len - 9` bytes of filler;
/// the check value in the nonce is wrong (what a spoofer without the key sends).
fn payload(key_id: [u8; 8], len: usize) -> Vec<u8> {
    let mut p = vec![1];
    p.extend_from_slice(&key_id);
    p.extend((0..len.saturating_sub(9)).map(|i| i as u8));
    p.truncate(len);
    p
}

/// Like `payload` with KEY_ID, and a nonce (from `seed`) with alice's check value:
/// what the kernel hands over (at least SPA_HEADER_LEN bytes).
fn checked(len: usize, seed: u8) -> Vec<u8> {
    let mut p = payload(KEY_ID, len.max(SPA_HEADER_LEN));
    let nonce = checked_nonce(KeyId(KEY_ID), &Key::from_bytes(KEY), [seed; 16]);
    p[9..SPA_HEADER_LEN].copy_from_slice(&nonce);
    p.truncate(len);
    p
}

fn request(src: &str, payload: &[u8]) -> Frame {
    Frame::udp(src, SPA_PORT).payload(payload)
}

#[test]
fn a_request_from_a_known_key_reaches_userspace_whole_and_is_dropped() {
    let mut h = harness();
    for (src, len) in [(A, SPA_HEADER_LEN), (A6, 120), (B, SPA_MAX_PAYLOAD)] {
        let p = checked(len, 1);
        assert_eq!(h.send(&request(src, &p)), DROP, "the SPA port never passes");
        let got = h.spa_requests();
        assert_eq!(got.len(), 1, "one request handed over from {src}");
        assert_eq!(got[0].addr, mapped(src));
        assert_eq!(got[0].len as usize, len);
        assert_eq!(
            &got[0].payload[..len],
            &p[..],
            "the payload arrives byte for byte"
        );
        assert_eq!(got[0].ts_ns, h.now_ns());
    }
    assert_eq!(h.counter(Counter::DropSpa), 3);
}

#[test]
fn what_no_client_could_have_sent_is_refused_in_the_kernel_with_an_event() {
    let mut h = harness();
    let mut wrong_version = payload(KEY_ID, 60);
    wrong_version[0] = 2;
    let refused = [
        (payload(*b"mallory!", 60), SpaRefusal::UnknownKey),
        (wrong_version, SpaRefusal::Malformed),
        (payload(KEY_ID, 8), SpaRefusal::Malformed),
        (checked(SPA_HEADER_LEN - 1, 1), SpaRefusal::Malformed),
        (payload(KEY_ID, 60), SpaRefusal::BadCheck),
        (
            checked(60, 2)[..]
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 20 { b ^ 1 } else { *b })
                .collect(),
            SpaRefusal::BadCheck,
        ),
        (vec![], SpaRefusal::Malformed),
        (payload(KEY_ID, SPA_MAX_PAYLOAD + 1), SpaRefusal::Malformed),
    ];
    for (i, (p, reason)) in refused.iter().enumerate() {
        // Each from its own source: one source's budget (4 a second) covers refusals too.
        let src = format!("198.18.7.{}", i + 1);
        assert_eq!(h.send(&request(&src, p)), DROP, "{} bytes", p.len());
        let events = h.events();
        assert_eq!(events.len(), 1, "one event for {} bytes", p.len());
        let e = events[0];
        assert_eq!(
            (e.kind, e.reason, e.addr, e.proto, e.port, e.ts_ns),
            (
                EventKind::SpaRefused as u8,
                *reason as u8,
                mapped(&src),
                17,
                SPA_PORT,
                h.now_ns()
            ),
            "the refusal of {} bytes",
            p.len()
        );
    }
    assert!(h.spa_requests().is_empty(), "nothing reaches the request ring");
    assert_eq!(h.counter(Counter::SpaRefused), refused.len() as u64);
    // A TCP packet to the same port number is not a request (and nothing protects it).
    assert_eq!(h.send(&Frame::syn(A, SPA_PORT)), PASS);
    // A truncated frame whose UDP length claims a payload it does not carry.
    let mut short = request(A, &checked(60, 3)).build();
    // Its header (with a good check value) is there, the rest is not: the copy to
    // the ring fails.
    short.truncate(short.len() - 20);
    assert_eq!(h.run(&short), DROP);
    assert!(h.spa_requests().is_empty());
    assert_eq!(h.counter(Counter::SpaRefused), refused.len() as u64 + 1);
    let events = h.events();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind, e.reason, e.addr))
            .collect::<Vec<_>>(),
        [(
            EventKind::SpaRefused as u8,
            SpaRefusal::Malformed as u8,
            mapped(A)
        )],
        "the truncated frame is refused with an event too"
    );
}

#[test]
fn each_source_gets_a_budget_per_second_and_the_rest_is_shed() {
    let mut h = harness();
    let p = checked(80, 1);
    for _ in 0..SPA_BUDGET + 3 {
        assert_eq!(h.send(&request(A, &p)), DROP);
    }
    assert_eq!(h.spa_requests().len(), SPA_BUDGET as usize);
    assert_eq!(h.counter(Counter::SpaShed), 3);
    // Another source has its own budget.
    h.send(&request(B, &p));
    assert_eq!(h.spa_requests().len(), 1);
    // A second later the budget is back.
    h.advance(Duration::from_secs(1));
    h.send(&request(A, &p));
    assert_eq!(h.spa_requests().len(), 1);
    // What the kernel refuses has a budget of its own, so a flood of garbage from
    // one source costs at most 4 events a second, and none of its requests' budget.
    let garbage = payload(*b"mallory!", 80);
    for _ in 0..SPA_BUDGET + 3 {
        h.send(&request(B, &garbage));
    }
    let refusals = h
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::SpaRefused as u8)
        .count();
    assert_eq!(refusals, SPA_BUDGET as usize);
    assert_eq!(h.counter(Counter::SpaShed), 3, "refusals are not shed requests");
    assert_eq!(h.counter(Counter::SpaRefused), u64::from(SPA_BUDGET) + 3);
    h.send(&request(B, &p));
    assert_eq!(h.spa_requests().len(), 1, "B's request budget is untouched");
}

#[test]
fn a_spoofed_flood_with_a_clients_address_and_key_id_never_sheds_its_request() {
    let mut h = harness();
    // A blind spoofer: the victim's address and key id, nonces without the check
    // value (it has no key), far over any budget.
    for i in 0..1000u32 {
        let mut p = payload(KEY_ID, 120);
        p[9..13].copy_from_slice(&i.to_le_bytes());
        assert_eq!(h.send(&request(A, &p)), DROP);
    }
    assert!(h.spa_requests().is_empty(), "none of it reaches run");
    assert_eq!(h.counter(Counter::SpaRefused), 1000);
    assert_eq!(h.counter(Counter::SpaShed), 0);
    let refusals = h.events();
    assert_eq!(refusals.len(), SPA_BUDGET as usize, "4 events a second");
    assert!(refusals.iter().all(|e| e.reason == SpaRefusal::BadCheck as u8));
    // The victim's own request, in the same second, is handed over: every time.
    for seed in 0..SPA_BUDGET as u8 {
        h.send(&request(A, &checked(120, seed)));
    }
    assert_eq!(h.spa_requests().len(), SPA_BUDGET as usize);
}

/// Runs the rest of the test on CPU 0: the cap is per CPU, and test-run runs the
/// program on the calling thread's CPU.
fn on_cpu0() {
    // SAFETY: a cpu_set_t of zeros with bit 0 set, for this thread alone.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    assert_eq!(ok, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
}

#[test]
fn a_flood_from_many_sources_is_capped_per_cpu() {
    on_cpu0();
    let mut h = harness();
    let source = |i: u32| format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
    // Requests with good check values (a key holder, or copies of a real request),
    // each from its own source and so within its budget: the CPU hands over at most
    // SPA_CAP_REQUESTS a second, the rest is shed.
    let mut handed = 0;
    let sent = SPA_CAP_REQUESTS + 100;
    for i in 0..sent {
        h.send(&request(&source(i + 1), &checked(60, 1)));
        if i % 64 == 63 {
            handed += h.spa_requests().len() as u32;
        }
    }
    handed += h.spa_requests().len() as u32;
    assert_eq!(handed, SPA_CAP_REQUESTS);
    assert_eq!(h.counter(Counter::SpaShed), u64::from(sent - SPA_CAP_REQUESTS));
    // Refusals likewise: at most SPA_CAP_EVENTS events a second, all still counted.
    let garbage = payload(*b"mallory!", 80);
    let sent_garbage = SPA_CAP_EVENTS + 100;
    for i in 0..sent_garbage {
        h.send(&request(&source(i + 1), &garbage));
    }
    assert_eq!(h.events().len(), SPA_CAP_EVENTS as usize);
    assert_eq!(h.counter(Counter::SpaRefused), u64::from(sent_garbage));
    // A second later the cap is back.
    h.advance(Duration::from_secs(1));
    h.send(&request(A, &checked(60, 2)));
    assert_eq!(h.spa_requests().len(), 1);
}

#[test]
fn a_full_ring_buffer_loses_requests_countably_and_recovers() {
    let mut h = harness();
    let p = checked(SPA_MAX_PAYLOAD, 1);
    // 64 KiB holds about 119 requests of 552 bytes with their headers.
    let sent = 200;
    for i in 0..sent {
        h.send(&request(&format!("198.18.7.{}", i + 1), &p));
    }
    let handed = h.spa_requests().len() as u64;
    assert!(handed < sent, "the ring buffer filled ({handed} handed over)");
    assert_eq!(h.counter(Counter::SpaLost), sent - handed);
    h.send(&request(A, &p));
    assert_eq!(h.spa_requests().len(), 1, "drained, it takes requests again");
}

#[test]
fn listed_sources_are_dropped_too_and_denied_ones_never_reach_userspace() {
    let mut h = Harness::with_config(&format!(
        "allow = [\"{A}/32\"]\ndeny = [\"{B}/32\"]\n{}",
        spa_config(SPA_PORT)
    ));
    let p = checked(80, 1);
    assert_eq!(
        h.send(&request(A, &p)),
        DROP,
        "allowed, yet the SPA port answers nothing"
    );
    assert_eq!(h.spa_requests().len(), 1);
    assert_eq!(h.send(&request(B, &p)), DROP);
    assert!(
        h.spa_requests().is_empty(),
        "a denied source's request is not handed over"
    );
    assert_eq!(h.counter(Counter::DropDenied), 1);
}

/// Not a test: the in-kernel cost of each kind of datagram to the SPA port, for
/// docs/spa.md (`cargo test -p xknock-tests --test kernel -- spa:: --ignored
/// --nocapture`). No assertions on time.
#[test]
#[ignore = "a measurement; run by hand"]
fn measure_the_cost_of_each_kind_of_datagram() {
    let h = harness();
    let kinds = [
        ("unrelated UDP", Frame::udp(A, 5353).payload(&[0; 120]).build()),
        ("unknown key id", request(A, &payload(*b"mallory!", 120)).build()),
        ("bad check value", request(A, &payload(KEY_ID, 120)).build()),
        (
            "good check value, over budget (shed)",
            request(B, &checked(120, 1)).build(),
        ),
    ];
    for _ in 0..3 {
        for (name, bytes) in &kinds {
            let best = (0..15).map(|_| h.time(bytes, 200_000)).min().unwrap_or_default();
            println!("{name}: {} ns", best.as_nanos());
        }
    }
}

/// `[spa]` with a `[[spa.fwknop]]` client (and alice).
fn fwknop_config() -> String {
    format!(
        "{}[[spa.fwknop]]\nname = \"bob\"\nkey_base64 = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
         hmac_key_base64 = \"QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+fw==\"\n\
         sequences = [\"ssh\"]\n",
        spa_config(SPA_PORT)
    )
}

#[test]
fn fwknop_shaped_datagrams_reach_userspace_only_when_fwknop_clients_are_configured() {
    // FWKNOP.md's real packet: 225 bytes of base64, starting with '9'.
    let real = b"9ERSijh/iFZUNB8EaUGAdKaDMQePTCIHDhfGSBaP1ABcmo/LzOsTHeK076Jfj81YSuGFHJiQRT7qvhqpnqjLSTPn3coulLhRy3JquXTq6Ez7UnLELJO+Ft2crwfd6qQsntn9wtqW8RQRyPK52mjcSjzR8avrM0HAMKwrJ6jKCDA0FkEdgIrmoYZsKyZtqYQzPIm3iiOGfavFLGvxCxC4JeMRelDf68Qlo";
    let mut without = harness();
    assert_eq!(without.send(&request(A, real)), DROP);
    assert_eq!(
        without.counter(Counter::SpaRefused),
        1,
        "no fwknop client: refused"
    );
    assert!(without.spa_requests().is_empty());

    let mut h = Harness::with_config(&fwknop_config());
    let index = port_rule_index(17, SPA_PORT).expect("udp");
    assert_ne!(
        h.state.port_rules.get(&index, 0).expect("rule").flags & RULE_FWKNOP,
        0
    );
    for (src, payload) in [(A, &real[..]), (A6, &real[..140])] {
        assert_eq!(h.send(&request(src, payload)), DROP);
    }
    let handed = h.spa_requests();
    assert_eq!(handed.len(), 2, "both handed to run");
    assert_eq!(&handed[0].payload[..handed[0].len as usize], &real[..]);
    assert_eq!(h.counter(Counter::DropSpa), 2);
    // Too short, or a first character no salted blob's base64 has: refused here.
    let mut other = real.to_vec();
    other[0] = b'Q';
    for payload in [&real[..139], &other[..]] {
        assert_eq!(h.send(&request(B, payload)), DROP);
    }
    assert!(h.spa_requests().is_empty());
    assert_eq!(h.counter(Counter::SpaRefused), 2);
}
