//! The `/metrics` exposition (Prometheus text format 0.0.4): the recorder's
//! series, then the series rendered here: the duration histograms from the
//! name registry's buckets (exact count and sum), the watched runtimes'
//! tokio figures and the process's (float counters keep their fractions).

use std::fmt::Write as _;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::board::names::{self, BucketCounts, Histogram, BUCKETS};
use crate::metric_names as n;
use crate::watchdog::{Fixed, ProcessStats, RuntimeHistograms, RuntimeSample};
use crate::Watchdog;

/// The whole exposition.
pub(super) fn metrics(handle: &PrometheusHandle, watchdog: &Watchdog) -> String {
    handle.run_upkeep();
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    render_durations(&mut text);
    render_runtime_histograms(&mut text, &crate::watchdog::runtime_histograms());
    render_runtimes(&mut text, &watchdog.runtime_samples());
    render_process(&mut text, &watchdog.process_stats());
    text
}

/// Buckets shown for the duration histograms: every other power-of-two
/// bucket bound (1 us, 4 us, 16 us, ... 4.3 s), each count exact.
fn shown_bucket(i: usize) -> bool {
    i.is_multiple_of(2)
}

fn render_durations(out: &mut String) {
    let entries = names::read_all();
    let tasks: Vec<(&str, BucketCounts)> = entries
        .iter()
        .map(|(e, c)| (e.name, c.poll_buckets(e)))
        .filter(|(_, b)| b.count() > 0)
        .collect();
    let calls: Vec<(&str, BucketCounts)> = entries
        .iter()
        .map(|(e, c)| (e.name, c.call_buckets(e)))
        .filter(|(_, b)| b.count() > 0)
        .collect();
    histogram_family(
        out,
        n::POLL_DURATION_SECONDS,
        "Poll durations of instrumented tasks.",
        "task",
        &tasks,
    );
    histogram_family(
        out,
        n::CALL_DURATION_SECONDS,
        "Durations of instrumented calls.",
        "call",
        &calls,
    );
}

fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, BucketCounts)],
) {
    if series.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (value, b) in series {
        let value = escape(value);
        let mut cumulative = 0;
        for i in 0..BUCKETS {
            cumulative += b.counts[i];
            if let Some(le) = Histogram::upper_bound_seconds(i).filter(|_| shown_bucket(i)) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{label}=\"{value}\",le=\"{le}\"}} {cumulative}"
                );
            }
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{{label}=\"{value}\"}} {}",
            b.sum_ns as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {cumulative}");
    }
}

fn render_runtime_histograms(out: &mut String, runtimes: &[RuntimeHistograms]) {
    let stalls: Vec<(&str, &Fixed)> = runtimes
        .iter()
        .filter(|r| r.stalls.count > 0)
        .map(|r| (&*r.runtime, &r.stalls))
        .collect();
    let lags: Vec<(&str, &Fixed)> = runtimes
        .iter()
        .filter(|r| r.lag.count > 0)
        .map(|r| (&*r.runtime, &r.lag))
        .collect();
    fixed_family(
        out,
        n::STALL_DURATION_SECONDS,
        "Length of each stall, observed when it ends.",
        &stalls,
    );
    fixed_family(
        out,
        n::HEARTBEAT_LAG_SECONDS,
        "How late the runtime's heartbeat task ran (scheduling delay).",
        &lags,
    );
}

/// A histogram family with fixed bounds, one series per runtime.
fn fixed_family(out: &mut String, name: &str, help: &str, series: &[(&str, &Fixed)]) {
    if series.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (runtime, h) in series {
        let runtime = escape(runtime);
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{runtime=\"{runtime}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{runtime=\"{runtime}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{runtime=\"{runtime}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{runtime=\"{runtime}\"}} {}", h.count);
    }
}

type Field = fn(&RuntimeSample) -> f64;

fn render_runtimes(out: &mut String, runtimes: &[RuntimeSample]) {
    if runtimes.is_empty() {
        return;
    }
    let families: [(&str, &str, &str, Field); 5] = [
        (
            n::RUNTIME_WORKERS,
            "gauge",
            "Worker threads of the runtime.",
            |r| r.workers as f64,
        ),
        (
            n::RUNTIME_ALIVE_TASKS,
            "gauge",
            "Tasks alive in the runtime.",
            |r| r.alive_tasks as f64,
        ),
        (
            n::RUNTIME_GLOBAL_QUEUE_DEPTH,
            "gauge",
            "Tasks waiting in the runtime's global queue.",
            |r| r.global_queue_depth as f64,
        ),
        (
            n::RUNTIME_BUSY_SECONDS_TOTAL,
            "counter",
            "Time the runtime's workers spent busy, summed over workers.",
            |r| r.busy_seconds,
        ),
        (
            n::RUNTIME_PARKS_TOTAL,
            "counter",
            "Times the runtime's workers parked, summed over workers.",
            |r| r.parks as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, runtimes, name, kind, help, value);
    }
    #[cfg(tokio_unstable)]
    {
        let unstable: [(&str, &str, &str, Field); 6] = [
            (n::RUNTIME_POLLS_TOTAL, "counter", "Task polls, summed over workers (tokio_unstable; published by tokio at park and every 61 polls).", |r| r.unstable.polls as f64),
            (n::RUNTIME_STEALS_TOTAL, "counter", "Tasks stolen between workers (tokio_unstable).", |r| r.unstable.steals as f64),
            (n::RUNTIME_OVERFLOWS_TOTAL, "counter", "Times a worker's local queue overflowed (tokio_unstable).", |r| r.unstable.overflows as f64),
            (n::RUNTIME_SPAWNED_TASKS_TOTAL, "counter", "Tasks spawned on the runtime (tokio_unstable).", |r| r.unstable.spawned_tasks as f64),
            (n::RUNTIME_BUDGET_FORCED_YIELDS_TOTAL, "counter", "Times tasks were forced to yield by the coop budget (tokio_unstable).", |r| r.unstable.budget_forced_yields as f64),
            (n::RUNTIME_BLOCKING_THREADS, "gauge", "Threads of the runtime's blocking pool (tokio_unstable).", |r| r.unstable.blocking_threads as f64),
        ];
        for (name, kind, help, value) in unstable {
            family(out, runtimes, name, kind, help, value);
        }
    }
}

fn family(
    out: &mut String,
    runtimes: &[RuntimeSample],
    name: &str,
    kind: &str,
    help: &str,
    value: Field,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for r in runtimes {
        let _ = writeln!(
            out,
            "{name}{{runtime=\"{}\"}} {}",
            escape(&r.name),
            value(r)
        );
    }
}

fn render_process(out: &mut String, p: &ProcessStats) {
    let pauses: [(&str, &str, &str, f64); 2] = [
        (
            n::PROCESS_PAUSES_TOTAL,
            "counter",
            "Pauses of the whole process (SIGSTOP, a frozen cgroup, a paused VM), never counted as stalls.",
            p.pauses as f64,
        ),
        (
            n::PROCESS_PAUSED_SECONDS_TOTAL,
            "counter",
            "Time the whole process was paused.",
            p.paused_ns as f64 / 1e9,
        ),
    ];
    let cg = &p.cgroup;
    let cgroup: [(&str, &str, &str, Option<f64>); 6] = [
        (
            n::CGROUP_CPU_LIMIT_CORES,
            "gauge",
            "CPU limit of the process's cgroup in cores (quota / period).",
            cg.cpu_limit_cores,
        ),
        (
            n::CGROUP_CPU_PERIODS_TOTAL,
            "counter",
            "Enforcement periods of the cgroup's CPU limit.",
            cg.cpu.map(|c| c.periods as f64),
        ),
        (
            n::CGROUP_CPU_THROTTLED_PERIODS_TOTAL,
            "counter",
            "Periods in which the cgroup's CPU limit held its threads back.",
            cg.cpu.map(|c| c.throttled_periods as f64),
        ),
        (
            n::CGROUP_CPU_THROTTLED_SECONDS_TOTAL,
            "counter",
            "Time the cgroup's CPU limit held its threads back.",
            cg.cpu.map(|c| c.throttled_ns as f64 / 1e9),
        ),
        (
            n::CGROUP_MEMORY_LIMIT_BYTES,
            "gauge",
            "Memory limit of the process's cgroup.",
            cg.memory_limit_bytes.map(|v| v as f64),
        ),
        (
            n::CGROUP_MEMORY_WORKING_SET_BYTES,
            "gauge",
            "Memory of the cgroup in use that cannot be dropped on demand (use minus inactive file pages).",
            cg.memory_working_set_bytes.map(|v| v as f64),
        ),
    ];
    let present = pauses.into_iter().chain(
        cgroup
            .into_iter()
            .filter_map(|(a, b, c, v)| Some((a, b, c, v?))),
    );
    for (name, kind, help, value) in present {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    if p.resident_memory_bytes == 0 {
        return; // not read on this platform
    }
    let families: [(&str, &str, &str, f64); 7] = [
        (
            n::PROCESS_CPU_SECONDS_TOTAL,
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            n::PROCESS_RESIDENT_MEMORY_BYTES,
            "gauge",
            "Resident memory size in bytes.",
            p.resident_memory_bytes as f64,
        ),
        (
            n::PROCESS_VIRTUAL_MEMORY_BYTES,
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_memory_bytes as f64,
        ),
        (
            n::PROCESS_OPEN_FDS,
            "gauge",
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
        (
            n::PROCESS_MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds as f64,
        ),
        (
            n::PROCESS_THREADS,
            "gauge",
            "Number of OS threads in the process.",
            p.threads as f64,
        ),
        (
            n::PROCESS_START_TIME_SECONDS,
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::names::Timed;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_and_the_exact_count_and_sum() {
        let b = Histogram::default();
        for ns in [500, 3_000, 3_000, 2_000_000_000] {
            b.record(ns, Timed::Sampled);
        }
        let mut out = String::new();
        let read = b.read(4, 2_000_006_500);
        histogram_family(&mut out, "x_seconds", "help", "task", &[("t", read)]);
        assert!(out.contains("x_seconds_count{task=\"t\"} 4\n"), "{out}");
        assert!(
            out.contains("x_seconds_sum{task=\"t\"} 2.0000065\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{task=\"t\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        // 1.024 us holds the 500 ns one; 4.096 us the two of 3 us too.
        assert!(out.contains("le=\"0.000001024\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.000004096\"} 3\n"), "{out}");
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("x_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {counts:?}"
        );
    }
}
