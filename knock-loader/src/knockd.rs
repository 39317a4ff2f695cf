//! `xknock import-knockd`: a knockd.conf (knockd(1)'s own INI-like format) turned into
//! xknock's TOML, with a report of what has no xknock equivalent.
//!
//! The file is read the way knockd reads it: each line trimmed, `#` first on a line
//! makes it a comment (there are no comments after a value: a `#` in a command is part
//! of the command), `[name]` starts a section, `KEY = VALUE` splits at the first `=`,
//! keys are case-insensitive, and `UseSyslog` is the one key without a value. A crate
//! for INI files would get some of this wrong and would not give the line numbers the
//! report needs, so this is a short parser of its own.

mod command;
mod stanza;
mod translate;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use knock_common::{PROTO_TCP, PROTO_UDP};

use crate::net::Knock;

/// Something of knockd's that the TOML does not carry: shown as
/// `line N: KEY: not translated: WHY`, on stderr and as a comment in the TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub key: String,
    pub why: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {}: not translated: {}",
            self.line, self.key, self.why
        )
    }
}

/// The result of an import: the TOML and what did not make it into it.
#[derive(Clone, Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<Note>,
    /// How many `[[sequence]]` the TOML has.
    pub sequences: usize,
}

/// Reads and translates a knockd.conf.
pub fn import_file(path: &Path) -> Result<Imported> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the knockd configuration {}", path.display()))?;
    import(path, &text)
}

/// Translates `text`, the contents of `path` (named in errors and in the TOML).
pub fn import(path: &Path, text: &str) -> Result<Imported> {
    let conf = parse(path, text)?;
    translate::translate(path, &conf)
}

/// Writes the TOML to `path`, a new file: an existing one is never overwritten (it
/// may be the configuration in use).
pub fn write_new(path: &Path, toml: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists: import-knockd never overwrites a file; give another --out or move it away",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
        })?;
    f.write_all(toml.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A value, the line it came from and its key as written there.
#[derive(Clone, Debug)]
struct At<T> {
    line: usize,
    key: String,
    value: T,
}

/// One `KEY = VALUE` line; `key` as written, `value` trimmed (`None` without `=`).
#[derive(Clone, Debug)]
struct Entry {
    line: usize,
    key: String,
    value: Option<String>,
}

/// A knock/event section: knockd calls it a door.
#[derive(Clone, Debug, Default)]
struct Door {
    line: usize,
    name: String,
    sequence: Option<At<Vec<Knock>>>,
    one_time: Option<At<PathBuf>>,
    seq_timeout: Option<At<u64>>,
    tcp_flags: Option<At<String>>,
    start: Option<At<String>>,
    stop: Option<At<String>>,
    cmd_timeout: Option<At<u64>>,
    /// Keys with no counterpart here (`target`, the IPv6 commands, unknown ones),
    /// lowercased, with their values.
    others: Vec<Entry>,
}

/// A parsed knockd.conf: `[options]`'s entries, and the doors in order.
#[derive(Clone, Debug, Default)]
struct Conf {
    options: Vec<Entry>,
    doors: Vec<Door>,
}

fn parse(path: &Path, text: &str) -> Result<Conf> {
    let err = |line: usize, msg: String| anyhow::anyhow!("{}:{line}: {msg}", path.display());
    let mut conf = Conf::default();
    // None before the first section; Some(None) in [options]; Some(Some(i)) in door i.
    let mut section: Option<Option<usize>> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            if name.is_empty() {
                return Err(err(line, "a section needs a name: [options] or [DOOR]".into()));
            }
            section = Some(if name.eq_ignore_ascii_case("options") {
                None
            } else {
                conf.doors.push(Door {
                    line,
                    name: name.to_owned(),
                    ..Door::default()
                });
                Some(conf.doors.len() - 1)
            });
            continue;
        }
        let (key, value) = match l.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (l, None),
        };
        if key.is_empty() {
            return Err(err(line, format!("{l:?} has no key before '='")));
        }
        let entry = Entry {
            line,
            key: key.to_owned(),
            value,
        };
        match section {
            None => {
                return Err(err(
                    line,
                    format!("{key}: outside any section: start with [options] or [DOOR]"),
                ));
            }
            Some(None) => conf.options.push(entry),
            Some(Some(d)) => {
                door_entry(&mut conf.doors[d], entry).map_err(|e| err(line, format!("{e:#}")))?;
            }
        }
    }
    if let Some(d) = conf
        .doors
        .iter()
        .find(|d| d.sequence.is_none() && d.one_time.is_none())
    {
        return Err(err(
            d.line,
            format!(
                "[{}]: no sequence and no one_time_sequences: knockd refuses a door without knocks",
                d.name
            ),
        ));
    }
    Ok(conf)
}

/// Files one entry of a door, checking its value where knockd would.
fn door_entry(door: &mut Door, e: Entry) -> Result<()> {
    let key = e.key.to_ascii_lowercase();
    if key == "usesyslog" && e.value.is_none() {
        // knockd takes it anywhere; it belongs in [options].
        door.others.push(Entry { key, ..e });
        return Ok(());
    }
    let Some(value) = e.value.clone() else {
        bail!("{}: needs a value: {} = VALUE", e.key, e.key);
    };
    fn at<T>(e: &Entry, value: T) -> At<T> {
        At {
            line: e.line,
            key: e.key.clone(),
            value,
        }
    }
    match key.as_str() {
        "sequence" => door.sequence = Some(at(&e, parse_sequence(&value).with_context(|| e.key.clone())?)),
        "one_time_sequences" => door.one_time = Some(at(&e, PathBuf::from(value))),
        // `timeout` is what knockd called it before 0.5.
        "seq_timeout" | "timeout" => door.seq_timeout = Some(at(&e, seconds(&e.key, &value)?)),
        "cmd_timeout" => door.cmd_timeout = Some(at(&e, seconds(&e.key, &value)?)),
        "tcpflags" => door.tcp_flags = Some(at(&e, value)),
        "start_command" | "command" => door.start = Some(at(&e, value)),
        "stop_command" => door.stop = Some(at(&e, value)),
        _ => door.others.push(Entry { key, ..e }),
    }
    Ok(())
}

/// knockd's timeouts: whole seconds.
fn seconds(key: &str, value: &str) -> Result<u64> {
    value
        .parse()
        .with_context(|| format!("{key}: {value:?} is not a number of seconds"))
}

/// `7000,8000:udp,9000`: knocks separated by commas or spaces, each `PORT`,
/// `PORT:tcp` or `PORT:udp` (or xknock's `PORT/udp`), TCP when not said.
fn parse_sequence(s: &str) -> Result<Vec<Knock>> {
    let knocks = s
        .split([',', ' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(parse_knock)
        .collect::<Result<Vec<_>>>()?;
    if knocks.is_empty() {
        bail!("no knocks: give PORT[:tcp|:udp],...");
    }
    Ok(knocks)
}

fn parse_knock(w: &str) -> Result<Knock> {
    let (port, proto) = w.split_once([':', '/']).unwrap_or((w, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        other => bail!("{w:?}: unknown protocol {other:?}: use tcp or udp"),
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(Knock { port, proto }),
        _ => bail!("{w:?} is not PORT, PORT:tcp or PORT:udp with PORT from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Conf, String> {
        parse(Path::new("/etc/knockd.conf"), text).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn reads_knockd_s_format() {
        let c = parsed(
            "# comment\n[options]\n\tUseSyslog\n  Interface = eth1 \n[open SSH]\n\
             SEQUENCE = 7000, 8000:UDP 9000/tcp\nCommand = /bin/echo # not a comment\n\
             Seq_Timeout=5\nTarget = 10.0.0.1\n",
        )
        .expect("valid");
        assert_eq!(c.options.len(), 2);
        assert_eq!(
            (c.options[0].key.as_str(), c.options[0].value.as_deref()),
            ("UseSyslog", None)
        );
        assert_eq!(c.options[1].value.as_deref(), Some("eth1"));
        let d = &c.doors[0];
        assert_eq!((d.name.as_str(), d.line), ("open SSH", 5));
        let knocks: Vec<_> = d
            .sequence
            .as_ref()
            .expect("sequence")
            .value
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(knocks, ["7000/tcp", "8000/udp", "9000/tcp"]);
        assert_eq!(
            d.start.as_ref().expect("command").value,
            "/bin/echo # not a comment"
        );
        assert_eq!(d.seq_timeout.as_ref().map(|t| (t.line, t.value)), Some((8, 5)));
        assert_eq!(d.others[0].key, "target");
    }

    #[test]
    fn malformed_input_names_the_file_and_line() {
        for (text, want) in [
            (
                "sequence = 1,2\n",
                "/etc/knockd.conf:1: sequence: outside any section",
            ),
            ("[]\n", ":1: a section needs a name"),
            ("[d]\nsequence = 1,70000\n", ":2: sequence: \"70000\" is not PORT"),
            (
                "[d]\nsequence = 1:sctp\n",
                ":2: sequence: \"1:sctp\": unknown protocol",
            ),
            (
                "[d]\nsequence = 1,2\nseq_timeout = soon\n",
                ":3: seq_timeout: \"soon\" is not a number",
            ),
            ("[d]\nsequence\n", ":2: sequence: needs a value"),
            ("[d]\nsequence = ,\n", ":2: sequence: no knocks"),
            ("[options]\n[d]\ncommand = /bin/true\n", ":2: [d]: no sequence"),
            ("[d]\n= 5\n", ":2: \"= 5\" has no key"),
        ] {
            let e = parsed(text).expect_err(text);
            assert!(
                e.starts_with("/etc/knockd.conf:") && e.contains(want),
                "{text:?}: {e}"
            );
        }
    }
}
