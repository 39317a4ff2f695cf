//! One access.conf stanza read into a `Client`: its keys, digest, ports and timeouts,
//! each with a comment saying where it came from; or, when xknock could not verify
//! its requests, the reason it is not imported.

use std::path::Path;

use anyhow::Result;

use super::{Entry, Note, Stanza, error_at, parse_bool, parse_ports, parse_seconds};
use crate::{net::Knock, spa::fwknop};

/// fwknop's placeholder in Debian's (and fwknop's own) access.conf.
pub(super) const PLACEHOLDER: &str = "__CHANGEME__";
/// fwknopd's defaults (DEF_FW_ACCESS_TIMEOUT, DEF_MAX_FW_TIMEOUT), in seconds.
const FW_ACCESS_TIMEOUT: u64 = 30;
const MAX_FW_TIMEOUT: u64 = 300;
/// fwknop's encryption keys are 1 to 32 bytes.
const MAX_KEY_LEN: usize = 32;

/// A key as the TOML will carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum KeyText {
    Bytes(Vec<u8>),
    /// `__CHANGEME__`: to be filled in.
    Placeholder,
}

/// A value and the comment that says where it came from.
#[derive(Clone, Debug)]
pub(super) struct Sourced<T> {
    pub(super) value: T,
    pub(super) comment: String,
}

/// A stanza that can be imported.
#[derive(Clone, Debug)]
pub(super) struct Client {
    pub(super) key: Sourced<KeyText>,
    /// The line of the key, for telling a duplicate HMAC key.
    pub(super) hmac_line: usize,
    pub(super) hmac_key: Sourced<KeyText>,
    pub(super) digest: Sourced<fwknop::HmacDigest>,
    /// OPEN_PORTS less RESTRICT_PORTS; `None` without OPEN_PORTS (fwknopd then opened
    /// whatever a request asked).
    pub(super) ports: Sourced<Option<Vec<Knock>>>,
    pub(super) open_for: Sourced<u64>,
    pub(super) max_open: Sourced<u64>,
    pub(super) behind_nat: Sourced<bool>,
}

/// Why a stanza is not imported, and the key and line to report it at.
pub(super) struct Skip {
    pub(super) line: usize,
    pub(super) key: String,
    pub(super) why: String,
}

fn from<T>(value: T, comment: impl Into<String>) -> Sourced<T> {
    Sourced {
        value,
        comment: comment.into(),
    }
}

/// Reads `s`: its `Client`, or why it cannot be one (`Ok(Err(..))`); malformed
/// values are errors naming the file and line. What does not translate is noted.
pub(super) fn read(path: &Path, s: &Stanza, notes: &mut Vec<Note>) -> Result<Result<Client, Skip>> {
    let note = |notes: &mut Vec<Note>, e: &Entry, why: &str| {
        notes.push(Note {
            file: path.to_owned(),
            line: e.line,
            key: e.key.clone(),
            why: why.to_owned(),
        });
    };
    let skip = |e: &Entry, why: String| {
        Ok(Err(Skip {
            line: e.line,
            key: e.key.clone(),
            why,
        }))
    };
    let at = |e: &Entry| format!("{} line {}", path.display(), e.line);
    let mut key: Option<(&Entry, KeyText)> = None;
    let mut hmac_key: Option<(&Entry, KeyText)> = None;
    let mut digest = from(
        fwknop::HmacDigest::Sha256,
        "HMAC_DIGEST_TYPE: fwknop's default, SHA256",
    );
    let mut open: Option<(&Entry, Vec<Knock>)> = None;
    let mut restrict: Option<(&Entry, Vec<Knock>)> = None;
    let mut open_for = from(
        FW_ACCESS_TIMEOUT,
        "FW_ACCESS_TIMEOUT: fwknopd's default, 30 seconds",
    );
    let mut max_open = from(MAX_FW_TIMEOUT, "MAX_FW_TIMEOUT: fwknopd's default, 300 seconds");
    let mut require_source = None;
    let mut gpg = false;
    let mut blocker: Option<(&Entry, String)> = None;
    if !s.source.split(',').any(|a| a.trim().eq_ignore_ascii_case("ANY")) {
        notes.push(Note {
            file: path.to_owned(),
            line: s.line,
            key: "SOURCE".into(),
            why: format!(
                "{}: xknock takes a client's requests from any address (its allow and deny lists are \
                 global, not per client): the client is imported without this restriction, its keys \
                 still authenticate every request",
                s.source
            ),
        });
    }
    for e in &s.entries {
        let v = e.value.as_str();
        match e.key.as_str() {
            "KEY_BASE64" | "HMAC_KEY_BASE64" => {
                let text = if v == PLACEHOLDER {
                    note(
                        notes,
                        e,
                        "__CHANGEME__, fwknop's placeholder: fill in the client's key (fwknop --key-gen \
                         makes both keys)",
                    );
                    KeyText::Placeholder
                } else {
                    KeyText::Bytes(fwknop::decode_key(v).map_err(|err| error_at(path, e, err))?)
                };
                let slot = if e.key == "KEY_BASE64" {
                    &mut key
                } else {
                    &mut hmac_key
                };
                *slot = Some((e, text));
            }
            "KEY" | "HMAC_KEY" => {
                let slot = if e.key == "KEY" { &mut key } else { &mut hmac_key };
                *slot = Some((e, KeyText::Bytes(v.as_bytes().to_vec())));
            }
            "HMAC_DIGEST_TYPE" => {
                digest = match v.to_ascii_lowercase().as_str() {
                    "md5" | "sha3_256" | "sha3_512" => {
                        blocker = Some((
                            e,
                            format!(
                                "{v}: xknock verifies HMACs with SHA1, SHA256, SHA384 or SHA512 only; the \
                                 stanza is not imported (give the client an SHA256 HMAC: fwknop \
                                 --hmac-digest-type sha256)"
                            ),
                        ));
                        continue;
                    }
                    d => from(
                        d.parse().map_err(|err| error_at(path, e, err))?,
                        format!("HMAC_DIGEST_TYPE {v}, {}", at(e)),
                    ),
                };
            }
            "ENCRYPTION_MODE" if v.eq_ignore_ascii_case("CBC") => {}
            "ENCRYPTION_MODE" => {
                blocker = Some((
                    e,
                    format!(
                        "{v}: xknock decrypts fwknop's default mode, CBC, only; the stanza is not imported"
                    ),
                ));
            }
            "OPEN_PORTS" | "RESTRICT_PORTS" => {
                let ports = parse_ports(v).map_err(|err| error_at(path, e, format!("{err:#}")))?;
                let slot = if e.key == "OPEN_PORTS" {
                    &mut open
                } else {
                    &mut restrict
                };
                *slot = Some((e, ports));
            }
            "FW_ACCESS_TIMEOUT" | "MAX_FW_TIMEOUT" => {
                let secs = parse_seconds(v).map_err(|err| error_at(path, e, err))?;
                // fwknopd takes a timeout below 1 as not set.
                if let Ok(secs @ 1..) = u64::try_from(secs) {
                    let slot = if e.key == "FW_ACCESS_TIMEOUT" {
                        &mut open_for
                    } else {
                        &mut max_open
                    };
                    *slot = from(secs, format!("{} {v}, {}", e.key, at(e)));
                }
            }
            "REQUIRE_SOURCE_ADDRESS" => require_source = Some((e, parse_bool(v))),
            "DESTINATION" if v.eq_ignore_ascii_case("ANY") => {}
            "DESTINATION" => note(
                notes,
                e,
                "xknock protects its ports on every address of its interfaces",
            ),
            "ENABLE_CMD_EXEC" if !parse_bool(v) => {}
            "ENABLE_CMD_EXEC" | "CMD_EXEC_USER" | "CMD_EXEC_GROUP" | "CMD_REGEX" => note(
                notes,
                e,
                "xknock refuses requests that carry a command (fwknop -C): it only opens ports",
            ),
            "CMD_CYCLE_OPEN" | "CMD_CYCLE_CLOSE" | "CMD_CYCLE_TIMER" => note(
                notes,
                e,
                "a sequence's on_open and on_close run a command with the client's address (%IP%): \
                 write them by hand, fwknop's variables differ",
            ),
            "REQUIRE_USERNAME" => note(
                notes,
                e,
                "xknock does not look at the user name in a request (fwknop -U), which any client may \
                 set: the keys are what authenticate it",
            ),
            "ACCESS_EXPIRE" | "ACCESS_EXPIRE_EPOCH" => note(
                notes,
                e,
                "xknock's clients do not expire: remove the [[spa.fwknop]] then (and xknock reload)",
            ),
            "FORCE_NAT" | "FORWARD_ALL" => {
                blocker = Some((
                    e,
                    "its requests are forwarded to another host (NAT), which xknock does not do: it opens \
                     ports on this host; the stanza is not imported"
                        .into(),
                ));
            }
            "FORCE_SNAT" | "FORCE_MASQUERADE" | "DISABLE_DNAT" => note(
                notes,
                e,
                "xknock opens the protected ports on this host in XDP: it adds no NAT",
            ),
            k if k.starts_with("GPG_") => {
                gpg = true;
                note(
                    notes,
                    e,
                    "xknock takes fwknop's Rijndael requests (KEY_BASE64 and HMAC_KEY_BASE64), not GnuPG's",
                );
            }
            "%include_keys" => note(
                notes,
                e,
                "not followed: copy the KEY_BASE64 and HMAC_KEY_BASE64 lines of that file into the stanza \
                 and import again",
            ),
            _ => note(notes, e, "not an access.conf key that xknock knows"),
        }
    }
    let source = Entry {
        line: s.line,
        key: "SOURCE".into(),
        value: s.source.clone(),
    };
    if let Some((e, why)) = blocker {
        return skip(e, why);
    }
    let Some((key_at, key)) = key else {
        let why = if gpg {
            "a GnuPG stanza, no KEY_BASE64 nor KEY: not imported"
        } else {
            "no KEY_BASE64 nor KEY: not imported"
        };
        return skip(&source, why.into());
    };
    let Some((hmac_at, hmac_key)) = hmac_key else {
        return skip(
            &source,
            "no HMAC_KEY_BASE64 nor HMAC_KEY: xknock refuses requests without an HMAC; give the \
             client an HMAC key (fwknop --key-gen) and use it with --use-hmac; not imported"
                .into(),
        );
    };
    if let KeyText::Bytes(k) = &key
        && k.len() > MAX_KEY_LEN
    {
        return Err(error_at(
            path,
            key_at,
            format!("longer than {MAX_KEY_LEN} bytes (fwknop's keys are 1 to {MAX_KEY_LEN})"),
        ));
    }
    if key == hmac_key && key != KeyText::Placeholder {
        return skip(
            hmac_at,
            "the same key as the encryption key: xknock wants two keys (fwknop --key-gen makes both); \
             not imported"
                .into(),
        );
    }
    let key_comment = |e: &Entry| match e.key.as_str() {
        "KEY" | "HMAC_KEY" => format!(
            "{}, {}: the passphrase's bytes in base64 (fwknop derives its keys from those bytes)",
            e.key,
            at(e)
        ),
        _ => format!("{}, {}", e.key, at(e)),
    };
    let ports = match (open, restrict) {
        (Some((e, open)), restrict) => {
            let kept: Vec<Knock> = open
                .iter()
                .filter(|p| restrict.as_ref().is_none_or(|(_, r)| !r.contains(p)))
                .copied()
                .collect();
            if kept.is_empty() {
                return skip(
                    e,
                    "RESTRICT_PORTS takes out every port: the stanza opens nothing; not imported".into(),
                );
            }
            let mut comment = format!("OPEN_PORTS {}, {}", e.value, at(e));
            if let Some((r, _)) = restrict {
                comment.push_str(&format!(", less RESTRICT_PORTS {} ({})", r.value, at(r)));
            }
            from(Some(kept), comment)
        }
        (None, restrict) => {
            notes.push(Note {
                file: path.to_owned(),
                line: s.line,
                key: "OPEN_PORTS".into(),
                why: "not set: fwknopd opened whatever port a request asked for, xknock opens the ports a \
                      sequence protects: fill in its protect"
                    .into(),
            });
            let mut comment = "no OPEN_PORTS: fwknopd opened whatever port a request asked for".to_string();
            if let Some((r, _)) = restrict {
                comment.push_str(&format!(" but RESTRICT_PORTS {} ({})", r.value, at(r)));
            }
            from(None, comment)
        }
    };
    let behind_nat = match require_source {
        Some((e, true)) => from(
            false,
            format!(
                "REQUIRE_SOURCE_ADDRESS Y, {}: xknock opens the packet's source (also for a request \
                 naming 0.0.0.0, which fwknopd refused)",
                at(e)
            ),
        ),
        other => from(
            true,
            format!(
                "REQUIRE_SOURCE_ADDRESS {}: fwknopd opened whatever address a request named, and so does \
                 xknock with behind_nat = true; false opens only the packet's source",
                match other {
                    Some((e, _)) => format!("N, {}", at(e)),
                    None => "N, fwknopd's default".into(),
                }
            ),
        ),
    };
    Ok(Ok(Client {
        key: from(key, key_comment(key_at)),
        hmac_line: hmac_at.line,
        hmac_key: from(hmac_key, key_comment(hmac_at)),
        digest,
        ports,
        open_for,
        max_open,
        behind_nat,
    }))
}
