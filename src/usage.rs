//! What the watchdog reads of tasks and calls: totals for `Health`, hung
//! tasks, and the per-name series it publishes through the `metrics` facade.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;

use crate::health::{CallCounts, HungTask, TaskCounts};
use crate::names::{self, NameEntry, BUCKETS};
use crate::series;

/// Hung tasks listed by name in `Health`, oldest first.
const HUNG_LISTED: usize = 5;

/// One name's counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reading {
    spawned: u64,
    completed: u64,
    failed: u64,
    panicked: u64,
    cancelled: u64,
    slow_polls: u64,
    polls: [u64; BUCKETS],
    calls_ok: u64,
    calls_error: u64,
    calls_panic: u64,
    blocking: u64,
    slow_calls: u64,
    call_durations: [u64; BUCKETS],
}

impl Reading {
    fn of(entry: &NameEntry) -> Self {
        let t = &entry.tasks;
        let c = &entry.calls;
        Reading {
            spawned: t.spawned.load(Relaxed),
            completed: t.completed.load(Relaxed),
            failed: t.failed.load(Relaxed),
            panicked: t.panicked.load(Relaxed),
            cancelled: t.cancelled.load(Relaxed),
            slow_polls: t.slow_polls.load(Relaxed),
            polls: t.polls.counts(),
            calls_ok: c.ok.load(Relaxed),
            calls_error: c.errors.load(Relaxed),
            calls_panic: c.panics.load(Relaxed),
            blocking: c.blocking.load(Relaxed),
            slow_calls: c.slow.load(Relaxed),
            call_durations: c.durations.counts(),
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

/// The watchdog's view of tasks and calls, kept across checks.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// What was last published, per name, with its hung count.
    published: HashMap<&'static str, (Reading, u64)>,
    /// Hung tasks per name at the last scan.
    hung_by_name: HashMap<&'static str, u64>,
    /// The oldest hung tasks at the last scan.
    hung_oldest: Vec<HungTask>,
}

impl Usage {
    /// Finds live tasks not polled for `hung_ns` (scans every live task).
    pub(crate) fn scan_hung(&mut self, now: u64, hung_ns: u64) {
        let mut by_name: HashMap<&'static str, u64> = HashMap::new();
        let mut oldest: Vec<(u64, &'static str)> = Vec::new();
        crate::task::for_each_live(|record| {
            let idle = now.saturating_sub(record.last_poll.load(Relaxed));
            if idle >= hung_ns {
                *by_name.entry(record.entry.name).or_default() += 1;
                oldest.push((idle, record.entry.name));
            }
        });
        oldest.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
        oldest.truncate(HUNG_LISTED);
        self.hung_oldest = oldest
            .into_iter()
            .map(|(idle, task)| HungTask {
                task: task.to_owned(),
                idle_seconds: idle as f64 / 1e9,
            })
            .collect();
        self.hung_by_name = by_name;
    }

    /// Totals over every name, for `Health`.
    pub(crate) fn totals(&self) -> (TaskCounts, BTreeMap<String, CallCounts>, Vec<HungTask>) {
        let mut tasks = TaskCounts::default();
        let mut calls = BTreeMap::new();
        for entry in names::all() {
            let r = Reading::of(entry);
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
    pub(crate) fn publish(&mut self) {
        for entry in names::all() {
            let now = Reading::of(entry);
            let hung = self.hung_by_name.get(entry.name).copied().unwrap_or(0);
            let last = self.published.get(entry.name).copied();
            if last == Some((now, hung)) {
                continue;
            }
            let before = last.map(|(reading, _)| reading).unwrap_or_default();
            let name = entry.name;
            if now.spawned > 0 {
                series::task_counts(
                    name,
                    [
                        now.spawned - before.spawned,
                        now.completed - before.completed,
                        now.failed - before.failed,
                        now.panicked - before.panicked,
                        now.cancelled - before.cancelled,
                        now.slow_polls - before.slow_polls,
                    ],
                    now.alive(),
                    hung,
                );
            }
            series::durations(
                series::POLL_DURATION_SECONDS,
                "task",
                name,
                &now.polls,
                &before.polls,
            );
            if now.calls() > 0 {
                series::call_counts(
                    name,
                    [
                        now.calls_ok - before.calls_ok,
                        now.calls_error - before.calls_error,
                        now.calls_panic - before.calls_panic,
                        now.blocking - before.blocking,
                        now.slow_calls - before.slow_calls,
                    ],
                );
                series::durations(
                    series::CALL_DURATION_SECONDS,
                    "call",
                    name,
                    &now.call_durations,
                    &before.call_durations,
                );
            }
            self.published.insert(name, (now, hung));
        }
    }
}
