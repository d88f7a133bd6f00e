//! The name of every series loopwatch emits, for dashboards, alerts and
//! tests that should not repeat string literals.
//!
//! Counters end in `_total`; units are in the name. Per-name series carry a
//! `task` or `call` label (bounded by [`MAX_NAMES`](crate::MAX_NAMES)), the
//! others a `runtime` label (the name given to
//! [`watch_runtime`](crate::Watchdog::watch_runtime)), except where said.
//!
//! Counters and gauges are recorded through the
//! [`metrics`](https://docs.rs/metrics) facade by the watchdog thread. The
//! histograms ([`POLL_DURATION_SECONDS`], [`CALL_DURATION_SECONDS`],
//! [`STALL_DURATION_SECONDS`], [`HEARTBEAT_LAG_SECONDS`]) are aggregated
//! where they are recorded (fixed buckets, exact count and sum, so memory
//! does not wait for a scrape) and, like the runtime and process series,
//! rendered by the [`Exporter`](crate::Exporter) itself.
//!
//! ```
//! assert_eq!(loopwatch::metric_names::STALLS_TOTAL, "loopwatch_stalls_total");
//! assert!(loopwatch::metric_names::ALL.contains(&"process_cpu_seconds_total"));
//! ```

/// Stalls flagged (counter, `runtime`).
pub const STALLS_TOTAL: &str = "loopwatch_stalls_total";
/// Workers stalled now (gauge, `runtime`).
pub const STALLED_WORKERS: &str = "loopwatch_stalled_workers";
/// Length of each stall, observed when it ends (histogram, `runtime`).
pub const STALL_DURATION_SECONDS: &str = "loopwatch_stall_duration_seconds";
/// How late the heartbeat task ran: scheduling delay (histogram, `runtime`).
pub const HEARTBEAT_LAG_SECONDS: &str = "loopwatch_heartbeat_lag_seconds";
/// Unix time of the last heartbeat (gauge, `runtime`).
pub const HEARTBEAT_TIMESTAMP_SECONDS: &str = "loopwatch_heartbeat_timestamp_seconds";
/// Stall reports held back by the rate limit (counter, no label).
pub const REPORTS_SUPPRESSED_TOTAL: &str = "loopwatch_reports_suppressed_total";
/// Stalls whose stuck thread was on a CPU when first reported: a CPU hog
/// rather than a blocking call (counter, `runtime`).
pub const CPU_BOUND_STALLS_TOTAL: &str = "loopwatch_cpu_bound_stalls_total";
/// Stalls by why the worker is stuck, counted at their first report
/// (counter, `runtime`, `cause`: `blocked`, `busy`, `starved`, `unknown`;
/// see [`StallCause`](crate::StallCause)).
pub const STALLS_BY_CAUSE_TOTAL: &str = "loopwatch_stalls_by_cause_total";
/// Pauses of the whole process seen (SIGSTOP, a frozen cgroup, a paused
/// VM), never counted as stalls (counter, no label).
pub const PROCESS_PAUSES_TOTAL: &str = "loopwatch_process_pauses_total";
/// Time the whole process was paused (counter, no label).
pub const PROCESS_PAUSED_SECONDS_TOTAL: &str = "loopwatch_process_paused_seconds_total";
/// The CPU limit of the process's cgroup in cores, where one is set
/// (gauge, no label).
pub const CGROUP_CPU_LIMIT_CORES: &str = "loopwatch_cgroup_cpu_limit_cores";
/// Enforcement periods of the cgroup's CPU limit (counter, no label).
pub const CGROUP_CPU_PERIODS_TOTAL: &str = "loopwatch_cgroup_cpu_periods_total";
/// Periods in which the CPU limit held the cgroup back (counter, no label).
pub const CGROUP_CPU_THROTTLED_PERIODS_TOTAL: &str = "loopwatch_cgroup_cpu_throttled_periods_total";
/// Time the CPU limit held the cgroup's threads back (counter, no label).
pub const CGROUP_CPU_THROTTLED_SECONDS_TOTAL: &str = "loopwatch_cgroup_cpu_throttled_seconds_total";
/// The memory limit of the process's cgroup, where one is set (gauge, no
/// label).
pub const CGROUP_MEMORY_LIMIT_BYTES: &str = "loopwatch_cgroup_memory_limit_bytes";
/// The cgroup's memory in use that cannot be dropped on demand (use minus
/// inactive file pages), what the OOM killer goes by (gauge, no label).
pub const CGROUP_MEMORY_WORKING_SET_BYTES: &str = "loopwatch_cgroup_memory_working_set_bytes";
/// Panics caught in the `on_stall` callback (counter, no label).
pub const CALLBACK_PANICS_TOTAL: &str = "loopwatch_callback_panics_total";
/// Stall reports not given to the `on_stall` callback because it was too
/// far behind (counter, no label).
pub const CALLBACK_REPORTS_DROPPED_TOTAL: &str = "loopwatch_callback_reports_dropped_total";
/// Connections the exporter closed without an answer (counter, `reason`:
/// `evicted`, the oldest connection without a whole request, to make room
/// for a new one; `full`, no room; `timeout`, no whole request in time).
pub const EXPORTER_CONNECTIONS_DROPPED_TOTAL: &str = "loopwatch_exporter_connections_dropped_total";

/// Tasks spawned through loopwatch (counter, `task`).
pub const TASKS_SPAWNED_TOTAL: &str = "loopwatch_tasks_spawned_total";
/// Tasks that completed, an `Ok` for fallible tasks (counter, `task`).
pub const TASKS_COMPLETED_TOTAL: &str = "loopwatch_tasks_completed_total";
/// Tasks that failed (counter, `task`, `reason` = `error` or `panic`).
pub const TASKS_FAILED_TOTAL: &str = "loopwatch_tasks_failed_total";
/// Tasks dropped or aborted before completing (counter, `task`).
pub const TASKS_CANCELLED_TOTAL: &str = "loopwatch_tasks_cancelled_total";
/// Tasks alive now (gauge, `task`).
pub const TASKS_ALIVE: &str = "loopwatch_tasks_alive";
/// Alive tasks not polled for the hung-task threshold (gauge, `task`).
pub const TASKS_HUNG: &str = "loopwatch_tasks_hung";
/// Polls that took the blocking threshold or longer (counter, `task`).
pub const SLOW_POLLS_TOTAL: &str = "loopwatch_slow_polls_total";
/// Poll durations of instrumented tasks and futures (histogram, `task`).
pub const POLL_DURATION_SECONDS: &str = "loopwatch_poll_duration_seconds";
/// Instrumented calls (counter, `call`, `outcome` = `ok`, `error` or `panic`).
pub const CALLS_TOTAL: &str = "loopwatch_calls_total";
/// Sync calls that ran the blocking threshold or longer on an async worker
/// thread (counter, `call`).
pub const BLOCKING_CALLS_TOTAL: &str = "loopwatch_blocking_calls_total";
/// Calls that took the slow-call threshold or longer (counter, `call`).
pub const SLOW_CALLS_TOTAL: &str = "loopwatch_slow_calls_total";
/// Durations of instrumented calls (histogram, `call`).
pub const CALL_DURATION_SECONDS: &str = "loopwatch_call_duration_seconds";

/// Worker threads of a watched runtime (gauge, `runtime`).
pub const RUNTIME_WORKERS: &str = "loopwatch_runtime_workers";
/// Tasks alive in a watched runtime (gauge, `runtime`).
pub const RUNTIME_ALIVE_TASKS: &str = "loopwatch_runtime_alive_tasks";
/// Tasks waiting in a watched runtime's global queue (gauge, `runtime`).
pub const RUNTIME_GLOBAL_QUEUE_DEPTH: &str = "loopwatch_runtime_global_queue_depth";
/// Time the runtime's workers spent busy, summed over workers (counter, `runtime`).
pub const RUNTIME_BUSY_SECONDS_TOTAL: &str = "loopwatch_runtime_busy_seconds_total";
/// Times the runtime's workers parked, summed over workers (counter, `runtime`).
pub const RUNTIME_PARKS_TOTAL: &str = "loopwatch_runtime_parks_total";
/// Task polls, summed over workers; `--cfg tokio_unstable` only (counter, `runtime`).
pub const RUNTIME_POLLS_TOTAL: &str = "loopwatch_runtime_polls_total";
/// Tasks stolen between workers; `--cfg tokio_unstable` only (counter, `runtime`).
pub const RUNTIME_STEALS_TOTAL: &str = "loopwatch_runtime_steals_total";
/// Times a worker's local queue overflowed; `--cfg tokio_unstable` only (counter, `runtime`).
pub const RUNTIME_OVERFLOWS_TOTAL: &str = "loopwatch_runtime_overflows_total";
/// Tasks spawned on the runtime; `--cfg tokio_unstable` only (counter, `runtime`).
pub const RUNTIME_SPAWNED_TASKS_TOTAL: &str = "loopwatch_runtime_spawned_tasks_total";
/// Times tasks were forced to yield by the coop budget; `--cfg tokio_unstable`
/// only (counter, `runtime`).
pub const RUNTIME_BUDGET_FORCED_YIELDS_TOTAL: &str = "loopwatch_runtime_budget_forced_yields_total";
/// Threads of the runtime's blocking pool; `--cfg tokio_unstable` only (gauge, `runtime`).
pub const RUNTIME_BLOCKING_THREADS: &str = "loopwatch_runtime_blocking_threads";

/// User and system CPU time of the process, in seconds (counter, no label).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Resident memory of the process (gauge, no label).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory of the process (gauge, no label).
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Open file descriptors (gauge, no label).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The process's limit of open file descriptors (gauge, no label).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Threads of the process (gauge, no label).
pub const PROCESS_THREADS: &str = "process_threads";
/// Start time of the process, unix seconds (gauge, no label).
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";

/// Every name above.
pub const ALL: &[&str] = &[
    STALLS_TOTAL,
    STALLED_WORKERS,
    STALL_DURATION_SECONDS,
    HEARTBEAT_LAG_SECONDS,
    HEARTBEAT_TIMESTAMP_SECONDS,
    REPORTS_SUPPRESSED_TOTAL,
    CPU_BOUND_STALLS_TOTAL,
    STALLS_BY_CAUSE_TOTAL,
    PROCESS_PAUSES_TOTAL,
    PROCESS_PAUSED_SECONDS_TOTAL,
    CGROUP_CPU_LIMIT_CORES,
    CGROUP_CPU_PERIODS_TOTAL,
    CGROUP_CPU_THROTTLED_PERIODS_TOTAL,
    CGROUP_CPU_THROTTLED_SECONDS_TOTAL,
    CGROUP_MEMORY_LIMIT_BYTES,
    CGROUP_MEMORY_WORKING_SET_BYTES,
    CALLBACK_PANICS_TOTAL,
    CALLBACK_REPORTS_DROPPED_TOTAL,
    EXPORTER_CONNECTIONS_DROPPED_TOTAL,
    TASKS_SPAWNED_TOTAL,
    TASKS_COMPLETED_TOTAL,
    TASKS_FAILED_TOTAL,
    TASKS_CANCELLED_TOTAL,
    TASKS_ALIVE,
    TASKS_HUNG,
    SLOW_POLLS_TOTAL,
    POLL_DURATION_SECONDS,
    CALLS_TOTAL,
    BLOCKING_CALLS_TOTAL,
    SLOW_CALLS_TOTAL,
    CALL_DURATION_SECONDS,
    RUNTIME_WORKERS,
    RUNTIME_ALIVE_TASKS,
    RUNTIME_GLOBAL_QUEUE_DEPTH,
    RUNTIME_BUSY_SECONDS_TOTAL,
    RUNTIME_PARKS_TOTAL,
    RUNTIME_POLLS_TOTAL,
    RUNTIME_STEALS_TOTAL,
    RUNTIME_OVERFLOWS_TOTAL,
    RUNTIME_SPAWNED_TASKS_TOTAL,
    RUNTIME_BUDGET_FORCED_YIELDS_TOTAL,
    RUNTIME_BLOCKING_THREADS,
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_THREADS,
    PROCESS_START_TIME_SECONDS,
];

/// What kind of series a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The word of the text format's `# TYPE` line.
    #[allow(dead_code)]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Who records a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordedBy {
    /// The watchdog (and the exporter's dropped connections), through the
    /// `metrics` facade, in counts.
    Facade,
    /// The same, in seconds.
    FacadeSeconds,
    /// Rendered by the exporter itself at each scrape (histograms aggregated
    /// where they are recorded, the runtime, process and cgroup figures).
    Scrape,
}

/// One family of series: everything said about it, in one place, for
/// describing it to the recorder and for rendering it.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    #[allow(dead_code)]
    pub(crate) labels: &'static [&'static str],
    pub(crate) recorded_by: RecordedBy,
}

/// Every family, in the order of [`ALL`].
pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: STALLS_TOTAL,
        kind: Kind::Counter,
        help: "Stalls flagged: a worker stuck in one poll for the stall threshold or longer.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: STALLED_WORKERS,
        kind: Kind::Gauge,
        help: "Workers stalled now.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: STALL_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Length of each stall, observed when it ends.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: HEARTBEAT_LAG_SECONDS,
        kind: Kind::Histogram,
        help: "How late the runtime's heartbeat task ran (scheduling delay).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: HEARTBEAT_TIMESTAMP_SECONDS,
        kind: Kind::Gauge,
        help: "Unix time of the runtime's last heartbeat.",
        labels: &["runtime"],
        recorded_by: RecordedBy::FacadeSeconds,
    },
    Family {
        name: REPORTS_SUPPRESSED_TOTAL,
        kind: Kind::Counter,
        help: "Stall reports held back by the per-minute rate limit.",
        labels: &[],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: CPU_BOUND_STALLS_TOTAL,
        kind: Kind::Counter,
        help: "Stalls whose stuck thread was on a CPU when first reported (a CPU hog, not a blocking call).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: STALLS_BY_CAUSE_TOTAL,
        kind: Kind::Counter,
        help: "Stalls by why the worker is stuck, at their first report: blocked (waiting in the kernel), busy (on a CPU), starved (runnable, waiting for a CPU: the CPU limit, other load, steal), unknown.",
        labels: &["runtime", "cause"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: PROCESS_PAUSES_TOTAL,
        kind: Kind::Counter,
        help: "Pauses of the whole process (SIGSTOP, a frozen cgroup, a paused VM), never counted as stalls.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_PAUSED_SECONDS_TOTAL,
        kind: Kind::Counter,
        help: "Time the whole process was paused.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CGROUP_CPU_LIMIT_CORES,
        kind: Kind::Gauge,
        help: "CPU limit of the process's cgroup in cores (quota / period).",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CGROUP_CPU_PERIODS_TOTAL,
        kind: Kind::Counter,
        help: "Enforcement periods of the cgroup's CPU limit.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CGROUP_CPU_THROTTLED_PERIODS_TOTAL,
        kind: Kind::Counter,
        help: "Periods in which the cgroup's CPU limit held its threads back.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CGROUP_CPU_THROTTLED_SECONDS_TOTAL,
        kind: Kind::Counter,
        help: "Time the cgroup's CPU limit held its threads back.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CGROUP_MEMORY_LIMIT_BYTES,
        kind: Kind::Gauge,
        help: "Memory limit of the process's cgroup.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CGROUP_MEMORY_WORKING_SET_BYTES,
        kind: Kind::Gauge,
        help: "Memory of the cgroup in use that cannot be dropped on demand (use minus inactive file pages).",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CALLBACK_PANICS_TOTAL,
        kind: Kind::Counter,
        help: "Panics caught in the on_stall callback.",
        labels: &[],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: CALLBACK_REPORTS_DROPPED_TOTAL,
        kind: Kind::Counter,
        help: "Stall reports not given to the on_stall callback because it was too far behind.",
        labels: &[],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: EXPORTER_CONNECTIONS_DROPPED_TOTAL,
        kind: Kind::Counter,
        help: "Connections the exporter closed without an answer: reason=evicted (the oldest without a request, to make room), full (no room), timeout (no whole request in time).",
        labels: &["reason"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: TASKS_SPAWNED_TOTAL,
        kind: Kind::Counter,
        help: "Tasks spawned through loopwatch.",
        labels: &["task"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: TASKS_COMPLETED_TOTAL,
        kind: Kind::Counter,
        help: "Tasks that completed (Ok for fallible tasks).",
        labels: &["task"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: TASKS_FAILED_TOTAL,
        kind: Kind::Counter,
        help: "Tasks that failed: returned Err (reason=error) or panicked (reason=panic).",
        labels: &["task", "reason"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: TASKS_CANCELLED_TOTAL,
        kind: Kind::Counter,
        help: "Tasks dropped or aborted before completing.",
        labels: &["task"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: TASKS_ALIVE,
        kind: Kind::Gauge,
        help: "Tasks spawned and not ended.",
        labels: &["task"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: TASKS_HUNG,
        kind: Kind::Gauge,
        help: "Alive tasks not polled for the hung-task threshold.",
        labels: &["task"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: SLOW_POLLS_TOTAL,
        kind: Kind::Counter,
        help: "Polls that took the blocking threshold or longer.",
        labels: &["task"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: POLL_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Poll durations of instrumented tasks.",
        labels: &["task"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: CALLS_TOTAL,
        kind: Kind::Counter,
        help: "Instrumented calls, by outcome.",
        labels: &["call", "outcome"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: BLOCKING_CALLS_TOTAL,
        kind: Kind::Counter,
        help: "Sync calls that ran the blocking threshold or longer on an async worker thread.",
        labels: &["call"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: SLOW_CALLS_TOTAL,
        kind: Kind::Counter,
        help: "Calls that took the slow-call threshold or longer.",
        labels: &["call"],
        recorded_by: RecordedBy::Facade,
    },
    Family {
        name: CALL_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Durations of instrumented calls.",
        labels: &["call"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_WORKERS,
        kind: Kind::Gauge,
        help: "Worker threads of the runtime.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_ALIVE_TASKS,
        kind: Kind::Gauge,
        help: "Tasks alive in the runtime.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_GLOBAL_QUEUE_DEPTH,
        kind: Kind::Gauge,
        help: "Tasks waiting in the runtime's global queue.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_BUSY_SECONDS_TOTAL,
        kind: Kind::Counter,
        help: "Time the runtime's workers spent busy, summed over workers.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_PARKS_TOTAL,
        kind: Kind::Counter,
        help: "Times the runtime's workers parked, summed over workers.",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_POLLS_TOTAL,
        kind: Kind::Counter,
        help: "Task polls, summed over workers (tokio_unstable; published by tokio at park and every 61 polls).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_STEALS_TOTAL,
        kind: Kind::Counter,
        help: "Tasks stolen between workers (tokio_unstable).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_OVERFLOWS_TOTAL,
        kind: Kind::Counter,
        help: "Times a worker's local queue overflowed (tokio_unstable).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_SPAWNED_TASKS_TOTAL,
        kind: Kind::Counter,
        help: "Tasks spawned on the runtime (tokio_unstable).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_BUDGET_FORCED_YIELDS_TOTAL,
        kind: Kind::Counter,
        help: "Times tasks were forced to yield by the coop budget (tokio_unstable).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: RUNTIME_BLOCKING_THREADS,
        kind: Kind::Gauge,
        help: "Threads of the runtime's blocking pool (tokio_unstable).",
        labels: &["runtime"],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_CPU_SECONDS_TOTAL,
        kind: Kind::Counter,
        help: "Total user and system CPU time spent in seconds.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_RESIDENT_MEMORY_BYTES,
        kind: Kind::Gauge,
        help: "Resident memory size in bytes.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_VIRTUAL_MEMORY_BYTES,
        kind: Kind::Gauge,
        help: "Virtual memory size in bytes.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_OPEN_FDS,
        kind: Kind::Gauge,
        help: "Number of open file descriptors.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_MAX_FDS,
        kind: Kind::Gauge,
        help: "Maximum number of open file descriptors.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_THREADS,
        kind: Kind::Gauge,
        help: "Number of OS threads in the process.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
    Family {
        name: PROCESS_START_TIME_SECONDS,
        kind: Kind::Gauge,
        help: "Start time of the process since unix epoch in seconds.",
        labels: &[],
        recorded_by: RecordedBy::Scrape,
    },
];

/// The family named `name` (one of [`ALL`]).
#[allow(dead_code)]
pub(crate) fn family(name: &str) -> &'static Family {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| unreachable!("{name} is in FAMILIES"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_one_family_in_the_same_order() {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        assert_eq!(names, ALL);
        for f in FAMILIES {
            assert!(!f.help.is_empty(), "{}", f.name);
            assert_eq!(
                f.name.ends_with("_total"),
                f.kind == Kind::Counter,
                "{}: counters, and only they, end in _total",
                f.name
            );
            assert!(
                !f.help.contains('\n') && !f.help.contains('\\'),
                "{}: a help text is one line",
                f.name
            );
        }
    }
}
