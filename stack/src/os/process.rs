//! The process's figures from `/proc/self` (Linux; `None` elsewhere): memory,
//! CPU time, file descriptors, threads, start time.

/// The process's figures at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Resident memory.
    pub resident_memory_bytes: u64,
    /// Virtual memory.
    pub virtual_memory_bytes: u64,
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The limit of open file descriptors.
    pub max_fds: u64,
    /// Threads.
    pub threads: u64,
    /// Start time, unix seconds.
    pub start_time_seconds: f64,
}

/// The process's figures now; `None` where they cannot be read.
pub fn read() -> Option<Figures> {
    #[cfg(target_os = "linux")]
    {
        read_linux()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The system's boot time (unix seconds), read once.
#[cfg(target_os = "linux")]
static BOOT_TIME: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

#[cfg(target_os = "linux")]
fn read_linux() -> Option<Figures> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `f` starts at proc(5)'s field 3 (state), after pid and comm: field n
    // is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let rss_pages = field(24)?;
    let boot_time = *BOOT_TIME.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    });
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
        let max = limit.rlim_cur as u64;
        max
    } else {
        0
    };
    Some(Figures {
        resident_memory_bytes: rss_pages * page,
        virtual_memory_bytes: vsize,
        cpu_seconds: (utime + stime) as f64 / ticks,
        open_fds,
        max_fds,
        threads,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks,
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_figures_of_this_process() {
        // CPU time grows while this thread burns CPU (in clock ticks, so wait
        // for it rather than for a fixed time).
        let before = read().unwrap().cpu_seconds;
        let start = std::time::Instant::now();
        while read().unwrap().cpu_seconds < before + 0.05 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "CPU time never grew"
            );
            for _ in 0..100_000 {
                std::hint::spin_loop();
            }
        }
        let s = read().unwrap();
        assert!(s.resident_memory_bytes > 1 << 20, "{s:?}");
        assert!(s.virtual_memory_bytes >= s.resident_memory_bytes, "{s:?}");
        assert!(s.open_fds >= 3 && s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 3600.0,
            "{s:?}"
        );
    }
}
