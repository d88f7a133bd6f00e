//! Measurement helpers shared by the measuring programs (Linux; `None` or
//! errors elsewhere).

use std::time::Duration;

/// Resident memory in bytes, after returning freed heap memory to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn resident() -> Result<u64, Box<dyn std::error::Error>> {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("unexpected /proc/self/statm")?
        .parse()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Ok(pages * page)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn resident() -> Result<u64, Box<dyn std::error::Error>> {
    Err("this measurement reads /proc/self/statm (Linux, glibc)".into())
}

/// Starts a new peak of resident memory (Linux: `clear_refs`), for [`peak`].
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory since [`reset_peak`], in bytes (`VmHWM`).
pub fn peak() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Reads a thread's CPU time.
pub type CpuClock = Box<dyn Fn() -> Result<Duration, Box<dyn std::error::Error>>>;

/// A reader of the CPU time of the thread named `comm` (the kernel's 15-byte name).
#[cfg(target_os = "linux")]
pub fn thread_cpu_clock(comm: &str) -> Option<CpuClock> {
    let tid: libc::pid_t = std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))?
        .file_name()
        .to_str()?
        .parse()
        .ok()?;
    // The kernel's CPU clock of one thread: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
    let clock: libc::clockid_t = ((!tid) << 3) | 6;
    Some(Box::new(move || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write to.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }))
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_clock(_comm: &str) -> Option<CpuClock> {
    None
}
