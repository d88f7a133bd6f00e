//! The state of the watched process as data: what `/health` serves.

use std::collections::BTreeMap;

use serde::Serialize;

use super::cause::{CpuAccount, StallCause};

/// Overall verdict of a [`Health`] snapshot. Ordered by severity:
/// `Healthy < Degraded < Stalled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Nothing needs attention.
    #[default]
    Healthy,
    /// Not stalled, but something needs a look; [`Health::issues`] says what.
    Degraded,
    /// At least one runtime worker is stalled right now.
    Stalled,
}

impl Status {
    /// The status as it appears in JSON: `"healthy"`, `"degraded"` or `"stalled"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Stalled => "stalled",
        }
    }
}

/// A snapshot of everything loopwatch knows, refreshed by the watchdog thread
/// at every check. Serializes to the JSON served at `/health`.
///
/// ```
/// # fn main() -> Result<(), loopwatch::Error> {
/// let watchdog = loopwatch::Watchdog::builder().start()?;
/// let health = watchdog.health();
/// assert_eq!(health.status, loopwatch::Status::Healthy);
/// println!("{}", serde_json::to_string_pretty(&health).unwrap());
/// # watchdog.shutdown();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Default)]
#[non_exhaustive]
pub struct Health {
    /// `"stalled"` while any worker is stalled, `"degraded"` when something
    /// needs a look, `"healthy"` otherwise.
    pub status: Status,
    /// One line per problem, for people.
    pub issues: Vec<String>,
    /// Every watched runtime.
    pub runtimes: Vec<RuntimeHealth>,
    /// Outcomes of tasks spawned through loopwatch.
    pub tasks: TaskCounts,
    /// The oldest hung tasks (alive, not polled for the hung-task threshold), at most five.
    pub hung_tasks: Vec<HungTask>,
    /// Instrumented calls, by name.
    pub calls: BTreeMap<String, CallCounts>,
    /// The process's resources.
    pub process: ProcessHealth,
    /// The last reported stalls, newest first, with the stuck thread's stack
    /// where it was taken (see [`WatchdogBuilder::recent_stalls`](crate::WatchdogBuilder::recent_stalls)).
    pub recent_stalls: Vec<RecentStall>,
}

/// A stall reported recently: ongoing or ended.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[non_exhaustive]
pub struct RecentStall {
    /// The runtime's name.
    pub runtime: String,
    /// The worker's index, when known.
    pub worker: Option<usize>,
    /// The task, when instrumented.
    pub task: Option<String>,
    /// The stuck thread's name, when known.
    pub thread: Option<String>,
    /// How long it was stuck: so far, or in all once it `ended`.
    pub stalled_for_seconds: f64,
    /// Whether the stall is over.
    pub ended: bool,
    /// Whether the thread was on a CPU when last looked at.
    pub cpu_bound: Option<bool>,
    /// The first frame of application code in the stack, when known
    /// (see [`StallReport::culprit`](crate::StallReport::culprit)).
    pub culprit: Option<String>,
    /// The stuck thread's stack at the last report.
    pub backtrace: Option<String>,
    /// Whether that stack is complete (see
    /// [`StallReport::stack_complete`](crate::StallReport::stack_complete)).
    pub stack_complete: Option<bool>,
    /// How that stack was taken (see
    /// [`StallReport::stack_method`](crate::StallReport::stack_method)).
    pub stack_method: Option<String>,
    /// Why there is no stack, when there is none (see
    /// [`StallReport::stack_missing`](crate::StallReport::stack_missing)).
    pub stack_missing: Option<String>,
    /// Why the stall could not be confirmed, when it could not (see
    /// [`StallReport::unconfirmed`](crate::StallReport::unconfirmed)).
    pub unconfirmed: Option<String>,
    /// The `tracing` spans it was in, outermost first (see
    /// [`StallReport::spans`](crate::StallReport::spans)).
    pub spans: Vec<String>,
    /// Why it was stuck, as of its last report (see
    /// [`StallReport::cause`](crate::StallReport::cause)).
    pub cause: StallCause,
    /// What its thread did with its time, as of its last report (see
    /// [`StallReport::cpu`](crate::StallReport::cpu)).
    pub cpu: Option<CpuAccount>,
}

impl RecentStall {
    /// A stall as of its report: every field but `ended` is the report's.
    pub(crate) fn of_report(report: &super::report::StallReport) -> Self {
        RecentStall {
            runtime: report.runtime.clone(),
            worker: report.worker,
            task: report.task.clone(),
            thread: report.thread.clone(),
            stalled_for_seconds: report.stalled_for.as_secs_f64(),
            ended: false,
            cpu_bound: report.cpu_bound,
            culprit: report.culprit.clone(),
            backtrace: report.backtrace.clone(),
            stack_complete: report.stack_complete,
            stack_method: report.stack_method.map(str::to_owned),
            stack_missing: report.stack_missing.clone(),
            unconfirmed: report.unconfirmed.clone(),
            spans: report.spans.clone(),
            cause: report.cause,
            cpu: report.cpu,
        }
    }
}

/// One watched runtime.
#[derive(Debug, Clone, Serialize, Default)]
#[non_exhaustive]
pub struct RuntimeHealth {
    /// The name given to [`Watchdog::watch_runtime`](crate::Watchdog::watch_runtime).
    pub name: String,
    /// `"multi_thread"` or `"current_thread"`.
    pub flavor: String,
    /// Number of worker threads.
    pub workers: usize,
    /// Seconds since the runtime's heartbeat task last ran.
    pub heartbeat_age_seconds: f64,
    /// How late the heartbeat task ran the last time it ran (scheduling delay), in seconds.
    pub heartbeat_lag_seconds: f64,
    /// Stalls flagged on this runtime since it was watched.
    pub stalls_total: u64,
    /// Length of the last stall that ended, in seconds.
    pub last_stall_seconds: Option<f64>,
    /// Workers stalled right now.
    pub stalled_workers: Vec<StalledWorker>,
}

/// A worker stalled right now.
#[derive(Debug, Clone, Serialize, Default)]
#[non_exhaustive]
pub struct StalledWorker {
    /// The worker's index, when known.
    pub worker: Option<usize>,
    /// How long it has been stuck in one poll, in seconds.
    pub stalled_for_seconds: f64,
    /// The task it is stuck in, when the task is instrumented.
    pub task: Option<String>,
    /// The stuck thread's name, when known.
    pub thread: Option<String>,
    /// The first frame of application code in its stack, once a report
    /// has taken the stack (see [`StallReport::culprit`](crate::StallReport::culprit)).
    pub culprit: Option<String>,
    /// The `tracing` spans it is in, outermost first, once a report has
    /// read them (see [`StallReport::spans`](crate::StallReport::spans)).
    pub spans: Vec<String>,
    /// Why the stall could not be confirmed, when it could not (see
    /// [`StallReport::unconfirmed`](crate::StallReport::unconfirmed)).
    pub unconfirmed: Option<String>,
    /// Why it is stuck, as of its last report (see
    /// [`StallReport::cause`](crate::StallReport::cause)).
    pub cause: StallCause,
    /// What its thread did with its time, as of its last report (see
    /// [`StallReport::cpu`](crate::StallReport::cpu)).
    pub cpu: Option<CpuAccount>,
}

/// Outcomes of tasks spawned through loopwatch.
///
/// `spawned = completed + failed + panicked + cancelled + alive`; `hung` counts
/// alive tasks not polled for the hung-task threshold.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
#[non_exhaustive]
#[allow(missing_docs)]
pub struct TaskCounts {
    pub spawned: u64,
    pub completed: u64,
    pub failed: u64,
    pub panicked: u64,
    pub cancelled: u64,
    pub alive: u64,
    pub hung: u64,
    pub slow_polls: u64,
}

/// A live task not polled for the hung-task threshold (see
/// [`TaskInfo`](crate::TaskInfo) for the whole of what is known of it).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[non_exhaustive]
pub struct HungTask {
    /// The task's name.
    pub task: String,
    /// Seconds since its last poll ended (or it was spawned, if never polled).
    pub idle_seconds: f64,
    /// Tokio's id of the task, once polled.
    pub id: Option<u64>,
    /// Where it was spawned: `file:line`.
    pub spawned_at: String,
    /// Its `tracing` spans, outermost first, down to where it waits (see
    /// [`TaskInfo::spans`](crate::TaskInfo::spans)).
    pub spans: Vec<String>,
}

/// Counts for one instrumented call name.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallCounts {
    /// Calls made.
    pub calls: u64,
    /// Calls that blocked an async worker thread for the blocking threshold or longer.
    pub blocking: u64,
    /// Calls that took the slow-call threshold or longer.
    pub slow: u64,
    /// Calls that returned `Err` or panicked.
    pub failed: u64,
}

/// Resources of the process.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
#[non_exhaustive]
pub struct ProcessHealth {
    /// Resident memory.
    pub resident_memory_bytes: u64,
    /// CPU time used, user and system.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
    /// The CPU limit of the process's cgroup in cores (quota / period),
    /// where one is set (the tightest of its cgroup and their ancestors).
    pub cpu_limit_cores: Option<f64>,
    /// How long that CPU limit held the cgroup's threads back, in all.
    pub cpu_throttled_seconds: Option<f64>,
    /// Enforcement periods (usually 100 ms) in which it held them back.
    pub cpu_throttled_periods: Option<u64>,
    /// The memory limit of the process's cgroup, where one is set.
    pub memory_limit_bytes: Option<u64>,
    /// The cgroup's memory in use that cannot be dropped on demand (use
    /// minus inactive file pages): what the OOM killer goes by. Within 10 %
    /// of the limit, health is `degraded`.
    pub memory_working_set_bytes: Option<u64>,
    /// Pauses of the whole process seen (SIGSTOP, a frozen cgroup, a paused
    /// VM): no thread of it ran. Never counted as stalls.
    pub pauses: u64,
    /// Their time in all.
    pub paused_seconds: f64,
    /// How long the last pause was.
    pub last_pause_seconds: Option<f64>,
    /// How long ago it ended.
    pub last_pause_ago_seconds: Option<f64>,
}
