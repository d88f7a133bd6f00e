//! The `/metrics` exposition (Prometheus text format 0.0.4): the recorder's
//! series, then the series rendered here: the duration histograms from the
//! name registry's buckets (exact count and sum), the watched runtimes'
//! tokio figures and the process's (float counters keep their fractions).

use std::fmt::Write as _;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::board::names::{self, BucketCounts, Histogram, BUCKETS};
use crate::metric_names as n;
use crate::watchdog::export::{Fixed, ProcessStats, RuntimeHistograms, RuntimeSample};
use crate::Watchdog;

/// The whole exposition.
pub(super) fn metrics(handle: &PrometheusHandle, watchdog: &Watchdog) -> String {
    handle.run_upkeep();
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    render_durations(&mut text);
    render_runtime_histograms(&mut text, &crate::watchdog::export::runtime_histograms());
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
    histogram_family(out, n::POLL_DURATION_SECONDS, "task", &tasks);
    histogram_family(out, n::CALL_DURATION_SECONDS, "call", &calls);
}

fn histogram_family(out: &mut String, name: &str, label: &str, series: &[(&str, BucketCounts)]) {
    if series.is_empty() {
        return;
    }
    head(out, name);
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
    fixed_family(out, n::STALL_DURATION_SECONDS, &stalls);
    fixed_family(out, n::HEARTBEAT_LAG_SECONDS, &lags);
}

/// A histogram family with fixed bounds, one series per runtime.
fn fixed_family(out: &mut String, name: &str, series: &[(&str, &Fixed)]) {
    if series.is_empty() {
        return;
    }
    head(out, name);
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
    let families: [(&str, Field); 5] = [
        (n::RUNTIME_WORKERS, |r| r.workers as f64),
        (n::RUNTIME_ALIVE_TASKS, |r| r.alive_tasks as f64),
        (n::RUNTIME_GLOBAL_QUEUE_DEPTH, |r| {
            r.global_queue_depth as f64
        }),
        (n::RUNTIME_BUSY_SECONDS_TOTAL, |r| r.busy_seconds),
        (n::RUNTIME_PARKS_TOTAL, |r| r.parks as f64),
    ];
    for (name, value) in families {
        family(out, runtimes, name, value);
    }
    #[cfg(tokio_unstable)]
    {
        let unstable: [(&str, Field); 6] = [
            (n::RUNTIME_POLLS_TOTAL, |r| r.unstable.polls as f64),
            (n::RUNTIME_STEALS_TOTAL, |r| r.unstable.steals as f64),
            (n::RUNTIME_OVERFLOWS_TOTAL, |r| r.unstable.overflows as f64),
            (n::RUNTIME_SPAWNED_TASKS_TOTAL, |r| {
                r.unstable.spawned_tasks as f64
            }),
            (n::RUNTIME_BUDGET_FORCED_YIELDS_TOTAL, |r| {
                r.unstable.budget_forced_yields as f64
            }),
            (n::RUNTIME_BLOCKING_THREADS, |r| {
                r.unstable.blocking_threads as f64
            }),
        ];
        for (name, value) in unstable {
            family(out, runtimes, name, value);
        }
    }
}

/// The `# HELP` and `# TYPE` lines of family `name`, from the one table
/// of families ([`n::family`]).
fn head(out: &mut String, name: &str) {
    let family = n::family(name);
    let _ = writeln!(out, "# HELP {name} {}", family.help);
    let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
}

/// A family with one series per runtime.
fn family(out: &mut String, runtimes: &[RuntimeSample], name: &str, value: Field) {
    head(out, name);
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
    let pauses = [
        (n::PROCESS_PAUSES_TOTAL, p.pauses as f64),
        (n::PROCESS_PAUSED_SECONDS_TOTAL, p.paused_ns as f64 / 1e9),
    ];
    let cg = &p.cgroup;
    let cgroup: [(&str, Option<f64>); 6] = [
        (n::CGROUP_CPU_LIMIT_CORES, cg.cpu_limit_cores),
        (
            n::CGROUP_CPU_PERIODS_TOTAL,
            cg.cpu.map(|c| c.periods as f64),
        ),
        (
            n::CGROUP_CPU_THROTTLED_PERIODS_TOTAL,
            cg.cpu.map(|c| c.throttled_periods as f64),
        ),
        (
            n::CGROUP_CPU_THROTTLED_SECONDS_TOTAL,
            cg.cpu.map(|c| c.throttled_ns as f64 / 1e9),
        ),
        (
            n::CGROUP_MEMORY_LIMIT_BYTES,
            cg.memory_limit_bytes.map(|v| v as f64),
        ),
        (
            n::CGROUP_MEMORY_WORKING_SET_BYTES,
            cg.memory_working_set_bytes.map(|v| v as f64),
        ),
    ];
    let present = pauses
        .into_iter()
        .chain(cgroup.into_iter().filter_map(|(name, v)| Some((name, v?))));
    for (name, value) in present {
        head(out, name);
        let _ = writeln!(out, "{name} {value}");
    }
    if p.resident_memory_bytes == 0 {
        return; // not read on this platform
    }
    let families = [
        (n::PROCESS_CPU_SECONDS_TOTAL, p.cpu_seconds),
        (
            n::PROCESS_RESIDENT_MEMORY_BYTES,
            p.resident_memory_bytes as f64,
        ),
        (
            n::PROCESS_VIRTUAL_MEMORY_BYTES,
            p.virtual_memory_bytes as f64,
        ),
        (n::PROCESS_OPEN_FDS, p.open_fds as f64),
        (n::PROCESS_MAX_FDS, p.max_fds as f64),
        (n::PROCESS_THREADS, p.threads as f64),
        (n::PROCESS_START_TIME_SECONDS, p.start_time_seconds),
    ];
    for (name, value) in families {
        head(out, name);
        let _ = writeln!(out, "{name} {value}");
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
        histogram_family(&mut out, n::POLL_DURATION_SECONDS, "task", &[("t", read)]);
        assert!(
            out.contains("loopwatch_poll_duration_seconds_count{task=\"t\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("loopwatch_poll_duration_seconds_sum{task=\"t\"} 2.0000065\n"),
            "{out}"
        );
        assert!(
            out.contains("loopwatch_poll_duration_seconds_bucket{task=\"t\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        // 1.024 us holds the 500 ns one; 4.096 us the two of 3 us too.
        assert!(out.contains("le=\"0.000001024\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.000004096\"} 3\n"), "{out}");
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("loopwatch_poll_duration_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {counts:?}"
        );
    }
}
