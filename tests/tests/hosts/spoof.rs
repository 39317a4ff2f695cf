//! The spoofed-lockout attack from the seed documents, between three namespaces: a
//! victim knocking with `xknock knock`, an attacker that knows the victim's address
//! and the knock ports and keeps sending knocks with the victim's source address
//! (raw IP, out of order), and the server. Bans are on (the defaults), as they
//! would be in service. Reports how often the victim still gets
//! in with the default `wrong_knock = "reset"` and with `wrong_knock = "ignore"`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use xknock_tests::{
    frame::Frame,
    netns::in_netns,
    setup::{SERIAL, Setup},
};

const ATTEMPTS: usize = 10;
/// Pause between spoofed packets: 200 a second, bounded by the attack's duration.
const SPOOF_EVERY: Duration = Duration::from_millis(5);
const ATTACK_LIMIT: Duration = Duration::from_secs(60);

/// Sends spoofed knocks (source `victim`) to `server` from namespace `ns` until `stop`.
fn attack(ns: &str, victim: Ipv4Addr, server: Ipv4Addr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // Knocks of the sequence but never its middle one (8000/udp): in reset mode each
        // lands out of order and resets the victim, and the attacker alone can never
        // complete the sequence for the victim, so every success is the victim's own.
        let knocks = [Frame::syn("0.0.0.0", 9000), Frame::syn("0.0.0.0", 7000)];
        let dst = SocketAddrV4::new(server, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < ATTACK_LIMIT {
            let mut frame = knocks[i % knocks.len()].clone();
            frame.src = IpAddr::V4(victim);
            let packet = frame.dst(IpAddr::V4(server)).ip_packet();
            // SAFETY: `packet` and `addr` outlive the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            assert_eq!(
                n,
                packet.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            sent.fetch_add(1, Ordering::Relaxed);
            i += 1;
            std::thread::sleep(SPOOF_EVERY);
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    });
}

/// The victim's successes out of ATTEMPTS under attack, with `extra` config.
fn victim_successes(extra: &str) -> (usize, u64) {
    let s = Setup::with_config(extra);
    let victim = s.hosts.clients[0].v4;
    let IpAddr::V4(victim_v4) = victim else {
        unreachable!("client v4")
    };
    let IpAddr::V4(server_for_attacker) = s.hosts.server_v4[1] else {
        unreachable!("server v4")
    };
    let server = s.hosts.server_v4[0].to_string();
    let pin = s.fs.pin_dir().to_str().expect("utf-8").to_owned();
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let attacker = {
        let (ns, stop, sent) = (s.hosts.clients[1].ns.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || attack(&ns, victim_v4, server_for_attacker, stop, sent))
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut successes = 0;
    for _ in 0..ATTEMPTS {
        s.xknock(
            s.client(0),
            &["knock", &server, "7000", "8000/udp", "9000", "--delay", "50ms"],
        );
        std::thread::sleep(Duration::from_millis(100));
        let status = s.status();
        let authorized = status["authorized"].as_array().expect("list");
        if authorized.iter().any(|a| a["source"] == victim.to_string()) {
            successes += 1;
            s.xknock(
                &s.hosts.server,
                &["revoke", &victim.to_string(), "--pin-dir", &pin],
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");
    (successes, sent.load(Ordering::Relaxed))
}

#[test]
fn ignoring_wrong_knocks_defeats_spoofed_resets() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (reset, sent_reset) = victim_successes("");
    let (ignore, sent_ignore) = victim_successes("wrong_knock = \"ignore\"\n");
    println!(
        "victim got in {reset}/{ATTEMPTS} times with wrong_knock = \"reset\" ({sent_reset} spoofed packets), \
         {ignore}/{ATTEMPTS} with \"ignore\" ({sent_ignore} spoofed packets)"
    );
    assert!(
        reset <= ATTEMPTS / 5,
        "the attack should work against reset mode: {reset}/{ATTEMPTS}"
    );
    assert!(
        ignore >= ATTEMPTS - 1,
        "ignore mode should let the victim in: {ignore}/{ATTEMPTS}"
    );
}
