//! Under a flood, end to end: hping3 sends SYNs from random spoofed sources at the
//! first knock port while knockd's `knock` client opens the door. Every open still
//! appears once, with its reason, and its on_open runs; the flood's knocks are
//! counted in `suppressed` lines instead of printed, so `run`'s output stays small.

use std::{fs, os::unix::fs::PermissionsExt as _, time::Duration};

use xknock_tests::setup::{SERIAL, Setup};

#[test]
fn a_spoofed_first_knock_flood_costs_a_line_a_second_and_every_open_appears_once() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("temp dir");
    let calls = tmp.path().join("calls");
    let script = tmp.path().join("record.sh");
    fs::write(&script, "#!/bin/sh\nprintf '%s\\n' \"$2\" >> \"$1\"\n").expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let s = Setup::with_config(&format!(
        "on_open = \"{} {} %IP%\"\n",
        script.display(),
        calls.display()
    ));
    let client = s.hosts.clients[0].v4;
    let server = s.hosts.server_v4[0].to_string();
    let probe = s.probe(1, s.hosts.server_v4[1], 22);

    const SECS: u32 = 6;
    let flood = s.flood(0, 7000, SECS);
    std::thread::sleep(Duration::from_secs(2));
    // knockd's client, one packet per knock, inside the flood.
    let (ok, out) = s.hosts.run_in(
        s.client(0),
        &["knock", "-d", "20", &server, "7000", "8000:udp", "9000"],
    );
    assert!(ok, "knock: {out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.reachable(0, s.hosts.server_v4[0]),
        "the client opened during the flood"
    );
    let flooded = flood.join().expect("the flood");
    // The last summary comes at most a second later.
    std::thread::sleep(Duration::from_millis(1500));
    probe.assert_never_answered("a flood with a legitimate knock inside");

    let events = s.events();
    let opens: Vec<_> = events.iter().filter(|e| e["event"] == "open").collect();
    assert_eq!(opens.len(), 1, "one open: {opens:?}");
    assert_eq!(opens[0]["source"], client.to_string());
    assert_eq!(opens[0]["reason"], "knock");
    assert_eq!(
        fs::read_to_string(&calls).unwrap_or_default(),
        format!("{client}\n"),
        "on_open ran once"
    );
    let suppressed: u64 = events
        .iter()
        .filter(|e| e["event"] == "suppressed")
        .filter_map(|e| e["knock"].as_u64())
        .sum();
    assert!(
        suppressed > 10_000,
        "the flood's knocks are counted, not printed ({suppressed})"
    );
    let per_second = events.len() as f64 / (flooded.as_secs_f64() + 1.5);
    assert!(
        per_second < 100.0,
        "{} lines in {flooded:?}: {per_second:.0} a second",
        events.len()
    );
}
