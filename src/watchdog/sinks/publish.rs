//! What the watchdog records through the `metrics` facade (counters and
//! gauges; its histograms are aggregated in [`histograms`]).
//!
//! The watchdog thread records here, a few times per check, and the
//! exporter's thread once per connection it drops
//! ([`connection_dropped`]): handles are looked up at each call, so a recorder installed after the watchdog started
//! (for example by the exporter) receives everything from then on.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use crate::metric_names::*;
use crate::metric_names::{Kind, RecordedBy, FAMILIES};
use crate::watchdog::histograms;

/// Describes every series the facade records (help text and unit, from
/// [`FAMILIES`]) to the installed recorder. Called when the watchdog starts
/// and again when the exporter installs its recorder; harmless to repeat.
pub(crate) fn describe_all() {
    for family in FAMILIES {
        let unit = match family.recorded_by {
            RecordedBy::Facade => Unit::Count,
            RecordedBy::FacadeSeconds => Unit::Seconds,
            RecordedBy::Scrape => continue,
        };
        match family.kind {
            Kind::Counter => describe_counter!(family.name, unit, family.help),
            Kind::Gauge => describe_gauge!(family.name, unit, family.help),
            Kind::Histogram => {}
        }
    }
    // Make the series exist from the start, without touching their counts.
    counter!(REPORTS_SUPPRESSED_TOTAL).increment(0);
    counter!(CALLBACK_PANICS_TOTAL).increment(0);
    counter!(CALLBACK_REPORTS_DROPPED_TOTAL).increment(0);
}

/// A stall's cause, at its first report (held back or not).
pub(crate) fn stall_cause(runtime: &str, cause: crate::StallCause) {
    counter!(STALLS_BY_CAUSE_TOTAL, "runtime" => runtime.to_owned(), "cause" => cause.as_str())
        .increment(1);
}

pub(crate) fn stall_flagged(runtime: &str) {
    counter!(STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(1);
}

pub(crate) fn stall_on_cpu(runtime: &str) {
    counter!(CPU_BOUND_STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(1);
}

/// Histograms are aggregated here, not handed to the facade, whose
/// Prometheus recorder would keep every observation until the next scrape.
pub(crate) fn stall_ended(runtime: &str, duration: Duration) {
    histograms::stall_ended(runtime, duration.as_secs_f64());
}

pub(crate) fn heartbeat(runtime: &str, lag_ns: u64) {
    histograms::heartbeat_lag(runtime, lag_ns as f64 / 1e9);
}

pub(crate) fn runtime_gauges(runtime: &str, stalled: usize, heartbeat_unix: f64) {
    counter!(STALLS_TOTAL, "runtime" => runtime.to_owned()).increment(0);
    for cause in crate::StallCause::ALL {
        counter!(STALLS_BY_CAUSE_TOTAL, "runtime" => runtime.to_owned(), "cause" => cause.as_str())
            .increment(0);
    }
    gauge!(STALLED_WORKERS, "runtime" => runtime.to_owned()).set(stalled as f64);
    gauge!(HEARTBEAT_TIMESTAMP_SECONDS, "runtime" => runtime.to_owned()).set(heartbeat_unix);
}

pub(crate) fn runtime_gone(runtime: &str) {
    gauge!(STALLED_WORKERS, "runtime" => runtime.to_owned()).set(0.0);
}

pub(crate) fn report_suppressed() {
    counter!(REPORTS_SUPPRESSED_TOTAL).increment(1);
}

/// A connection the exporter closed without an answer, and why.
#[cfg(feature = "exporter")]
pub(crate) fn connection_dropped(reason: &'static str) {
    counter!(EXPORTER_CONNECTIONS_DROPPED_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn callback_report_dropped() {
    counter!(CALLBACK_REPORTS_DROPPED_TOTAL).increment(1);
}

pub(crate) fn callback_panicked() {
    counter!(CALLBACK_PANICS_TOTAL).increment(1);
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
