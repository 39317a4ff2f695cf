//! The interfaces `run` filters: one program and one state for all, a pinned link on
//! each. An interface missing at start-up, or deleted and created again, is attached
//! when the kernel announces it (netlink) or at the next poll; down and up again, it
//! keeps its link.
//!
//! Fail closed: an interface is gone only when the kernel says so (ENODEV to a query
//! on a socket opened at start), never because a lookup failed (out of descriptors,
//! say), and a link is unpinned only when the kernel reports it on another interface
//! or detached, or when `run` is told to detach.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{Xdp, links::PinnedLink};
use tokio::io::unix::AsyncFd;

use super::{load as attach, pins::PinDir};
use crate::config::XdpMode;

/// One configured interface: the ifindex its link is on (0: not attached) and the
/// link, held so that detaching can unpin it.
struct Iface {
    ifindex: u32,
    link: Option<PinnedLink>,
    /// The last problem reported, so that a retry every tick does not repeat it.
    reported: Option<String>,
}

impl Iface {
    /// Logs `problem` unless it is the one reported last.
    fn report(&mut self, name: &str, problem: String) {
        if self.reported.as_ref() != Some(&problem) {
            log::error!("{name}: {problem}");
            self.reported = Some(problem);
        }
    }
}

pub struct Interfaces {
    pin_dir: PathBuf,
    mode: XdpMode,
    lookup: Lookup,
    ifaces: BTreeMap<String, Iface>,
}

/// Interface indexes from the kernel through one socket opened at start, so that a
/// lookup needs no new descriptor (`if_nametoindex` opens one per call, and reads a
/// failure to open it as "no such interface").
struct Lookup {
    sock: OwnedFd,
}

impl Lookup {
    fn open() -> Result<Lookup> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot open a socket to look up interfaces");
        }
        // SAFETY: a new descriptor the kernel just gave us.
        Ok(Lookup {
            sock: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The index of interface `name`; `None` only when the kernel says there is no
    /// such interface (ENODEV). Any other failure is an error: nothing is known.
    fn index(&self, name: &str) -> io::Result<Option<u32>> {
        // SAFETY: ifreq is plain data; zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
            return Ok(None);
        }
        for (slot, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = b as libc::c_char;
        }
        // SAFETY: SIOCGIFINDEX reads the name and writes the index into `req`.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODEV) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: the kernel filled the index member.
        let index = unsafe { req.ifr_ifru.ifru_ifindex };
        Ok(u32::try_from(index).ok().filter(|i| *i != 0))
    }
}

impl Interfaces {
    /// Attaches to every named interface that exists (replacing the program behind a
    /// link a crashed `run` left). Fails if one that exists cannot be attached,
    /// leaving every link as it is (each filters, with the old program or the new);
    /// one that does not exist yet is attached by `sync`.
    pub fn attach(xdp: &mut Xdp, pin_dir: &Path, mode: XdpMode, names: &[String]) -> Result<Interfaces> {
        let mut all = Interfaces {
            pin_dir: pin_dir.to_owned(),
            mode,
            lookup: Lookup::open()?,
            ifaces: BTreeMap::new(),
        };
        for name in names {
            all.add(xdp, name)?;
        }
        Ok(all)
    }

    fn add(&mut self, xdp: &mut Xdp, name: &str) -> Result<()> {
        let mut iface = Iface {
            ifindex: 0,
            link: None,
            reported: None,
        };
        match self.lookup.index(name) {
            Ok(Some(index)) => self.link(xdp, name, index, &mut iface)?,
            Ok(None) => {
                log::warn!("{name}: no such interface (yet): it is attached when it appears");
                iface.reported = Some("missing".into());
            }
            Err(e) => iface.report(name, format!("cannot look the interface up ({e}): retrying")),
        }
        self.ifaces.insert(name.to_owned(), iface);
        Ok(())
    }

    /// Attaches to `name` (index `index`), reusing a pinned link only if the kernel
    /// says it is on that interface; a link it reports elsewhere or detached is stale.
    fn link(&self, xdp: &mut Xdp, name: &str, index: u32, iface: &mut Iface) -> Result<()> {
        let pin = PinDir(&self.pin_dir).link(name);
        if pin.exists() {
            let on = link_ifindex(&pin)?;
            if on != index {
                fs::remove_file(&pin)
                    .with_context(|| format!("cannot remove the stale link {}", pin.display()))?;
                log::info!("{name}: the pinned link was on interface index {on}, now gone: replaced");
            }
        }
        let (link, how) = attach::attach_pinned(xdp, &self.pin_dir, name, self.mode)?;
        log::info!("{name}: {how}; pins in {}", self.pin_dir.display());
        iface.ifindex = index;
        iface.link = Some(link);
        iface.reported = None;
        Ok(())
    }

    /// Follows the interfaces: attaches to those that appeared or were created again.
    /// What cannot be looked up or attached now is retried at the next call; problems
    /// are logged, once each.
    pub fn sync(&mut self, xdp: &mut Xdp) {
        let names: Vec<String> = self.ifaces.keys().cloned().collect();
        for name in names {
            let Some(mut iface) = self.ifaces.remove(&name) else {
                continue;
            };
            match self.lookup.index(&name) {
                Err(e) => iface.report(
                    &name,
                    format!("cannot look the interface up ({e}): its filter stays as it is"),
                ),
                Ok(None) if iface.ifindex != 0 => {
                    // The kernel detached the link with the interface; its pin is
                    // cleared when the interface comes back.
                    log::warn!("{name}: the interface is gone; it is attached again when it comes back");
                    iface.ifindex = 0;
                    iface.link = None;
                }
                Ok(None) => {}
                Ok(Some(index)) if index == iface.ifindex => {}
                Ok(Some(index)) => {
                    if let Err(e) = self.link(xdp, &name, index, &mut iface) {
                        iface.report(&name, format!("cannot attach: {e:#}"));
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

/// The kernel's announcements of interfaces appearing, changing or going: a netlink
/// socket on RTMGRP_LINK. What they say is not parsed: any message (or a lost one)
/// means "look again", which `Interfaces::sync` does from the kernel's own answers.
pub struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    pub fn open() -> Result<LinkEvents> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("cannot open a netlink socket");
        }
        // SAFETY: a new descriptor the kernel just gave us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: the address outlives the call, and its size is given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error()).context("cannot subscribe to interface changes");
        }
        // SAFETY: the AsyncFd owns the descriptor and keeps it open while registered.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(io::Error::from)
            .context("cannot watch the netlink socket")?;
        Ok(LinkEvents { fd })
    }

    /// Waits until the kernel announces a change of interfaces, and reads what it
    /// sent (an overrun, ENOBUFS, is a change too).
    pub async fn changed(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: recv writes at most the buffer's length into it.
            let n = unsafe {
                libc::recv(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n >= 0 {
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    guard.clear_ready();
                    return Ok(());
                }
                Some(libc::ENOBUFS | libc::EINTR) => {}
                _ => return Err(e),
            }
        }
    }
}

/// The index of the interface the link pinned at `path` is on; 0 once that
/// interface is gone (the kernel's fdinfo for XDP links says so).
fn link_ifindex(path: &Path) -> Result<u32> {
    let fd = attach::obj_get(path)?;
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
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
