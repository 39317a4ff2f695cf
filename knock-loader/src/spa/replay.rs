//! The replay cache: the (key id, nonce) of every request accepted within the window,
//! kept in a file so that a restart of `xknock run` forgets none of them.
//!
//! An entry lives as long as its request's own timestamp is within the window: after
//! that a replay would be stale anyway. The file is JSON, rewritten whole (temp file,
//! fsync, rename) after every new entry; a corrupt file is an error, never ignored.

use std::{
    collections::HashMap,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{ErrorKind, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{keys::KeyId, packet::NONCE_LEN};

/// Entries the cache holds at most: accepted requests within one window. Only key
/// holders can add entries, so reaching it means a client misbehaves; requests are then
/// refused rather than made replayable.
pub const MAX_ENTRIES: usize = 65536;

const FILE_VERSION: u32 = 1;

pub struct ReplayCache {
    path: PathBuf,
    window_ms: u64,
    /// (key id, nonce) -> the request's timestamp (Unix ms).
    seen: HashMap<(KeyId, [u8; NONCE_LEN]), u64>,
}

/// Why a nonce could not be recorded.
#[derive(Debug)]
pub enum RecordError {
    Replayed,
    Full,
    /// Recorded in memory, but the file could not be written.
    Unsaved(anyhow::Error),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File1 {
    version: u32,
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
}

impl ReplayCache {
    /// Loads the cache from `path` (a missing file is an empty cache), dropping entries
    /// that left the window by `now_ms`.
    pub fn load(path: &Path, window: Duration, now_ms: u64) -> Result<ReplayCache> {
        let mut cache = ReplayCache {
            path: path.to_path_buf(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            seen: HashMap::new(),
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(cache),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the SPA replay cache {}", path.display()));
            }
        };
        let file: File1 = serde_json::from_str(&text).with_context(|| {
            format!(
                "the SPA replay cache {} is corrupt; remove it to start afresh \
                 (requests of the last window could then be replayed once)",
                path.display()
            )
        })?;
        if file.version != FILE_VERSION {
            bail!(
                "the SPA replay cache {} has version {}, not {FILE_VERSION}; remove it to start afresh",
                path.display(),
                file.version
            );
        }
        cache.seen = file
            .nonces
            .into_iter()
            .map(|e| ((KeyId(e.key_id), e.nonce), e.timestamp_ms))
            .collect();
        cache.prune(now_ms);
        Ok(cache)
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
        if self.seen.len() >= MAX_ENTRIES {
            return Err(RecordError::Full);
        }
        self.seen.insert((key_id, nonce), timestamp_ms);
        self.save().map_err(RecordError::Unsaved)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Drops entries whose request is older than the window: a replay of one is stale.
    fn prune(&mut self, now_ms: u64) {
        let window_ms = self.window_ms;
        self.seen.retain(|_, ts| now_ms.saturating_sub(*ts) <= window_ms);
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
            .map(|((key_id, nonce), ts)| Entry {
                key_id: key_id.0,
                nonce: *nonce,
                timestamp_ms: *ts,
            })
            .collect();
        nonces.sort_by_key(|e| (e.timestamp_ms, e.key_id, e.nonce));
        let text = serde_json::to_string(&File1 {
            version: FILE_VERSION,
            nonces,
        })?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        // A temp file left by a crash; create_new below then never follows a link.
        let _ = fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // The rename itself survives a crash once the directory is synced.
            File::open(dir)?.sync_all()
        };
        write().with_context(|| format!("cannot write the SPA replay cache {}", path.display()))
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
            "{\"version\":2,\"nonces\":[]}",
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
}
