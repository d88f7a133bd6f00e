//! The per-poll path shared by every instrumented future: spawned tasks,
//! `watched` futures and `#[instrument_blocking] async fn` calls.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::{now_ns, OncePerSecond};
use crate::instrument::names::NameEntry;
use crate::instrument::settings::SETTINGS;
use crate::instrument::slot;

/// At most one slow-poll warning per second across the process.
static SLOW_POLL_LOG: OncePerSecond = OncePerSecond::new();

/// One instrumented poll, as it ran.
#[derive(Debug)]
pub(crate) struct Polled<T> {
    /// What the inner poll returned.
    pub(crate) out: T,
    /// When it began (ns).
    pub(crate) start: u64,
    /// How long it took (ns).
    pub(crate) took: u64,
}

/// Runs one poll of instrumented work named `entry`: marks it in the
/// thread's poll slot for the watchdog (which then knows what the thread is
/// stuck in, or that it keeps completing polls), stamps `last_poll` (for
/// hung-task detection) and times it. What the duration counts for is the
/// caller's: [`account_task_poll`] for tasks, the call's own thresholds for
/// calls.
///
/// Cost: one thread-local access, two clock reads, a handful of relaxed
/// atomics; no lock, no allocation.
#[inline]
pub(crate) fn instrument_poll<T>(
    entry: &'static NameEntry,
    last_poll: Option<&AtomicU64>,
    poll: impl FnOnce() -> T,
) -> Polled<T> {
    let guard = slot::enter(entry);
    let start = guard.as_ref().map_or_else(now_ns, |g| g.start);
    if let Some(last) = last_poll {
        last.store(start, Relaxed);
    }
    let out = poll();
    drop(guard);
    let took = now_ns().saturating_sub(start);
    Polled { out, start, took }
}

/// Counts a task's (or a `watched` future's) poll: its duration, and a slow
/// poll when it took the blocking threshold or longer.
#[inline]
pub(crate) fn account_task_poll(entry: &'static NameEntry, took: u64) {
    entry.tasks.polls.record(took);
    if took >= SETTINGS.blocking_ns() {
        slow_poll(entry, took);
    }
}

#[cold]
fn slow_poll(entry: &'static NameEntry, took: u64) {
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
