//! Time-based sequences through `BPF_PROG_TEST_RUN`: the kernel's tables as the loader
//! rewrites them at period boundaries, with the wall clock given by hand.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use knock_common::PROTO_UDP;
use xknock::{config::Config, timed::TimedSecret};
use xknock_tests::{
    frame::Frame,
    harness::{DROP, Harness, PASS},
};

const PERIOD: u64 = 30;
const GRACE: u64 = 5;

/// A static sequence, and the time-based "door" (slot 1, twin slot 2) protecting
/// 2222/tcp; the secret is written to `dir`.
fn setup(dir: &Path) -> (Config, TimedSecret, Harness) {
    let secret =
        TimedSecret::generate(Duration::from_secs(PERIOD), 3, 30000..=30999, PROTO_UDP).expect("secret");
    let file = dir.join("door.secret");
    secret.write_new(&file).expect("write the secret");
    let toml = format!(
        "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000/tcp\", \"8000/udp\", \"9000/tcp\"]\nprotect = [\"22/tcp\"]\n\
         [[sequence]]\nname = \"door\"\nsecret_file = \"{}\"\ngrace = \"{GRACE}s\"\nprotect = [\"2222/tcp\"]\n\
         open_for = \"1h\"\n",
        file.display()
    );
    let config = Config::parse(Path::new("/test.toml"), &toml).expect("valid config");
    let h = Harness::with_config(&toml);
    (config, secret, h)
}

/// `seconds` into period `counter`.
fn at(counter: u64, seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(counter * PERIOD + seconds)
}

/// Sends period `counter`'s knocks from `src`; returns how many were dropped (a port
/// that is no knock now passes, as any other).
fn knock(h: &Harness, src: &str, secret: &TimedSecret, counter: u64) -> usize {
    secret
        .knocks_for(counter)
        .iter()
        .filter(|k| h.send(&Frame::udp(src, k.port)) == DROP)
        .count()
}

fn door_open(h: &Harness, src: &str) -> bool {
    h.send(&Frame::syn(src, 2222)) == PASS
}

#[test]
fn each_period_opens_with_its_own_knocks_and_a_sniffed_sequence_dies_after_the_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, secret, mut h) = setup(dir.path());
    // An even period, past the grace: only its own knocks open.
    let c = 2 * 1000;
    h.state.apply_sequences(&config, at(c, 20)).expect("rotate");
    assert!(
        knock(&h, "198.18.0.10", &secret, c - 1) < 3,
        "not all knock ports now"
    );
    assert!(
        !door_open(&h, "198.18.0.10"),
        "the last period's knocks, past the grace"
    );
    assert_eq!(knock(&h, "198.18.0.11", &secret, c), 3, "knocks are dropped");
    assert!(door_open(&h, "198.18.0.11"), "this period's knocks open");
    // A source half-way through when the period ends.
    let first_two: Vec<Frame> = secret.knocks_for(c)[..2]
        .iter()
        .map(|k| Frame::udp("198.18.0.12", k.port))
        .collect();
    h.knock(&first_two);
    // A client whose clock is ahead: the next period's knocks, in the last GRACE.
    h.state
        .apply_sequences(&config, at(c, PERIOD - GRACE + 1))
        .expect("rotate");
    assert_eq!(knock(&h, "198.18.0.17", &secret, c + 1), 3);
    assert!(door_open(&h, "198.18.0.17"), "early knocks, within the grace");

    // The next (odd) period, within the grace: both sequences open.
    h.state.apply_sequences(&config, at(c + 1, 2)).expect("rotate");
    let last = secret.knocks_for(c)[2];
    h.knock(&[Frame::udp("198.18.0.12", last.port)]);
    assert!(
        door_open(&h, "198.18.0.12"),
        "a source part-way through at the boundary finishes in the grace"
    );
    knock(&h, "198.18.0.13", &secret, c);
    assert!(
        door_open(&h, "198.18.0.13"),
        "the previous knocks, within the grace"
    );
    knock(&h, "198.18.0.14", &secret, c + 1);
    assert!(door_open(&h, "198.18.0.14"), "the new knocks");

    // Past the grace: the sniffed sequence of period c no longer opens anything.
    h.state
        .apply_sequences(&config, at(c + 1, GRACE + 1))
        .expect("rotate");
    knock(&h, "198.18.0.15", &secret, c);
    assert!(!door_open(&h, "198.18.0.15"), "a replay after the grace");
    knock(&h, "198.18.0.16", &secret, c + 1);
    assert!(door_open(&h, "198.18.0.16"));
    assert!(
        door_open(&h, "198.18.0.11"),
        "authorizations of an earlier period stay until they expire"
    );
    // Revoking by name covers both of its slots.
    let slots = h.state.sequence_indices("door").expect("door");
    assert_eq!(slots, [1, 2], "the door and its twin");
    for src in ["198.18.0.11", "198.18.0.16"] {
        for seq in &slots {
            h.state
                .revoke(src.parse().expect("addr"), Some(*seq))
                .expect("revoke");
        }
        assert_eq!(h.send(&Frame::syn(src, 2222)), DROP, "{src} revoked");
    }
    // The static sequence never moved.
    h.knock(&xknock_tests::harness::ssh_knocks("198.18.0.20"));
    assert_eq!(h.send(&Frame::syn("198.18.0.20", 22)), PASS);
}

#[test]
fn a_periods_knocks_stop_at_its_end_and_grace_with_nobody_rewriting_the_tables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, secret, mut h) = setup(dir.path());
    let c = 2 * 1000 + 1;
    // Written 10 s into period c; then the policy clock moves on and `run` is gone.
    h.state.apply_sequences(&config, at(c, 10)).expect("rotate");
    h.advance(Duration::from_secs(PERIOD - 10 + GRACE - 1));
    assert_eq!(knock(&h, "198.18.0.20", &secret, c), 3);
    assert!(door_open(&h, "198.18.0.20"), "within the grace");
    h.advance(Duration::from_secs(2));
    knock(&h, "198.18.0.21", &secret, c);
    assert!(
        !door_open(&h, "198.18.0.21"),
        "past its period and grace, a sequence the tables still hold opens nothing"
    );
    assert_eq!(h.step("198.18.0.21", 1), None, "nor counts as progress");
    assert!(
        door_open(&h, "198.18.0.20"),
        "authorizations stay until they expire"
    );
}
