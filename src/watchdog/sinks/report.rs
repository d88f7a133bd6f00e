//! Stall reports: what a report says ([`StallReport`]) and where it goes
//! ([`Reporter`]: the `tracing` log, the metrics, the `on_stall` callback).

use std::fmt;
use std::time::Duration;

use crate::clock::unix_seconds;
pub use crate::model::report::StallReport;
use crate::watchdog::callback::CallbackQueue;
use crate::watchdog::publish;
use crate::watchdog::runtimes::{RuntimeRef, Watched};

/// Sends stall reports and stall ends to the log, the metrics and the
/// callback.
pub(crate) struct Reporter {
    callback: Option<CallbackQueue>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

impl Reporter {
    pub(crate) fn new(callback: Option<CallbackQueue>) -> Self {
        Reporter { callback }
    }

    /// A stall flagged now (`escalation == 0`) or escalated.
    /// Counts a stall flagged now, before its evidence is gathered.
    pub(crate) fn stall_flagged(&self, report: &StallReport) {
        publish::stall_flagged(&report.runtime);
    }

    pub(crate) fn report(&self, report: &StallReport) {
        // The stall itself was counted by `stall_flagged`; whether it is on
        // a CPU is known from its evidence.
        if report.escalation == 0 && report.cpu_bound == Some(true) {
            publish::stall_on_cpu(&report.runtime);
        }
        // One log line per report: the first with the stack (or why there is
        // none), an escalation with whether the stack moved.
        let (what, tail) = if report.escalation == 0 {
            ("stall", report.stack_text())
        } else {
            let tail = match report.stack_moved {
                Some(false) => "; stuck at the same place",
                Some(true) => "; the stack moved since the last report",
                None => "",
            };
            ("stall continues", tail.to_owned())
        };
        tracing::warn!(
            target: "loopwatch",
            runtime = %report.runtime,
            worker = report.worker,
            stalled_for_seconds = report.stalled_for.as_secs_f64(),
            task = report.task.as_deref(),
            thread = report.thread.as_deref(),
            escalation = report.escalation,
            cpu_bound = report.cpu_bound,
            cause = report.cause.as_str(),
            culprit = report.culprit.as_deref(),
            spans = ?report.spans,
            stack_moved = report.stack_moved,
            "{what}: {report}{tail}"
        );
        // Handed to the callback's own thread: a slow callback never holds
        // up the next check.
        if let Some(callback) = &self.callback {
            callback.send(report);
        }
    }

    /// A report held back from the log and the callback by the rate limit
    /// (the stall itself was counted by `stall_flagged`).
    pub(crate) fn suppressed(&self) {
        publish::report_suppressed();
    }

    /// A stall that ended.
    pub(crate) fn ended(
        &self,
        runtime: &RuntimeRef,
        worker: Option<usize>,
        task: Option<&str>,
        duration: Duration,
        reported: bool,
    ) {
        publish::stall_ended(&runtime.name, duration);
        if reported {
            tracing::info!(
                target: "loopwatch",
                runtime = %runtime.name,
                worker,
                task,
                duration_seconds = duration.as_secs_f64(),
                "stall ended after {:.1} s",
                duration.as_secs_f64()
            );
        }
    }

    /// A runtime shut down.
    pub(crate) fn runtime_gone(&self, runtime: &RuntimeRef) {
        publish::runtime_gone(&runtime.name);
        tracing::debug!(target: "loopwatch", runtime = %runtime.name, "runtime shut down; no longer watched");
    }

    /// A stall whose runtime shut down before it ended.
    pub(crate) fn stall_abandoned(&self, runtime: &RuntimeRef, reported: bool) {
        if reported {
            tracing::info!(target: "loopwatch", runtime = %runtime.name, "runtime shut down during a stall; stall no longer watched");
        }
    }

    /// Publishes a runtime's heartbeat and gauges: the gauges at once when
    /// its count of stalled workers changes, else every second.
    pub(crate) fn runtime_gauges(&self, watched: &mut Watched, stalled: usize, now: u64) {
        let (monitor, history) = (&watched.monitor, &mut watched.history);
        let name = &monitor.entry.name;
        if monitor.beat.beats > history.published_beats {
            history.published_beats = monitor.beat.beats;
            publish::heartbeat(name, monitor.beat.last_lag);
        }
        if history.last_stalled_gauge != Some(stalled)
            || now.saturating_sub(history.last_gauges) >= 1_000_000_000
        {
            history.last_stalled_gauge = Some(stalled);
            history.last_gauges = now;
            let age = monitor.heartbeat_age_ns(now);
            publish::runtime_gauges(name, stalled, unix_seconds() - age as f64 / 1e9);
        }
    }
}
