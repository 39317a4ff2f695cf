//! Writing the TOML: one `[[sequence]]` (without knocks) per distinct set of
//! OPEN_PORTS and FW_ACCESS_TIMEOUT, `[spa]` from fwknopd.conf, a `[[spa.fwknop]]`
//! per stanza; each value with a comment saying where it came from.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use base64::Engine as _;

use super::{
    AccessConf, Entry, Imported, Note,
    server::{self, Server},
    stanza::{self, Client, KeyText, Sourced},
};
use crate::net::Knock;

/// The sequences xknock tracks at once.
const MAX_SEQUENCES: usize = knock_common::MAX_SEQUENCES;
/// What a value to fill in reads as (`xknock check` refuses it).
const FILL_IN: &str = "__CHANGEME__";

pub(super) fn translate(
    path: &Path,
    conf: &AccessConf,
    server: Option<(&Path, &[Entry])>,
) -> Result<Imported> {
    let mut notes = Vec::new();
    for d in &conf.directives {
        notes.push(Note {
            file: path.to_owned(),
            line: d.line,
            key: d.key.clone(),
            why: "includes are not followed: import each file and merge the clients".into(),
        });
    }
    let server_path = server.map(|(p, _)| p);
    let server = match server {
        Some((p, entries)) => server::read(p, entries, &mut notes)?,
        None => Server::default(),
    };
    let mut clients: Vec<(usize, Client)> = Vec::new();
    for s in &conf.stanzas {
        match stanza::read(path, s, &mut notes)? {
            Ok(c) => {
                let same = clients.iter().find(|(_, o)| {
                    matches!((&o.hmac_key.value, &c.hmac_key.value), (KeyText::Bytes(a), KeyText::Bytes(b)) if a == b)
                });
                if let Some((n, _)) = same {
                    notes.push(Note {
                        file: path.to_owned(),
                        line: c.hmac_line,
                        key: "HMAC_KEY_BASE64".into(),
                        why: format!(
                            "the same HMAC key as stanza {n}: xknock tells clients apart by it, so this \
                             stanza is not imported (give it keys of its own)"
                        ),
                    });
                } else {
                    clients.push((s.number, c));
                }
            }
            Err(skip) => notes.push(Note {
                file: path.to_owned(),
                line: skip.line,
                key: skip.key,
                why: skip.why,
            }),
        }
    }

    // One sequence per distinct (ports, open_for), in the order first met.
    let mut sequences: Vec<(String, Option<Vec<Knock>>, u64)> = Vec::new();
    let mut of_client = Vec::new();
    for (n, c) in &clients {
        let key = (c.ports.value.clone(), c.open_for.value);
        let i = if let Some(i) = sequences.iter().position(|(_, p, o)| (p, *o) == (&key.0, key.1)) {
            i
        } else {
            let mut name = sequence_name(key.0.as_deref(), *n);
            if sequences.iter().any(|(other, _, _)| *other == name) {
                name = format!("{name}-{}s", key.1);
            }
            sequences.push((name, key.0, key.1));
            sequences.len() - 1
        };
        of_client.push(i);
    }
    if sequences.len() > MAX_SEQUENCES {
        notes.push(Note {
            file: path.to_owned(),
            line: conf.stanzas.first().map_or(1, |s| s.line),
            key: "OPEN_PORTS".into(),
            why: format!(
                "{} distinct sets of ports and timeouts: xknock tracks {MAX_SEQUENCES} sequences; \
                 merge some before `xknock check` accepts the TOML",
                sequences.len()
            ),
        });
    }

    let mut fill_in = 0;
    let mut out = format!("# Imported from {} by xknock import-fwknopd", path.display());
    if let Some(p) = server_path {
        let _ = write!(out, " (and {})", p.display());
    }
    out.push_str(".\n");
    if !notes.is_empty() {
        out.push_str("# Not translated:\n");
        for n in &notes {
            let _ = writeln!(out, "#   {n}");
        }
    }
    out.push('\n');
    if let Some((iface, comment)) = &server.interface {
        let _ = writeln!(out, "interface = {iface:?}   # {comment}\n");
    }
    for (name, ports, open_for) in &sequences {
        let protect = if let Some(p) = ports {
            p.iter()
                .map(|k| format!("{:?}", k.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            fill_in += 1;
            String::new()
        };
        let _ = writeln!(out, "[[sequence]]\nname = {name:?}");
        out.push_str("knocks = []          # only SPA (and `xknock allow`) open it\n");
        let _ = write!(out, "protect = [{protect}]");
        if ports.is_none() {
            out.push_str("   # FILL IN: no OPEN_PORTS (fwknopd opened what a request asked)");
        }
        let _ = writeln!(out, "\nopen_for = \"{open_for}s\"\n");
    }
    let _ = writeln!(
        out,
        "[spa]\nport = {}   # {}\nwindow = \"{}s\"   # {}\n",
        server.port.0, server.port.1, server.window.0, server.window.1
    );
    for ((n, c), i) in clients.iter().zip(&of_client) {
        let _ = writeln!(out, "[[spa.fwknop]]\nname = \"stanza-{n}\"");
        for (key, k) in [("key_base64", &c.key), ("hmac_key_base64", &c.hmac_key)] {
            if matches!(k.value, KeyText::Placeholder) {
                fill_in += 1;
            }
            let _ = writeln!(out, "{key} = {:?}   # {}", key_text(&k.value), k.comment);
        }
        line(
            &mut out,
            "hmac_digest",
            format!("{:?}", c.digest.value.to_string()),
            &c.digest,
        );
        let _ = writeln!(out, "sequences = [{:?}]", sequences[*i].0);
        line(
            &mut out,
            "max_open",
            format!("\"{}s\"", c.max_open.value),
            &c.max_open,
        );
        line(
            &mut out,
            "behind_nat",
            c.behind_nat.value.to_string(),
            &c.behind_nat,
        );
        out.push('\n');
    }
    Ok(Imported {
        toml: out,
        notes,
        sequences: sequences.len(),
        clients: clients.len(),
        fill_in,
    })
}

fn line<T>(out: &mut String, key: &str, value: String, sourced: &Sourced<T>) {
    let _ = writeln!(out, "{key} = {value}   # {}", sourced.comment);
}

/// A key as fwknop writes it (KEY_BASE64), or the placeholder.
fn key_text(k: &KeyText) -> String {
    match k {
        KeyText::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b),
        KeyText::Placeholder => FILL_IN.into(),
    }
}

/// `tcp-22`, `tcp-22-tcp-443`; `stanza-N-ports` without OPEN_PORTS.
fn sequence_name(ports: Option<&[Knock]>, stanza: usize) -> String {
    match ports {
        Some(p) => p
            .iter()
            .map(|k| format!("{}-{}", crate::net::proto_name(k.proto), k.port))
            .collect::<Vec<_>>()
            .join("-"),
        None => format!("stanza-{stanza}-ports"),
    }
}
