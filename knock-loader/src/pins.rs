//! The pinned state's lifecycle: whether a `run` may adopt what another left pinned
//! (the maps' layout), which processes use it, and removing it for good (`down`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
    programs::ProgramInfo,
};
use knock_common::{LAYOUT_VERSION, Meta, map_names};

use crate::attach;

/// What is pinned in a directory before `run` loads.
#[derive(Debug, PartialEq, Eq)]
pub enum Pinned {
    /// Nothing: `run` creates the maps.
    Nothing,
    /// Maps of this layout, created by the xknock version named: `run` adopts them.
    Adoptable { created_by: String },
}

/// Checks what `pin_dir` holds, refusing maps that this xknock cannot adopt without
/// misreading them (another layout, or some maps missing) before anything is loaded.
pub fn check(pin_dir: &Path) -> Result<Pinned> {
    let present: Vec<&str> = map_names::ALL
        .into_iter()
        .filter(|name| pin_dir.join(name).exists())
        .collect();
    if present.is_empty() {
        return Ok(Pinned::Nothing);
    }
    let missing: Vec<&str> = map_names::ALL
        .into_iter()
        .filter(|name| !present.contains(name))
        .collect();
    let remedy = format!(
        "run the xknock that created them, or remove them with `xknock down --pin-dir {}` \
         (authorizations and progress are lost, and nothing filters until the next `run` \
         attaches)",
        pin_dir.display()
    );
    if !missing.is_empty() {
        bail!(
            "{} holds maps of another xknock version ({} missing): this xknock cannot adopt \
             them; {remedy}",
            pin_dir.display(),
            missing.join(", ")
        );
    }
    let meta = read_meta(pin_dir)?;
    let created_by = text(&meta.created_by);
    // 0: created by a `run` that failed before writing it, with this layout's maps.
    if meta.layout != LAYOUT_VERSION && meta.layout != 0 {
        bail!(
            "the maps pinned in {} have layout {} (created by xknock {created_by}), this \
             xknock {} has layout {LAYOUT_VERSION}: adopting them would misread their \
             state; {remedy}",
            pin_dir.display(),
            meta.layout,
            env!("CARGO_PKG_VERSION"),
        );
    }
    Ok(Pinned::Adoptable { created_by })
}

fn read_meta(pin_dir: &Path) -> Result<Meta> {
    let path = pin_dir.join(map_names::META);
    let map = MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta: Array<MapData, Meta> = Array::try_from(Map::from_map_data(map)?)
        .with_context(|| format!("{} is not xknock's", path.display()))?;
    meta.get(&0, 0)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Records this xknock's layout and version in freshly created maps.
pub fn write_meta(ebpf: &mut Ebpf) -> Result<()> {
    let mut meta: Array<&mut MapData, Meta> = ebpf
        .map_mut(map_names::META)
        .context("the eBPF object has no meta map")?
        .try_into()?;
    let mut created_by = [0u8; 24];
    for (slot, b) in created_by.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
        *slot = b;
    }
    let value = Meta {
        layout: LAYOUT_VERSION,
        _pad: 0,
        created_by,
    };
    meta.set(0, &value, 0).context("cannot write the meta map")
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Processes other than this one that hold the program pinned in `pin_dir`: the
/// `xknock run` using it (a crashed one holds nothing).
pub fn users(pin_dir: &Path) -> Result<Vec<u32>> {
    let path = attach::program_pin(pin_dir);
    if !path.exists() {
        return Ok(vec![]);
    }
    let id = ProgramInfo::from_pin(&path)
        .with_context(|| format!("cannot read the pinned program {}", path.display()))?
        .id();
    let needle = format!("prog_id:\t{id}\n");
    let me = std::process::id();
    let mut pids = vec![];
    for entry in fs::read_dir("/proc").context("cannot list /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we look: what cannot be read is not a user.
        let Ok(fds) = fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| fs::read_to_string(fd.path()).is_ok_and(|info| info.contains(&needle)));
        if holds && pid != me {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Removes the links (which detaches the program), the program and the maps pinned
/// in `pin_dir`, and the directory once empty. Returns what it removed.
pub fn down(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    if let Some(pid) = users(pin_dir)?.first() {
        bail!(
            "xknock run (pid {pid}) is using {}: stop it first (SIGTERM), then run down again",
            pin_dir.display()
        );
    }
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", pin_dir.display())),
    };
    let ours = |name: &str| {
        name.starts_with("link_") || name == attach::PROGRAM_PIN || map_names::ALL.contains(&name)
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(ours))
        .map(|e| e.path())
        .collect();
    // Links first: the program stops filtering before its maps go.
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for path in &paths {
        fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    // Anything left there is not ours: the directory stays.
    let _ = fs::remove_dir(pin_dir);
    Ok(paths)
}
