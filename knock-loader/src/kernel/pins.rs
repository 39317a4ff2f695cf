//! The pinned state's lifecycle: whether a `run` may adopt what another left pinned
//! (the maps' layout), the lock that keeps one `run` on it, and removing it for good
//! (`down`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
};
use knock_common::{LAYOUT_VERSION, Meta, map_names};

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
        .filter(|name| PinDir(pin_dir).map(name).exists())
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
    let path = PinDir(pin_dir).map(map_names::META);
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

/// Where the locks that keep one `run` per pin directory live (tmpfs: they are
/// about running processes, and go with a reboot as those do).
pub const LOCK_DIR: &str = "/run/xknock";

/// Names every pin xknock makes under a pin directory: the program, a link per
/// interface and the maps (aya pins each map under its name), and the lock that
/// keeps one `run` per directory (not on bpffs).
#[derive(Clone, Copy, Debug)]
pub struct PinDir<'a>(pub &'a Path);

/// The program's pin, in the pin directory.
pub const PROGRAM_PIN: &str = "xknock_prog";
const LINK_PREFIX: &str = "link_";

impl PinDir<'_> {
    /// Where the program is pinned.
    pub fn program(self) -> PathBuf {
        self.0.join(PROGRAM_PIN)
    }

    /// Where the link to `iface` is pinned.
    pub fn link(self, iface: &str) -> PathBuf {
        self.0.join(format!("{LINK_PREFIX}{iface}"))
    }

    /// Where map `name` (one of `map_names::ALL`) is pinned.
    pub fn map(self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Whether a file in the directory is one xknock pins.
    pub fn is_ours(name: &str) -> bool {
        name.starts_with(LINK_PREFIX) || name == PROGRAM_PIN || map_names::ALL.contains(&name)
    }

    /// The lock file of the directory `run` holds: named after the directory's absolute path, as
    /// systemd escapes paths (`/sys/fs/bpf/xknock` is `sys-fs-bpf-xknock.lock`).
    pub fn lock(self) -> PathBuf {
        let pin_dir = self.0;
        let absolute = std::path::absolute(pin_dir).unwrap_or_else(|_| pin_dir.to_owned());
        let mut name = String::new();
        for part in absolute.components().filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        }) {
            if !name.is_empty() {
                name.push('-');
            }
            for b in part.bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && !name.is_empty()) {
                    name.push(b as char);
                } else {
                    name.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
        Path::new(LOCK_DIR).join(format!("{name}.lock"))
    }
}

/// One `run` (or `down`) per pin directory at a time: an exclusive `flock` on the
/// directory's lock file, which holds the holder's pid. The kernel releases it when
/// its holder exits, however it exits, so a crashed `run` never blocks the next.
pub struct RunLock {
    _file: fs::File,
}

/// How long the lock's user waits for a holder that is on its way out.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl RunLock {
    /// Takes the lock of `pin_dir`, or says which process holds it. A holder that
    /// lets go within a moment (a `run` that was just stopped) is waited for.
    pub fn take(pin_dir: &Path, what: &str) -> Result<RunLock> {
        use std::io::{Seek as _, Write as _};
        let path = PinDir(pin_dir).lock();
        fs::create_dir_all(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        while !flock(&file, libc::LOCK_EX | libc::LOCK_NB)
            .with_context(|| format!("cannot lock {}", path.display()))?
        {
            if std::time::Instant::now() >= deadline {
                let pid = read_pid(&path).map_or("unknown".to_owned(), |p| p.to_string());
                bail!(
                    "xknock run (pid {pid}) is using {}: stop it first (SIGTERM; with \
                     --keep-attached its filter stays until the next run takes over), then \
                     {what} again, or choose another --pin-dir",
                    pin_dir.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

/// The pid of the `run` holding `pin_dir`'s lock, or `None` when nobody holds it.
pub fn holder(pin_dir: &Path) -> Result<Option<u32>> {
    let path = PinDir(pin_dir).lock();
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open the lock {}", path.display())),
    };
    // A shared lock is refused only while a `run` holds the exclusive one.
    if flock(&file, libc::LOCK_SH | libc::LOCK_NB)
        .with_context(|| format!("cannot lock {}", path.display()))?
    {
        return Ok(None);
    }
    read_pid(&path)
        .map(Some)
        .with_context(|| format!("{} is locked but names no pid", path.display()))
}

fn read_pid(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", path.display()))
}

/// flock(2) without waiting: true when taken, false when another holds it.
fn flock(file: &fs::File, op: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Removes the links (which detaches the program), the program and the maps pinned
/// in `pin_dir`, and the directory once empty. Returns what it removed.
pub fn down(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    // Held while removing: no `run` starts on half-removed pins.
    let _lock = RunLock::take(pin_dir, "run down")?;
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", pin_dir.display())),
    };
    let ours = |name: &str| PinDir::is_ours(name);
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
