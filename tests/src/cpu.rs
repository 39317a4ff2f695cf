//! Pinning the calling thread to one CPU, for tests (and the benchmark) whose
//! per-CPU state must all land on the same CPU.

/// Pins this thread to `cpu`; returns the CPUs it could use before.
pub fn pin(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: zeroed cpu_set_t values (valid: no CPUs) passed by pointer with their size.
    let (old, ok) = unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut old);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        (
            old,
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
        )
    };
    assert_eq!(ok, 0, "pin to CPU {cpu}: {}", std::io::Error::last_os_error());
    old
}

/// Gives this thread back the CPUs `pin` took from it.
pub fn unpin(cpus: &libc::cpu_set_t) {
    // SAFETY: a set sched_getaffinity filled, passed with its size.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), cpus) };
}
