//! `run`'s side of one-time sequences (see `crate::onetime` for the file).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{
    config::Config,
    net::Knock,
    onetime::{mark_used, unused},
};

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
                    s.knocks = if let Some((line, knocks)) = lines.get(1) {
                        log::info!(
                            "{name}: one-time sequence used; line {line} of {} is next",
                            path.display()
                        );
                        knocks.clone()
                    } else {
                        log::warn!(
                            "{name}: every one-time sequence in {} is used: add more",
                            path.display()
                        );
                        vec![]
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
