//! Secret files (SPA keys, time-based secrets, one-time sequences): created with mode
//! 0600 and never overwritten, and refused when other users may read them.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
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
