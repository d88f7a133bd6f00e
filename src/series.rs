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
/// Panics caught in the `on_stall` callback.
pub const CALLBACK_PANICS_TOTAL: &str = "loopwatch_callback_panics_total";

pub(crate) fn describe() {
    describe_counter!(
        STALLS_TOTAL,
        Unit::Count,
        "Stalls flagged: a worker stuck in one poll for the stall threshold or longer."
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
    counter!(REPORTS_SUPPRESSED_TOTAL).absolute(0);
    counter!(CALLBACK_PANICS_TOTAL).absolute(0);
}

pub(crate) fn stall_flagged(runtime: &str) {
    counter!(STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(1);
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
