//! knockd's `one_time_sequences`: a file of sequences, one per line, each valid once.
//! The first line not commented out is the sequence's knocks; when it opens, `run`
//! comments it out (as knockd does, with `#`) and the next line takes over, so the
//! file itself remembers what was used across restarts.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use knock_common::MAX_KNOCKS;

use crate::config::Knock;

/// The sequence in use: its line (1-based) and its knocks; `None` once all are used.
pub type Current = Option<(usize, Vec<Knock>)>;

/// Reads `path` and returns its first unused sequence. Every unused line is checked,
/// so that a typo is found at start, not when its turn comes.
pub fn current(path: &Path) -> Result<Current> {
    Ok(unused(path)?.into_iter().next())
}

/// Every unused sequence of `path`, in order, with its line (1-based).
pub fn unused(path: &Path) -> Result<Vec<(usize, Vec<Knock>)>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let knocks = parse_line(line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        lines.push((i + 1, knocks));
    }
    Ok(lines)
}

/// One line: knocks separated by commas or spaces, each `PORT[/tcp|/udp]` or knockd's
/// `PORT[:tcp|:udp]`.
fn parse_line(line: &str) -> Result<Vec<Knock>> {
    let knocks = line
        .split([',', ' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.replacen(':', "/", 1)
                .parse::<Knock>()
                .map_err(anyhow::Error::msg)
        })
        .collect::<Result<Vec<_>>>()?;
    if knocks.len() > MAX_KNOCKS {
        bail!("at most {MAX_KNOCKS} knocks");
    }
    if let Some(w) = knocks.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "{} twice in a row: a retransmitted knock could not be told from the next one",
            w[0]
        );
    }
    Ok(knocks)
}

/// Comments out line `line` (1-based) of `path`: the sequence there was used. The
/// file is replaced whole (a temporary file renamed over it), never half-written.
pub fn mark_used(path: &Path, line: usize) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = String::with_capacity(text.len() + 16);
    for (i, l) in text.lines().enumerate() {
        if i + 1 == line && !l.trim_start().starts_with('#') {
            out.push('#');
        }
        out.push_str(l);
        out.push('\n');
    }
    let tmp = PathBuf::from(format!("{}.xknock-tmp", path.display()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot rewrite {} to mark line {line} used", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_used_in_turn_and_the_file_remembers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        fs::write(
            &path,
            "# used before\n#1,2,3\n\n1000,2000:udp,3000\n4000/udp 5000\n",
        )
        .expect("write");
        let (line, knocks) = current(&path).expect("reads").expect("one left");
        assert_eq!(line, 4);
        assert_eq!(
            knocks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["1000/tcp", "2000/udp", "3000/tcp"]
        );
        mark_used(&path, line).expect("mark");
        let (line, knocks) = current(&path).expect("reads").expect("one left");
        assert_eq!((line, knocks.len()), (5, 2));
        mark_used(&path, line).expect("mark");
        assert_eq!(current(&path).expect("reads"), None, "all used");
        assert!(
            fs::read_to_string(&path)
                .expect("read")
                .contains("#1000,2000:udp,3000\n#4000/udp 5000\n")
        );
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number_even_if_its_turn_is_far() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        fs::write(&path, "1000,2000\n3000,3000\n").expect("write");
        let e = current(&path).expect_err("line 2");
        assert!(e.to_string().contains("otp:2: 3000/tcp twice"), "{e}");
        fs::write(&path, "1000,70000\n").expect("write");
        assert!(current(&path).is_err());
    }

    #[test]
    fn a_later_line_on_a_protected_port_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        fs::write(
            &path,
            "1000,2000
3000,22
",
        )
        .expect("write");
        let toml = format!(
            "[[sequence]]\nname = \"door\"\none_time_sequences = \"{}\"\nprotect = [\"22/tcp\"]\n",
            path.display()
        );
        let e = crate::config::Config::parse(Path::new("x.toml"), &toml).expect_err("line 2 knocks on 22");
        let e = format!("{e:#}");
        assert!(
            e.contains("otp:2: 22/tcp is protected by sequence \"door\""),
            "{e}"
        );
    }
}
