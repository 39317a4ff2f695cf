//! knockd's `one_time_sequences`: a file of sequences, one per line, each valid once.
//! The first line not commented out is the sequence's knocks; the open that uses it
//! spends it in the kernel (XK_SPENT), then `run` comments it out (as knockd does,
//! with `#`) and the next line takes over, so the file itself remembers what was used
//! across restarts.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use knock_common::MAX_KNOCKS;

use crate::{
    fault,
    net::Knock,
    secret_file::{self, read_private},
};

/// The sequence in use: its line (1-based) and its knocks; `None` once all are used.
pub type Current = Option<(usize, Vec<Knock>)>;

/// Reads `path` and returns its first unused sequence. Every unused line is checked,
/// so that a typo is found at start, not when its turn comes.
pub fn current(path: &Path) -> Result<Current> {
    Ok(unused(path)?.into_iter().next())
}

/// Every unused sequence of `path`, in order, with its line (1-based).
/// The file is a secret, like a key: refused when group or others may read it.
pub fn unused(path: &Path) -> Result<Vec<(usize, Vec<Knock>)>> {
    let text = read_private(path)?;
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
/// file is replaced whole (`secret_file::replace`).
pub fn mark_used(path: &Path, line: usize) -> Result<()> {
    let text = read_private(path)?;
    let mut out = String::with_capacity(text.len() + 16);
    for (i, l) in text.lines().enumerate() {
        if i + 1 == line && !l.trim_start().starts_with('#') {
            out.push('#');
        }
        out.push_str(l);
        out.push('\n');
    }
    let write = || -> std::io::Result<()> {
        if fault::injected("onetime-write") {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        secret_file::replace(path, &out)
    };
    write().with_context(|| format!("cannot rewrite {} to mark line {line} used", path.display()))
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    /// Writes a one-time file as its owner would: mode 0600.
    fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
        fs::write(path, text)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    }

    #[test]
    fn a_file_others_may_read_is_refused_and_the_rewrite_keeps_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        fs::write(&path, "1000,2000\n3000,4000\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = format!("{:#}", current(&path).expect_err("mode 0644"));
        assert!(e.contains("mode 0644"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        mark_used(&path, 1).expect("mark");
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["otp"], "no temporary file left");
    }

    #[test]
    fn a_link_planted_where_the_temporary_file_goes_is_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        write_private(&path, "1000,2000\n3000,4000\n").expect("write");
        let victim = dir.path().join("victim");
        fs::write(&victim, "untouched\n").expect("write");
        let tmp = dir.path().join(format!(".otp.xknock-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).expect("symlink");
        mark_used(&path, 1).expect("mark");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "untouched\n");
        assert!(
            fs::read_to_string(&path)
                .expect("read")
                .starts_with("#1000,2000\n")
        );
        assert!(
            !fs::symlink_metadata(&path)
                .expect("exists")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn lines_are_used_in_turn_and_the_file_remembers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        write_private(
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
        write_private(&path, "1000,2000\n3000,3000\n").expect("write");
        let e = current(&path).expect_err("line 2");
        assert!(e.to_string().contains("otp:2: 3000/tcp twice"), "{e}");
        write_private(&path, "1000,70000\n").expect("write");
        assert!(current(&path).is_err());
    }
}
