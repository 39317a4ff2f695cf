//! The replay cache: the (key id, nonce) of every request accepted within the window,
//! kept in a file so that a restart of `xknock run` forgets none of them.
//!
//! A request is accepted while its own timestamp (inside the ciphertext) is within
//! `window` of the wall clock, so a nonce must be remembered for as long as any
//! reading of that clock, the longest window in force, could accept its timestamp.
//! Each entry keeps the longest window in force since it was seen (a reload that
//! lengthens the window lengthens every entry's), and is dropped once the clock is
//! past its timestamp by more than that. A clock can step back, though, and bring a
//! dropped entry's timestamp back into the window: so the cache also keeps a floor,
//! the latest timestamp it ever dropped (it only rises), and refuses every request
//! at or below it ([`RecordError::Forgotten`]), whatever the clock says. In steady
//! state the floor lies a window behind the clock, where requests are stale anyway.
//!
//! The file is JSON, rewritten whole (temp file, fsync, rename) after every new entry;
//! a corrupt file is an error, never ignored.

use std::{
    collections::HashMap,
    fs::{self, DirBuilder},
    io::ErrorKind,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    clock::millis,
    secret_file,
    spa::{keys::KeyId, packet::NONCE_LEN},
};

/// Entries the cache holds at most: accepted requests within one window. Only key
/// holders can add entries, so reaching it means a client misbehaves; requests are then
/// refused rather than made replayable.
pub const MAX_ENTRIES: usize = 65536;

/// Version 2 adds the floor and each entry's window; version 1 files are read too.
const FILE_VERSION: u32 = 2;

#[derive(Clone)]
pub struct ReplayCache {
    path: PathBuf,
    /// The window in force now.
    window_ms: u64,
    /// (key id, nonce) -> what is known of its request.
    seen: HashMap<(KeyId, [u8; NONCE_LEN]), Seen>,
    /// The latest timestamp of an entry ever dropped (Unix ms; 0: none): a request at
    /// or below it may be a replay of a forgotten one.
    floor_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    /// The request's own timestamp (Unix ms).
    timestamp_ms: u64,
    /// The longest window in force since it was seen.
    keep_ms: u64,
}

/// Why a nonce could not be recorded.
#[derive(Debug)]
pub enum RecordError {
    Replayed,
    /// The request's timestamp is at or below the floor: its nonce, if it was seen,
    /// has been dropped, so a replay could not be told apart.
    Forgotten {
        floor_ms: u64,
    },
    Full,
    /// Recorded in memory, but the file could not be written.
    Unsaved(anyhow::Error),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version: u32,
    #[serde(default)]
    floor_ms: u64,
    nonces: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(with = "hex::serde")]
    key_id: [u8; 8],
    #[serde(with = "hex::serde")]
    nonce: [u8; NONCE_LEN],
    timestamp_ms: u64,
    /// Absent in version 1 files: the window of the config loading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_ms: Option<u64>,
}

impl ReplayCache {
    /// Loads the cache from `path` (a missing file is an empty cache), dropping entries
    /// that left their window by `now_ms`.
    pub fn load(path: &Path, window: Duration, now_ms: u64) -> Result<ReplayCache> {
        let mut cache = ReplayCache {
            path: path.to_path_buf(),
            window_ms: millis(window),
            seen: HashMap::new(),
            floor_ms: 0,
        };
        cache.merge_file(path)?;
        cache.prune(now_ms);
        Ok(cache)
    }

    /// This cache under a new config: the window in force from now on (every entry
    /// keeps at least that long, and longer if it was kept longer so far), and the
    /// file at `path`. A new file takes the entries in memory, merged with what it
    /// held already, and is written at once; the error of that write is returned with
    /// the cache, which stays usable (each new entry tries the file again).
    pub fn renewed(&self, path: &Path, window: Duration, now_ms: u64) -> Result<(ReplayCache, Result<()>)> {
        let mut cache = self.clone();
        // A longer window is written down too: a restart under a shorter one would
        // otherwise drop what this one still keeps.
        let longer = millis(window) > cache.window_ms;
        cache.set_window(window);
        let moved = cache.path != path;
        if moved {
            cache.path = path.to_path_buf();
            cache.merge_file(path)?;
        }
        cache.prune(now_ms);
        let saved = if moved || longer { cache.save() } else { Ok(()) };
        Ok((cache, saved))
    }

    /// Records an accepted request's nonce, unless it was seen, and saves the file.
    pub fn record(
        &mut self,
        key_id: KeyId,
        nonce: [u8; NONCE_LEN],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), RecordError> {
        self.prune(now_ms);
        if self.seen.contains_key(&(key_id, nonce)) {
            return Err(RecordError::Replayed);
        }
        if timestamp_ms <= self.floor_ms {
            return Err(RecordError::Forgotten {
                floor_ms: self.floor_ms,
            });
        }
        if self.seen.len() >= MAX_ENTRIES {
            return Err(RecordError::Full);
        }
        self.seen.insert(
            (key_id, nonce),
            Seen {
                timestamp_ms,
                keep_ms: self.window_ms,
            },
        );
        self.save().map_err(RecordError::Unsaved)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts `window` in force: entries keep the longest window they have seen.
    fn set_window(&mut self, window: Duration) {
        self.window_ms = millis(window);
        let window_ms = self.window_ms;
        for seen in self.seen.values_mut() {
            seen.keep_ms = seen.keep_ms.max(window_ms);
        }
    }

    /// Adds the entries of the file at `path` (a missing file has none); the floor is
    /// the higher of the two.
    fn merge_file(&mut self, path: &Path) -> Result<()> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the SPA replay cache {}", path.display()));
            }
        };
        let file: FileFormat = serde_json::from_str(&text).with_context(|| {
            format!(
                "the SPA replay cache {} is corrupt; remove it to start afresh \
                 (requests of the last window could then be replayed once)",
                path.display()
            )
        })?;
        if !(1..=FILE_VERSION).contains(&file.version) {
            bail!(
                "the SPA replay cache {} has version {}, not {FILE_VERSION}; remove it to start afresh",
                path.display(),
                file.version
            );
        }
        self.floor_ms = self.floor_ms.max(file.floor_ms);
        for e in file.nonces {
            let keep_ms = e.keep_ms.unwrap_or(self.window_ms).max(self.window_ms);
            let seen = self.seen.entry((KeyId(e.key_id), e.nonce)).or_insert(Seen {
                timestamp_ms: e.timestamp_ms,
                keep_ms,
            });
            seen.keep_ms = seen.keep_ms.max(keep_ms);
        }
        Ok(())
    }

    /// Drops entries whose request is older than their window (a replay of one would
    /// be stale), raising the floor to the latest timestamp dropped. A clock that
    /// stepped back drops nothing that a clock further on would keep.
    fn prune(&mut self, now_ms: u64) {
        let mut floor = self.floor_ms;
        self.seen.retain(|_, seen| {
            let keep = now_ms.saturating_sub(seen.timestamp_ms) <= seen.keep_ms;
            if !keep {
                floor = floor.max(seen.timestamp_ms);
            }
            keep
        });
        self.floor_ms = floor;
    }
    /// Writes the whole cache atomically: a new temp file of mode 0600 beside the
    /// cache, fsynced, renamed over it.
    fn save(&self) -> Result<()> {
        let path = &self.path;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!(
                    "cannot create {} for the SPA replay cache {}",
                    dir.display(),
                    path.display()
                )
            })?;
        let mut nonces: Vec<Entry> = self
            .seen
            .iter()
            .map(|((key_id, nonce), seen)| Entry {
                key_id: key_id.0,
                nonce: *nonce,
                timestamp_ms: seen.timestamp_ms,
                keep_ms: Some(seen.keep_ms),
            })
            .collect();
        nonces.sort_by_key(|e| (e.timestamp_ms, e.key_id, e.nonce));
        let text = serde_json::to_string(&FileFormat {
            version: FILE_VERSION,
            floor_ms: self.floor_ms,
            nonces,
        })?;
        secret_file::replace(path, &text)
            .with_context(|| format!("cannot write the SPA replay cache {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);
    const T0: u64 = 1_790_000_000_000;

    #[test]
    fn replays_are_caught_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/dir/spa-replay");
        let mut cache = ReplayCache::load(&path, WINDOW, T0).expect("missing file is empty");
        assert_eq!(cache.len(), 0);
        cache.record(KeyId([1; 8]), [2; NONCE_LEN], T0, T0).expect("new");
        assert!(matches!(
            cache.record(KeyId([1; 8]), [2; NONCE_LEN], T0, T0 + 1),
            Err(RecordError::Replayed)
        ));
        cache
            .record(KeyId([3; 8]), [2; NONCE_LEN], T0, T0)
            .expect("other key id");
        let mode = fs::metadata(&path).expect("saved").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().expect("parent"))
            .expect("made")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let mut reloaded = ReplayCache::load(&path, WINDOW, T0 + 1000).expect("valid file");
        assert_eq!(reloaded.len(), 2);
        assert!(matches!(
            reloaded.record(KeyId([1; 8]), [2; NONCE_LEN], T0, T0 + 1000),
            Err(RecordError::Replayed)
        ));
    }

    #[test]
    fn entries_leave_once_their_request_is_out_of_the_window() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spa-replay");
        let mut cache = ReplayCache::load(&path, WINDOW, T0).expect("empty");
        cache.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0).expect("new");
        cache
            .record(KeyId([1; 8]), [2; NONCE_LEN], T0 + 10_000, T0 + 10_000)
            .expect("new");
        let edge = T0 + 30_000;
        assert_eq!(
            ReplayCache::load(&path, WINDOW, edge).expect("valid").len(),
            2,
            "exactly the window"
        );
        assert_eq!(
            ReplayCache::load(&path, WINDOW, edge + 1).expect("valid").len(),
            1
        );
        cache
            .record(KeyId([1; 8]), [3; NONCE_LEN], edge + 1, edge + 1)
            .expect("new");
        assert_eq!(cache.len(), 2, "the first entry was dropped");
        assert_eq!(
            ReplayCache::load(&path, WINDOW, edge + 1).expect("valid").len(),
            2
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spa-replay");
        for bad in [
            "",
            "{",
            "{\"version\":1,\"nonces\":[{\"key_id\":\"zz\"}]}",
            "{\"version\":3,\"nonces\":[]}",
        ] {
            fs::write(&path, bad).expect("written");
            let err = format!(
                "{:#}",
                ReplayCache::load(&path, WINDOW, T0).err().expect("refused")
            );
            assert!(err.contains(&path.display().to_string()), "{bad:?}: {err}");
        }
    }

    #[test]
    fn an_unwritable_cache_reports_unsaved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let parent = dir.path().join("sub");
        let mut cache = ReplayCache::load(&parent.join("spa-replay"), WINDOW, T0).expect("missing: empty");
        // The cache's directory is now a file: it can be neither created nor written.
        fs::write(&parent, "").expect("written");
        let err = cache
            .record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0)
            .expect_err("cannot save");
        assert!(matches!(err, RecordError::Unsaved(_)), "{err:?}");
        assert!(matches!(
            cache.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0),
            Err(RecordError::Replayed)
        ));
    }

    #[test]
    fn a_clock_stepped_back_never_makes_a_dropped_nonce_acceptable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spa-replay");
        let mut cache = ReplayCache::load(&path, WINDOW, T0).expect("empty");
        cache.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0).expect("new");
        // A minute on, the entry is dropped: its request is stale by then.
        let later = T0 + 60_000;
        cache
            .record(KeyId([1; 8]), [2; NONCE_LEN], later, later)
            .expect("new");
        assert_eq!(cache.len(), 1, "the first entry was dropped");
        // The clock steps back a minute: the first request's timestamp is within the
        // window again, but its nonce is gone, so it is refused by the floor.
        assert!(
            matches!(
                cache.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0 + 5_000),
                Err(RecordError::Forgotten { floor_ms: T0 })
            ),
            "a replay of the dropped request"
        );
        // Also after a restart at the stepped-back clock: the floor is in the file.
        let mut restarted = ReplayCache::load(&path, WINDOW, T0 + 5_000).expect("valid");
        assert!(matches!(
            restarted.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0 + 5_000),
            Err(RecordError::Forgotten { .. })
        ));
        // A stepped-back clock drops nothing: the second entry is still there.
        assert!(matches!(
            restarted.record(KeyId([1; 8]), [2; NONCE_LEN], later, T0 + 5_000),
            Err(RecordError::Replayed)
        ));
        // Requests newer than the floor still pass.
        restarted
            .record(KeyId([1; 8]), [3; NONCE_LEN], T0 + 1, T0 + 5_000)
            .expect("above the floor");
    }

    #[test]
    fn a_longer_window_keeps_older_nonces() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spa-replay");
        let mut cache = ReplayCache::load(&path, WINDOW, T0).expect("empty");
        cache.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0).expect("new");
        // The window grows to an hour: the entry lives an hour now, also when the
        // window shrinks again later.
        let hour = Duration::from_secs(3600);
        let (mut longer, saved) = cache.renewed(&path, hour, T0 + 1_000).expect("renewed");
        saved.expect("written: the window grew");
        assert!(matches!(
            longer.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0 + 1_800_000),
            Err(RecordError::Replayed)
        ));
        let (mut shorter, _) = longer.renewed(&path, WINDOW, T0 + 1_800_000).expect("renewed");
        assert_eq!(shorter.len(), 1, "kept for the hour it was kept so far");
        assert!(matches!(
            shorter.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0 + 1_800_000),
            Err(RecordError::Replayed)
        ));
        // What the file holds keeps its window too.
        let reloaded = ReplayCache::load(&path, WINDOW, T0 + 1_800_000).expect("valid");
        assert_eq!(reloaded.len(), 1);
        // Past the hour it is dropped, and the floor covers it.
        assert!(matches!(
            shorter.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0 + 3_600_001),
            Err(RecordError::Forgotten { .. })
        ));
        assert_eq!(shorter.len(), 0);
    }

    #[test]
    fn a_new_replay_file_takes_the_nonces_in_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = dir.path().join("old");
        let new = dir.path().join("sub/new");
        let mut cache = ReplayCache::load(&old, WINDOW, T0).expect("empty");
        cache.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0).expect("new");
        // The new file already holds a nonce of its own: both are kept.
        let mut other = ReplayCache::load(&new, WINDOW, T0).expect("empty");
        other.record(KeyId([2; 8]), [2; NONCE_LEN], T0, T0).expect("new");
        let (mut moved, saved) = cache.renewed(&new, WINDOW, T0 + 1).expect("renewed");
        saved.expect("written");
        assert_eq!(moved.path(), new);
        assert_eq!(moved.len(), 2);
        let reloaded = ReplayCache::load(&new, WINDOW, T0 + 2).expect("valid");
        assert_eq!(reloaded.len(), 2, "written to the new file at once");
        assert!(matches!(
            moved.record(KeyId([1; 8]), [1; NONCE_LEN], T0, T0 + 2),
            Err(RecordError::Replayed)
        ));
    }

    #[test]
    fn a_version_1_file_is_read_with_the_window_in_force() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spa-replay");
        let text = format!(
            "{{\"version\":1,\"nonces\":[{{\"key_id\":\"{}\",\"nonce\":\"{}\",\"timestamp_ms\":{T0}}}]}}",
            "01".repeat(8),
            "02".repeat(NONCE_LEN)
        );
        fs::write(&path, text).expect("written");
        let mut cache = ReplayCache::load(&path, WINDOW, T0 + 1).expect("version 1");
        assert!(matches!(
            cache.record(KeyId([1; 8]), [2; NONCE_LEN], T0, T0 + 1),
            Err(RecordError::Replayed)
        ));
    }
}
