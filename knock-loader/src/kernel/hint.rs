//! The authorization hint (XK_AUTH_HINT), mapped into this process. Each slot counts
//! the authorizations whose source lands there (`knock_common::auth_hint_slot`); the
//! kernel drops a packet to a protected port without looking up the authorization map
//! when its source's slot is zero. So a slot must never be lower than the truth: count
//! before adding an authorization, uncount after removing one. Too high only costs the
//! kernel a lookup.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Result, bail};
use aya::maps::{Map, MapData};
use knock_common::{AUTH_HINT_MIN_SLOTS, auth_hint_slot, map_names};

pub struct AuthHint {
    slots: NonNull<AtomicU64>,
    len: u32,
    shift: u32,
    _map: MapData,
}

// SAFETY: the mapping is shared memory used only through atomics, and it lives as
// long as the value.
unsafe impl Send for AuthHint {}

/// Slots for an authorization map of `authorized` entries: a power of two, one per
/// four entries and at least AUTH_HINT_MIN_SLOTS (32 KiB at the default limits). Small
/// enough to stay in the CPU's cache under a flood from random sources (a miss there
/// would cost more than the lookup it saves), large enough that a map a few percent
/// full leaves most slots empty.
pub fn slots_for(authorized: u32) -> u32 {
    (authorized / 4).max(AUTH_HINT_MIN_SLOTS).next_power_of_two()
}

impl AuthHint {
    pub fn new(map: Map) -> Result<AuthHint> {
        let name = map_names::AUTH_HINT;
        let Map::Array(data) = map else {
            bail!("map {name} is not an array");
        };
        let info = data.info()?;
        let len = info.max_entries();
        if info.value_size() != 8 || !len.is_power_of_two() || len < 2 {
            bail!("map {name} has an unexpected layout (an older xknock's pins?)");
        }
        let bytes = len as usize * 8;
        // SAFETY: a fresh shared mapping of the map's whole value area; the kernel
        // keeps the memory while it is mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            bail!("cannot map {name} into memory ({err}); it must be created with BPF_F_MMAPABLE");
        }
        let Some(slots) = NonNull::new(ptr.cast()) else {
            bail!("mapping {name} into memory returned a null address");
        };
        Ok(AuthHint {
            slots,
            len,
            shift: 32 - len.trailing_zeros(),
            _map: data,
        })
    }

    /// What the kernel needs to compute slots (`Settings::auth_hint_shift`).
    pub fn shift(&self) -> u32 {
        self.shift
    }

    fn slot(&self, addr: &[u8; 16]) -> &AtomicU64 {
        // Below `len` already (`shift` leaves log2(len) bits); `min` makes it obvious.
        let i = auth_hint_slot(addr, self.shift).min(self.len - 1);
        // SAFETY: in bounds of a mapping that lives as long as `self`.
        unsafe { self.slots.add(i as usize).as_ref() }
    }

    /// Before adding an authorization for `addr`.
    pub fn count(&self, addr: &[u8; 16]) {
        self.slot(addr).fetch_add(1, Ordering::SeqCst);
    }

    /// After removing an authorization for `addr` (never below zero: a slot the
    /// repair below raised may meet a removal it did not count).
    pub fn uncount(&self, addr: &[u8; 16]) {
        let _ = self
            .slot(addr)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Makes sure a live authorization's slot is not zero. Only authorizations added
    /// by a program that did not keep the hint (an older xknock still attached while
    /// this one loads) can find it zero.
    pub fn repair(&self, addr: &[u8; 16]) {
        let _ = self
            .slot(addr)
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn get(&self, addr: &[u8; 16]) -> u64 {
        self.slot(addr).load(Ordering::SeqCst)
    }
}

impl Drop for AuthHint {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len as usize * 8) };
    }
}
