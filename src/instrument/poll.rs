//! The per-poll path shared by every instrumented future: spawned tasks,
//! `watched` futures and `#[instrument_blocking] async fn` calls.

use std::sync::atomic::Ordering::Relaxed;

use crate::board::live::LiveRecord;
use crate::board::names::{NameEntry, Timed};
use crate::board::settings::SETTINGS;
use crate::board::shard::Counts;
use crate::board::slot;
use crate::clock::{now_ns, OncePerSecond};

/// At most one slow-poll warning per second across the process.
static SLOW_POLL_LOG: OncePerSecond = OncePerSecond::new();

/// One instrumented poll, as it ran.
#[derive(Debug)]
pub(crate) struct Polled<T> {
    /// What the inner poll returned.
    pub(crate) out: T,
    /// When it began (ns).
    pub(crate) start: u64,
    /// How long it took (ns), to within a tick of the coarse clock unless
    /// it was timed with the fine one.
    pub(crate) took: u64,
    /// Whether it was one of the sampled polls.
    pub(crate) timed: Timed,
    /// Where the thread counts for this poll's name.
    pub(crate) counts: Counts<'static>,
}

/// Runs one poll of instrumented work named `entry`: marks it in the
/// thread's poll slot for the watchdog (which then knows what the thread is
/// stuck in, or that it keeps completing polls), marks a task's live
/// `record` running and then idle (for the task dump and hung-task
/// detection) and times it, with the coarse clock when the
/// shortest threshold its duration is compared with (`shortest_threshold_ns`)
/// allows and the poll is not one of the sampled. What the duration counts
/// for is the caller's: [`account_task_poll`] for tasks, the call's own
/// thresholds for calls.
///
/// Cost: one thread-local access, two clock reads, a handful of relaxed
/// loads and stores; no lock, no allocation, no locked instruction but on
/// the sampled polls and the long ones.
#[inline]
pub(crate) fn instrument_poll<T>(
    entry: &'static NameEntry,
    record: Option<&'static LiveRecord>,
    shortest_threshold_ns: u64,
    poll: impl FnOnce() -> T,
) -> Polled<T> {
    let Some(timing) = slot::timing(shortest_threshold_ns, true) else {
        return untracked(entry, record, poll);
    };
    let start = timing.now();
    let guard = timing.slot.enter(entry, start);
    let capture = record.map(|r| r.poll_started(start));
    let out = poll();
    let end = timing.now();
    if let (Some(record), Some(capture)) = (record, capture) {
        record.poll_ended(end, capture);
    }
    guard.finish(end);
    let took = end.saturating_sub(start);
    Polled {
        out,
        start,
        took,
        timed: timing.timed,
        counts: timing.slot.counts(entry),
    }
}

/// A poll on a thread being torn down (no slot): timed and counted, not
/// shown to the watchdog.
#[cold]
fn untracked<T>(
    entry: &'static NameEntry,
    record: Option<&'static LiveRecord>,
    poll: impl FnOnce() -> T,
) -> Polled<T> {
    let start = now_ns();
    let capture = record.map(|r| r.poll_started(start));
    let out = poll();
    let end = now_ns();
    if let (Some(record), Some(capture)) = (record, capture) {
        record.poll_ended(end, capture);
    }
    Polled {
        out,
        start,
        took: end.saturating_sub(start),
        timed: Timed::Sampled,
        counts: slot::shared_counts(entry),
    }
}

/// Counts a task's (or a `watched` future's) poll: its duration, and a slow
/// poll when it took the blocking threshold or longer.
#[inline]
pub(crate) fn account_task_poll<T>(entry: &'static NameEntry, polled: &Polled<T>) {
    let took = polled.took;
    polled.counts.add(|s| &s.polls, 1);
    polled.counts.add(|s| &s.poll_ns, took);
    entry.tasks.polls.record(took, polled.timed);
    if took >= SETTINGS.blocking_ns() {
        slow_poll(entry, polled.start, took);
    }
}

#[cold]
fn slow_poll(entry: &'static NameEntry, start: u64, took: u64) {
    // A poll whose thread handed its worker to another thread
    // (`block_in_place`) or was not a worker (a `block_on` inside
    // `spawn_blocking`) held no worker up: tokio ran the worker's tasks
    // elsewhere meanwhile. Not a slow poll.
    if crate::board::workers::poll_held_a_worker(start) == Some(false) {
        tracing::debug!(
            target: "loopwatch",
            task = entry.name,
            poll_seconds = took as f64 / 1e9,
            "a long poll held no worker (its thread handed the worker off, as block_in_place does, or is not a worker)"
        );
        return;
    }
    entry.tasks.slow_polls.fetch_add(1, Relaxed);
    if SLOW_POLL_LOG.ready() {
        tracing::warn!(
            target: "loopwatch",
            task = entry.name,
            poll_seconds = took as f64 / 1e9,
            "slow poll: task '{}' blocked its worker for {:.3} s in one poll (at most one such warning per second)",
            entry.name,
            took as f64 / 1e9
        );
    }
}
