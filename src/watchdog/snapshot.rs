//! The health snapshot: everything the watchdog knows, assembled once per
//! check into a [`Health`]. Each finding is an issue line with a severity;
//! the status is the most severe one, computed in one place.

use super::activity::ActivitySummary;
use super::builder::Config;
use super::evidence::EvidenceCollector;
use super::process::ProcessStats;
use super::runtimes::RuntimeSet;
use super::stall::Candidate;
use crate::health::{Health, RecentStall, RuntimeHealth, StalledWorker, Status};

/// How long health stays `degraded` after a stall ended (ns).
const AFTER_STALL_NS: u64 = 60_000_000_000;

/// Issue lines, each with the status it calls for.
#[derive(Debug, Default)]
struct Issues(Vec<(Status, String)>);

impl Issues {
    fn add(&mut self, severity: Status, line: String) {
        self.0.push((severity, line));
    }

    /// The most severe issue's status; healthy with none.
    fn status(&self) -> Status {
        self.0
            .iter()
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(Status::Healthy)
    }

    fn into_lines(self) -> Vec<String> {
        self.0.into_iter().map(|(_, line)| line).collect()
    }
}

/// What a snapshot is assembled from.
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    pub(crate) now: u64,
    pub(crate) config: &'a Config,
    pub(crate) runtimes: &'a RuntimeSet,
    /// The stalls in progress.
    pub(crate) stalls: &'a [&'a Candidate],
    /// What the reports found about them (thread, culprit).
    pub(crate) evidence: &'a EvidenceCollector,
    pub(crate) activity: ActivitySummary,
    pub(crate) process: ProcessStats,
    pub(crate) recent_stalls: Vec<RecentStall>,
}

/// Assembles the snapshot.
pub(crate) fn assemble(input: Inputs<'_>) -> Health {
    let Inputs {
        now,
        config,
        runtimes,
        stalls,
        evidence,
        activity,
        process,
        recent_stalls,
    } = input;
    let stall_ns = crate::clock::nanos(config.stall_threshold);
    let mut issues = Issues::default();
    let mut runtime_health = Vec::new();
    for w in runtimes.iter() {
        let (m, history) = (&w.monitor, &w.history);
        let mut stalled: Vec<&Candidate> = stalls
            .iter()
            .copied()
            .filter(|c| c.runtime.serial == m.entry.serial)
            .collect();
        stalled.sort_by_key(|c| (c.worker, c.since));
        let reports: Vec<crate::StallReport> = stalled
            .iter()
            .map(|c| {
                let mut report = c.report(now, 0);
                if let Some(known) = evidence.known(c.key) {
                    report.thread = report.thread.or_else(|| known.thread_name.clone());
                    report.culprit = known.culprit.clone();
                    report.spans = known.spans.clone();
                }
                report
            })
            .collect();
        for report in &reports {
            issues.add(Status::Stalled, report.to_string());
        }
        let age = m.heartbeat_age_ns(now);
        if stalled.is_empty() && m.beat.beats > 0 && age >= stall_ns && !m.undriven() {
            issues.add(
                Status::Degraded,
                format!(
                    "runtime {}: heartbeat {:.1} s late; workers are busy but not stuck in one poll",
                    m.entry.name,
                    age as f64 / 1e9
                ),
            );
        }
        if let Some(len) = history.last_stall_ns {
            let since_end = now.saturating_sub(history.last_stall_end);
            if stalled.is_empty() && since_end < AFTER_STALL_NS {
                issues.add(
                    Status::Degraded,
                    format!(
                        "runtime {}: a stall of {:.1} s ended {:.0} s ago",
                        m.entry.name,
                        len as f64 / 1e9,
                        since_end as f64 / 1e9
                    ),
                );
            }
        }
        runtime_health.push(RuntimeHealth {
            name: m.entry.name.to_string(),
            flavor: m.flavor.to_owned(),
            workers: m.num_workers(),
            heartbeat_age_seconds: age as f64 / 1e9,
            heartbeat_lag_seconds: m.beat.last_lag as f64 / 1e9,
            stalls_total: history.stalls,
            last_stall_seconds: history.last_stall_ns.map(|n| n as f64 / 1e9),
            stalled_workers: reports
                .into_iter()
                .map(|r| StalledWorker {
                    worker: r.worker,
                    stalled_for_seconds: r.stalled_for.as_secs_f64(),
                    task: r.task,
                    thread: r.thread,
                    culprit: r.culprit,
                    spans: r.spans,
                    unconfirmed: r.unconfirmed,
                })
                .collect(),
        });
    }
    let ActivitySummary {
        tasks,
        calls,
        hung_tasks,
        hung_threshold,
    } = activity;
    if tasks.hung > 0 {
        let oldest: Vec<String> = hung_tasks
            .iter()
            .map(|h| format!("'{}' idle for {:.0} s", h.task, h.idle_seconds))
            .collect();
        issues.add(
            Status::Degraded,
            format!(
                "{} task(s) hung (alive, not polled for {:.0} s): {}",
                tasks.hung,
                hung_threshold.as_secs_f64(),
                oldest.join(", ")
            ),
        );
    }
    if let Some(limit) = config.resident_memory_limit {
        if process.resident_memory_bytes > limit {
            issues.add(
                Status::Degraded,
                format!(
                    "resident memory {} MiB is above the limit of {} MiB",
                    process.resident_memory_bytes >> 20,
                    limit >> 20
                ),
            );
        }
    }
    if process.max_fds > 0 && process.open_fds * 10 >= process.max_fds * 9 {
        issues.add(
            Status::Degraded,
            format!(
                "{} of {} file descriptors open",
                process.open_fds, process.max_fds
            ),
        );
    }
    Health {
        status: issues.status(),
        issues: issues.into_lines(),
        runtimes: runtime_health,
        tasks,
        hung_tasks,
        calls,
        process: process.health(),
        recent_stalls,
    }
}
