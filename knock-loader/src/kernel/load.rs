//! Loading the XDP program with its maps pinned, and attaching it to interfaces.

use std::{
    ffi::CString,
    fs,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLinkId,
    },
};
use knock_common::map_names;

use super::{
    EBPF_OBJECT, PROGRAM_NAME, bpf, hint,
    pins::{self, PinDir, Pinned},
};
use crate::{
    config::{Limits, XdpMode},
    fault,
};

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails unless `dir` lies on a bpf filesystem; pins cannot live anywhere else.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let c = CString::new(existing.as_os_str().as_encoded_bytes()).context("pin directory has a NUL byte")?;
    // SAFETY: statfs writes only into the struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat {}", existing.display()));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "pin directory {} is not on a bpf filesystem ({} is not bpffs); mount one with \
             `mount -t bpf bpf /sys/fs/bpf` or choose another --pin-dir",
            dir.display(),
            existing.display()
        );
    }
    Ok(())
}

/// Loads the program into the kernel with every map pinned under `pin_dir`; maps
/// already pinned there (by an earlier `run`, or another version of xknock with the
/// same layout) are adopted, with their contents. Refuses, before anything is
/// loaded, maps it cannot adopt. The caller holds the pin directory's `RunLock`.
pub fn load(pin_dir: &Path, limits: &Limits) -> Result<(Ebpf, Pinned)> {
    ensure_bpffs(pin_dir)?;
    let pinned = pins::check(pin_dir)?;
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("cannot create pin directory {}", pin_dir.display()))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(map_names::PROGRESS, limits.in_progress)
        .map_max_entries(map_names::AUTHORIZED, limits.authorized)
        .map_max_entries(map_names::AUTH_HINT, hint::slots_for(limits.authorized))
        .map_max_entries(map_names::FLOWS, limits.kept_connections)
        .map_max_entries(map_names::BANS, limits.ban_records)
        .load(EBPF_OBJECT)
        .with_context(|| {
            format!(
                "cannot load the eBPF object (needs root or CAP_BPF, and a kernel with BTF); \
                 a pinned map that does not fit comes from other [limits] (restore them, or \
                 `xknock down --pin-dir {}` to start over, losing authorizations and \
                 progress)",
                pin_dir.display()
            )
        })?;
    if pinned == Pinned::Nothing {
        pins::write_meta(&mut ebpf)?;
    }
    program(&mut ebpf)?
        .load()
        .context("the kernel's verifier refused the XDP program")?;
    Ok((ebpf, pinned))
}

pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .context("the eBPF object has no xknock program")?;
    Ok(prog.try_into()?)
}

/// Attaches to `iface`; in auto mode tries native first and falls back to skb mode.
/// Returns the link and the mode that took.
pub fn attach(xdp: &mut Xdp, iface: &str, mode: XdpMode) -> Result<(XdpLinkId, &'static str)> {
    let name = CString::new(iface).with_context(|| format!("interface name {iface:?} has a NUL byte"))?;
    let try_mode = |xdp: &mut Xdp, m: AyaXdpMode| xdp.attach(name.as_c_str(), m);
    match mode {
        XdpMode::Native => try_mode(xdp, AyaXdpMode::Driver)
            .map(|l| (l, "native"))
            .with_context(|| format!("cannot attach to {iface} in native mode (try --xdp-mode skb)")),
        XdpMode::Skb => try_mode(xdp, AyaXdpMode::Skb)
            .map(|l| (l, "skb"))
            .with_context(|| format!("cannot attach to {iface} in skb mode")),
        XdpMode::Auto => match try_mode(xdp, AyaXdpMode::Driver) {
            Ok(l) => Ok((l, "native")),
            Err(native) => try_mode(xdp, AyaXdpMode::Skb)
                .map(|l| (l, "skb"))
                .with_context(|| format!("cannot attach to {iface} natively ({native}) nor in skb mode")),
        },
    }
}

/// Attaches to `iface` and pins the link, so that filtering goes on if this process
/// dies. If a link is already pinned there (an earlier `run`, this version or
/// another), the program behind it is replaced in one update and the link stays
/// pinned throughout: there is no moment without a filter, and if the kernel refuses
/// the update the old program goes on filtering. Returns the pinned link and how.
pub fn attach_pinned(
    xdp: &mut Xdp,
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
) -> Result<(PinnedLink, String)> {
    let path = PinDir(pin_dir).link(iface);
    if path.exists() {
        update_link(xdp, &path).with_context(|| {
            format!("cannot replace the program on {iface}: the program it had goes on filtering")
        })?;
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("cannot open the pinned link {}", path.display()))?;
        return Ok((link, "replaced the program behind the pinned link".to_owned()));
    }
    let (id, mode) = attach(xdp, iface, mode)?;
    let link = FdLink::try_from(xdp.take_link(id)?).map_err(|e| {
        anyhow!("the kernel attached {iface} without a BPF link ({e}); xknock needs Linux 5.9 or newer")
    })?;
    let pinned = link
        .pin(&path)
        .with_context(|| format!("cannot pin the link at {}", path.display()))?;
    Ok((pinned, format!("attached in {mode} mode")))
}

/// BPF_LINK_UPDATE: puts `xdp` behind the link pinned at `path`, atomically; the pin
/// is never removed, so a refusal leaves the link as it was.
fn update_link(xdp: &Xdp, path: &Path) -> Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    const BPF_F_REPLACE: u32 = 4;
    let link = obj_get(path)?;
    let prog = xdp.fd().context("the program is not loaded")?.as_fd().as_raw_fd();
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    if fault::injected("link-update") {
        // A condition the kernel refuses (EPERM): "replace the program if it is
        // this one", naming the new program, which the link does not hold.
        attr.flags = BPF_F_REPLACE;
        attr.old_prog_fd = prog as u32;
    }
    // SAFETY: BPF_LINK_UPDATE's attributes; both descriptors are open.
    unsafe { bpf::call(BPF_LINK_UPDATE, &attr) }.context("the kernel refused the link update")?;
    Ok(())
}

/// BPF_OBJ_GET: a file descriptor for the object pinned at `path` (aya gives pinned
/// links no public descriptor).
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_encoded_bytes()).context("pin path has a NUL byte")?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: BPF_OBJ_GET's attributes; the path outlives the call.
    let fd = unsafe { bpf::call(BPF_OBJ_GET, &attr) }
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the program (replacing the pin of an earlier `run`'s program).
pub fn pin_program(xdp: &mut Xdp, pin_dir: &Path) -> Result<()> {
    let path = PinDir(pin_dir).program();
    if path.exists() {
        fs::remove_file(&path)
            .with_context(|| format!("cannot remove the old program pin {}", path.display()))?;
    }
    xdp.pin(&path)
        .with_context(|| format!("cannot pin the program at {}", path.display()))
}
