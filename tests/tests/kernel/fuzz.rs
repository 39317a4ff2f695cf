//! The differential fuzzer: seeded frames through the real XDP program
//! (`BPF_PROG_TEST_RUN`) and through the reference model, which must agree on every
//! verdict and, now and then, on the whole state. The invariant checked on its own:
//! no frame to a protected port from a source that is neither authorized nor on a
//! kept connection ever gets XDP_PASS.
//!
//! Passing knock ports get XDP_PASS from everyone, always, and the kernel's
//! pass_knock counter matches the model's count.
//!
//! The run is split in two: half the frames against CONFIG, half against the same
//! config with `stealth = true` (STEALTH), where SYNs and datagrams to hidden ports
//! must be dropped too.
//!
//! XKNOCK_FUZZ_FRAMES (default 1,000,000, both halves together) and XKNOCK_FUZZ_SEED
//! set the run; `scripts/fuzz.sh` runs a long one.

use std::{collections::HashMap, path::Path, time::Duration};

use knock_common::Counter;
use xknock::config::Config;
use xknock::net::Knock;
use xknock_tests::{
    fuzz::Gen,
    harness::Harness,
    model::{Access, DROP, Model, PASS, Parsed, parse},
};

const CONFIG: &str = r#"
# 198.18.7.1-2 denied, 198.18.7.3 allowed inside the denied prefix, fd00:7::4 allowed.
deny = ["198.18.7.0/30"]
allow = ["198.18.7.3", "fd00:7::4/128"]

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
knocks = ["7100/udp", "7000/tcp"]
protect = ["8080/tcp", "5353/udp"]
strict = true
keep_established = false
open_for = "10s"

[[sequence]]
name = "fin"
knocks = ["6000/tcp"]
protect = ["2222/tcp"]
tcp_flags = "fin,!syn"

[[sequence]]
name = "calm"
knocks = ["6100/udp", "6200/udp", "6300/tcp", "6400/udp"]
protect = ["3333/tcp"]
wrong_knock = "ignore"

# Passing and ICMP knocks: 4443 and 8443 serve (the rest of a connection to 4443
# passes untracked; "acks" counts ACKs on 8443), 5300/udp serves, 0/icmp is answered.
[[sequence]]
name = "serve"
knocks = ["4443/tcp:pass", "64/icmp", "8443/tcp:pass"]
protect = ["2200/tcp"]
step_timeout = "5s"

[[sequence]]
name = "dns"
knocks = ["5300/udp:pass", "1452/icmp", "0/icmp:pass"]
protect = ["2300/tcp"]
strict = true

[[sequence]]
name = "acks"
knocks = ["65/icmp", "8443/tcp:pass"]
protect = ["2400/tcp"]
tcp_flags = "ack,!syn"

[ban]
failures = 6
window = "10s"
ban_for = "20s"
"#;

/// Top-level keys put before CONFIG: stealth on, with public ports of both protocols.
const STEALTH: &str = r#"
stealth = true
public = ["80/tcp", "53/udp", "443/tcp"]
"#;

fn stealth_config() -> String {
    format!("{STEALTH}{CONFIG}")
}

/// Frames that once exposed a disagreement, replayed in order on a fresh program:
/// (hex, verdict). No disagreement between the program and the model has been found
/// yet; these came from checking that the fuzzer catches deliberately broken programs.
const REGRESSIONS: &[(&str, u32)] = &[
    // 0x9100-tagged IPv6 SYN to 22 from a source that never knocked.
    (
        "0200000000010200000000029100006486dd6000000000140640fd000007000000000000000000000003fd0000000000000000000000000000019c40001600000000000000005002000000000000",
        DROP,
    ),
    // IPv4 SYN to 2222 (the fin sequence's port) from a source that never knocked.
    (
        "0200000000010200000000020800450000281234000040060000c6120702c61200019c4208ae00000000000000005002000000000000",
        DROP,
    ),
];

/// Time steps, with the timeouts' exact boundaries among them.
const STEPS_MS: [u64; 9] = [100, 1000, 1001, 3000, 5000, 5001, 8000, 30_000, 60_001];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Kernel and model state must match: live authorizations and live progress. The
/// authorization hint never counts fewer authorizations in a slot than there are.
fn compare_state(h: &Harness, model: &Model, now: u64, config: &Config) {
    let mut per_slot: HashMap<u32, u64> = HashMap::new();
    for (key, _) in h.state.authorized.iter().filter_map(Result::ok) {
        let slot = knock_common::auth_hint_slot(&key.addr, h.state.auth_hint.shift());
        *per_slot.entry(slot).or_default() += 1;
        assert!(
            h.state.auth_hint.get(&key.addr) >= per_slot[&slot],
            "hint slot {slot} counts fewer authorizations than it has"
        );
    }
    let kernel_auth: HashMap<([u8; 16], u8), u64> = h
        .state
        .authorized
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, a)| a.expires_ns > now)
        .map(|(k, a)| ((k.addr, k.seq), a.expires_ns))
        .collect();
    let model_auth: HashMap<_, _> = model
        .auth
        .iter()
        .filter(|(_, e)| **e > now)
        .map(|(k, e)| (*k, *e))
        .collect();
    assert_eq!(kernel_auth, model_auth, "authorizations differ");
    let kernel_progress: HashMap<([u8; 16], u8), usize> = h
        .state
        .progress
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, p)| {
            let s = &config.sequences[usize::from(k.seq)];
            now.saturating_sub(p.last_ns) <= s.step_timeout.as_nanos() as u64
                && now.saturating_sub(p.first_ns) <= s.sequence_timeout.as_nanos() as u64
        })
        .map(|(k, p)| ((k.addr, k.seq), usize::from(p.step)))
        .collect();
    assert_eq!(kernel_progress, model.live_progress(now), "progress differs");
    let kernel_bans = h.state.live_bans(now);
    assert_eq!(kernel_bans, model.live_bans(now), "bans differ");
}

#[test]
fn regression_frames_keep_their_verdicts() {
    let h = Harness::with_config(CONFIG);
    for (frame, want) in REGRESSIONS {
        assert_eq!(h.run(&unhex(frame)), *want, "regression frame {frame}");
    }
}

#[test]
fn the_program_agrees_with_the_model_and_never_passes_an_unauthorized_frame() {
    let frames = env_u64("XKNOCK_FUZZ_FRAMES", 1_000_000);
    let seed = env_u64("XKNOCK_FUZZ_SEED", 0x006b_6e6f_636b);
    fuzz(CONFIG, frames - frames / 2, seed, false);
    // Another seed for the second half, derived from the first.
    fuzz(&stealth_config(), frames / 2, seed ^ 0x5354_4541_4c54, true);
}

fn fuzz(toml: &str, frames: u64, seed: u64, stealth: bool) {
    let mode = if stealth { "stealth" } else { "plain" };
    let config = Config::parse(Path::new("fuzz.toml"), toml).expect("fuzz config");
    assert_eq!(config.stealth.is_some(), stealth);
    let mut h = Harness::with_config(toml);
    let mut model = Model::new(&config);
    let mut frames_gen = Gen::new(seed);
    let mut passed = 0u64;
    for i in 0..frames {
        if frames_gen.chance(0.01) {
            h.advance(Duration::from_millis(frames_gen.pick(&STEPS_MS)));
        }
        let now = h.now_ns();
        let frame = frames_gen.frame(&model, now);
        // The invariants, judged before the frame changes anything.
        let (must_drop, hidden, serves) = match parse(&frame) {
            Parsed::Transport {
                src,
                sport,
                dport,
                proto,
                flags,
            } => {
                let port = Knock { port: dport, proto };
                let protected = config.sequences.iter().any(|s| s.protect.contains(&port));
                let knock_port = config.sequences.iter().any(|s| s.knocks.contains(&port));
                let new_conn = proto == 6 && flags & 0x12 == 0x02;
                // Stealth: a SYN or datagram to a port no sequence uses and that is
                // neither public nor (UDP) ephemeral never passes, whoever sends it.
                let hidden = !protected && !knock_port && (new_conn || proto == 17) && model.hidden(port);
                let must_drop = match model.access(src) {
                    // A passing knock port serves denied sources too.
                    Some(Access::Deny) => protected || (knock_port && !model.passing(port)),
                    Some(Access::Allow) => false,
                    None => {
                        protected
                            && !model.authorized_for(src, port, now)
                            && (new_conn || !model.kept(src, sport, port, now))
                    }
                };
                (must_drop, hidden, model.passing(port))
            }
            _ => (false, false, false),
        };
        let want = model.verdict(&frame, now);
        let got = h.run(&frame);
        let context = || format!("{mode} frame {i} of seed {seed:#x} at t={now}ns: {}", hex(&frame));
        assert!(
            !(must_drop && got == PASS),
            "an unauthorized frame reached a protected port: {}",
            context()
        );
        assert!(
            !(hidden && got == PASS),
            "a SYN or datagram reached a port stealth hides: {}",
            context()
        );
        assert!(
            !(serves && got == DROP),
            "a packet to a passing knock port was dropped: {}",
            context()
        );
        assert_eq!(
            got,
            want,
            "kernel and model disagree ({} vs {}): {}",
            got,
            want,
            context()
        );
        passed += u64::from(got == PASS);
        if i % 50_000 == 0 {
            compare_state(&h, &model, now, &config);
        }
    }
    compare_state(&h, &model, h.now_ns(), &config);
    let opened = model.opens;
    let bans = model.bans_made;
    let hid = model.stealth_drops;
    let served = model.pass_knocks;
    println!(
        "{mode}: {frames} frames (seed {seed:#x}): {passed} passed ({served} to passing knocks), {} dropped ({hid} by stealth), {opened} authorizations, {bans} bans",
        frames - passed
    );
    assert!(
        opened > 0 && bans > 0 && passed > 0 && frames - passed > 0 && served > 0,
        "the fuzzer must reach every outcome ({mode})"
    );
    // Entries stay in the model's table once made: every kind of knock opened.
    for (i, s) in config.sequences.iter().enumerate() {
        assert!(
            model.auth.keys().any(|(_, seq)| usize::from(*seq) == i),
            "no source ever completed sequence {} ({mode})",
            s.name
        );
    }
    assert_eq!(
        h.counter(Counter::PassKnock),
        served,
        "the kernel's pass_knock counter and the model's passing knocks differ ({mode})"
    );
    assert_eq!(
        hid > 0,
        stealth,
        "stealth must drop something exactly when it is on ({mode})"
    );
    assert_eq!(
        h.counter(Counter::DropStealth),
        hid,
        "the kernel's drop_stealth counter and the model's stealth drops differ ({mode})"
    );
}
