//! The health snapshot: everything the watchdog knows, assembled once per
//! check into a [`Health`]. Each finding is an issue line with a severity;
//! the status is the most severe one, computed in one place.

use crate::model::health::{Health, RecentStall, RuntimeHealth, StalledWorker, Status};
use crate::watchdog::activity::ActivitySummary;
use crate::watchdog::builder::Config;
use crate::watchdog::evidence::EvidenceCollector;
use crate::watchdog::process::ProcessStats;
use crate::watchdog::runtimes::RuntimeSet;
use crate::watchdog::stall::Candidate;

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
                    report.cause = known.cause;
                    report.cpu = known.cpu;
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
                    cause: r.cause,
                    cpu: r.cpu,
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
    process_issues(&mut issues, &process, config.resident_memory_limit, now);
    Health {
        status: issues.status(),
        issues: issues.into_lines(),
        runtimes: runtime_health,
        tasks,
        hung_tasks,
        calls,
        process: process.health(now),
        recent_stalls,
    }
}

/// The issues of the process's resources: memory over the configured limit
/// or near its cgroup's, a recent pause of the whole process, file
/// descriptors nearly used up.
fn process_issues(
    issues: &mut Issues,
    process: &ProcessStats,
    resident_memory_limit: Option<u64>,
    now: u64,
) {
    if let Some(limit) = resident_memory_limit {
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
    if let (Some(limit), Some(used)) = (
        process.cgroup.memory_limit_bytes,
        process.cgroup.memory_working_set_bytes,
    ) {
        if limit > 0 && used.saturating_mul(10) >= limit.saturating_mul(9) {
            issues.add(
                Status::Degraded,
                format!(
                    "cgroup memory {} MiB of its {} MiB limit ({:.0} %): the OOM killer is next",
                    used >> 20,
                    limit >> 20,
                    used as f64 * 100.0 / limit as f64
                ),
            );
        }
    }
    if let Some((end, len)) = process.last_pause {
        let since_end = now.saturating_sub(end);
        if since_end < AFTER_STALL_NS {
            issues.add(
                Status::Degraded,
                format!(
                    "the whole process was paused for {:.1} s, {:.0} s ago (stopped, a frozen cgroup or a paused VM); not counted as a stall",
                    len as f64 / 1e9,
                    since_end as f64 / 1e9
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::cgroup::CgroupStats;

    fn issues_of(process: &ProcessStats, now: u64) -> (Status, Vec<String>) {
        let mut issues = Issues::default();
        process_issues(&mut issues, process, None, now);
        (issues.status(), issues.into_lines())
    }

    #[test]
    fn memory_near_the_cgroup_limit_is_degraded() {
        let mut p = ProcessStats {
            cgroup: CgroupStats {
                memory_limit_bytes: Some(1000 << 20),
                memory_working_set_bytes: Some(950 << 20),
                ..CgroupStats::default()
            },
            ..ProcessStats::default()
        };
        let (status, lines) = issues_of(&p, 1);
        assert_eq!(status, Status::Degraded);
        assert_eq!(
            lines,
            ["cgroup memory 950 MiB of its 1000 MiB limit (95 %): the OOM killer is next"]
        );
        p.cgroup.memory_working_set_bytes = Some(800 << 20);
        assert_eq!(issues_of(&p, 1), (Status::Healthy, Vec::new()));
        // No limit: nothing to be near.
        p.cgroup.memory_limit_bytes = None;
        p.cgroup.memory_working_set_bytes = Some(u64::MAX);
        assert_eq!(issues_of(&p, 1).0, Status::Healthy);
    }

    #[test]
    fn a_recent_pause_is_an_issue_for_a_minute() {
        let p = ProcessStats {
            last_pause: Some((10_000_000_000, 6_000_000_000)),
            ..ProcessStats::default()
        };
        let (status, lines) = issues_of(&p, 13_000_000_000);
        assert_eq!(status, Status::Degraded);
        assert!(
            lines[0].starts_with("the whole process was paused for 6.0 s, 3 s ago"),
            "{lines:?}"
        );
        assert_eq!(
            issues_of(&p, 10_000_000_000 + AFTER_STALL_NS).0,
            Status::Healthy
        );
    }
}
