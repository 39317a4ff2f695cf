//! The kernel's clock as seen from userspace, and its conversion to wall time.

use std::time::{Duration, SystemTime};

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall time of a policy-clock reading `ts_ns`, given the policy clock's `now_ns`.
pub fn wall_time(ts_ns: u64, now_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    if ts_ns <= now_ns {
        now - Duration::from_nanos(now_ns - ts_ns)
    } else {
        now + Duration::from_nanos(ts_ns - now_ns)
    }
}

/// A duration as people write it in the config, rounded to whole seconds past 10s.
pub fn human(d: Duration) -> String {
    let d = if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    humantime::format_duration(d).to_string()
}

/// A duration in ns, saturating (the kernel's clock and windows are u64 ns).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A duration in ms, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
