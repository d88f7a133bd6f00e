//! The heartbeat task each watched runtime runs.
//!
//! The watchdog thread wakes the task at every check (so no timer driver is
//! needed on the watched runtime); the task records when it ran. How late it
//! ran is the runtime's scheduling lag, how long ago it last ran is its age.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::board::slot::{self, NameEntry};
use crate::clock::now_ns;

/// The heartbeat's own name: not in the name registry, so not exported as a task.
static NAME: LazyLock<&'static NameEntry> =
    LazyLock::new(|| NameEntry::unlisted("loopwatch.heartbeat"));

/// State shared by a heartbeat task and the watchdog thread.
#[derive(Debug, Default)]
pub(crate) struct Beat {
    waker: Mutex<Option<Waker>>,
    /// When the watchdog woke the task and it has not run since (0 = not pending).
    pending_since: AtomicU64,
    /// When the task last ran (ns; 0 = never).
    last_beat: AtomicU64,
    /// Lateness of the last run (ns).
    last_lag: AtomicU64,
    /// Runs so far.
    beats: AtomicU64,
    /// False once the task has been dropped (its runtime shut down, or it
    /// ended after `stop`).
    alive: AtomicBool,
    /// Set when the watchdog stops: the task ends at its next poll.
    stopped: AtomicBool,
    /// Kernel id of the thread the task last ran on (0 = unknown): for a
    /// current-thread runtime, the thread that drives it.
    driver_tid: AtomicI64,
}

/// What the watchdog reads of a heartbeat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BeatView {
    pub(crate) last_beat: u64,
    pub(crate) last_lag: u64,
    pub(crate) beats: u64,
    pub(crate) alive: bool,
    pub(crate) driver_tid: i64,
}

impl Beat {
    pub(crate) fn new() -> Arc<Self> {
        let beat = Beat::default();
        beat.alive.store(true, Relaxed);
        Arc::new(beat)
    }

    /// Wakes the heartbeat task (watchdog thread). A wake still pending keeps
    /// its original time, so lateness accumulates while the runtime is stuck.
    pub(crate) fn poke(&self, now: u64) {
        let _ = self
            .pending_since
            .compare_exchange(0, now, Relaxed, Relaxed);
        let waker = self.waker.lock().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(crate) fn view(&self) -> BeatView {
        BeatView {
            last_beat: self.last_beat.load(Relaxed),
            last_lag: self.last_lag.load(Relaxed),
            beats: self.beats.load(Relaxed),
            alive: self.alive.load(Relaxed),
            driver_tid: self.driver_tid.load(Relaxed),
        }
    }

    /// Ends the heartbeat task (at its next poll, which this wakes).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Relaxed);
        let waker = self.waker.lock().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Records the thread that drives the runtime (the caller).
    pub(crate) fn set_driver_to_current_thread(&self) {
        self.driver_tid
            .store(loopwatch_stack::current_tid(), Relaxed);
    }
}

/// The heartbeat task's future. Completes only when the watchdog stops;
/// dropped when its runtime shuts down.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    beat: Arc<Beat>,
}

impl Heartbeat {
    pub(crate) fn new(beat: Arc<Beat>) -> Self {
        Heartbeat { beat }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.beat.alive.store(false, Relaxed);
    }
}

impl Future for Heartbeat {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let beat = &self.beat;
        if beat.stopped.load(Relaxed) {
            return Poll::Ready(());
        }
        let _guard = slot::enter(&NAME);
        let pending = beat.pending_since.swap(0, Relaxed);
        let now = now_ns();
        if pending != 0 {
            beat.last_lag.store(now.saturating_sub(pending), Relaxed);
        }
        beat.last_beat.store(now, Relaxed);
        beat.beats.fetch_add(1, Relaxed);
        beat.set_driver_to_current_thread();
        let mut waker = beat.waker.lock();
        // Again under the lock: a `stop` that took the waker before this
        // poll stored its own is seen here, so the task never sleeps forever.
        if beat.stopped.load(Relaxed) {
            return Poll::Ready(());
        }
        match &*waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
