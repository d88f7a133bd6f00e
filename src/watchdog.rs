//! The watchdog thread's side: everything that runs on `loopwatch-watchdog`,
//! outside every watched runtime, and the handle the application keeps. It
//! reads what the application threads write in [`crate::board`], and the
//! threads themselves through `loopwatch-stack`.
//!
//! - [`builder`]: [`WatchdogBuilder`], the settings and their checks;
//! - [`handle`]: [`Watchdog`], and the state it shares with the thread;
//! - [`check`]: the check loop, a short orchestration of the parts below;
//! - [`runtimes`]: the watched runtimes, their identity and figures;
//! - [`detect`]: stall detection for one runtime (metrics, poll slots, heartbeat);
//! - [`heartbeat`]: the heartbeat task each watched runtime runs;
//! - [`stall`]: the stall state machine (flag, escalate, end, rate limit);
//! - [`evidence`]: the stuck thread's state and stack for a report;
//! - [`cause`]: readings of what the stuck thread did with its time, and
//!   pauses of the whole process (the verdicts, `StallCause` and
//!   `CpuAccount`, are data in `src/model/`);
//! - `cgroup`: the process's cgroup (CPU limit and throttling, memory) and
//!   the machine's steal time, read by `loopwatch_stack::os::cgroup`;
//! - [`threads`]: finding the stuck thread among the process's threads;
//! - [`report`]: where reports ([`StallReport`], in `src/model/`) go (log,
//!   metrics, callback);
//! - [`callback`]: the `on_stall` callback's own thread and bounded queue;
//! - [`recent`]: the last reported stalls;
//! - [`activity`]: task, call and process figures, read on their own schedule;
//! - [`process`]: the process's resources from `/proc`;
//! - [`snapshot`]: the health snapshot, assembled once per check;
//! - [`publish`]: what is recorded through the `metrics` facade;
//! - [`histograms`]: the per-runtime histograms, aggregated where recorded;
//! - [`systemd`]: `WATCHDOG=1` pings and `STATUS=` lines for systemd;
//! - [`abort`]: `abort_after`, the report to stderr and the abort;
//! - `traces`: hung tasks' await traces from tokio's task dumps
//!   (`--cfg tokio_unstable` and the `taskdump` feature).

mod abort;
mod activity;
mod builder;
mod callback;
mod cause;
use crate::stack::os::cgroup;
mod check;
mod detect;
mod evidence;
mod handle;
mod heartbeat;
mod histograms;
mod process;
mod publish;
mod recent;
mod report;
mod runtimes;
mod snapshot;
mod stall;
#[cfg(unix)]
mod systemd;
mod threads;
#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) mod traces;
/// Without tokio's task dumps: no await traces.
#[cfg(not(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) mod traces {
    use std::sync::Arc;

    /// No hung task's id is kept for a trace.
    pub(crate) const MAX_TRACES: usize = 0;

    /// Takes no dump.
    #[derive(Debug, Default)]
    pub(crate) struct AwaitTraces {}

    impl AwaitTraces {
        pub(crate) fn collect(&mut self, _now: u64) {}

        pub(crate) fn tick(
            &mut self,
            _now: u64,
            _runtimes: &[Arc<super::runtimes::RuntimeEntry>],
            _hung: &[u64],
            _heartbeat_ns: u64,
            _every_ns: u64,
        ) {
        }
    }
}

pub use builder::WatchdogBuilder;
pub use cause::{CpuAccount, StallCause, Throttling};
pub use handle::Watchdog;
pub use report::StallReport;

// What the exporter reads.
#[cfg(feature = "exporter")]
pub(crate) use histograms::{snapshot as runtime_histograms, Fixed, RuntimeHistograms};
#[cfg(feature = "exporter")]
pub(crate) use process::ProcessStats;
#[cfg(feature = "exporter")]
pub(crate) use publish::{connection_dropped, describe_all};
#[cfg(feature = "exporter")]
pub(crate) use runtimes::RuntimeSample;
