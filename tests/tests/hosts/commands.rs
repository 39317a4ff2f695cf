//! on_open and on_close end to end: `run` starts a sequence's commands on its open and
//! close events (a knock, an expiry, `xknock allow` and `revoke`) with the
//! placeholders filled in, and kills one that outlives `[commands] timeout`, with
//! what it started.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use xknock_tests::setup::{OPEN_FOR, SERIAL, Setup};

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Waits until `cond` holds, for at most `limit`.
fn wait_for(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn commands_run_on_open_and_close_with_the_values_and_a_slow_one_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    // Appends its arguments, one per line, to the file named first.
    script(
        &dir.join("record.sh"),
        "out=\"$1\"; shift; printf '%s\\n' \"$@\" >> \"$out\"",
    );
    // Would write `finished` 3s after it starts, well past the 1s timeout.
    script(
        &dir.join("slow.sh"),
        // A child writes the marker, so killing only the script would not stop it.
        "touch \"$1/started\"; (sleep 3; touch \"$1/finished\") & wait",
    );
    let calls = dir.join("calls");
    let d = dir.display();
    let s = Setup::with_config(&format!(
        "on_open = \"'{d}/record.sh' '{d}/calls' open %IP% %SEQUENCE% %PORTS%\"\n\
         on_close = \"{d}/record.sh {d}/calls 'closed for' %IP% '%SEQUENCE% %PORTS%'\"\n\
         [[sequence]]\nname = \"slow\"\nknocks = [\"7100/tcp\", \"8100/tcp\"]\nprotect = [\"2222/tcp\"]\n\
         on_open = \"{d}/slow.sh {d}\"\n\
         [commands]\ntimeout = \"1s\"\nmax_running = 2\n"
    ));
    let client = s.hosts.clients[0].v4;
    let server = s.hosts.server_v4[0].to_string();
    let other_server = s.hosts.server_v4[1].to_string();

    s.xknock(s.client(1), &["knock", &other_server, "7100", "8100"]);
    s.wait_event("open", s.hosts.clients[1].v4);
    wait_for(Duration::from_secs(5), "the slow command starts", || {
        dir.join("started").exists()
    });
    let slow_started = Instant::now();

    s.xknock(s.client(0), &["knock", &server, "7000", "8000/udp", "9000"]);
    s.wait_event("open", client);
    let read = || fs::read_to_string(&calls).unwrap_or_default();
    let opened = format!("open\n{client}\nssh\n22/tcp\n");
    wait_for(Duration::from_secs(5), "on_open runs", || read() == opened);

    // The window is OPEN_FOR; close comes from the sweep within half a second.
    wait_for(OPEN_FOR + Duration::from_secs(3), "on_close runs", || {
        read().len() > opened.len()
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        read(),
        format!("{opened}closed for\n{client}\nssh 22/tcp\n"),
        "each argument as the template split it, values substituted inside"
    );
    assert_eq!(s.wait_event("close", client)["reason"], "expired");

    // `xknock allow` and `revoke` from another shell run them too.
    let pin_dir = s.fs.pin_dir();
    let pin_dir = pin_dir.to_str().expect("utf-8");
    let (ip, expired) = (client.to_string(), read());
    s.xknock(
        &s.hosts.server,
        &["allow", &ip, "--sequence", "ssh", "--pin-dir", pin_dir],
    );
    let allowed = format!("{expired}open\n{client}\nssh\n22/tcp\n");
    wait_for(Duration::from_secs(5), "on_open runs for allow", || {
        read() == allowed
    });
    s.xknock(&s.hosts.server, &["revoke", &ip, "--pin-dir", pin_dir]);
    let revoked = format!("{allowed}closed for\n{client}\nssh 22/tcp\n");
    wait_for(Duration::from_secs(5), "on_close runs for revoke", || {
        read() == revoked
    });

    // The slow command would have finished 3s after it started; it was killed at 1s.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(slow_started.elapsed()));
    assert!(
        !dir.join("finished").exists(),
        "the command that outlived its timeout was killed, with what it started"
    );
}
