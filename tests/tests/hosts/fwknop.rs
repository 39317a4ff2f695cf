//! fwknop's clients against `xknock run`: Debian's real `fwknop` (2.6.10, as nobody,
//! keys on the command line, no rc file, never `-R`) opens sshd for the client only;
//! a replay, a wrong key, an old request, a port the client may not open and another
//! address open nothing, each a `spa_rejected` with its reason; the SHA-512 HMAC
//! variant; xknock's own SPA client on the same port; requests in the same format
//! over IPv6, built here as the test vector is (the 2.6.10 client resolves servers
//! as IPv4 only); and a fwknopd access.conf migrated by `import-fwknopd`, used by the
//! real client unchanged.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use knock_common::PROTO_TCP;
use xknock::{
    net::Knock,
    spa::fwknop::{self, HmacDigest, Keys, Message},
};
use xknock_tests::setup::{SERIAL, Setup};

use crate::spa::send;

const PORT: u16 = 62201;
/// bob's keys (SHA-256 HMAC): what `fwknop --key-gen` makes, 32 and 64 bytes.
const BOB_KEY: &str = "q7C9dD2Xl3wZGz6pV4Jm0b8RkS1nT5yUeHfAcIoLxWE=";
const BOB_HMAC: &str =
    "Xo1vq3h8Kd2mZ7RbT0yW4nG6sL9pJcFeUaHiMkVtBxQrNzYwE5gC1jD3lP8uO2fS7kA4mI6bT9vR0xQ2eW5yZg==";
/// carol's (SHA-512 HMAC).
const CAROL_KEY: &str = "Zm9vYmFyYmF6cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2E=";
const CAROL_HMAC: &str =
    "c2VjcmV0IGhtYWMga2V5IGZvciBjYXJvbCwgc2l4dHktZm91ciBieXRlcyBsb25nIGluIGFsbCwgb2sgZ29vZA==";

/// `[spa]` with bob, carol and xknock's own alice (made by `xknock keygen`), and a
/// sequence `web` (443) that neither may open.
fn config(dir: &Path) -> (String, PathBuf) {
    let (alice, key) = crate::spa::alice(dir);
    let toml = format!(
        "\n[[sequence]]\nname = \"web\"\nknocks = []\nprotect = [\"443/tcp\"]\n\
         [spa]\nport = {PORT}\nwindow = \"120s\"\nreplay_file = \"{}\"\n{alice}\n\
         [[spa.fwknop]]\nname = \"bob\"\nkey_base64 = \"{BOB_KEY}\"\nhmac_key_base64 = \"{BOB_HMAC}\"\n\
         sequences = [\"ssh\"]\n\
         [[spa.fwknop]]\nname = \"carol\"\nkey_base64 = \"{CAROL_KEY}\"\nhmac_key_base64 = \"{CAROL_HMAC}\"\n\
         hmac_digest = \"sha512\"\nsequences = [\"ssh\"]\n",
        dir.join("replay").display()
    );
    (toml, key)
}

/// Runs Debian's `fwknop` in client namespace `i` as nobody, with `key`, `hmac` and
/// `args`; returns its output.
fn fwknop_client(s: &Setup, i: usize, work: &Path, key: &str, hmac: &str, args: &[&str]) -> String {
    let server = s.hosts.server_v4[i].to_string();
    let args_file = work.join("args");
    let mut full = vec![
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "fwknop",
        "--no-rc-file",
        "--no-save-args",
        "--no-home-dir",
        "-E",
        args_file.to_str().expect("utf-8"),
        "-D",
        &server,
        "-p",
        "62201",
        "-P",
        "udp",
        "--use-hmac",
        "--key-base64-rijndael",
        key,
        "--key-base64-hmac",
        hmac,
    ];
    full.extend_from_slice(args);
    let (ok, out) = s.hosts.run_in(s.client(i), &full);
    assert!(ok, "fwknop {args:?}: {out}");
    out
}

/// The `n`th `spa_rejected` event with `reason` (waiting for it).
fn rejected(s: &Setup, reason: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<_> = s
            .events()
            .into_iter()
            .filter(|e| e["event"] == "spa_rejected" && e["reason"] == reason)
            .collect();
        if let Some(e) = found.get(n - 1) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no spa_rejected #{n} with reason {reason}; events: {:?}",
            s.events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `open` events for `source`.
fn opens(s: &Setup, source: IpAddr) -> Vec<serde_json::Value> {
    s.events()
        .into_iter()
        .filter(|e| e["event"] == "open" && e["source"] == source.to_string())
        .collect()
}

/// The kernel hands over 4 requests per source and second: a pause between bursts.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn fwknops_own_client_opens_for_its_address_and_what_it_must_not_opens_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    // fwknop (as nobody) writes its args file and saved packets here.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let (toml, alice_key) = config(dir.path());
    let mut s = Setup::with_config(&toml);
    let work = dir.path();
    let (server, client, client1) = (s.hosts.server_v4[0], s.hosts.clients[0].v4, s.hosts.clients[1].v4);
    assert!(!s.reachable(0, server), "closed before any request");

    // `-a` with the client's own address: open for it, and for nobody else.
    let allow = client.to_string();
    fwknop_client(&s, 0, work, BOB_KEY, BOB_HMAC, &["-A", "tcp/22", "-a", &allow]);
    let open = s.wait_event("open", client);
    assert_eq!(
        (open["reason"].as_str(), open["client"].as_str()),
        (Some("spa"), Some("bob")),
        "{open}"
    );
    assert_eq!(open["sequence"], "ssh");
    assert!(s.reachable(0, server), "sshd answers bob");
    assert!(!s.reachable(1, s.hosts.server_v4[1]), "and nobody else");
    // `-s` (0.0.0.0): the packet's source, from the other client.
    fwknop_client(&s, 1, work, BOB_KEY, BOB_HMAC, &["-A", "tcp/22", "-s"]);
    s.wait_event("open", client1);
    assert!(s.reachable(1, s.hosts.server_v4[1]), "open for the second client");

    // The SHA-512 HMAC variant, and xknock's own client on the same port.
    next_second();
    fwknop_client(
        &s,
        0,
        work,
        CAROL_KEY,
        CAROL_HMAC,
        &["-A", "tcp/22", "-s", "--hmac-digest-type", "sha512"],
    );
    let alice = alice_key.to_str().expect("utf-8");
    s.xknock(s.client(0), &["spa", &server.to_string(), "--key", alice]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while opens(&s, client).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "carol and alice open: {:?}",
            s.events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let clients: Vec<_> = opens(&s, client).iter().map(|e| e["client"].clone()).collect();
    assert_eq!(clients, ["bob", "carol", "alice"]);

    // What must open nothing, each refused with its reason.
    next_second();
    fwknop_client(&s, 0, work, BOB_KEY, CAROL_HMAC, &["-A", "tcp/22", "-s"]);
    rejected(&s, "bad_hmac", 1);
    fwknop_client(
        &s,
        0,
        work,
        BOB_KEY,
        BOB_HMAC,
        &["-A", "tcp/22", "-s", "--time-offset-minus", "300s"],
    );
    let stale = rejected(&s, "stale", 1);
    assert!(
        stale["detail"]
            .as_str()
            .is_some_and(|d| d.contains("5m") && d.contains("behind")),
        "says how far off the clock was: {stale}"
    );
    fwknop_client(&s, 0, work, BOB_KEY, BOB_HMAC, &["-A", "tcp/443", "-s"]);
    rejected(&s, "not_allowed", 1);
    let elsewhere = client1.to_string();
    fwknop_client(
        &s,
        0,
        work,
        BOB_KEY,
        BOB_HMAC,
        &["-A", "tcp/22", "-a", &elsewhere],
    );
    rejected(&s, "address_mismatch", 1);
    assert_eq!(
        opens(&s, client).len(),
        3,
        "none of them opened: {:?}",
        s.events()
    );

    // A captured packet, replayed: refused, also by the next `run`.
    next_second();
    let saved = work.join("captured");
    let saved_arg = saved.to_str().expect("utf-8");
    fwknop_client(
        &s,
        0,
        work,
        BOB_KEY,
        BOB_HMAC,
        &["-A", "tcp/22", "-s", "-T", "-B", saved_arg],
    );
    let captured = fs::read_to_string(&saved).expect("the saved packet");
    let packet = captured.trim().as_bytes().to_vec();
    send(s.client(0), server, packet.clone());
    send(s.client(0), server, packet.clone());
    rejected(&s, "replayed", 1);
    s.restart_run("second.jsonl");
    send(s.client(0), server, packet);
    rejected(&s, "replayed", 1);
    assert!(
        opens(&s, client).is_empty(),
        "the new run opened nothing: {:?}",
        s.events()
    );
}

#[test]
fn requests_in_fwknops_format_open_over_ipv6_for_the_source() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (toml, _) = config(dir.path());
    let s = Setup::with_config(&toml);
    let (server6, client6) = (s.hosts.server_v6[0], s.hosts.clients[0].v6);
    let keys = Keys {
        key: fwknop::decode_key(BOB_KEY).expect("key"),
        hmac_key: fwknop::decode_key(BOB_HMAC).expect("key"),
        digest: HmacDigest::Sha256,
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let message = |addr: &str| Message {
        user: "bob".into(),
        timestamp: now,
        addr: addr.parse().expect("addr"),
        access: vec![Knock {
            port: 22,
            proto: PROTO_TCP,
        }],
        timeout: Some(60),
    };
    // As Fwknop2 sends it: 0.0.0.0, so the server takes the packet's source.
    send(
        s.client(0),
        server6,
        fwknop::seal(&keys, &message("0.0.0.0"), 1_111_111_111_111_111, [1; 8]),
    );
    let open = s.wait_event("open", client6);
    assert_eq!(open["client"], "bob", "{open}");
    assert_eq!(open["for"], "1m", "the client's timeout");
    assert!(
        xknock_tests::netns::ssh_banner(s.client(0), server6, 22).is_some(),
        "open over IPv6"
    );
    // Naming its own IPv6 address works too; another's does not.
    next_second();
    let other = s.hosts.clients[1].v6.to_string();
    send(
        s.client(0),
        server6,
        fwknop::seal(&keys, &message(&other), 2_222_222_222_222_222, [2; 8]),
    );
    rejected(&s, "address_mismatch", 1);
}

#[test]
fn a_migrated_access_conf_runs_with_the_real_client_unchanged() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let access =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../knock-loader/tests/fixtures/fwknop-access-keys.conf");
    let imported = xknock::fwknopd::import_files(&access, None).expect("imports");
    // The import as it is, with the replay file in the test's directory.
    let spa_at = imported.toml.find("[spa]\n").expect("[spa]") + "[spa]\n".len();
    let toml = format!(
        "\n{}replay_file = \"{}\"\n{}",
        &imported.toml[..spa_at],
        dir.path().join("replay").display(),
        &imported.toml[spa_at..]
    );
    let s = Setup::with_config(&toml);
    let (server, client) = (s.hosts.server_v4[0], s.hosts.clients[0].v4);
    // stanza 1's keys, exactly as its fwknop users have them.
    let text = fs::read_to_string(&access).expect("fixture");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()))
            .expect("the key in the fixture")
    };
    let (key, hmac) = (value("KEY_BASE64"), value("HMAC_KEY_BASE64"));
    assert!(!s.reachable(0, server));
    fwknop_client(&s, 0, dir.path(), &key, &hmac, &["-A", "tcp/22", "-s"]);
    let open = s.wait_event("open", client);
    assert_eq!(
        (open["client"].as_str(), open["sequence"].as_str()),
        (Some("stanza-1"), Some("tcp-22")),
        "{open}"
    );
    assert!(s.reachable(0, server), "sshd answers the migrated client");
}
