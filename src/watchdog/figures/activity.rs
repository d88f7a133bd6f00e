//! What the application did, as the watchdog reads it on a schedule of its
//! own: task and call counts (totals for `Health`, per-name series through
//! the `metrics` facade), hung tasks, and the process's resources.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::board::names::{self, NameCounts};
use crate::clock::nanos;
use crate::model::health::{CallCounts, HungTask, TaskCounts};
use crate::watchdog::builder::Config;
use crate::watchdog::cgroup::Cgroup;
use crate::watchdog::process::{self, ProcessStats};
use crate::watchdog::publish;
use crate::TaskInfo;

/// Hung tasks listed in `Health`, oldest first.
const HUNG_LISTED: usize = 5;

/// Warnings of tasks that became hung, at most this many a minute.
const HUNG_WARNINGS_PER_MINUTE: u32 = 10;

/// One name's counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reading {
    spawned: u64,
    completed: u64,
    failed: u64,
    panicked: u64,
    cancelled: u64,
    slow_polls: u64,
    calls_ok: u64,
    calls_error: u64,
    calls_panic: u64,
    blocking: u64,
    slow_calls: u64,
}

impl Reading {
    fn of(counts: &NameCounts) -> Self {
        let s = &counts.shards;
        Reading {
            spawned: s.spawned,
            completed: s.completed,
            failed: s.failed,
            panicked: s.panicked,
            cancelled: s.cancelled,
            slow_polls: counts.slow_polls,
            calls_ok: s.calls_ok,
            calls_error: s.calls_error,
            calls_panic: counts.call_panics,
            blocking: counts.blocking,
            slow_calls: counts.slow_calls,
        }
    }

    /// Tasks alive: spawned and not yet ended (never negative, even when the
    /// counters were read while tasks ended).
    fn alive(&self) -> u64 {
        self.spawned
            .saturating_sub(self.completed + self.failed + self.panicked + self.cancelled)
    }

    fn calls(&self) -> u64 {
        self.calls_ok + self.calls_error + self.calls_panic
    }
}

/// The watchdog's view of tasks and calls, kept across readings.
#[derive(Debug, Default)]
struct Usage {
    /// What was last published, per name, with its hung count.
    published: HashMap<&'static str, (Reading, u64)>,
    /// Hung tasks per name at the last scan.
    hung_by_name: HashMap<&'static str, u64>,
    /// The oldest hung tasks at the last scan.
    hung_oldest: Vec<HungTask>,
    /// When live tasks were last scanned for hung ones (0: never).
    last_scan: u64,
    /// Tokio's ids of the longest hung tasks at the last scan.
    hung_ids: Vec<u64>,
    warnings: HungWarnings,
}

/// Warnings of tasks that became hung: at most
/// [`HUNG_WARNINGS_PER_MINUTE`], the rest counted and said in one line
/// when the next minute begins.
#[derive(Debug, Default)]
struct HungWarnings {
    /// Start of the current minute (ns; 0: none yet).
    minute: u64,
    sent: u32,
    held_back: u64,
}

impl HungWarnings {
    /// How many warnings may be sent at `now`; a new minute says how many
    /// were held back in the last.
    fn room(&mut self, now: u64) -> usize {
        if self.minute == 0 || now.saturating_sub(self.minute) >= 60_000_000_000 {
            if self.held_back > 0 {
                tracing::warn!(
                    target: "loopwatch",
                    held_back = self.held_back,
                    "{} more task(s) became hung in the last minute; their warnings were held back (at most {} a minute; all are in /tasks)",
                    self.held_back,
                    HUNG_WARNINGS_PER_MINUTE
                );
            }
            *self = HungWarnings {
                minute: now,
                sent: 0,
                held_back: 0,
            };
        }
        HUNG_WARNINGS_PER_MINUTE.saturating_sub(self.sent) as usize
    }

    /// Warns of `tasks`, which became hung, out of `total` that did.
    fn warn(&mut self, tasks: &[TaskInfo], total: u64) {
        for task in tasks {
            let id = task.id.map_or_else(|| "?".to_owned(), |id| id.to_string());
            let spans = if task.spans.is_empty() {
                String::new()
            } else {
                format!(" in span {}", task.spans.join(" > "))
            };
            tracing::warn!(
                target: "loopwatch",
                task_id = task.id,
                task = %task.name,
                spawned_at = %task.spawned_at,
                idle_seconds = task.state_seconds,
                spans = ?task.spans,
                "hung task: task {id} '{}' spawned at {} has not been polled for {:.1} s{spans}",
                task.name,
                task.spawned_at,
                task.state_seconds
            );
        }
        self.sent += tasks.len() as u32;
        self.held_back += total.saturating_sub(tasks.len() as u64);
    }
}

impl Usage {
    /// Finds live tasks not polled for `hung_ns` (reads every live task's
    /// record), and warns of those that became hung since the last scan.
    fn scan_hung(&mut self, now: u64, hung_ns: u64) {
        let room = self.warnings.room(now);
        let scan = crate::tasks::scan_hung(
            now,
            hung_ns,
            self.last_scan,
            HUNG_LISTED,
            room,
            crate::watchdog::traces::MAX_TRACES,
        );
        self.last_scan = now;
        self.hung_ids = scan.ids;
        self.warnings.warn(&scan.newly, scan.newly_total);
        self.hung_oldest = scan.oldest.into_iter().map(HungTask::from).collect();
        self.hung_by_name = scan.by_name;
    }

    /// Totals over every name, for `Health`.
    fn totals(&self) -> (TaskCounts, BTreeMap<String, CallCounts>, Vec<HungTask>) {
        let mut tasks = TaskCounts::default();
        let mut calls = BTreeMap::new();
        for (entry, counts) in names::read_all() {
            let r = Reading::of(&counts);
            tasks.spawned += r.spawned;
            tasks.completed += r.completed;
            tasks.failed += r.failed;
            tasks.panicked += r.panicked;
            tasks.cancelled += r.cancelled;
            tasks.alive += r.alive();
            tasks.slow_polls += r.slow_polls;
            if r.calls() > 0 {
                calls.insert(
                    entry.name.to_owned(),
                    CallCounts {
                        calls: r.calls(),
                        blocking: r.blocking,
                        slow: r.slow_calls,
                        failed: r.calls_error + r.calls_panic,
                    },
                );
            }
        }
        tasks.hung = self.hung_by_name.values().sum();
        (tasks, calls, self.hung_oldest.clone())
    }

    /// Publishes what changed since the last call through the `metrics` facade.
    fn publish(&mut self) {
        for (entry, counts) in names::read_all() {
            let now = Reading::of(&counts);
            let hung = self.hung_by_name.get(entry.name).copied().unwrap_or(0);
            let last = self.published.get(entry.name).copied();
            if last == Some((now, hung)) {
                continue;
            }
            let before = last.map(|(reading, _)| reading).unwrap_or_default();
            let name = entry.name;
            if now.spawned > 0 {
                publish::task_counts(
                    name,
                    [
                        now.spawned.saturating_sub(before.spawned),
                        now.completed.saturating_sub(before.completed),
                        now.failed.saturating_sub(before.failed),
                        now.panicked.saturating_sub(before.panicked),
                        now.cancelled.saturating_sub(before.cancelled),
                        now.slow_polls.saturating_sub(before.slow_polls),
                    ],
                    now.alive(),
                    hung,
                );
            }
            if now.calls() > 0 {
                publish::call_counts(
                    name,
                    [
                        now.calls_ok.saturating_sub(before.calls_ok),
                        now.calls_error.saturating_sub(before.calls_error),
                        now.calls_panic.saturating_sub(before.calls_panic),
                        now.blocking.saturating_sub(before.blocking),
                        now.slow_calls.saturating_sub(before.slow_calls),
                    ],
                );
            }
            self.published.insert(name, (now, hung));
        }
    }
}

/// Task, call and process figures, read on their own schedule (not every check).
#[derive(Debug)]
pub(crate) struct Activity {
    usage: Usage,
    process: ProcessStats,
    /// When the series were last published and the process read, and how often (ns).
    last_read: u64,
    read_every_ns: u64,
    /// When live tasks were last scanned for hung ones, and how often (ns).
    last_hung_scan: u64,
    hung_scan_every_ns: u64,
    hung_ns: u64,
    /// The process's cgroup, and when it was last looked up (it may move).
    cgroup: Cgroup,
    cgroup_at: u64,
}

/// What [`Activity`] has for a health snapshot.
#[derive(Debug)]
pub(crate) struct ActivitySummary {
    pub(crate) tasks: TaskCounts,
    pub(crate) calls: BTreeMap<String, CallCounts>,
    pub(crate) hung_tasks: Vec<HungTask>,
    pub(crate) hung_threshold: Duration,
}

impl Activity {
    pub(crate) fn new(config: &Config) -> Self {
        Activity {
            usage: Usage::default(),
            process: ProcessStats::default(),
            last_read: 0,
            read_every_ns: nanos(read_interval(config)),
            last_hung_scan: 0,
            hung_scan_every_ns: nanos(hung_scan_interval(config)),
            hung_ns: nanos(config.hung_task_threshold),
            cgroup: Cgroup::default(),
            cgroup_at: 0,
        }
    }

    /// Reads and publishes what is due at `now`; returns whether anything was read.
    pub(crate) fn tick(&mut self, now: u64) -> bool {
        if self.last_read != 0 && now.saturating_sub(self.last_read) < self.read_every_ns {
            return false;
        }
        self.last_read = now;
        if self.last_hung_scan == 0
            || now.saturating_sub(self.last_hung_scan) >= self.hung_scan_every_ns
        {
            self.last_hung_scan = now;
            self.usage.scan_hung(now, self.hung_ns);
        }
        self.usage.publish();
        let before = self.process;
        self.process = process::read();
        if self.cgroup_at == 0
            || now.saturating_sub(self.cgroup_at) >= crate::watchdog::cgroup::DISCOVER_EVERY_NS
        {
            self.cgroup = Cgroup::discover();
            self.cgroup_at = now;
        }
        self.process.cgroup = self.cgroup.stats();
        self.process.pauses = before.pauses;
        self.process.paused_ns = before.paused_ns;
        self.process.last_pause = before.last_pause;
        true
    }

    /// A pause of the whole process ended at `end`, `len` ns long.
    pub(crate) fn paused(&mut self, end: u64, len: u64) {
        self.process.pauses += 1;
        self.process.paused_ns += len;
        self.process.last_pause = Some((end, len));
    }

    /// Tokio's ids of the longest hung tasks at the last scan, longest first
    /// (kept only where await traces can be taken).
    pub(crate) fn hung_ids(&self) -> &[u64] {
        &self.usage.hung_ids
    }

    /// The process's resources as last read.
    pub(crate) fn process(&self) -> ProcessStats {
        self.process
    }

    /// Task and call totals now, with the hung tasks of the last scan.
    pub(crate) fn summary(&self) -> ActivitySummary {
        let (tasks, calls, hung_tasks) = self.usage.totals();
        ActivitySummary {
            tasks,
            calls,
            hung_tasks,
            hung_threshold: Duration::from_nanos(self.hung_ns),
        }
    }
}

/// How often live tasks are scanned for hung ones (every live task is
/// read): a tenth of the hung-task threshold, between the reading interval
/// and 10 s. A task is reported hung within `hung_task_threshold` plus this.
fn hung_scan_interval(config: &Config) -> Duration {
    let floor = read_interval(config);
    (config.hung_task_threshold / 10).clamp(floor, floor.max(Duration::from_secs(10)))
}

/// How often the per-name series are published and the process's resources
/// read: every second, or every tenth of the hung-task threshold if that is
/// shorter, and at least every check.
fn read_interval(config: &Config) -> Duration {
    (config.hung_task_threshold / 10)
        .min(Duration::from_secs(1))
        .max(config.check_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u64) -> TaskInfo {
        crate::tasks::test_task(n)
    }

    #[test]
    fn hung_warnings_are_at_most_ten_a_minute_and_the_rest_counted() {
        const S: u64 = 1_000_000_000;
        let mut w = HungWarnings::default();
        // 15 tasks became hung at once: 10 warned, 5 held back.
        let room = w.room(S);
        assert_eq!(room, 10);
        let tasks: Vec<TaskInfo> = (0..room as u64).map(task).collect();
        w.warn(&tasks, 15);
        assert_eq!((w.sent, w.held_back), (10, 5));
        // Later in the same minute: no room, all held back.
        assert_eq!(w.room(30 * S), 0);
        w.warn(&[], 2);
        assert_eq!(w.held_back, 7);
        // The next minute: room again, the count starts over.
        assert_eq!(w.room(61 * S), 10);
        assert_eq!((w.sent, w.held_back), (0, 0));
    }
}
