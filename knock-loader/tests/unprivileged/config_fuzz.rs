//! The config parser under hostile input: seeded mutations of valid configurations
//! (lines dropped, doubled or cut, values swapped for odd ones, bytes flipped). It
//! must never panic; every refusal must name the file; and whatever it accepts must
//! keep the promises the kernel relies on. XKNOCK_CONFIG_FUZZ sets the count.

use std::{collections::HashSet, path::Path};

use rand::{RngExt as _, SeedableRng as _, rngs::SmallRng, seq::IndexedRandom as _};
use xknock::config::Config;

const PATH: &str = "/etc/xknock/fuzz.toml";

const SEEDS: &[&str] = &[
    include_str!("../../../examples/xknock.toml"),
    r#"
interface = ["eth0", "eth1"]
xdp_mode = "skb"
allow = ["198.18.0.0/24", "fd00:1::/64"]
deny = ["198.18.0.11"]

[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
open_for = "30s"
step_timeout = "5s"
sequence_timeout = "8s"
strict = true
tcp_flags = "syn,!ack"
wrong_knock = "ignore"

[[sequence]]
name = "web"
knocks = ["7100/udp", "7000/tcp"]
protect = ["8080/tcp", "5353/udp"]
keep_established = false
idle_timeout = "10m"

[ban]
failures = 5
window = "1m"
ban_for = "10m"

[limits]
in_progress = 1024
authorized = 64
"#,
];

const ODD_VALUES: &[&str] = &[
    "0",
    "-1",
    "65536",
    "4294967296",
    "99999999999999999999",
    "\"\"",
    "\"0s\"",
    "\"400days\"",
    "\"1ns\"",
    "\"x/tcp\"",
    "\"0/udp\"",
    "\"65535/udp\"",
    "\"22/tcp\"",
    "[]",
    "[\"7000/tcp\"]",
    "true",
    "\"::/0\"",
    "\"0.0.0.0/0\"",
    "\"syn,ack\"",
    "\"!syn\"",
    "\"ignore\"",
    "{}",
    "1.5",
    "\"é\"",
];

const ODD_LINES: &[&str] = &[
    "[[sequence]]",
    "[ban]",
    "[limits]",
    "name = \"ssh\"",
    "knocks = [\"1/udp\"]",
    "protect = [\"7000/tcp\"]",
    "strict = 1",
    "colour = \"blue\"",
    "open_for = 30",
    "allow = [\"10.0.0.0/8\"]",
    "deny = [\"10.0.0.0/8\"]",
    "[sequence]",
    "=",
    "\"",
    "[[",
    "knocks = [\"7000/tcp\", \"7000/tcp\"]",
];

fn mutate(rng: &mut SmallRng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for _ in 0..rng.random_range(1..=3) {
        let at = rng.random_range(0..lines.len().max(1));
        match rng.random_range(0..6) {
            0 if !lines.is_empty() => {
                lines.remove(at);
            }
            1 if !lines.is_empty() => {
                let line = lines[at].clone();
                lines.insert(at, line);
            }
            2 if !lines.is_empty() => {
                if let Some((key, _)) = lines[at].clone().split_once(" = ") {
                    lines[at] = format!("{key} = {}", ODD_VALUES.choose(rng).expect("values"));
                }
            }
            3 => lines.insert(at, (*ODD_LINES.choose(rng).expect("lines")).to_owned()),
            4 if !lines.is_empty() && !lines[at].is_empty() => {
                let mut bytes = lines[at].clone().into_bytes();
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random_range(b' '..=b'~');
                lines[at] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ if !lines.is_empty() => {
                let keep = rng.random_range(0..=lines[at].len());
                lines[at] = lines[at].chars().take(keep).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

/// What the kernel relies on in an accepted config.
fn check_accepted(c: &Config, text: &str) {
    assert!(!c.sequences.is_empty() && c.sequences.len() <= 8, "{text}");
    let knocks: HashSet<_> = c.sequences.iter().flat_map(|s| s.knocks.iter()).collect();
    let mut seen = HashSet::new();
    for s in &c.sequences {
        // No knocks (`knocks = []`, or a one-time file used up): only SPA and
        // `allow` open it, and several such sequences are told apart by name.
        assert!(
            s.knocks.is_empty() || seen.insert(&s.knocks),
            "two sequences with the same knocks accepted:\n{text}"
        );
        assert!(s.knocks.len() <= 16 && !s.protect.is_empty(), "{text}");
        assert!(
            s.knocks.iter().chain(&s.protect).all(|k| k.port != 0),
            "port 0 accepted:\n{text}"
        );
        assert!(
            s.knocks.windows(2).all(|w| w[0] != w[1]),
            "a knock twice in a row accepted:\n{text}"
        );
        assert!(
            s.protect.iter().all(|p| !knocks.contains(p)),
            "a knock port also protected:\n{text}"
        );
        assert!(
            !s.open_for.is_zero() && s.step_timeout <= s.sequence_timeout,
            "{text}"
        );
        assert!(s.tcp_flags_set != 0, "{text}");
    }
    assert!(
        c.allow.iter().all(|a| !c.deny.contains(a)),
        "a prefix in both lists:\n{text}"
    );
}

#[test]
fn the_config_parser_survives_hostile_input() {
    let count: usize = std::env::var("XKNOCK_CONFIG_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rng = SmallRng::seed_from_u64(0x636f_6e66);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..count {
        let seed = *SEEDS.choose(&mut rng).expect("seeds");
        let text = mutate(&mut rng, seed);
        let result = std::panic::catch_unwind(|| Config::parse(Path::new(PATH), &text))
            .unwrap_or_else(|_| panic!("the parser panicked on input {i}:\n{text}"));
        match result {
            Ok(c) => {
                accepted += 1;
                check_accepted(&c, &text);
            }
            Err(e) => {
                refused += 1;
                let message = format!("{e:#}");
                assert!(
                    message.starts_with(PATH),
                    "a refusal that does not name the file: {message}\n{text}"
                );
            }
        }
    }
    println!("{count} mutated configs: {accepted} accepted, {refused} refused");
    assert!(accepted > 0 && refused > 0);
}
