//! Instrumented calls: `blocking()`, and what `#[instrument_blocking]` expands to.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use crate::board::names::{self, NameEntry, Timed};
use crate::board::settings::SETTINGS;
use crate::board::shard::Counts;
use crate::board::slot;
use crate::clock::{coarse_ns, now_ns, OncePerSecond};
use crate::instrument::outcome::{Ending, Progress};
use crate::instrument::poll::instrument_poll;

/// At most one blocking-call warning per second across the process.
static BLOCKING_LOG: OncePerSecond = OncePerSecond::new();

/// Runs a sync call named `name`, timed and counted like a function marked
/// [`#[instrument_blocking]`](crate::instrument_blocking): it is **blocking**
/// when it ran on an async worker thread (inside a task's poll or a
/// `block_on` future, not in `spawn_blocking`, `block_in_place` or a plain
/// thread) and took at least the blocking threshold; **slow** when it took at
/// least the slow-call threshold. A panic is counted and goes on unwinding.
///
/// The function's output is not inspected (Rust cannot tell a generic `T`
/// that is a `Result`); use [`blocking_fallible`] to count `Err` as failed.
///
/// ```
/// let config = loopwatch::blocking("config.parse", || "port = 8080".len());
/// assert_eq!(config, 11);
/// ```
pub fn blocking<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    call_sync(names::intern_cached(name), None, f, |_| false)
}

/// Like [`blocking`], for a call returning a `Result`: an `Err` counts as failed.
///
/// ```
/// let read = loopwatch::blocking_fallible("config.read", || std::fs::read_to_string("/nonexistent"));
/// assert!(read.is_err());
/// ```
pub fn blocking_fallible<T, E>(
    name: &'static str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    call_sync(names::intern_cached(name), None, f, Result::is_err)
}

/// Per-site thresholds of `#[instrument_blocking(warn = "..", slow = "..")]` (ns; 0 = the watchdog's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SiteThresholds {
    pub(crate) warn_ns: u64,
    pub(crate) slow_ns: u64,
}

/// Times `f` and counts it under `entry`: with the coarse clock when both
/// of its thresholds allow and the call is not one of the sampled.
#[inline]
pub(crate) fn call_sync<T>(
    entry: &'static NameEntry,
    site: Option<SiteThresholds>,
    f: impl FnOnce() -> T,
    failed: impl FnOnce(&T) -> bool,
) -> T {
    let (warn_ns, slow_ns) = thresholds(site);
    let timing = slot::timing(warn_ns.min(slow_ns), false);
    let (fine, timed) = timing.map_or((true, Timed::Sampled), |t| (t.fine, t.timed));
    let mut call = SyncCall {
        entry,
        warn_ns,
        slow_ns,
        fine,
        timed,
        start: read_clock(fine),
        progress: Progress::Idle,
    };
    let out = call.progress.step(f);
    call.progress.finish();
    let took = read_clock(fine).saturating_sub(call.start);
    let counts = timing.map_or_else(|| slot::shared_counts(entry), |t| t.slot.counts(entry));
    if failed(&out) {
        counts.add(|s| &s.calls_error, 1);
    } else {
        counts.add(|s| &s.calls_ok, 1);
    }
    account(entry, counts, (warn_ns, slow_ns), took, timed);
    out
}

#[inline]
fn read_clock(fine: bool) -> u64 {
    if fine {
        now_ns()
    } else {
        coarse_ns()
    }
}

/// A sync call in progress; counts it as panicked when the unwind drops it.
struct SyncCall {
    entry: &'static NameEntry,
    warn_ns: u64,
    slow_ns: u64,
    fine: bool,
    timed: Timed,
    start: u64,
    progress: Progress,
}

impl Drop for SyncCall {
    fn drop(&mut self) {
        if self.progress.dropped() == Some(Ending::Panicked) {
            self.entry.calls.panics.fetch_add(1, Relaxed);
            let took = read_clock(self.fine).saturating_sub(self.start);
            let counts = slot::counts_here(self.entry);
            account(
                self.entry,
                counts,
                (self.warn_ns, self.slow_ns),
                took,
                self.timed,
            );
        }
    }
}

/// Records a sync call's duration: sum and histogram, slow, and blocking
/// when it ran on an async worker.
#[inline]
fn account(
    entry: &'static NameEntry,
    counts: Counts<'static>,
    (warn_ns, slow_ns): (u64, u64),
    took: u64,
    timed: Timed,
) {
    counts.add(|s| &s.call_ns, took);
    entry.calls.durations.record(took, timed);
    if took >= warn_ns.min(slow_ns) {
        long_call(entry, warn_ns, slow_ns, took);
    }
}

#[cold]
fn long_call(entry: &'static NameEntry, warn_ns: u64, slow_ns: u64, took: u64) {
    if took >= slow_ns {
        entry.calls.slow.fetch_add(1, Relaxed);
    }
    if took >= warn_ns && on_async_worker() {
        blocked(entry, took);
    }
}

/// The (blocking, slow) thresholds of a call site in ns: its own where set
/// (non-zero), else the running watchdog's.
#[inline]
fn thresholds(site: Option<SiteThresholds>) -> (u64, u64) {
    let own = |ns: u64| Some(ns).filter(|&ns| ns != 0);
    (
        site.and_then(|s| own(s.warn_ns))
            .unwrap_or_else(|| SETTINGS.blocking_ns()),
        site.and_then(|s| own(s.slow_ns))
            .unwrap_or_else(|| SETTINGS.slow_call_ns()),
    )
}

#[cold]
fn blocked(entry: &'static NameEntry, took: u64) {
    entry.calls.blocking.fetch_add(1, Relaxed);
    if BLOCKING_LOG.ready() {
        tracing::warn!(
            target: "loopwatch",
            call = entry.name,
            seconds = took as f64 / 1e9,
            "blocking call: '{}' ran {:.3} s on an async worker thread; move it to spawn_blocking or make it async (at most one such warning per second)",
            entry.name,
            took as f64 / 1e9
        );
    }
}

/// Whether the calling thread is running async code: a task's poll on a
/// runtime worker, or a `block_on` future. Tokio runs those under a
/// cooperative budget, and nothing else: `spawn_blocking` closures,
/// `block_in_place` sections and plain threads run unconstrained. An
/// unconstrained budget never runs out, so drawing on it (with
/// `coop::poll_proceed`) more times than any budget holds tells the two
/// apart; every draw is given back when its guard drops.
///
/// Called only for calls that took the blocking threshold or longer. Code
/// inside `tokio::task::unconstrained` counts as not async.
pub(crate) fn on_async_worker() -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    // Tokio's budget is 128 polls; one more draw than that proves it unconstrained.
    let mut draws = Vec::with_capacity(130);
    let constrained = loop {
        match tokio::task::coop::poll_proceed(&mut cx) {
            Poll::Pending => break true,
            Poll::Ready(draw) => {
                draws.push(draw);
                if draws.len() > 128 {
                    break false;
                }
            }
        }
    };
    // Give the budget back: each guard restores the value it saw, so the
    // first one, dropped last, restores the original.
    while let Some(draw) = draws.pop() {
        drop(draw);
    }
    constrained
}

/// What `#[instrument_blocking]` expands to (re-exported in the crate's
/// `__private`). Not a public API.
pub(crate) mod call_support {
    use super::*;

    /// One instrumented function: its name and thresholds, resolved once.
    #[derive(Debug)]
    pub struct CallSite {
        name: &'static str,
        thresholds: SiteThresholds,
        entry: OnceLock<&'static NameEntry>,
    }

    impl CallSite {
        /// A call site; `warn_ns`/`slow_ns` of 0 use the watchdog's thresholds.
        pub const fn new(name: &'static str, warn_ns: u64, slow_ns: u64) -> Self {
            CallSite {
                name,
                thresholds: SiteThresholds { warn_ns, slow_ns },
                entry: OnceLock::new(),
            }
        }

        #[inline]
        fn entry(&self) -> &'static NameEntry {
            self.entry.get_or_init(|| names::intern(self.name))
        }
    }

    /// A sync call.
    #[inline]
    pub fn call_sync<T>(
        site: &'static CallSite,
        f: impl FnOnce() -> T,
        failed: fn(&T) -> bool,
    ) -> T {
        super::call_sync(site.entry(), Some(site.thresholds), f, failed)
    }

    /// For functions that do not return a `Result`.
    pub fn never_failed<T>(_: &T) -> bool {
        false
    }

    /// For functions that return a `Result`.
    pub fn is_err<T, E>(r: &Result<T, E>) -> bool {
        r.is_err()
    }

    /// An async call: the whole future's time is the call's duration; a
    /// single poll of the blocking threshold or longer counts as blocking.
    /// Its polls go through the same per-poll path as tasks', so a stall
    /// inside one is named after the call.
    pub fn call_async<F: Future>(
        site: &'static CallSite,
        future: F,
        failed: fn(&F::Output) -> bool,
    ) -> AsyncCall<F> {
        AsyncCall {
            inner: future,
            site,
            failed,
            start: 0,
            timed: Timed::Unsampled,
            progress: Progress::Idle,
        }
    }

    /// The future of an instrumented `async fn`.
    #[pin_project::pin_project(PinnedDrop)]
    #[derive(Debug)]
    pub struct AsyncCall<F: Future> {
        #[pin]
        inner: F,
        site: &'static CallSite,
        failed: fn(&F::Output) -> bool,
        /// When the first poll began (ns; 0 = not polled yet).
        start: u64,
        /// Whether the first poll was one of the sampled (the call then is).
        timed: Timed,
        progress: Progress,
    }

    impl<F: Future> Future for AsyncCall<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            let entry = this.site.entry();
            let (warn_ns, slow_ns) = thresholds(Some(this.site.thresholds));
            let inner = this.inner;
            let polled = this
                .progress
                .step(|| instrument_poll(entry, None, warn_ns.min(slow_ns), || inner.poll(cx)));
            if *this.start == 0 {
                *this.start = polled.start;
                *this.timed = polled.timed;
            }
            // One poll that long blocked the worker; awaiting never counts.
            if polled.took >= warn_ns {
                blocked(entry, polled.took);
            }
            if let Poll::Ready(output) = &polled.out {
                this.progress.finish();
                if (this.failed)(output) {
                    polled.counts.add(|s| &s.calls_error, 1);
                } else {
                    polled.counts.add(|s| &s.calls_ok, 1);
                }
                let end = polled.start.saturating_add(polled.took);
                let took = end.saturating_sub(*this.start);
                polled.counts.add(|s| &s.call_ns, took);
                entry.calls.durations.record(took, *this.timed);
                if took >= slow_ns {
                    entry.calls.slow.fetch_add(1, Relaxed);
                }
            }
            polled.out
        }
    }

    #[pin_project::pinned_drop]
    impl<F: Future> PinnedDrop for AsyncCall<F> {
        fn drop(self: Pin<&mut Self>) {
            if self.progress.dropped() == Some(Ending::Panicked) {
                self.site.entry().calls.panics.fetch_add(1, Relaxed);
            }
        }
    }
}
