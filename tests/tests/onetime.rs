//! knockd's `one_time_sequences` end to end: each line of the file opens once, `run`
//! comments it out and loads the next, and a restarted `run` remembers.

use std::time::Duration;

use xknock_tests::setup::{SERIAL, Setup};

#[test]
fn each_one_time_sequence_opens_once_and_the_file_remembers_across_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let (server, client) = (s.hosts.server_v4[0].to_string(), s.hosts.clients[0].v4);
    let opens = |s: &Setup| {
        s.events()
            .iter()
            .filter(|e| e["event"] == "open" && e["sequence"] == "door")
            .count()
    };
    let knock = |s: &Setup, knocks: &[&str]| {
        let mut args = vec!["knock", server.as_str(), "--delay", "20ms"];
        args.extend_from_slice(knocks);
        s.xknock(s.client(0), &args);
        std::thread::sleep(Duration::from_millis(500));
    };
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
