//! bpf(2) itself, for the few commands aya does not offer where xknock needs them:
//! BPF_OBJ_GET for pinned links, BPF_LINK_UPDATE, BPF_MAP_LOOKUP_AND_DELETE_ELEM.

/// bpf(2) with command `cmd` and its attribute struct: the result, or the error.
///
/// # Safety
///
/// `attr` must have the kernel's layout for `cmd`, and every pointer and descriptor
/// in it must be valid for the call.
pub unsafe fn call<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i64> {
    // SAFETY: as the caller promises; the kernel reads size_of::<T>() bytes of attr.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
