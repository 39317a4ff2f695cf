//! Time-based sequences end to end: `xknock secret`, `xknock run` rotating the
//! kernel's tables at period boundaries, `xknock knock --secret` from a client, and a
//! sniffed sequence that stops opening once its period and grace are over; IPv4 and
//! IPv6.

use std::time::{Duration, SystemTime};

use xknock::timed::TimedSecret;
use xknock_tests::{
    setup::{SERIAL, Setup},
    xknock_bin,
};

#[test]
fn the_current_knocks_open_and_a_sniffed_sequence_stops_after_its_grace() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("door.secret");
    let out = std::process::Command::new(xknock_bin())
        .args([
            "secret",
            "--period",
            "4s",
            "--knocks",
            "3",
            "--ports",
            "30000-30999",
            "--out",
        ])
        .arg(&file)
        .output()
        .expect("run xknock secret");
    assert!(out.status.success(), "secret: {out:?}");
    let secret = TimedSecret::load(&file).expect("the secret file");
    let s = Setup::with_config(&format!(
        "\n[[sequence]]\nname = \"door\"\nsecret_file = \"{}\"\ngrace = \"1s\"\nprotect = [\"22/tcp\"]\nopen_for = \"2s\"\n",
        file.display()
    ));
    let (server, client) = (s.hosts.server_v4[0], s.hosts.clients[0].v4);
    let path = file.to_str().expect("utf-8");

    // Knock early in a period, so that the test knows which period's knocks went out.
    while secret.into_period(secret.counter(SystemTime::now()), SystemTime::now()) > Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counter = secret.counter(SystemTime::now());
    s.xknock(
        s.client(0),
        &["knock", &server.to_string(), "--secret", path, "--delay", "20ms"],
    );
    assert_eq!(
        secret.counter(SystemTime::now()),
        counter,
        "knocked within one period"
    );
    let open = s.wait_event("open", client);
    assert_eq!(open["sequence"], "door", "{open}");
    assert!(s.reachable(0, server), "open with the current knocks");

    // After the period and its grace, and after the window closed: the sniffed
    // knocks open nothing.
    let past = SystemTime::UNIX_EPOCH + secret.period * (counter as u32 + 1) + Duration::from_millis(1500);
    std::thread::sleep(
        past.duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_secs(2)),
    );
    let sniffed: Vec<String> = secret
        .knocks_for(counter)
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut args = vec!["knock", &*server.to_string().leak(), "--delay", "20ms"];
    args.extend(sniffed.iter().map(String::as_str));
    s.xknock(s.client(0), &args);
    std::thread::sleep(Duration::from_millis(300));
    let opens = s
        .events()
        .iter()
        .filter(|e| e["event"] == "open" && e["source"] == client.to_string())
        .count();
    assert_eq!(opens, 1, "the replayed sequence opened nothing: {:?}", s.events());
    assert!(!s.reachable(0, server), "still closed after the replay");

    // The current period's knocks still work: run rotated the kernel's tables.
    s.xknock(
        s.client(0),
        &["knock", &server.to_string(), "--secret", path, "--delay", "20ms"],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.reachable(0, server), "open again with the new period's knocks");

    // IPv6: the same knocks, from the client's IPv6 address, open for that address.
    let (server6, client6) = (s.hosts.server_v6[0], s.hosts.clients[0].v6);
    assert!(!s.reachable(0, server6), "closed over IPv6 before its knocks");
    s.xknock(
        s.client(0),
        &[
            "knock",
            &server6.to_string(),
            "--secret",
            path,
            "--delay",
            "20ms",
            "-6",
        ],
    );
    let open = s.wait_event("open", client6);
    assert_eq!(open["sequence"], "door", "{open}");
    assert!(s.reachable(0, server6), "open over IPv6 with the current knocks");
}
