//! What the watchdog thread last saw of each watched runtime's workers,
//! published for the end of a slow poll to read: whether that poll held its
//! worker all along ([`poll_held_a_worker`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Id};

/// What the watchdog thread last saw of a runtime's workers, published for
/// the end of a slow poll to read ([`poll_held_a_worker`]).
#[derive(Debug)]
pub(crate) struct WorkerBoard {
    /// The runtime's id.
    runtime: Id,
    /// The coarse clock as read just before the workers were last looked
    /// at (ns; 0: never).
    observed_at: AtomicU64,
    /// Per worker: whether it was running (not parked), and the coarse
    /// clock as read before the last look that saw its metrics unchanged
    /// (ns): they changed after that.
    workers: Box<[(AtomicBool, AtomicU64)]>,
    current_thread: bool,
}

impl WorkerBoard {
    pub(crate) fn new(handle: &Handle) -> Self {
        let n = handle.metrics().num_workers();
        WorkerBoard {
            runtime: handle.id(),
            observed_at: AtomicU64::new(0),
            workers: (0..n)
                .map(|_| (AtomicBool::new(false), AtomicU64::new(0)))
                .collect(),
            current_thread: handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread,
        }
    }

    /// Publishes worker `i`'s state as the watchdog thread saw it.
    pub(crate) fn set(&self, i: usize, running: bool, changed_after: u64) {
        if let Some((r, c)) = self.workers.get(i) {
            r.store(running, Relaxed);
            c.store(changed_after, Relaxed);
        }
    }

    /// Marks the end of one look at every worker.
    pub(crate) fn observed(&self, now: u64) {
        self.observed_at.store(now, Relaxed);
    }
}

/// Every runtime watched in the process, for [`poll_held_a_worker`].
static WATCHED: Mutex<Vec<Weak<WorkerBoard>>> = Mutex::new(Vec::new());

/// Adds a newly watched runtime to the list [`poll_held_a_worker`] reads.
pub(crate) fn publish(board: &Arc<WorkerBoard>) {
    let mut watched = WATCHED.lock();
    watched.retain(|w| w.strong_count() > 0);
    watched.push(Arc::downgrade(board));
}

/// Whether a poll that began at `start` (ns) and is ending now, on this
/// thread, held a worker of its runtime all along. `Some(false)`: every
/// worker of the runtime ran (or parked) after the poll began, so the poll's
/// thread had handed its worker to another thread
/// (`tokio::task::block_in_place`), or was not a worker (a `block_on` on a
/// `spawn_blocking` thread). `None`: not known (the runtime is not watched,
/// or the watchdog has not looked at it since the poll began).
///
/// Called only at the end of a slow poll (cold): it takes a lock.
pub(crate) fn poll_held_a_worker(start: u64) -> Option<bool> {
    let id = Handle::try_current().ok()?.id();
    let board = WATCHED
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .find(|b| b.runtime == id)?;
    if board.current_thread {
        return Some(true);
    }
    // A worker's metrics change only when it parks or at its maintenance:
    // for the answer to be "no", the watchdog must have looked after the
    // poll began, and then seen every running worker change since. The
    // board's times are coarse-clock readings taken before each look, so a
    // stamp below one was taken before that look read anything.
    if board.observed_at.load(Relaxed) <= start {
        return None;
    }
    let held = board
        .workers
        .iter()
        .any(|(running, after)| running.load(Relaxed) && after.load(Relaxed) <= start);
    Some(held)
}
