//! Secret files (SPA keys, time-based secrets, one-time sequences, the SPA replay
//! cache): created with mode 0600 and never overwritten, replaced whole when they
//! change, and refused when other users may read them.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Writes `text` to a new file of mode 0600 (a key or a secret); an existing file is
/// never overwritten.
pub fn write_private_new(path: &Path, text: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a secret file, refusing it when group or others may read or write it.
pub fn read_private(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let mode = file
        .metadata()
        .with_context(|| format!("cannot read key file {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is open to other users (mode {mode:04o}): chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    Ok(text)
}

/// Replaces `path` whole with `text`: a new file (O_EXCL, O_NOFOLLOW, mode 0600) in
/// the same directory, synced, renamed over it, and the directory synced, so the file
/// is never half-written, survives a crash once this returns, and no link planted
/// where the temporary file goes is followed.
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.xknock-{}", std::process::id()));
    // Left by a run that died while writing: ours (same pid) or nobody's.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}
