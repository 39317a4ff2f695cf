//! `xknock import-fwknopd`: a fwknopd server's access.conf (its clients' stanzas)
//! and, optionally, its fwknopd.conf (the port, the interface, the packet age) turned
//! into xknock's TOML, with a report of what has no xknock equivalent.
//!
//! The files are read the way fwknopd 2.6 reads them: a line whose first character
//! is `#` or `;` (or that is empty) is skipped; otherwise the first word is the key
//! (a `:` at its end dropped: `fwknop --key-gen` writes `KEY_BASE64: ...`) and the
//! rest of the line, up to a `;`, is the value. Keys are case-sensitive. In
//! access.conf, `SOURCE` starts a stanza and every other key belongs to the stanza
//! above it.

mod server;
mod stanza;
mod translate;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::net::Knock;

/// Something of fwknopd's that the TOML does not carry: shown as
/// `FILE line N: KEY: not translated: WHY`, on stderr and as a comment in the TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub why: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {}: not translated: {}",
            self.file.display(),
            self.line,
            self.key,
            self.why
        )
    }
}

/// The result of an import: the TOML and what did not make it into it.
#[derive(Clone, Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<Note>,
    /// How many `[[sequence]]` and `[[spa.fwknop]]` the TOML has.
    pub sequences: usize,
    pub clients: usize,
    /// How many values the TOML marks `FILL IN` (Debian's `__CHANGEME__` keys, the
    /// ports of a stanza without OPEN_PORTS): `xknock check` refuses it until then.
    pub fill_in: usize,
}

/// Reads and translates an access.conf and, when given, the fwknopd.conf beside it.
pub fn import_files(access: &Path, server: Option<&Path>) -> Result<Imported> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the fwknop configuration {}", path.display()))
    };
    let access_text = read(access)?;
    let server_text = server.map(read).transpose()?;
    import(access, &access_text, server.zip(server_text.as_deref()))
}

/// Translates `access_text`, the contents of `access`, and `server`'s (path, text):
/// the paths are named in errors, notes and the TOML.
pub fn import(access: &Path, access_text: &str, server: Option<(&Path, &str)>) -> Result<Imported> {
    let conf = parse_access(access, access_text)?;
    let server = match server {
        Some((path, text)) => Some((path, entries(path, text)?)),
        None => None,
    };
    translate::translate(access, &conf, server.as_ref().map(|(p, e)| (*p, &e[..])))
}

/// Writes the TOML to `path`, a new file of mode 0600 (it holds the clients' keys):
/// an existing one is never overwritten (it may be the configuration in use).
pub fn write_new(path: &Path, toml: &str) -> Result<()> {
    crate::secret_file::write_private_new(path, toml).map_err(|e| {
        let exists = e
            .root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists);
        if exists {
            anyhow!(
                "{} exists: import-fwknopd never overwrites a file; give another --out or move it away",
                path.display()
            )
        } else {
            e
        }
    })
}

/// One `KEY VALUE` line: `key` as written (less a trailing `:`), `value` trimmed.
#[derive(Clone, Debug)]
struct Entry {
    line: usize,
    key: String,
    value: String,
}

/// An access.conf stanza: its `SOURCE` line and the entries after it.
#[derive(Clone, Debug)]
struct Stanza {
    line: usize,
    /// Its number in the file, from 1: the client is named after it.
    number: usize,
    source: String,
    entries: Vec<Entry>,
}

/// A parsed access.conf: directives outside any stanza (`%include`), the stanzas.
#[derive(Clone, Debug, Default)]
struct AccessConf {
    directives: Vec<Entry>,
    stanzas: Vec<Stanza>,
}

/// The `KEY VALUE` lines of a file in fwknop's format.
fn entries(path: &Path, text: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with(['#', ';']) {
            continue;
        }
        let (word, rest) = l.split_once([' ', '\t']).unwrap_or((l, ""));
        let key = word.rsplit_once(':').map_or(word, |(k, _)| k);
        let value = rest.split([';', '\r']).next().unwrap_or_default().trim();
        if value.is_empty() {
            bail!("{}:{line}: {key}: needs a value: {key} VALUE", path.display());
        }
        out.push(Entry {
            line,
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

fn parse_access(path: &Path, text: &str) -> Result<AccessConf> {
    let mut conf = AccessConf::default();
    for e in entries(path, text)? {
        if e.key == "SOURCE" {
            conf.stanzas.push(Stanza {
                line: e.line,
                number: conf.stanzas.len() + 1,
                source: e.value,
                entries: Vec::new(),
            });
        } else if let Some(s) = conf.stanzas.last_mut() {
            s.entries.push(e);
        } else if e.key.starts_with('%') {
            conf.directives.push(e);
        } else {
            bail!(
                "{}:{}: {}: before any SOURCE line: each stanza starts with SOURCE",
                path.display(),
                e.line,
                e.key
            );
        }
    }
    if conf.stanzas.is_empty() {
        bail!(
            "{}: no SOURCE line: fwknopd needs at least one stanza (SOURCE ANY, then its keys)",
            path.display()
        );
    }
    Ok(conf)
}

/// `tcp/22, udp/53`: fwknop's port lists, each `PROTO/PORT`, in the order written,
/// each once.
fn parse_ports(value: &str) -> Result<Vec<Knock>> {
    let mut ports: Vec<Knock> = Vec::new();
    for w in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let Some((proto, port)) = w.split_once('/') else {
            bail!("{w:?} is not PROTO/PORT, like tcp/22");
        };
        let proto = crate::net::parse_proto(&proto.trim().to_ascii_lowercase())
            .ok_or_else(|| anyhow!("{w:?}: unknown protocol {proto:?}: use tcp or udp"))?;
        let port = match port.trim().parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => bail!("{w:?}: the port must be from 1 to 65535"),
        };
        let k = Knock { port, proto };
        if !ports.contains(&k) {
            ports.push(k);
        }
    }
    if ports.is_empty() {
        bail!("no ports: give PROTO/PORT, ..., like tcp/22, udp/53");
    }
    Ok(ports)
}

/// fwknop's timeouts: whole seconds.
fn parse_seconds(value: &str) -> Result<i64> {
    value
        .parse()
        .map_err(|_| anyhow!("{value:?} is not a number of seconds"))
}

/// fwknop's booleans: a value starting with `Y` (any case) is true, anything else false.
fn parse_bool(value: &str) -> bool {
    value.starts_with(['Y', 'y'])
}

/// An error about `e`, naming the file and line.
fn error_at(path: &Path, e: &Entry, err: impl fmt::Display) -> anyhow::Error {
    anyhow!("{}:{}: {}: {err}", path.display(), e.line, e.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<AccessConf, String> {
        parse_access(Path::new("/etc/fwknop/access.conf"), text).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn reads_fwknop_s_format() {
        let c = parsed(
            "# comment\n;also\n%include_folder /etc/fwknop/d\nSOURCE    ANY\nKEY_BASE64: abc=\n\
             \tOPEN_PORTS tcp/22, udp/53;  trailing\nKEY my secret phrase \r\n",
        )
        .expect("valid");
        assert_eq!(c.directives[0].key, "%include_folder");
        let s = &c.stanzas[0];
        assert_eq!((s.line, s.number, s.source.as_str()), (4, 1, "ANY"));
        let kv: Vec<_> = s
            .entries
            .iter()
            .map(|e| (e.line, e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            [
                (5, "KEY_BASE64", "abc="),
                (6, "OPEN_PORTS", "tcp/22, udp/53"),
                (7, "KEY", "my secret phrase")
            ]
        );
        let ports = parse_ports(&s.entries[1].value).expect("valid");
        assert_eq!(
            ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["22/tcp", "53/udp"]
        );
        assert!(parse_bool("Yes") && parse_bool("y") && !parse_bool("N") && !parse_bool("1"));
    }

    #[test]
    fn malformed_input_names_the_file_and_line() {
        for (text, want) in [
            ("KEY_BASE64 abc=\n", ":1: KEY_BASE64: before any SOURCE line"),
            ("SOURCE ANY\nOPEN_PORTS\n", ":2: OPEN_PORTS: needs a value"),
            ("# only comments\n", ": no SOURCE line"),
        ] {
            let e = parsed(text).expect_err(text);
            assert!(
                e.starts_with("/etc/fwknop/access.conf") && e.contains(want),
                "{text:?}: {e}"
            );
        }
        for (ports, want) in [
            ("tcp22", "is not PROTO/PORT"),
            ("sctp/22", "unknown protocol"),
            ("tcp/70000", "from 1 to 65535"),
            (",", "no ports"),
        ] {
            let e = format!("{:#}", parse_ports(ports).expect_err(ports));
            assert!(e.contains(want), "{ports:?}: {e}");
        }
    }
}
