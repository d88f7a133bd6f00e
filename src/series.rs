//! Metric names and how the watchdog records them through the `metrics` facade.
//!
//! Only the watchdog thread records here, a few times per check: handles are
//! looked up at each call, so a recorder installed after the watchdog started
//! (for example by the exporter) receives everything from then on.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

/// Stalls flagged, by runtime.
pub const STALLS_TOTAL: &str = "loopwatch_stalls_total";
/// Workers stalled now, by runtime.
pub const STALLED_WORKERS: &str = "loopwatch_stalled_workers";
/// Length of each stall, observed when it ends, by runtime.
pub const STALL_DURATION_SECONDS: &str = "loopwatch_stall_duration_seconds";
/// How late the heartbeat task ran, by runtime.
pub const HEARTBEAT_LAG_SECONDS: &str = "loopwatch_heartbeat_lag_seconds";
/// Unix time of the last heartbeat, by runtime.
pub const HEARTBEAT_TIMESTAMP_SECONDS: &str = "loopwatch_heartbeat_timestamp_seconds";
/// Stall reports held back by the rate limit.
pub const REPORTS_SUPPRESSED_TOTAL: &str = "loopwatch_reports_suppressed_total";
/// Stalls whose stuck thread was on a CPU when first reported (a CPU hog rather than a blocking call), by runtime.
pub const CPU_BOUND_STALLS_TOTAL: &str = "loopwatch_cpu_bound_stalls_total";
/// Panics caught in the `on_stall` callback.
pub const CALLBACK_PANICS_TOTAL: &str = "loopwatch_callback_panics_total";

/// Describes every series (help text and unit) to the installed recorder.
/// Called when the watchdog starts and again when the exporter installs its
/// recorder; harmless to repeat.
pub(crate) fn describe_all() {
    describe();
    describe_usage();
}

fn describe() {
    describe_counter!(
        STALLS_TOTAL,
        Unit::Count,
        "Stalls flagged: a worker stuck in one poll for the stall threshold or longer."
    );
    describe_counter!(
        CPU_BOUND_STALLS_TOTAL,
        Unit::Count,
        "Stalls whose stuck thread was on a CPU when first reported (a CPU hog, not a blocking call)."
    );
    describe_gauge!(STALLED_WORKERS, Unit::Count, "Workers stalled now.");
    describe_histogram!(
        STALL_DURATION_SECONDS,
        Unit::Seconds,
        "Length of each stall, observed when it ends."
    );
    describe_histogram!(
        HEARTBEAT_LAG_SECONDS,
        Unit::Seconds,
        "How late the runtime's heartbeat task ran (scheduling delay)."
    );
    describe_gauge!(
        HEARTBEAT_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the runtime's last heartbeat."
    );
    describe_counter!(
        REPORTS_SUPPRESSED_TOTAL,
        Unit::Count,
        "Stall reports held back by the per-minute rate limit."
    );
    describe_counter!(
        CALLBACK_PANICS_TOTAL,
        Unit::Count,
        "Panics caught in the on_stall callback."
    );
    // Make the two series exist from the start, without touching their counts.
    counter!(REPORTS_SUPPRESSED_TOTAL).increment(0);
    counter!(CALLBACK_PANICS_TOTAL).increment(0);
}

pub(crate) fn stall_flagged(runtime: &str) {
    counter!(STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(1);
}

pub(crate) fn stall_on_cpu(runtime: &str) {
    counter!(CPU_BOUND_STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(1);
}

pub(crate) fn stall_ended(runtime: &str, duration: Duration) {
    histogram!(STALL_DURATION_SECONDS, "runtime" => runtime.to_owned())
        .record(duration.as_secs_f64());
}

pub(crate) fn heartbeat(runtime: &str, lag_ns: u64) {
    histogram!(HEARTBEAT_LAG_SECONDS, "runtime" => runtime.to_owned()).record(lag_ns as f64 / 1e9);
}

pub(crate) fn runtime_gauges(runtime: &str, stalled: usize, heartbeat_unix: f64) {
    counter!(STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(0);
    gauge!(STALLED_WORKERS, "runtime" => runtime.to_owned()).set(stalled as f64);
    gauge!(HEARTBEAT_TIMESTAMP_SECONDS, "runtime" => runtime.to_owned()).set(heartbeat_unix);
}

pub(crate) fn runtime_gone(runtime: &str) {
    gauge!(STALLED_WORKERS, "runtime" => runtime.to_owned()).set(0.0);
}

pub(crate) fn report_suppressed() {
    counter!(REPORTS_SUPPRESSED_TOTAL).increment(1);
}

pub(crate) fn callback_panicked() {
    counter!(CALLBACK_PANICS_TOTAL).increment(1);
}

/// Tasks spawned through loopwatch, by task name.
pub const TASKS_SPAWNED_TOTAL: &str = "loopwatch_tasks_spawned_total";
/// Tasks that completed (an `Ok` for fallible tasks), by task name.
pub const TASKS_COMPLETED_TOTAL: &str = "loopwatch_tasks_completed_total";
/// Tasks that failed, by task name and reason (`error` or `panic`).
pub const TASKS_FAILED_TOTAL: &str = "loopwatch_tasks_failed_total";
/// Tasks dropped or aborted before completing, by task name.
pub const TASKS_CANCELLED_TOTAL: &str = "loopwatch_tasks_cancelled_total";
/// Tasks alive now, by task name.
pub const TASKS_ALIVE: &str = "loopwatch_tasks_alive";
/// Alive tasks not polled for the hung-task threshold, by task name.
pub const TASKS_HUNG: &str = "loopwatch_tasks_hung";
/// Polls that took the blocking threshold or longer, by task name.
pub const SLOW_POLLS_TOTAL: &str = "loopwatch_slow_polls_total";
/// Poll durations, by task name.
pub const POLL_DURATION_SECONDS: &str = "loopwatch_poll_duration_seconds";
/// Instrumented calls, by call name and outcome (`ok`, `error`, `panic`).
pub const CALLS_TOTAL: &str = "loopwatch_calls_total";
/// Sync calls that ran the blocking threshold or longer on an async worker thread, by call name.
pub const BLOCKING_CALLS_TOTAL: &str = "loopwatch_blocking_calls_total";
/// Calls that took the slow-call threshold or longer, by call name.
pub const SLOW_CALLS_TOTAL: &str = "loopwatch_slow_calls_total";
/// Call durations, by call name.
pub const CALL_DURATION_SECONDS: &str = "loopwatch_call_duration_seconds";

fn describe_usage() {
    describe_counter!(
        TASKS_SPAWNED_TOTAL,
        Unit::Count,
        "Tasks spawned through loopwatch."
    );
    describe_counter!(
        TASKS_COMPLETED_TOTAL,
        Unit::Count,
        "Tasks that completed (Ok for fallible tasks)."
    );
    describe_counter!(
        TASKS_FAILED_TOTAL,
        Unit::Count,
        "Tasks that failed: returned Err (reason=error) or panicked (reason=panic)."
    );
    describe_counter!(
        TASKS_CANCELLED_TOTAL,
        Unit::Count,
        "Tasks dropped or aborted before completing."
    );
    describe_gauge!(TASKS_ALIVE, Unit::Count, "Tasks spawned and not ended.");
    describe_gauge!(
        TASKS_HUNG,
        Unit::Count,
        "Alive tasks not polled for the hung-task threshold."
    );
    describe_counter!(
        SLOW_POLLS_TOTAL,
        Unit::Count,
        "Polls that took the blocking threshold or longer."
    );
    describe_histogram!(
        POLL_DURATION_SECONDS,
        Unit::Seconds,
        "Poll durations of instrumented tasks."
    );
    describe_counter!(CALLS_TOTAL, Unit::Count, "Instrumented calls, by outcome.");
    describe_counter!(
        BLOCKING_CALLS_TOTAL,
        Unit::Count,
        "Sync calls that ran the blocking threshold or longer on an async worker thread."
    );
    describe_counter!(
        SLOW_CALLS_TOTAL,
        Unit::Count,
        "Calls that took the slow-call threshold or longer."
    );
    describe_histogram!(
        CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Durations of instrumented calls."
    );
}

/// Adds the task-count deltas `[spawned, completed, failed, panicked,
/// cancelled, slow_polls]` and sets the gauges.
pub(crate) fn task_counts(task: &'static str, deltas: [u64; 6], alive: u64, hung: u64) {
    let [spawned, completed, failed, panicked, cancelled, slow] = deltas;
    counter!(TASKS_SPAWNED_TOTAL, "task" => task).increment(spawned);
    counter!(TASKS_COMPLETED_TOTAL, "task" => task).increment(completed);
    counter!(TASKS_FAILED_TOTAL, "task" => task, "reason" => "error").increment(failed);
    counter!(TASKS_FAILED_TOTAL, "task" => task, "reason" => "panic").increment(panicked);
    counter!(TASKS_CANCELLED_TOTAL, "task" => task).increment(cancelled);
    counter!(SLOW_POLLS_TOTAL, "task" => task).increment(slow);
    gauge!(TASKS_ALIVE, "task" => task).set(alive as f64);
    gauge!(TASKS_HUNG, "task" => task).set(hung as f64);
}

/// Adds the call-count deltas `[ok, error, panic, blocking, slow]`.
pub(crate) fn call_counts(call: &'static str, deltas: [u64; 5]) {
    let [ok, error, panic, blocking, slow] = deltas;
    counter!(CALLS_TOTAL, "call" => call, "outcome" => "ok").increment(ok);
    counter!(CALLS_TOTAL, "call" => call, "outcome" => "error").increment(error);
    counter!(CALLS_TOTAL, "call" => call, "outcome" => "panic").increment(panic);
    counter!(BLOCKING_CALLS_TOTAL, "call" => call).increment(blocking);
    counter!(SLOW_CALLS_TOTAL, "call" => call).increment(slow);
}

/// Records what a duration histogram gained since `before`, each bucket's
/// count at the bucket's representative value.
pub(crate) fn durations(
    metric: &'static str,
    label: &'static str,
    name: &'static str,
    now: &[u64; crate::names::BUCKETS],
    before: &[u64; crate::names::BUCKETS],
) {
    if now == before {
        return;
    }
    let histogram = histogram!(metric, label => name);
    for (i, (n, b)) in now.iter().zip(before).enumerate() {
        let delta = n.saturating_sub(*b);
        if delta > 0 {
            histogram.record_many(
                crate::names::Buckets::midpoint_seconds(i),
                usize::try_from(delta).unwrap_or(usize::MAX),
            );
        }
    }
}
