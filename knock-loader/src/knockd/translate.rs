//! knockd's doors to xknock's `[[sequence]]`s. A door whose command opens ports in
//! the firewall becomes a sequence protecting those ports (xknock opens and closes
//! them itself); knockd's pair of doors, one adding a rule and one deleting it,
//! becomes one sequence; other commands become `on_open`/`on_close`, unless they need
//! a shell. What has no equivalent becomes a `Note`.

use std::{collections::HashSet, fmt::Write as _, path::Path};

use anyhow::Result;
use knock_common::{MAX_SEQUENCES, NAME_LEN};

use super::{
    Conf, Door, Entry, Imported, Note,
    command::{Kind, classify},
    stanza::Stanza,
};
use crate::net::Knock;

pub(super) fn translate(path: &Path, conf: &Conf) -> Result<Imported> {
    let mut notes = Vec::new();
    let mut body = String::new();
    options(&conf.options, &mut notes, &mut body);
    let kinds: Vec<_> = conf
        .doors
        .iter()
        .map(|d| {
            (
                d.start.as_ref().map(|c| classify(&c.value)),
                d.stop.as_ref().map(|c| classify(&c.value)),
            )
        })
        .collect();
    let closes = pair_doors(&kinds);
    // Names first: a closing door's note names the sequence of the door it closes.
    let mut taken = HashSet::new();
    let names: Vec<Option<String>> = conf
        .doors
        .iter()
        .zip(&kinds)
        .map(|(d, (start, _))| {
            (!matches!(start, Some(Kind::Close(_)))).then(|| sequence_name(&d.name, &mut taken))
        })
        .collect();
    let mut sequences = 0;
    for (i, door) in conf.doors.iter().enumerate() {
        let Some(name) = &names[i] else {
            let opener = closes[i].map(|o| (&conf.doors[o], names[o].as_deref().unwrap_or_default()));
            closing_door(door, opener, &mut notes, &mut body);
            continue;
        };
        sequences += 1;
        if sequences == MAX_SEQUENCES + 1 {
            notes.push(note(
                door.line,
                &format!("[{}]", door.name),
                format!("xknock takes at most {MAX_SEQUENCES} sequences (xknock check refuses more)"),
            ));
        }
        let closed_by = closes.iter().position(|c| *c == Some(i)).map(|j| &conf.doors[j]);
        let mut s = Stanza {
            door,
            notes: &mut notes,
            out: &mut body,
        };
        s.emit(name, &kinds[i], closed_by);
    }
    notes.sort_by_key(|n| n.line);
    let mut toml = String::new();
    line(
        &mut toml,
        format!(
            "# xknock configuration imported from {} by `xknock import-knockd`.",
            path.display()
        ),
    );
    line(&mut toml, "# Review it, then: xknock check --config THIS_FILE");
    if notes.is_empty() {
        line(&mut toml, "# Everything in it translated.");
    } else {
        line(&mut toml, "#\n# Not translated (each also said where it was):");
        for n in &notes {
            comment(&mut toml, format!("  {n}"));
        }
    }
    toml.push_str(&body);
    Ok(Imported {
        toml,
        notes,
        sequences,
    })
}

/// `[options]`: the interface translates; logging and the pid file are run's and
/// systemd's business.
fn options(options: &[Entry], notes: &mut Vec<Note>, out: &mut String) {
    let mut interface = false;
    for e in options {
        let why = match (e.key.to_ascii_lowercase().as_str(), &e.value) {
            ("interface", Some(v)) => {
                line(out, format!("\ninterface = {}", quote(v)));
                interface = true;
                continue;
            }
            ("usesyslog" | "logfile", _) => {
                "xknock run prints its events on stdout (--json for JSON lines), which systemd's \
                 journal keeps (see dist/xknock.service)"
            }
            ("pidfile", _) => {
                "xknock run stays in the foreground: systemd tracks it (see dist/xknock.service)"
            }
            _ => "not a knockd option that xknock knows",
        };
        notes.push(note(e.line, &e.key, why.into()));
    }
    if !interface {
        line(
            out,
            "\n# knockd listened on eth0 unless told otherwise; xknock needs the interface here\n\
             # or as run --iface:\n# interface = \"eth0\"",
        );
    }
}

/// For each door, the door whose firewall rule it deletes, when knockd's open/close
/// pair is used: one door whose only command adds a rule for some ports, another
/// whose command deletes a rule for the same ports.
fn pair_doors(kinds: &[(Option<Kind>, Option<Kind>)]) -> Vec<Option<usize>> {
    let mut closes: Vec<Option<usize>> = vec![None; kinds.len()];
    for (j, (start, _)) in kinds.iter().enumerate() {
        let Some(Kind::Close(Some(ports))) = start else {
            continue;
        };
        closes[j] = kinds.iter().enumerate().position(|(i, k)| {
            matches!(k, (Some(Kind::Open { ports: p, .. }), None) if p == ports) && !closes.contains(&Some(i))
        });
    }
    closes
}

/// A door whose command deletes a firewall rule: no sequence of its own. `opener`:
/// the door whose rule it deletes, and that door's sequence name.
fn closing_door(door: &Door, opener: Option<(&Door, &str)>, notes: &mut Vec<Note>, out: &mut String) {
    let knocks = match (&door.sequence, &door.one_time) {
        (Some(s), _) => knocks_text(&s.value),
        (None, Some(f)) => format!("from {}", f.value.display()),
        (None, None) => String::new(),
    };
    let why = match opener {
        Some((opener, name)) => format!(
            "it closes what [{}] opens; xknock closes that by itself after open_for (`xknock revoke ADDR` \
             closes sooner), so the two doors are one sequence, {name:?}",
            opener.name,
        ),
        None => "it deletes a firewall rule; xknock closes a sequence's ports by itself after open_for \
                 (`xknock revoke ADDR` closes sooner)"
            .into(),
    };
    comment(
        out,
        format!(
            "\n[{}], line {}: knocks {knocks}: not a sequence: {why}.",
            door.name, door.line
        ),
    );
    notes.push(note(door.line, &format!("[{}]", door.name), why));
}

pub(super) fn note(line: usize, key: &str, why: String) -> Note {
    Note {
        line,
        key: key.to_owned(),
        why,
    }
}

pub(super) fn line(out: &mut String, text: impl AsRef<str>) {
    out.push_str(text.as_ref());
    out.push('\n');
}

/// Each line of `text` as a TOML comment, wrapped at spaces to stay readable (a
/// leading newline stays a blank line).
pub(super) fn comment(out: &mut String, text: impl AsRef<str>) {
    const WIDTH: usize = 90;
    let text = text.as_ref();
    let text = text
        .strip_prefix('\n')
        .inspect(|_| out.push('\n'))
        .unwrap_or(text);
    for l in text.lines() {
        // TOML allows no control characters but tab in comments.
        let l: String = l
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        let body = l.trim_start();
        let lead = &l[..l.len() - body.len()];
        let mut current = lead.to_owned();
        for (i, word) in body.split(' ').enumerate() {
            if i > 0 && current.len() + 1 + word.len() > WIDTH {
                let _ = writeln!(out, "# {current}");
                current = format!("{lead}  {word}");
            } else {
                if i > 0 {
                    current.push(' ');
                }
                current.push_str(word);
            }
        }
        let _ = writeln!(out, "# {}", current.trim_end());
    }
}

pub(super) fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

pub(super) fn list(knocks: &[Knock]) -> String {
    let items: Vec<_> = knocks.iter().map(|k| quote(&k.to_string())).collect();
    format!("[{}]", items.join(", "))
}

fn knocks_text(knocks: &[Knock]) -> String {
    let items: Vec<_> = knocks.iter().map(ToString::to_string).collect();
    items.join(",")
}

/// A door's name as a sequence name (letters, digits, '-', '_', '.'; others become
/// '_'), made unique among `taken`.
fn sequence_name(name: &str, taken: &mut HashSet<String>) -> String {
    let mut base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.truncate(NAME_LEN - 1);
    let mut name = base.clone();
    for n in 2.. {
        if taken.insert(name.clone()) {
            break;
        }
        let suffix = format!("-{n}");
        name = format!("{}{suffix}", &base[..base.len().min(NAME_LEN - 1 - suffix.len())]);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imported(text: &str) -> (String, Vec<String>) {
        let i = super::super::import(Path::new("k.conf"), text).expect("imports");
        (i.toml, i.notes.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn names_become_plain_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(sequence_name("open SSH", &mut taken), "open_SSH");
        assert_eq!(sequence_name("open:SSH", &mut taken), "open_SSH-2");
        let long = "x".repeat(40);
        assert_eq!(sequence_name(&long, &mut taken).len(), NAME_LEN - 1);
        assert_eq!(
            sequence_name(&long, &mut taken),
            format!("{}-2", "x".repeat(NAME_LEN - 3))
        );
    }

    #[test]
    fn knocks_on_well_known_ports_may_be_passing_ones() {
        let (toml, notes) = imported("[web]\nsequence = 443,80,7000,80\n");
        assert!(
            toml.contains("knocks = [\"443/tcp\", \"80/tcp\", \"7000/tcp\", \"80/tcp\"]"),
            "{toml}"
        );
        assert_eq!(
            notes[1..],
            [
                "line 2: sequence: not translated: knocks on 443/tcp, 80/tcp also reached a server there \
              under knockd, xknock drops them: if the port serves here, mark it :pass \
              (docs/configuration.md, \"Passing and ICMP knocks\")"
            ]
        );
    }

    #[test]
    fn what_has_no_equivalent_is_reported_where_it_was() {
        let (toml, notes) = imported(
            "[options]\nFrobnicate = yes\n[a]\nsequence = 2001,2001,2002\ntcpflags = !ack\n\
             start_command = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\
             start_command_6 = /sbin/ip6tables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\
             cmd_timeout = 9\n[b]\nsequence = 2003,2004\n\
             command = /sbin/iptables -D INPUT -s %IP% -p udp --dport 53 -j ACCEPT\n",
        );
        let want = [
            "line 2: Frobnicate: not translated: not a knockd option",
            "line 4: sequence: not translated: 2001/tcp twice in a row",
            "line 5: tcpflags: not translated: \"!ack\" names no flag that must be set",
            "line 6: start_command: not translated: knockd left the port open until something deleted",
            "line 8: cmd_timeout: not translated: knockd uses it only with stop_command",
            "line 9: [b]: not translated: it deletes a firewall rule",
        ];
        assert_eq!(notes.len(), want.len(), "{notes:#?}");
        for (n, w) in notes.iter().zip(want) {
            assert!(n.starts_with(w), "{n:?} should start with {w:?}");
        }
        assert!(
            toml.contains("# line 7, start_command_6: the same rule for IPv6"),
            "{toml}"
        );
        assert!(
            toml.contains("\nsequence_timeout = \"25s\"\nstep_timeout = \"25s\"\n"),
            "knockd's default"
        );
        assert!(!toml.contains("\ntcp_flags"), "{toml}");
        assert!(toml.contains("\nopen_for = \"30s\"\n"));
    }
}
