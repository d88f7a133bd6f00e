//! The `on_stall` callback's own thread, so that a slow callback never
//! holds up detection, health or shutdown.
//!
//! The watchdog thread hands each report to a bounded queue and goes on; a
//! report that finds the queue full is dropped and counted
//! (`loopwatch_callback_reports_dropped_total`). The callback thread runs
//! the callback for each report in order, catching panics. At shutdown the
//! queue closes; the thread ends after the report in hand, and `shutdown()`
//! waits for it at most [`SHUTDOWN_WAIT`], then leaves it to finish alone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::watchdog::builder::Callback;
use crate::watchdog::publish;
use crate::watchdog::report::StallReport;

/// Reports that may wait for the callback. With the default rate limit (10
/// reports a minute) the queue fills only behind a callback that takes
/// minutes.
pub(crate) const QUEUE: usize = 64;

/// How long `shutdown()` waits for a callback that is still running.
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_millis(500);

/// Counters shared by the callback thread and the handle.
#[derive(Debug, Default)]
pub(crate) struct CallbackStats {
    pub(crate) panics: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// The watchdog thread's end of the queue.
#[derive(Clone)]
pub(crate) struct CallbackQueue {
    tx: SyncSender<StallReport>,
    stats: Arc<CallbackStats>,
}

impl std::fmt::Debug for CallbackQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackQueue").finish_non_exhaustive()
    }
}

impl CallbackQueue {
    /// Queues `report` for the callback; never waits.
    pub(crate) fn send(&self, report: &StallReport) {
        match self.tx.try_send(report.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.stats.dropped.fetch_add(1, Relaxed) + 1;
                publish::callback_report_dropped();
                // The first drop, then every 100th: a stuck callback must
                // not flood the log either.
                if dropped % 100 == 1 {
                    tracing::warn!(
                        target: "loopwatch",
                        dropped,
                        "the on_stall callback is {QUEUE} reports behind; this report was not given to it"
                    );
                }
            }
            // The callback thread is gone (it could not be started).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The callback thread, as the handle keeps it.
pub(crate) struct CallbackThread {
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for CallbackThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackThread").finish_non_exhaustive()
    }
}

impl CallbackThread {
    /// Starts the thread; returns it and the queue that feeds it.
    pub(crate) fn start(
        callback: Callback,
        stats: Arc<CallbackStats>,
    ) -> std::io::Result<(CallbackThread, CallbackQueue)> {
        let (tx, rx) = mpsc::sync_channel::<StallReport>(QUEUE);
        let (done_tx, done) = mpsc::channel::<()>();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("loopwatch-callback".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _done = done_tx;
                for report in rx {
                    run_one(&callback, &report, &thread_stats);
                }
            })?;
        Ok((CallbackThread { done, thread }, CallbackQueue { tx, stats }))
    }

    pub(crate) fn id(&self) -> ThreadId {
        self.thread.thread().id()
    }

    /// Waits until `deadline` for the thread to end (its queue must be
    /// closed); a callback still running then is left to finish alone.
    pub(crate) fn finish(self, deadline: Instant) {
        if self.id() == std::thread::current().id() {
            return; // shut down from inside the callback
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.done.recv_timeout(wait) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            Ok(()) | Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    target: "loopwatch",
                    "the on_stall callback is still running at shutdown; it finishes on its own thread"
                );
            }
        }
    }
}

fn run_one(callback: &Callback, report: &StallReport, stats: &CallbackStats) {
    if catch_unwind(AssertUnwindSafe(|| callback(report))).is_err() {
        stats.panics.fetch_add(1, Relaxed);
        publish::callback_panicked();
        tracing::error!(target: "loopwatch", "the on_stall callback panicked; the watchdog goes on");
    }
}
