//! knockd's `one_time_sequences` end to end: each line of the file opens once, `run`
//! comments it out and loads the next, and a restarted `run` remembers.

use std::time::Duration;

use xknock_tests::setup::{SERIAL, Setup};

/// The `open` events of sequence "door" so far.
fn opens(s: &Setup) -> usize {
    s.events()
        .iter()
        .filter(|e| e["event"] == "open" && e["sequence"] == "door")
        .count()
}

/// Client 0 knocks `knocks` on the server, then gives `run` a moment.
fn knock(s: &Setup, knocks: &[&str]) {
    let server = s.hosts.server_v4[0].to_string();
    let mut args = vec!["knock", server.as_str(), "--delay", "20ms"];
    args.extend_from_slice(knocks);
    s.xknock(s.client(0), &args);
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn each_one_time_sequence_opens_once_and_the_file_remembers_across_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("door.otp");
    std::fs::write(
        &file,
        "# knockd's format works too\n31000,31001:udp,31002\n32000/udp 32001\n",
    )
    .expect("write");
    // A secret, like a key: run refuses it if others may read it.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let mut s = Setup::with_config(&format!(
        "\n[[sequence]]\nname = \"door\"\none_time_sequences = \"{}\"\nprotect = [\"22/tcp\"]\nopen_for = \"1s\"\n",
        file.display()
    ));
    let client = s.hosts.clients[0].v4;
    let first = ["31000", "31001/udp", "31002"];
    knock(&s, &first);
    assert_eq!(s.wait_event("open", client)["sequence"], "door");
    assert!(
        std::fs::read_to_string(&file)
            .expect("read")
            .contains("#31000,31001:udp,31002"),
        "the used line is commented out"
    );
    std::thread::sleep(Duration::from_millis(1200));
    knock(&s, &first);
    assert_eq!(opens(&s), 1, "the first sequence a second time: {:?}", s.events());
    knock(&s, &["32000/udp", "32001"]);
    assert_eq!(opens(&s), 2, "the next line opens");

    // A new run reads the file: nothing is left, and the used lines stay used.
    s.restart_run("second.jsonl");
    knock(&s, &first);
    knock(&s, &["32000/udp", "32001"]);
    assert_eq!(opens(&s), 0, "after the restart: {:?}", s.events());
    assert!(!s.reachable(0, s.hosts.server_v4[0]));
}

/// A tmpfs of one page mounted for the test (the one-time file fills it), unmounted
/// on drop.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn new() -> TinyFs {
        let dir = std::env::temp_dir().join(xknock_tests::unique("xknock-full-"));
        std::fs::create_dir_all(&dir).expect("mount point");
        xknock_tests::sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=4k,mode=0700",
            "tmpfs",
            dir.to_str().expect("utf-8"),
        ]);
        TinyFs(dir)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_used_line_stays_used_when_its_file_cannot_be_written() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let disk = TinyFs::new();
    let file = disk.0.join("door.otp");
    std::fs::write(&file, "31000,31001:udp,31002\n32000/udp 32001\n").expect("write");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    // The file takes the one page: a replacement cannot be written.
    assert!(
        std::fs::write(disk.0.join("filler"), [0u8; 4096]).is_err(),
        "the disk is full"
    );
    let mut s = Setup::with_config(&format!(
        "\n[[sequence]]\nname = \"door\"\none_time_sequences = \"{}\"\nprotect = [\"22/tcp\"]\nopen_for = \"1s\"\n",
        file.display()
    ));
    let client = s.hosts.clients[0].v4;
    let probe = s.probe(1, s.hosts.server_v4[1], 22);
    let first = ["31000", "31001/udp", "31002"];
    knock(&s, &first);
    s.wait_event("open", client);
    s.wait_log("the line stays used in memory");
    std::thread::sleep(Duration::from_millis(1200));
    knock(&s, &first);
    assert_eq!(
        opens(&s),
        1,
        "the used line opens nothing, written or not: {:?}",
        s.events()
    );
    assert!(!s.reachable(0, s.hosts.server_v4[0]));

    // Room again: the mark is written by the retry, and a new run keeps it used.
    xknock_tests::sh(&["mount", "-o", "remount,size=64k", disk.0.to_str().expect("utf-8")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&file)
        .expect("read")
        .starts_with("#31000")
    {
        assert!(std::time::Instant::now() < deadline, "never marked:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    probe.assert_never_answered("a full disk");
    s.restart_run("second.jsonl");
    knock(&s, &first);
    assert_eq!(opens(&s), 0, "after the restart: {:?}", s.events());
    knock(&s, &["32000/udp", "32001"]);
    assert_eq!(opens(&s), 1, "the next line opens");
}

#[test]
fn a_line_used_while_run_is_stopped_and_its_ring_full_opens_once() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("door.otp");
    std::fs::write(&file, "31000,31001:udp,31002\n32000/udp 32001\n").expect("write");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    // Every knock event made: the flood fills the per-packet ring while run sleeps.
    let s = Setup::with_config(&format!(
        "\n[[sequence]]\nname = \"door\"\none_time_sequences = \"{}\"\nprotect = [\"22/tcp\"]\n\
         [events]\nrate = 1000000\nburst = 1000000\n",
        file.display()
    ));
    let (client, replayer) = (s.hosts.clients[0].v4, s.hosts.clients[1].v4);
    let run = s.hosts.last_child_pid() as i32;
    // SAFETY: signalling the run this test started.
    unsafe { libc::kill(run, libc::SIGSTOP) };
    s.flood(0, 31000, 3).join().expect("the flood");
    let first = ["31000", "31001/udp", "31002"];
    knock(&s, &first);
    assert!(
        s.reachable(0, s.hosts.server_v4[0]),
        "the kernel opens without run"
    );
    // The same line, sniffed and replayed from another host while run sleeps.
    let other = s.hosts.server_v4[1].to_string();
    let mut args = vec!["knock", other.as_str(), "--delay", "20ms"];
    args.extend_from_slice(&first);
    s.xknock(s.client(1), &args);
    assert!(
        !s.reachable(1, s.hosts.server_v4[1]),
        "a used line never opens again"
    );

    // SAFETY: as above.
    unsafe { libc::kill(run, libc::SIGCONT) };
    let open = s.wait_event("open", client);
    assert_eq!(open["reason"], "knock", "{open}");
    let refused = s.wait_event("open_failed", replayer);
    assert_eq!(refused["reason"], "one-time sequence used", "{refused}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&file)
        .expect("read")
        .starts_with("#31000")
    {
        assert!(std::time::Instant::now() < deadline, "never marked:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(opens(&s), 1, "{:?}", s.events());
    let lost: u64 = s
        .events()
        .iter()
        .filter(|e| e["event"] == "suppressed")
        .filter_map(|e| e["lost"].as_u64())
        .sum();
    assert!(lost > 0, "the ring overflowed: {lost} events lost");
    // The next line is in force.
    s.xknock(
        s.client(1),
        &["knock", other.as_str(), "--delay", "20ms", "32000/udp", "32001"],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.reachable(1, s.hosts.server_v4[1]), "the next line opens");
}
