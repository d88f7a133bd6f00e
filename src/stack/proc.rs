//! What the kernel says about a thread of this process (`/proc/self/task`).

/// Whether the thread is running or runnable (`R` in
/// `/proc/self/task/TID/stat`), rather than waiting in the kernel (a sleep,
/// a lock, blocking I/O). `None` when it cannot be read (not Linux, or the
/// thread is gone).
#[cfg(target_os = "linux")]
pub(crate) fn on_cpu(tid: i64) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    Some(state == 'R')
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn on_cpu(_tid: i64) -> Option<bool> {
    None
}
