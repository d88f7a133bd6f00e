//! The per-poll path shared by every instrumented future.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::{nanos, now_ns, OncePerSecond};
use crate::names::NameEntry;
use crate::slot;

/// The blocking threshold the hot path compares against (ns): the running
/// watchdog's, or the default when none runs.
static BLOCKING_NS: AtomicU64 = AtomicU64::new(100_000_000);

/// At most one slow-poll warning per second across the process.
static SLOW_POLL_LOG: OncePerSecond = OncePerSecond::new();

pub(crate) fn set_blocking_threshold(threshold: std::time::Duration) {
    BLOCKING_NS.store(nanos(threshold), Relaxed);
}

pub(crate) fn blocking_threshold_ns() -> u64 {
    BLOCKING_NS.load(Relaxed)
}

/// Runs one poll of instrumented work named `entry`: marks it in the
/// thread's poll slot (for the watchdog), stamps `last_poll` (for hung-task
/// detection) and accounts its duration (histogram, slow polls).
///
/// Cost: two clock reads, a handful of relaxed atomics; no lock, no allocation.
#[inline]
pub(crate) fn instrument_poll<T>(
    entry: &'static NameEntry,
    last_poll: Option<&AtomicU64>,
    poll: impl FnOnce() -> T,
) -> T {
    let guard = slot::enter(entry);
    let start = guard.as_ref().map_or_else(now_ns, |g| g.start);
    if let Some(last) = last_poll {
        last.store(start, Relaxed);
    }
    let out = poll();
    drop(guard);
    let took = now_ns().saturating_sub(start);
    entry.tasks.polls.record(took);
    if took >= BLOCKING_NS.load(Relaxed) {
        slow_poll(entry, took);
    }
    out
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
