//! `[spa]`: Single Packet Authorization's port, window, replay file and clients. Keys
//! named by `key_file` are read here, so that `check` proves them readable; no error
//! ever quotes a key.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use knock_common::PROTO_UDP;
use serde::Deserialize;
use toml::Spanned;

use super::{FwknopClient, Sequence, SpaClient, SpaConfig, is_plain_name, parse::Source};
use crate::net::Knock;
use crate::spa::{self, Key, KeyId, fwknop};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpa {
    port: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    replay_file: Option<PathBuf>,
    #[serde(default)]
    client: Vec<Spanned<RawSpaClient>>,
    #[serde(default)]
    fwknop: Vec<Spanned<RawFwknop>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFwknop {
    name: Spanned<String>,
    key_base64: Option<Spanned<String>>,
    key_file: Option<Spanned<PathBuf>>,
    hmac_key_base64: Option<Spanned<String>>,
    hmac_key_file: Option<Spanned<PathBuf>>,
    hmac_digest: Option<Spanned<String>>,
    sequences: Spanned<Vec<Spanned<String>>>,
    max_open: Option<Spanned<String>>,
    #[serde(default)]
    behind_nat: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpaClient {
    name: Spanned<String>,
    key_id: Spanned<String>,
    key: Option<Spanned<String>>,
    key_file: Option<Spanned<PathBuf>>,
    sequences: Spanned<Vec<Spanned<String>>>,
    max_open: Option<Spanned<String>>,
    #[serde(default)]
    behind_nat: bool,
}

const DEFAULT_SPA_WINDOW: Duration = Duration::from_secs(30);
/// A request may be this old: longer leaves a captured request usable for long.
const MAX_SPA_WINDOW: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_OPEN: Duration = Duration::from_secs(3600);
/// Client names go into events and logs: a short, plain word.
const CLIENT_NAME_LEN: usize = 64;

/// `[spa]` and its clients, checked against the sequences.
pub(super) fn parse_spa(src: &Source, raw: &Spanned<RawSpa>, seqs: &[Sequence]) -> Result<SpaConfig> {
    let table = raw.get_ref();
    let port = match &table.port {
        None => spa::DEFAULT_PORT,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(src.at(
                    p,
                    "spa.port",
                    format!("{} is not a port from 1 to 65535", p.get_ref()),
                ));
            }
        },
    };
    // SPA requests are UDP: only a UDP knock or protected port of the same number clashes.
    let clash = seqs.iter().find_map(|s| {
        let k = Knock {
            port,
            proto: PROTO_UDP,
        };
        if s.knocks.contains(&k) {
            Some(format!("{k} is a knock of sequence {:?}", s.name))
        } else if s.protect.contains(&k) {
            Some(format!("{k} is protected by sequence {:?}", s.name))
        } else {
            None
        }
    });
    if let Some(clash) = clash {
        let message = format!("{clash}: the SPA port must be a port of its own");
        return Err(match &table.port {
            Some(p) => src.at(p, "spa.port", message),
            None => src.at(raw, "spa.port", format!("the default {message}")),
        });
    }
    let window = src.duration(&table.window, "spa.window", DEFAULT_SPA_WINDOW)?;
    if let Some(w) = &table.window
        && window > MAX_SPA_WINDOW
    {
        return Err(src.at(
            w,
            "spa.window",
            "must be at most 1h: a request stays usable this long",
        ));
    }
    if table.client.is_empty() && table.fwknop.is_empty() {
        return Err(src.at(
            raw,
            "spa.client",
            "no [[spa.client]] nor [[spa.fwknop]]: nobody could send a request",
        ));
    }
    let mut clients: Vec<SpaClient> = Vec::new();
    for raw_client in &table.client {
        let client = parse_spa_client(src, raw_client.get_ref(), seqs)?;
        let c = raw_client.get_ref();
        if let Some(other) = clients.iter().find(|o| o.name == client.name) {
            return Err(src.at(
                &c.name,
                "spa.client.name",
                format!("a second client named {:?}", other.name),
            ));
        }
        if let Some(other) = clients.iter().find(|o| o.key_id == client.key_id) {
            return Err(src.at(
                &c.key_id,
                "spa.client.key_id",
                format!("{} is also the key id of client {:?}", client.key_id, other.name),
            ));
        }
        if let Some(other) = clients.iter().find(|o| o.key == client.key) {
            let message = format!(
                "the same key as client {:?}: give each client its own",
                other.name
            );
            return Err(match (&c.key, &c.key_file) {
                (Some(k), _) => src.at(k, "spa.client.key", message),
                (None, Some(f)) => src.at(f, "spa.client.key_file", message),
                (None, None) => src.at(&c.name, "spa.client.key", message),
            });
        }
        clients.push(client);
    }
    let fwknop = parse_fwknop_clients(src, &table.fwknop, seqs, &clients)?;
    Ok(SpaConfig {
        port,
        window,
        replay_file: table
            .replay_file
            .clone()
            .unwrap_or_else(|| spa::DEFAULT_REPLAY_FILE.into()),
        clients,
        fwknop,
    })
}

fn parse_fwknop_clients(
    src: &Source,
    raw: &[Spanned<RawFwknop>],
    seqs: &[Sequence],
    xknock_clients: &[SpaClient],
) -> Result<Vec<FwknopClient>> {
    let mut clients: Vec<FwknopClient> = Vec::new();
    for r in raw {
        let c = r.get_ref();
        let client = parse_fwknop(src, c, seqs)?;
        if xknock_clients.iter().any(|o| o.name == client.name)
            || clients.iter().any(|o| o.name == client.name)
        {
            return Err(src.at(
                &c.name,
                "spa.fwknop.name",
                format!("a second client named {:?}", client.name),
            ));
        }
        if let Some(other) = clients.iter().find(|o| o.keys.hmac_key == client.keys.hmac_key) {
            return Err(src.at(
                &c.name,
                "spa.fwknop.hmac_key_base64",
                format!(
                    "the same HMAC key as client {:?}: give each client its own (the HMAC key tells them apart)",
                    other.name
                ),
            ));
        }
        clients.push(client);
    }
    Ok(clients)
}

/// A key as fwknop writes it: `*_base64` in the config, or a file holding that text.
fn fwknop_key(
    src: &Source,
    name: &Spanned<String>,
    inline: Option<&Spanned<String>>,
    file: Option<&Spanned<PathBuf>>,
    key: &str,
) -> Result<Vec<u8>> {
    let bytes = match (inline, file) {
        (Some(k), None) => {
            fwknop::decode_key(k.get_ref()).map_err(|e| src.at(k, &format!("spa.fwknop.{key}_base64"), e))?
        }
        (None, Some(f)) => {
            let dir = src.path.parent().unwrap_or(Path::new(""));
            let text = crate::secret_file::read_private(&dir.join(f.get_ref()))
                .map_err(|e| src.at(f, &format!("spa.fwknop.{key}_file"), format!("{e:#}")))?;
            fwknop::decode_key(&text).map_err(|e| src.at(f, &format!("spa.fwknop.{key}_file"), e))?
        }
        (Some(k), Some(_)) => {
            return Err(src.at(
                k,
                &format!("spa.fwknop.{key}_base64"),
                format!("give {key}_base64 or {key}_file, not both"),
            ));
        }
        (None, None) => {
            let why = if key == "hmac_key" {
                "missing: xknock takes fwknop's requests only with an HMAC (fwknop --use-hmac)"
            } else {
                "missing: give key_base64 or key_file"
            };
            return Err(src.at(name, &format!("spa.fwknop.{key}_base64"), why));
        }
    };
    if bytes.is_empty() {
        return Err(src.at(name, &format!("spa.fwknop.{key}_base64"), "empty"));
    }
    Ok(bytes)
}

fn parse_fwknop(src: &Source, raw: &RawFwknop, seqs: &[Sequence]) -> Result<FwknopClient> {
    let name = raw.name.get_ref().clone();
    if name.len() > CLIENT_NAME_LEN || !is_plain_name(&name) {
        return Err(src.at(
            &raw.name,
            "spa.fwknop.name",
            format!("{name:?}: use 1 to {CLIENT_NAME_LEN} letters, digits, '-', '_' or '.'"),
        ));
    }
    let key = fwknop_key(
        src,
        &raw.name,
        raw.key_base64.as_ref(),
        raw.key_file.as_ref(),
        "key",
    )?;
    if key.len() > 32 {
        let at = raw.key_base64.as_ref().map_or_else(
            || src.at(&raw.name, "spa.fwknop.key_file", "longer than 32 bytes"),
            |k| {
                src.at(
                    k,
                    "spa.fwknop.key_base64",
                    "longer than 32 bytes (fwknop's keys are at most 32)",
                )
            },
        );
        return Err(at);
    }
    let hmac_key = fwknop_key(
        src,
        &raw.name,
        raw.hmac_key_base64.as_ref(),
        raw.hmac_key_file.as_ref(),
        "hmac_key",
    )?;
    if hmac_key == key {
        return Err(src.at(
            &raw.name,
            "spa.fwknop.hmac_key_base64",
            "the same key as key_base64: the HMAC key must be another (fwknop --key-gen makes both)",
        ));
    }
    let digest = match &raw.hmac_digest {
        None => fwknop::HmacDigest::Sha256,
        Some(d) => d
            .get_ref()
            .parse()
            .map_err(|e| src.at(d, "spa.fwknop.hmac_digest", e))?,
    };
    let sequences = client_sequences(src, &raw.sequences, seqs, "spa.fwknop.sequences")?;
    Ok(FwknopClient {
        name,
        keys: fwknop::Keys {
            key,
            hmac_key,
            digest,
        },
        sequences,
        max_open: src.duration(&raw.max_open, "spa.fwknop.max_open", DEFAULT_MAX_OPEN)?,
        behind_nat: raw.behind_nat,
    })
}

fn parse_spa_client(src: &Source, raw: &RawSpaClient, seqs: &[Sequence]) -> Result<SpaClient> {
    let name = raw.name.get_ref().clone();
    if name.len() > CLIENT_NAME_LEN || !is_plain_name(&name) {
        return Err(src.at(
            &raw.name,
            "spa.client.name",
            format!("{name:?}: use 1 to {CLIENT_NAME_LEN} letters, digits, '-', '_' or '.'"),
        ));
    }
    let key_id: KeyId = raw
        .key_id
        .get_ref()
        .parse()
        .map_err(|e| src.at(&raw.key_id, "spa.client.key_id", e))?;
    let key = match (&raw.key, &raw.key_file) {
        (Some(k), None) => Key::from_hex(k.get_ref()).map_err(|e| src.at(k, "spa.client.key", e))?,
        (None, Some(f)) => {
            // A relative key_file is next to the config file, wherever run is started.
            let dir = src.path.parent().unwrap_or(Path::new(""));
            spa::read_key_file(&dir.join(f.get_ref()))
                .map_err(|e| src.at(f, "spa.client.key_file", format!("{e:#}")))?
        }
        (Some(k), Some(_)) => {
            return Err(src.at(k, "spa.client.key", "give key or key_file, not both"));
        }
        (None, None) => {
            return Err(src.at(
                &raw.name,
                "spa.client.key",
                format!("client {name:?} has neither key nor key_file"),
            ));
        }
    };
    let sequences = client_sequences(src, &raw.sequences, seqs, "spa.client.sequences")?;
    Ok(SpaClient {
        name,
        key_id,
        key,
        sequences,
        max_open: src.duration(&raw.max_open, "spa.client.max_open", DEFAULT_MAX_OPEN)?,
        behind_nat: raw.behind_nat,
    })
}

/// A client's `sequences`: at least one, each configured, none twice.
fn client_sequences(
    src: &Source,
    raw: &Spanned<Vec<Spanned<String>>>,
    seqs: &[Sequence],
    key: &str,
) -> Result<Vec<String>> {
    if raw.get_ref().is_empty() {
        return Err(src.at(raw, key, "name at least one sequence the client may open"));
    }
    let mut sequences: Vec<String> = Vec::new();
    for s in raw.get_ref() {
        let wanted = s.get_ref();
        if !seqs.iter().any(|q| &q.name == wanted) {
            let known: Vec<_> = seqs.iter().map(|q| q.name.as_str()).collect();
            return Err(src.at(
                s,
                key,
                format!("no sequence named {wanted:?} (configured: {})", known.join(", ")),
            ));
        }
        if sequences.contains(wanted) {
            return Err(src.at(s, key, format!("{wanted:?} twice")));
        }
        sequences.push(wanted.clone());
    }
    Ok(sequences)
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;
    use crate::config::Config;

    const PATH: &str = "/etc/xknock/test.toml";
    const KEY_A: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
    const KEY_B: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf";

    /// Two sequences (lines 1-8), `[spa]` at line 10, its first client at line 13 (name
    /// 14, key_id 15, key 16, sequences 17).
    fn config(spa: &str, clients: &str) -> String {
        format!(
            "[[sequence]]\nname = \"ssh\"\nknocks = [\"7000\", \"8000/udp\", \"9000\"]\nprotect = [\"22/tcp\"]\n\
             [[sequence]]\nname = \"db\"\nknocks = [\"7100\", \"7200\"]\nprotect = [\"5432/tcp\", \"53/udp\"]\n\
             \n[spa]\n{spa}\n\n{clients}"
        )
    }

    fn client(name: &str, key_id: &str, key: &str, extra: &str) -> String {
        format!(
            "[[spa.client]]\nname = \"{name}\"\nkey_id = \"{key_id}\"\nkey = \"{key}\"\nsequences = [\"ssh\"]\n{extra}"
        )
    }

    fn alice() -> String {
        client("alice", "0123456789abcdef", KEY_A, "")
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new(PATH), text).map_err(|e| format!("{e:#}"))
    }

    fn refused(text: &str) -> String {
        let err = parse(text).expect_err("config must be refused");
        for key in [KEY_A, KEY_B] {
            assert!(!err.contains(&key[..16]), "an error shows a key: {err}");
        }
        err
    }

    #[test]
    fn defaults_and_a_full_client() {
        let extra = "max_open = \"10m\"\nbehind_nat = true\n";
        let c = parse(&config("", &client("alice", "0123456789abcdef", KEY_A, extra))).expect("valid");
        let spa = c.spa.expect("[spa] given");
        assert_eq!(spa.port, 62201);
        assert_eq!(spa.window, Duration::from_secs(30));
        assert_eq!(spa.replay_file, Path::new("/var/lib/xknock/spa-replay"));
        let a = &spa.clients[0];
        assert_eq!(
            (a.name.as_str(), a.key_id.to_string()),
            ("alice", "0123456789abcdef".into())
        );
        assert_eq!(a.key, Key::from_hex(KEY_A).expect("valid"));
        assert_eq!(
            (a.sequences.clone(), a.max_open, a.behind_nat),
            (vec!["ssh".to_string()], Duration::from_secs(600), true)
        );
        let d = parse(&config("", &alice())).expect("valid").spa.expect("given");
        assert_eq!(
            (d.clients[0].max_open, d.clients[0].behind_nat),
            (Duration::from_secs(3600), false)
        );
        assert!(!format!("{d:?}").contains(&KEY_A[..16]), "Debug shows the key");
    }

    #[test]
    fn the_keygen_stanza_is_a_valid_client() {
        let key = spa::ClientKey {
            server: None,
            port: spa::DEFAULT_PORT,
            key_id: KeyId::random().expect("rng"),
            key: Key::random().expect("rng"),
        };
        let stanza = key.server_stanza("carol", &["db".into(), "ssh".into()]);
        let c = parse(&config("", &stanza)).expect("valid");
        let carol = &c.spa.expect("given").clients[0];
        assert_eq!((carol.key_id, &carol.key), (key.key_id, &key.key));
        assert_eq!(carol.sequences, ["db", "ssh"]);
        let err = refused(&config("", &key.server_stanza("carol", &[])));
        assert!(
            err.contains("spa.client.sequences: name at least one sequence"),
            "{err}"
        );
    }

    #[test]
    fn no_spa_section_is_none() {
        let text = config("", "").replace("[spa]\n", "");
        assert_eq!(parse(&text).expect("valid").spa, None);
    }

    #[test]
    fn duplicate_key_id_names_the_line_and_key() {
        let bob = client("bob", "0123456789abcdef", KEY_B, "");
        let err = refused(&config("", &format!("{}{bob}", alice())));
        assert!(
            err.starts_with(&format!("{PATH}:20: spa.client.key_id: ")),
            "{err}"
        );
        assert!(err.contains("\"alice\""), "{err}");
    }

    #[test]
    fn duplicate_names_and_keys_are_refused() {
        let twin = client("alice", "1123456789abcdef", KEY_B, "");
        let err = refused(&config("", &format!("{}{twin}", alice())));
        assert!(err.starts_with(&format!("{PATH}:19: spa.client.name: ")), "{err}");
        let same_key = client("bob", "1123456789abcdef", KEY_A, "");
        let err = refused(&config("", &format!("{}{same_key}", alice())));
        assert!(
            err.starts_with(&format!(
                "{PATH}:21: spa.client.key: the same key as client \"alice\""
            )),
            "{err}"
        );
    }

    #[test]
    fn bad_hex_key_names_the_line_and_key_but_not_the_key() {
        let typo = KEY_A.replace('f', "g");
        let err = refused(&config("", &client("alice", "0123456789abcdef", &typo, "")));
        assert!(
            err.starts_with(&format!("{PATH}:16: spa.client.key: not 64 hex digits")),
            "{err}"
        );
        assert!(!err.contains(&typo[..16]), "{err}");
        let err = refused(&config(
            "",
            &client("alice", "0123456789abcdef", &KEY_A[..62], ""),
        ));
        assert!(err.starts_with(&format!("{PATH}:16: spa.client.key: ")), "{err}");
        let err = refused(&config("", &client("alice", "0123456789abcd", KEY_A, "")));
        assert!(
            err.starts_with(&format!("{PATH}:15: spa.client.key_id: ")),
            "{err}"
        );
    }

    #[test]
    fn unknown_sequence_names_the_line_and_key() {
        let text = config("", &alice()).replace("sequences = [\"ssh\"]", "sequences = [\"ssh\", \"web\"]");
        let err = refused(&text);
        assert!(
            err.starts_with(&format!(
                "{PATH}:17: spa.client.sequences: no sequence named \"web\""
            )),
            "{err}"
        );
        let err = refused(&config("", &alice()).replace("sequences = [\"ssh\"]", "sequences = []"));
        assert!(
            err.starts_with(&format!("{PATH}:17: spa.client.sequences: ")),
            "{err}"
        );
    }

    #[test]
    fn spa_port_clashing_with_a_udp_knock_or_protected_port() {
        let err = refused(&config("port = 8000", &alice()));
        assert!(
            err.starts_with(&format!(
                "{PATH}:11: spa.port: 8000/udp is a knock of sequence \"ssh\""
            )),
            "{err}"
        );
        let err = refused(&config("port = 53", &alice()));
        assert!(
            err.starts_with(&format!(
                "{PATH}:11: spa.port: 53/udp is protected by sequence \"db\""
            )),
            "{err}"
        );
        // 7000 is a TCP knock; SPA requests are UDP.
        assert_eq!(
            parse(&config("port = 7000", &alice()))
                .expect("valid")
                .spa
                .map(|s| s.port),
            Some(7000)
        );
        let err = refused(&config("port = 70000", &alice()));
        assert!(
            err.starts_with(&format!("{PATH}:11: spa.port: 70000 is not a port")),
            "{err}"
        );
        // The default port clashing: the error points at [spa].
        let text = config("", &alice()).replace("\"8000/udp\"", "\"62201/udp\"");
        let err = refused(&text);
        assert!(
            err.starts_with(&format!("{PATH}:10: spa.port: the default 62201/udp is a knock")),
            "{err}"
        );
    }

    #[test]
    fn window_zero_or_long_is_refused() {
        let err = refused(&config("window = \"0s\"", &alice()));
        assert!(
            err.starts_with(&format!("{PATH}:11: spa.window: must be longer than zero")),
            "{err}"
        );
        let err = refused(&config("window = \"2h\"", &alice()));
        assert!(
            err.starts_with(&format!("{PATH}:11: spa.window: must be at most 1h")),
            "{err}"
        );
        let c = parse(&config("window = \"2m\"\nreplay_file = \"/tmp/r\"", &alice())).expect("valid");
        let spa = c.spa.expect("given");
        assert_eq!(
            (spa.window, spa.replay_file),
            (Duration::from_secs(120), "/tmp/r".into())
        );
    }

    #[test]
    fn key_or_key_file_but_exactly_one() {
        let both = client("alice", "0123456789abcdef", KEY_A, "key_file = \"alice.key\"\n");
        let err = refused(&config("", &both));
        assert!(
            err.starts_with(&format!(
                "{PATH}:16: spa.client.key: give key or key_file, not both"
            )),
            "{err}"
        );
        let neither = alice().replace(&format!("key = \"{KEY_A}\"\n"), "");
        let err = refused(&config("", &neither));
        assert!(
            err.contains("spa.client.key: client \"alice\" has neither key nor key_file"),
            "{err}"
        );
        let err = refused(&config("", "[[spa.client]]\nname = \"x\"\n"));
        assert!(
            err.starts_with(&format!("{PATH}:13: missing field `key_id`")),
            "{err}"
        );
        let err = refused(&config("", ""));
        assert!(
            err.starts_with(&format!("{PATH}:10: spa.client: no [[spa.client]]")),
            "{err}"
        );
    }

    #[test]
    fn key_file_is_read_next_to_the_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_path = dir.path().join("alice.key");
        fs::write(&key_path, format!("{KEY_B}\n")).expect("written");
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let text = config(
            "",
            &alice().replace(&format!("key = \"{KEY_A}\""), "key_file = \"alice.key\""),
        );
        let conf = dir.path().join("xknock.toml");
        let c = Config::parse(&conf, &text).expect("valid");
        assert_eq!(
            c.spa.expect("given").clients[0].key,
            Key::from_hex(KEY_B).expect("valid")
        );
        let err = format!(
            "{:#}",
            Config::parse(Path::new(PATH), &text).expect_err("no such file")
        );
        assert!(
            err.starts_with(&format!(
                "{PATH}:16: spa.client.key_file: cannot read key file /etc/xknock/alice.key"
            )),
            "{err}"
        );
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = format!("{:#}", Config::parse(&conf, &text).expect_err("open to others"));
        assert!(
            err.contains("spa.client.key_file: key file") && err.contains("chmod 600"),
            "{err}"
        );
    }

    const FW_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const FW_HMAC: &str =
        "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+fw==";

    /// A `[[spa.fwknop]]` client at line 13 (name 14, key_base64 15, hmac 16).
    fn fwknop(key: &str, hmac: &str, extra: &str) -> String {
        format!(
            "[[spa.fwknop]]\nname = \"bob\"\nkey_base64 = \"{key}\"\nhmac_key_base64 = \"{hmac}\"\n\
             sequences = [\"ssh\"]\n{extra}"
        )
    }

    #[test]
    fn a_fwknop_client_alone_and_what_is_refused() {
        let c = parse(&config(
            "window = \"120s\"",
            &fwknop(FW_KEY, FW_HMAC, "hmac_digest = \"SHA512\"\n"),
        ))
        .expect("valid");
        let spa = c.spa.expect("[spa]");
        assert!(spa.clients.is_empty());
        assert_eq!(spa.fwknop[0].keys.digest, fwknop::HmacDigest::Sha512);
        assert_eq!(spa.fwknop[0].keys.key.len(), 32);
        for (clients, want) in [
            (
                fwknop("not base64!", FW_HMAC, ""),
                ":15: spa.fwknop.key_base64: not base64",
            ),
            (
                fwknop(FW_KEY, FW_KEY, ""),
                ":14: spa.fwknop.hmac_key_base64: the same key",
            ),
            (
                fwknop(FW_KEY, FW_HMAC, "hmac_digest = \"md5\"\n"),
                ":18: spa.fwknop.hmac_digest: \"md5\" is not sha1",
            ),
            (
                fwknop(FW_KEY, FW_HMAC, "").replace("sequences = [\"ssh\"]", "sequences = []"),
                ":17: spa.fwknop.sequences: name at least one",
            ),
            (
                fwknop(FW_KEY, FW_HMAC, "").replace("hmac_key_base64 = ", "# "),
                ":14: spa.fwknop.hmac_key_base64: missing",
            ),
        ] {
            let err = parse(&config("", &clients)).expect_err(&clients);
            assert!(err.starts_with(PATH) && err.contains(want), "{want}: {err}");
            assert!(
                !err.contains(&FW_HMAC[..12]) && !err.contains(&FW_KEY[..12]),
                "a key in {err}"
            );
        }
    }
}
