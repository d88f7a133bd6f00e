//! The process's resources, as the watchdog keeps them: the figures
//! `loopwatch_stack::os::process` reads (Linux; zeros elsewhere), the
//! cgroup's, and the pauses seen.

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

/// The process's figures now (zeros where they cannot be read).
pub(crate) fn read() -> ProcessStats {
    match loopwatch_stack::os::process::read() {
        Some(f) => ProcessStats {
            resident_memory_bytes: f.resident_memory_bytes,
            virtual_memory_bytes: f.virtual_memory_bytes,
            cpu_seconds: f.cpu_seconds,
            open_fds: f.open_fds,
            max_fds: f.max_fds,
            threads: f.threads,
            start_time_seconds: f.start_time_seconds,
            ..ProcessStats::default()
        },
        None => ProcessStats::default(),
    }
}
