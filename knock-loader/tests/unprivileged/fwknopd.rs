//! `xknock import-fwknopd`: fwknopd's configurations become TOML that xknock's own
//! parser takes, with the clients' keys, digests, ports and timeouts, and a report of
//! what did not translate.
//!
//! Fixtures: fwknop-access-debian.conf and fwknopd-debian.conf are /etc/fwknop of
//! Debian's fwknop-server (2.6.10), as installed; fwknop-access-keys.conf and
//! fwknopd-keys.conf a server with two clients' keys (made as fwknop --key-gen does).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::xknock_bin;
use xknock::{config::Config, fwknopd::import_files, spa::fwknop::HmacDigest};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's `KEY VALUE` value for `key` in stanza order.
fn fixture_values(name: &str, key: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name))
        .expect("fixture")
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn a_server_with_keys_imports_to_a_config_xknock_takes() {
    let imported = import_files(
        &fixture("fwknop-access-keys.conf"),
        Some(&fixture("fwknopd-keys.conf")),
    )
    .expect("imports");
    assert_eq!(
        (imported.clients, imported.sequences, imported.fill_in),
        (2, 2, 0)
    );
    let config = Config::parse(Path::new("imported.toml"), &imported.toml)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", imported.toml));
    let spa = config.spa.expect("[spa]");
    assert_eq!((spa.port, spa.window), (62202, Duration::from_secs(120)));
    let protect: Vec<Vec<String>> = config
        .sequences
        .iter()
        .map(|s| s.protect.iter().map(ToString::to_string).collect())
        .collect();
    assert_eq!(protect, [vec!["22/tcp"], vec!["22/tcp", "443/tcp"]]);
    assert!(config.sequences.iter().all(|s| s.knocks.is_empty()), "SPA only");
    assert_eq!(
        config.sequences[0].open_for,
        Duration::from_secs(60),
        "FW_ACCESS_TIMEOUT"
    );
    let [a, b] = &spa.fwknop[..] else {
        panic!("two clients: {:?}", spa.fwknop)
    };
    assert_eq!(
        (a.keys.digest, b.keys.digest),
        (HmacDigest::Sha256, HmacDigest::Sha512)
    );
    assert_eq!(
        (a.max_open, b.max_open),
        (Duration::from_secs(300), Duration::from_secs(600))
    );
    assert_eq!(
        (a.behind_nat, b.behind_nat),
        (true, false),
        "REQUIRE_SOURCE_ADDRESS"
    );
    let keys = fixture_values("fwknop-access-keys.conf", "KEY_BASE64");
    let hmac_keys = fixture_values("fwknop-access-keys.conf", "HMAC_KEY_BASE64");
    for (client, (key, hmac)) in spa.fwknop.iter().zip(keys.iter().zip(&hmac_keys)) {
        use base64::Engine as _;
        let decode = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64")
        };
        assert_eq!(client.keys.key, decode(key), "{}", client.name);
        assert_eq!(client.keys.hmac_key, decode(hmac), "{}", client.name);
    }
}

#[test]
fn debian_s_default_config_says_what_to_fill_in() {
    let imported = import_files(
        &fixture("fwknop-access-debian.conf"),
        Some(&fixture("fwknopd-debian.conf")),
    )
    .expect("imports");
    let notes: Vec<String> = imported.notes.iter().map(ToString::to_string).collect();
    for want in [
        "KEY_BASE64: not translated: __CHANGEME__",
        "HMAC_KEY_BASE64: not translated",
        "OPEN_PORTS",
    ] {
        assert!(notes.iter().any(|n| n.contains(want)), "{want} in {notes:#?}");
    }
    assert!(
        notes.iter().all(|n| n.contains("fwknop")),
        "each names its file: {notes:#?}"
    );
    assert_eq!(imported.fill_in, 3, "two keys and the ports");
    let e = Config::parse(Path::new("imported.toml"), &imported.toml).expect_err("placeholders");
    assert!(format!("{e:#}").starts_with("imported.toml:"), "{e:#}");
}

#[test]
fn the_command_writes_a_new_file_of_mode_0600_and_reports_on_stderr() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("xknock.toml");
    let run = || {
        Command::new(xknock_bin())
            .arg("import-fwknopd")
            .arg(fixture("fwknop-access-debian.conf"))
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run xknock")
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("line 205: KEY_BASE64: not translated"),
        "{stderr}"
    );
    assert!(stderr.contains("imported 1 client(s)"), "{stderr}");
    let mode = std::fs::metadata(&out).expect("written").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "it holds keys");
    let again = run();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwrites"),
        "{again:?}"
    );
    let missing = Command::new(xknock_bin())
        .args(["import-fwknopd", "/nonexistent/access.conf"])
        .output()
        .expect("run xknock");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/access.conf"));
}
