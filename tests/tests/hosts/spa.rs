//! Single Packet Authorization end to end: `xknock run` with an `[spa]` client made by
//! `xknock keygen`, requests sent by `xknock spa` and crafted ones from a client
//! namespace, sshd behind it, over IPv4 and IPv6.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use xknock::{
    client::spa::{request, seal},
    spa::{ClientKey, Key},
};
use xknock_tests::{
    Tmpfs,
    netns::in_netns,
    setup::{SERIAL, Setup},
};

pub(crate) const PORT: u16 = 62201;

/// Makes client `alice` (may open `ssh`) with `xknock keygen`; returns its
/// `[[spa.client]]` stanza and key file.
pub(crate) fn alice(dir: &Path) -> (String, std::path::PathBuf) {
    xknock_tests::spa_client(dir, "alice")
}

/// alice's `[spa]` (see `alice`): the config to append, and her key file.
fn keygen(dir: &Path) -> (String, std::path::PathBuf) {
    let (stanza, key) = alice(dir);
    let config = format!(
        "\n[spa]\nport = {PORT}\nreplay_file = \"{}\"\n{stanza}",
        dir.join("replay").display()
    );
    (config, key)
}

/// Sends `datagram` to the server's SPA port from client namespace `ns`.
pub(crate) fn send(ns: &str, server: IpAddr, datagram: Vec<u8>) {
    in_netns(ns, move || {
        let any: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let sock = UdpSocket::bind(any).expect("a UDP socket");
        sock.send_to(&datagram, (server, PORT)).expect("send");
    });
}

/// Waits for a `spa_rejected` event with `reason`; returns it.
fn rejected(s: &Setup, reason: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = s
            .events()
            .into_iter()
            .find(|e| e["event"] == "spa_rejected" && e["reason"] == reason);
        if let Some(e) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no spa_rejected with reason {reason}; events: {:?}",
            s.events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A request of `key` for `addr` (None: the sender's), made at `at`, sealed.
pub(crate) fn sealed(key: &ClientKey, addr: Option<IpAddr>, at: SystemTime) -> Vec<u8> {
    seal(key, &request(vec![], None, addr, at).expect("request")).expect("seal")
}

#[test]
fn a_request_opens_for_its_sender_and_forgeries_are_rejected_with_their_reason() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, key_file) = keygen(dir.path());
    let mut s = Setup::with_config(&config);
    let (server, server6) = (s.hosts.server_v4[0], s.hosts.server_v6[0]);
    let (client, client6) = (s.hosts.clients[0].v4, s.hosts.clients[0].v6);
    let key_path = key_file.to_str().expect("utf-8");
    assert!(!s.reachable(0, server), "closed before the request");

    // The real client, IPv4 then IPv6: each opens for the address it came from.
    s.xknock(s.client(0), &["spa", &server.to_string(), "--key", key_path]);
    let open = s.wait_event("open", client);
    assert_eq!(open["reason"], "spa", "{open}");
    assert_eq!(open["client"], "alice");
    assert_eq!(open["sequence"], "ssh");
    assert!(s.reachable(0, server), "sshd open after the request");
    assert!(!s.reachable(1, s.hosts.server_v4[1]), "not for the other host");
    s.xknock(
        s.client(0),
        &["spa", &server6.to_string(), "--key", key_path, "-6"],
    );
    s.wait_event("open", client6);
    assert!(
        xknock_tests::netns::ssh_banner(s.client(0), server6, 22).is_some(),
        "open over IPv6"
    );

    // Crafted requests from client 0, each refused with its reason.
    let key = ClientKey::load(&key_file).expect("key file");
    let ns = s.client(0).to_owned();
    let now = SystemTime::now();
    let mut tampered = sealed(&key, None, now);
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    send(&ns, server, tampered);
    rejected(&s, "bad_tag");
    let other_key = ClientKey {
        key: Key::from_bytes([7; 32]),
        ..key.clone()
    };
    // Another key's nonce has the wrong check value: refused in the kernel.
    send(&ns, server, sealed(&other_key, None, now));
    let e = rejected(&s, "bad_check");
    assert_eq!(e["port"], format!("{PORT}/udp"), "refused in the kernel: {e}");
    let stale = sealed(&key, None, now - Duration::from_secs(120));
    send(&ns, server, stale);
    let e = rejected(&s, "stale");
    assert!(
        e["detail"].as_str().is_some_and(|d| d.contains("behind")),
        "the event says how far off the clock was: {e}"
    );
    send(&ns, server, sealed(&key, None, now + Duration::from_secs(120)));
    rejected(&s, "future");
    // The kernel hands over 4 requests per source and second (SPA_BUDGET).
    std::thread::sleep(Duration::from_millis(1100));
    send(&ns, server, sealed(&key, Some(s.hosts.clients[1].v4), now));
    rejected(&s, "address_mismatch");
    let bad_tags = s
        .events()
        .iter()
        .filter(|e| e["event"] == "spa_rejected" && e["reason"] == "bad_tag")
        .count();
    assert_eq!(bad_tags, 1, "tampered");
    // What no client could have sent is refused in the kernel, and still an event.
    std::thread::sleep(Duration::from_millis(1100));
    let mut unknown = vec![1u8; 80];
    unknown[1..9].copy_from_slice(b"mallory!");
    send(&ns, server, unknown);
    let e = rejected(&s, "unknown_key");
    assert_eq!(e["source"], client.to_string(), "{e}");
    send(&ns, server, vec![1, 2, 3]);
    rejected(&s, "malformed");

    // A replay is refused, also by the next `run` (the cache is on disk).
    std::thread::sleep(Duration::from_millis(1100));
    let replayed = sealed(&key, None, SystemTime::now());
    send(&ns, server, replayed.clone());
    send(&ns, server, replayed.clone());
    rejected(&s, "replayed");
    // The new run watches the pinned request ring buffer before it attaches.
    s.restart_run("second.jsonl");
    send(&ns, server, replayed);
    rejected(&s, "replayed");
}

const FLOOD_MAX: u32 = 2_000_000;

#[test]
fn a_flood_of_spa_packets_does_not_keep_a_valid_request_out() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, key_file) = keygen(dir.path());
    let s = Setup::with_config(&config);
    let server = s.hosts.server_v4[0];
    // Client 1 is on the server's second link.
    let flooded = s.hosts.server_v4[1];
    let key = ClientKey::load(&key_file).expect("key file");
    // Client 1 floods: garbage under alice's key id (without its check value), and
    // datagrams no client could have sent. Bounded below.
    let flooder = s.client(1).to_owned();
    let key_id = key.key_id.0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    // Bounded: 2,000,000 datagrams or 20 s, and stopped once the request got through.
    let flood = std::thread::spawn(move || {
        in_netns(&flooder, move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
            let mut datagram = [0u8; 120];
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sent = 0u32;
            while sent < FLOOD_MAX
                && !flooding.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < deadline
            {
                datagram[0] = 1;
                if sent.is_multiple_of(2) {
                    datagram[1..9].copy_from_slice(&key_id);
                } else {
                    datagram[1..9].copy_from_slice(&sent.to_le_bytes().repeat(2));
                }
                datagram[9..13].copy_from_slice(&sent.to_le_bytes());
                // A full socket buffer only drops the flood's own datagrams.
                let _ = sock.send_to(&datagram, (flooded, PORT));
                sent += 1;
            }
            sent
        })
    });
    // The request goes out while the flood is on.
    std::thread::sleep(Duration::from_millis(200));
    s.xknock(
        s.client(0),
        &[
            "spa",
            &server.to_string(),
            "--key",
            key_file.to_str().expect("utf-8"),
        ],
    );
    s.wait_event("open", s.hosts.clients[0].v4);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().expect("flooder");
    assert!(
        sent < FLOOD_MAX,
        "the flood was still on when the request got through"
    );
    assert!(s.reachable(0, server), "the valid request got through");
    let status = s.status();
    let counters = &status["counters"];
    assert!(
        counters["spa_refused"].as_u64().unwrap_or(0) > 10_000,
        "bad check values and unknown key ids refused in the kernel: {counters}"
    );
    assert_eq!(
        counters["spa_shed"].as_u64().unwrap_or(0),
        0,
        "nothing the flooder sent spent a request budget: {counters}"
    );
    // The flooder's refusals got 4 events a second.
    let rejected = s.events().iter().filter(|e| e["event"] == "spa_rejected").count();
    assert!(
        rejected <= 20,
        "only the flooder's budget made events ({rejected} rejections)"
    );
}

/// Events `event` for `source` so far.
fn count(s: &Setup, event: &str, source: IpAddr) -> usize {
    s.events()
        .iter()
        .filter(|e| e["event"] == event && e["source"] == source.to_string())
        .count()
}

/// Waits until there are more than `before` events `event` for `source`; returns the last.
fn wait_more(s: &Setup, event: &str, source: IpAddr, before: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<_> = s
            .events()
            .into_iter()
            .filter(|e| e["event"] == event && e["source"] == source.to_string())
            .collect();
        if found.len() > before {
            return found.last().cloned().unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no new {event} event for {source}; events: {:?}",
            s.events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the process `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

#[test]
fn a_reload_onto_a_new_replay_file_keeps_refusing_replays() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, key_file) = keygen(dir.path());
    let mut s = Setup::with_config(&config);
    let server = s.hosts.server_v4[0];
    let client = s.hosts.clients[0].v4;
    let key = ClientKey::load(&key_file).expect("key file");
    let ns = s.client(0).to_owned();
    let request = sealed(&key, None, SystemTime::now());
    send(&ns, server, request.clone());
    s.wait_event("open", client);

    // The replay file moves, and the window grows: a reload (SIGHUP).
    let old = dir.path().join("replay");
    let new = dir.path().join("moved/replay");
    let path = s.dir.join("xknock.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let moved = text
        .replace(&old.display().to_string(), &new.display().to_string())
        .replace("[spa]\n", "[spa]\nwindow = \"5m\"\n");
    assert_ne!(text, moved);
    std::fs::write(&path, moved).expect("config written");
    // SAFETY: signalling the run this test started.
    unsafe { libc::kill(s.hosts.last_child_pid() as i32, libc::SIGHUP) };
    s.wait_log("reloaded");
    assert!(
        new.exists(),
        "the nonces were written to the new replay file at once"
    );

    std::thread::sleep(Duration::from_millis(1100));
    send(&ns, server, request.clone());
    rejected(&s, "replayed");
    assert_eq!(count(&s, "open", client), 1, "the replay opened nothing");
    // A restart reads the new file: still a replay.
    s.restart_run("second.jsonl");
    send(&ns, server, request);
    rejected(&s, "replayed");
}

/// Fills `disk` with file `name`; returns the bytes written.
fn fill(disk: &Tmpfs, name: &str) -> usize {
    use std::io::Write as _;
    let mut f = std::fs::File::create(disk.path().join(name)).expect("filler");
    let mut written = 0;
    // Bounded: the tmpfs holds its size; a failed write (ENOSPC) ends it.
    for chunk in [4096usize, 1] {
        let block = vec![0x5a; chunk];
        for _ in 0..100_000 {
            if f.write_all(&block).is_err() {
                break;
            }
            written += chunk;
        }
    }
    written
}

#[test]
fn a_full_disk_for_the_replay_file_refuses_requests_until_there_is_room() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Tmpfs::new("64k");
    let (config, key_file) = keygen(dir.path());
    let config = config.replace(
        &dir.path().join("replay").display().to_string(),
        &disk.path().join("replay").display().to_string(),
    );
    let s = Setup::with_config(&config);
    let server = s.hosts.server_v4[0];
    let client = s.hosts.clients[0].v4;
    let key_path = key_file.to_str().expect("utf-8");
    let filled = fill(&disk, "filler");
    assert!(filled > 0, "the tmpfs took the filler");

    // The disk is full: the nonce cannot be recorded, so the request is refused.
    s.xknock(s.client(0), &["spa", &server.to_string(), "--key", key_path]);
    let e = rejected(&s, "replay_cache_unsaved");
    assert_eq!(e["source"], client.to_string(), "{e}");
    assert!(
        e["detail"].as_str().is_some_and(|d| d.contains("replay")),
        "the event says why: {e}"
    );
    assert_eq!(count(&s, "open", client), 0, "nothing opened");
    assert!(!s.reachable(0, server), "port 22 stays closed to the client");
    let run = s.hosts.last_child_pid();
    assert!(alive(run), "run keeps running on a full disk");

    // Room again: the next request is recorded and opens.
    std::fs::remove_file(disk.path().join("filler")).expect("filler removed");
    std::thread::sleep(Duration::from_millis(1100));
    s.xknock(s.client(0), &["spa", &server.to_string(), "--key", key_path]);
    wait_more(&s, "open", client, 0);
    assert!(s.reachable(0, server), "open once the disk has room");
    assert!(alive(run));
    assert!(disk.path().join("replay").exists(), "the replay file was written");
}

/// Spoofed datagrams the flood sends at most, and for how long at most.
const SPOOF_MAX: u64 = 20_000_000;
const SPOOF_LIMIT: Duration = Duration::from_secs(12);

/// Sends datagrams to `server`'s SPA port from namespace `ns` through a raw socket,
/// with `victim` as their source and `key_id` in their header (both travel in the
/// clear), as fast as one thread can, until `stop`, SPOOF_MAX or SPOOF_LIMIT; returns
/// how many and for how long.
fn spoof(
    ns: &str,
    victim: std::net::Ipv4Addr,
    server: std::net::Ipv4Addr,
    key_id: [u8; 8],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Duration) {
    use std::sync::atomic::Ordering;
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // 64 request-shaped datagrams, each with a nonce and "ciphertext" of its own:
        // what a blind spoofer can send, knowing the key id but not the key.
        let packets: Vec<Vec<u8>> = (0..64u64)
            .map(|i| {
                let mut payload = vec![1u8];
                payload.extend_from_slice(&key_id);
                let mut x = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1);
                payload.extend((0..111).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }));
                xknock_tests::frame::Frame::udp(&victim.to_string(), PORT)
                    .sport(40000 + i as u16)
                    .payload(&payload)
                    .dst(IpAddr::V4(server))
                    .ip_packet()
            })
            .collect();
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(server.octets()),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < SPOOF_MAX && !stop.load(Ordering::Relaxed) && started.elapsed() < SPOOF_LIMIT {
            for p in packets.iter().take(64) {
                // SAFETY: `p` and `addr` outlive the call.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const addr).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if n == p.len() as isize {
                    sent += 1;
                }
            }
        }
        let took = started.elapsed();
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        (sent, took)
    })
}

#[test]
fn a_spoofed_flood_under_the_victims_address_and_key_id_does_not_keep_it_out() {
    use std::sync::{Arc, atomic::AtomicBool};
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, key_file) = keygen(dir.path());
    let s = Setup::with_config(&config);
    let server = s.hosts.server_v4[0];
    let IpAddr::V4(victim) = s.hosts.clients[0].v4 else {
        unreachable!("client v4")
    };
    // The attacker is client 1, on the server's second link.
    let IpAddr::V4(server_for_attacker) = s.hosts.server_v4[1] else {
        unreachable!("server v4")
    };
    let key = ClientKey::load(&key_file).expect("key file");
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (ns, stop, key_id) = (s.client(1).to_owned(), stop.clone(), key.key_id.0);
        std::thread::spawn(move || spoof(&ns, victim, server_for_attacker, key_id, stop))
    };
    // The flood is on: the victim's budget would be spent every second.
    std::thread::sleep(Duration::from_millis(1500));
    let before = s.status()["counters"].clone();
    let mut tries = 0;
    let mut opened = false;
    while tries < 2 && !opened {
        tries += 1;
        s.xknock(
            s.client(0),
            &[
                "spa",
                &server.to_string(),
                "--key",
                key_file.to_str().expect("utf-8"),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while !opened && Instant::now() < deadline {
            opened = count(&s, "open", IpAddr::V4(victim)) > 0;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A second more of flood, to see where it goes.
    std::thread::sleep(Duration::from_millis(1000));
    let after = s.status()["counters"].clone();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, took) = attacker.join().expect("attacker");
    let counter = |c: &serde_json::Value, name: &str| c[name].as_u64().unwrap_or(0);
    let during = |name: &str| counter(&after, name).saturating_sub(counter(&before, name));
    let rejections = s.events().iter().filter(|e| e["event"] == "spa_rejected").count();
    println!(
        "spoofed flood: {sent} datagrams in {:.1} s ({:.0}/s) under the victim's address and key id; \
         the victim {} after {tries} tr{}; while it tried: spa_refused {}, spa_shed {}, drop_spa {}, \
         spa_lost {}, events_lost {}; {rejections} spa_rejected events in all",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64(),
        if opened { "got in" } else { "was kept out" },
        if tries == 1 { "y" } else { "ies" },
        during("spa_refused"),
        during("spa_shed"),
        during("drop_spa"),
        during("spa_lost"),
        during("events_lost"),
    );
    assert!(sent < SPOOF_MAX, "the flood was still on while the victim tried");
    assert!(opened, "the victim's request opened within two tries");
    assert!(s.reachable(0, server), "port 22 open for the victim");
    assert!(
        during("spa_refused") + during("spa_shed") > 1000,
        "the flood reached the SPA port: {after}"
    );
}
