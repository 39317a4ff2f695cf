//! knockd's `one_time_sequences`: a file of sequences, one per line, each valid once.
//! The first line not commented out is the sequence's knocks; the open that uses it
//! spends it in the kernel (XK_SPENT), then `run` comments it out (as knockd does,
//! with `#`) and the next line takes over, so the file itself remembers what was used
//! across restarts.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use knock_common::MAX_KNOCKS;

use crate::{
    config::{Config, Knock},
    fault,
    spa::keys::read_private,
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
/// file is replaced whole: a new file (O_EXCL, O_NOFOLLOW, mode 0600) in the same
/// directory, synced, renamed over it, and the directory synced, so it is never
/// half-written and no link planted there is followed.
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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.xknock-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        if fault::injected("onetime-write") {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        // Left by a run that died while writing: ours (same pid) or nobody's.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let written = f.write_all(out.as_bytes()).and_then(|()| f.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::File::open(&dir)?.sync_all()
    };
    write().with_context(|| format!("cannot rewrite {} to mark line {line} used", path.display()))
}

/// `run`'s side of one-time sequences: when the kernel has spent a line (XK_SPENT),
/// it is spent in memory (the next line, or none, is loaded) and marked in its file
/// as soon as the file can be written. A line whose mark could not be written (a
/// full disk, say) stays spent in memory, also across reloads, and the write is
/// retried; the kernel's record keeps it closed across a restart meanwhile.
#[derive(Default)]
pub struct Spender {
    /// Lines spent but not yet marked in their file.
    unwritten: Vec<(PathBuf, usize)>,
    /// Sequences that opened while their file could not be read: their line is
    /// spent once it can be (nothing else opens them meanwhile: they are disarmed).
    unread: Vec<String>,
    /// The last problem logged, so that a retry every tick does not repeat it.
    reported: Option<String>,
}

impl Spender {
    /// Spends the line of each one-time sequence among `opened` (by name: those whose
    /// line the kernel spent) in
    /// `config`, loading the next one into `config`. Returns whether `config`
    /// changed, so that the caller rewrites the kernel's tables.
    pub fn opened(&mut self, config: &mut Config, opened: &[String]) -> bool {
        let mut changed = false;
        for name in opened {
            let spendable = config
                .sequences
                .iter()
                .any(|s| &s.name == name && s.one_time.is_some());
            if spendable && !self.unread.contains(name) {
                self.unread.push(name.clone());
            }
        }
        let names = std::mem::take(&mut self.unread);
        for name in names {
            let Some(s) = config.sequences.iter_mut().find(|s| s.name == name) else {
                continue;
            };
            let Some(path) = s.one_time.clone() else { continue };
            changed = true;
            match self.unused(&path) {
                Ok(lines) => {
                    if let Some((line, _)) = lines.first() {
                        self.unwritten.push((path.clone(), *line));
                    }
                    s.knocks = match lines.get(1) {
                        Some((line, knocks)) => {
                            log::info!(
                                "{name}: one-time sequence used; line {line} of {} is next",
                                path.display()
                            );
                            knocks.clone()
                        }
                        None => {
                            log::warn!(
                                "{name}: every one-time sequence in {} is used: add more",
                                path.display()
                            );
                            vec![]
                        }
                    };
                }
                Err(e) => {
                    // Fail closed: nothing opens this sequence until its file is read.
                    self.report(format!(
                        "{name}: {e:#}; the sequence is closed until the file can be read"
                    ));
                    s.knocks = vec![];
                    self.unread.push(name);
                }
            }
        }
        self.flush();
        changed
    }

    /// Marks the spent lines in their files; what cannot be written yet stays for the
    /// next call.
    pub fn flush(&mut self) {
        let pending = std::mem::take(&mut self.unwritten);
        for (path, line) in pending {
            if let Err(e) = mark_used(&path, line) {
                self.report(format!(
                    "{e:#}; the line stays used in memory, and the write is retried"
                ));
                self.unwritten.push((path, line));
            }
        }
        if self.unwritten.is_empty() && self.unread.is_empty() {
            self.reported = None;
        }
    }

    /// Whether something waits for a retry.
    pub fn pending(&self) -> bool {
        !self.unwritten.is_empty() || !self.unread.is_empty()
    }

    /// Makes a freshly read `config` skip the lines spent but not yet marked.
    pub fn adjust(&self, config: &mut Config) -> Result<()> {
        for s in &mut config.sequences {
            let Some(path) = s.one_time.clone() else { continue };
            if self.unread.contains(&s.name) {
                s.knocks = vec![];
            } else if self.unwritten.iter().any(|(p, _)| *p == path) {
                s.knocks = self
                    .unused(&path)?
                    .into_iter()
                    .next()
                    .map(|(_, k)| k)
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    /// The file's unused lines less those spent but not yet marked.
    fn unused(&self, path: &Path) -> Result<Vec<(usize, Vec<Knock>)>> {
        let spent = |line: &usize| self.unwritten.iter().any(|(p, l)| p == path && l == line);
        Ok(unused(path)?
            .into_iter()
            .filter(|(line, _)| !spent(line))
            .collect())
    }

    fn report(&mut self, problem: String) {
        if self.reported.as_ref() != Some(&problem) {
            log::error!("one-time sequences: {problem}");
            self.reported = Some(problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

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

    #[test]
    fn a_later_line_on_a_protected_port_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        write_private(
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
