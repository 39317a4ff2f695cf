//! The interfaces `run` filters: one program and one state for all, a pinned link on
//! each. An interface missing at start-up, or deleted and created again, is attached
//! when it (re)appears; down and up again, it keeps its link.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{Xdp, links::PinnedLink};

use crate::{attach, config::XdpMode};

/// One configured interface: the ifindex its link is on (0: not attached) and the
/// link, held so that detaching can unpin it.
struct Iface {
    ifindex: u32,
    link: Option<PinnedLink>,
    /// The last problem reported, so that a retry every tick does not repeat it.
    reported: Option<String>,
}

pub struct Interfaces {
    pin_dir: std::path::PathBuf,
    mode: XdpMode,
    ifaces: BTreeMap<String, Iface>,
}

/// The interface's index, 0 when there is none of that name.
fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: a NUL-terminated name; the call only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

impl Interfaces {
    /// Attaches to every named interface that exists (replacing the program behind a
    /// link a crashed `run` left). Fails, detaching what it attached, if one that
    /// exists cannot be attached; one that does not exist yet is attached by `sync`.
    pub fn attach(xdp: &mut Xdp, pin_dir: &Path, mode: XdpMode, names: &[String]) -> Result<Interfaces> {
        let mut all = Interfaces {
            pin_dir: pin_dir.to_owned(),
            mode,
            ifaces: BTreeMap::new(),
        };
        for name in names {
            if let Err(e) = all.add(xdp, name) {
                all.detach(xdp);
                return Err(e);
            }
        }
        Ok(all)
    }

    fn add(&mut self, xdp: &mut Xdp, name: &str) -> Result<()> {
        let mut iface = Iface {
            ifindex: 0,
            link: None,
            reported: None,
        };
        let index = ifindex(name);
        if index == 0 {
            log::warn!("{name}: no such interface (yet): it is attached when it appears");
            iface.reported = Some("missing".into());
        } else {
            self.link(xdp, name, index, &mut iface)?;
        }
        self.ifaces.insert(name.to_owned(), iface);
        Ok(())
    }

    /// Attaches to `name` (index `index`), reusing a pinned link only if it is still
    /// on that interface.
    fn link(&self, xdp: &mut Xdp, name: &str, index: u32, iface: &mut Iface) -> Result<()> {
        let pin = attach::link_pin(&self.pin_dir, name);
        if pin.exists() && link_ifindex(&pin)? != index {
            // The interface it was on is gone: the link attaches to nothing.
            fs::remove_file(&pin)
                .with_context(|| format!("cannot remove the stale link {}", pin.display()))?;
        }
        let (link, how) = attach::attach_pinned(xdp, &self.pin_dir, name, self.mode)?;
        log::info!("{name}: {how}; pins in {}", self.pin_dir.display());
        iface.ifindex = index;
        iface.link = Some(link);
        iface.reported = None;
        Ok(())
    }

    /// Follows the interfaces: attaches to those that appeared or were created again,
    /// forgets the links of those that are gone. Problems are logged, once each.
    pub fn sync(&mut self, xdp: &mut Xdp) {
        let names: Vec<String> = self.ifaces.keys().cloned().collect();
        for name in names {
            let index = ifindex(&name);
            let Some(mut iface) = self.ifaces.remove(&name) else {
                continue;
            };
            if index == 0 && iface.ifindex != 0 {
                log::warn!("{name}: the interface is gone; it is attached again when it comes back");
                unpin(&mut iface);
            } else if index != 0 && index != iface.ifindex {
                unpin(&mut iface);
                if let Err(e) = self.link(xdp, &name, index, &mut iface) {
                    let e = format!("{e:#}");
                    if iface.reported.as_ref() != Some(&e) {
                        log::error!("{name}: cannot attach: {e}");
                        iface.reported = Some(e);
                    }
                }
            }
            self.ifaces.insert(name, iface);
        }
    }

    /// Makes `names` the interfaces filtered: attaches to new ones, detaches from
    /// those no longer named.
    pub fn set(&mut self, xdp: &mut Xdp, names: &[String]) -> Result<()> {
        let gone: Vec<String> = self
            .ifaces
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut iface) = self.ifaces.remove(&name) {
                unpin(&mut iface);
                log::info!("{name}: detached (no longer configured)");
            }
        }
        for name in names {
            if !self.ifaces.contains_key(name) {
                self.add(xdp, name)?;
            }
        }
        Ok(())
    }

    /// The interfaces with a link, by name.
    pub fn attached(&self) -> Vec<&str> {
        let linked = self.ifaces.iter().filter(|(_, i)| i.link.is_some());
        linked.map(|(n, _)| n.as_str()).collect()
    }

    /// Unpins every link (detaching the program) and the program.
    pub fn detach(mut self, xdp: &mut Xdp) {
        for iface in self.ifaces.values_mut() {
            unpin(iface);
        }
        if let Err(e) = xdp.unpin() {
            log::warn!("cannot unpin the program: {e}");
        }
    }
}

/// Unpins and drops the interface's link: the last reference, so it detaches.
fn unpin(iface: &mut Iface) {
    if let Some(link) = iface.link.take()
        && let Err(e) = link.unpin()
    {
        log::warn!("cannot unpin a link: {e}");
    }
    iface.ifindex = 0;
}

/// The index of the interface the link pinned at `path` is on; 0 once that
/// interface is gone (the kernel's fdinfo for XDP links says so).
fn link_ifindex(path: &Path) -> Result<u32> {
    let fd = obj_get(path)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
        .with_context(|| format!("cannot read the link pinned at {}", path.display()))?;
    let index = info
        .lines()
        .find_map(|l| l.strip_prefix("ifindex:"))
        .and_then(|v| v.trim().parse().ok());
    match index {
        Some(index) => Ok(index),
        None => bail!("{} is not an XDP link", path.display()),
    }
}

/// BPF_OBJ_GET: a file descriptor for the object pinned at `path` (aya gives pinned
/// links no public descriptor).
fn obj_get(path: &Path) -> Result<OwnedFd> {
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
    // SAFETY: the attribute struct outlives the call and the path it points to too.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot open {}", path.display()));
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
