//! The process's resources, read from `/proc/self` (Linux; zeros elsewhere).

use crate::model::health::ProcessHealth;
use crate::watchdog::cgroup::CgroupStats;

/// Everything read about the process at one instant (the watchdog reads it
/// once a second; `Health::process` and the exporter's `process_*` series
/// show that reading).
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
pub(crate) struct ProcessStats {
    pub(crate) resident_memory_bytes: u64,
    pub(crate) virtual_memory_bytes: u64,
    pub(crate) cpu_seconds: f64,
    pub(crate) open_fds: u64,
    pub(crate) max_fds: u64,
    pub(crate) threads: u64,
    pub(crate) start_time_seconds: f64,
    /// The process's cgroup (CPU limit and throttling, memory).
    pub(crate) cgroup: CgroupStats,
    /// Pauses of the whole process seen, and their time in all (ns).
    pub(crate) pauses: u64,
    pub(crate) paused_ns: u64,
    /// The last pause: when it ended and how long it was (ns).
    pub(crate) last_pause: Option<(u64, u64)>,
}

impl ProcessStats {
    pub(crate) fn health(&self, now: u64) -> ProcessHealth {
        let cg = &self.cgroup;
        ProcessHealth {
            resident_memory_bytes: self.resident_memory_bytes,
            cpu_seconds: self.cpu_seconds,
            open_fds: self.open_fds,
            threads: self.threads,
            cpu_limit_cores: cg.cpu_limit_cores,
            cpu_throttled_seconds: cg.cpu.map(|c| c.throttled_ns as f64 / 1e9),
            cpu_throttled_periods: cg.cpu.map(|c| c.throttled_periods),
            memory_limit_bytes: cg.memory_limit_bytes,
            memory_working_set_bytes: cg.memory_working_set_bytes,
            pauses: self.pauses,
            paused_seconds: self.paused_ns as f64 / 1e9,
            last_pause_seconds: self.last_pause.map(|(_, len)| len as f64 / 1e9),
            last_pause_ago_seconds: self
                .last_pause
                .map(|(end, _)| now.saturating_sub(end) as f64 / 1e9),
        }
    }
}

#[cfg(target_os = "linux")]
pub(crate) fn read() -> ProcessStats {
    read_linux().unwrap_or_default()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read() -> ProcessStats {
    ProcessStats::default()
}

/// The system's boot time (unix seconds), read once.
#[cfg(target_os = "linux")]
static BOOT_TIME: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

#[cfg(target_os = "linux")]
fn read_linux() -> Option<ProcessStats> {
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
    Some(ProcessStats {
        resident_memory_bytes: rss_pages * page,
        virtual_memory_bytes: vsize,
        cpu_seconds: (utime + stime) as f64 / ticks,
        open_fds,
        max_fds,
        threads,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks,
        ..ProcessStats::default()
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_plausible_figures_of_this_process() {
        // CPU time grows while this thread burns CPU (in clock ticks, so wait
        // for it rather than for a fixed time).
        let before = read().cpu_seconds;
        let start = std::time::Instant::now();
        while read().cpu_seconds < before + 0.05 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "CPU time never grew"
            );
            for _ in 0..100_000 {
                std::hint::spin_loop();
            }
        }
        let s = read();
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
