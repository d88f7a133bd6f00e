//! The watched runtimes: their identity, the set the watchdog thread keeps
//! in step with `watch_runtime`, and the figures the exporter reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::runtime::Handle;

use super::detect::RuntimeMonitor;
use super::heartbeat::Beat;
use crate::{Error, Watchdog};

/// A runtime handed to [`Watchdog::watch_runtime`].
#[derive(Debug)]
pub(crate) struct RuntimeEntry {
    pub(crate) name: Arc<str>,
    /// Unique for the watchdog's life: a runtime watched again under the same
    /// name after the first one shut down gets a new serial.
    pub(crate) serial: u64,
    pub(crate) handle: Handle,
    pub(crate) beat: Arc<Beat>,
    pub(crate) watched_at: u64,
    /// Whether `watch_runtime` was called from inside this runtime (so someone
    /// was driving it then).
    pub(crate) watched_from_inside: bool,
    /// What the watchdog last saw of each worker, for
    /// [`poll_held_a_worker`].
    pub(crate) board: WorkerBoard,
}

/// What the watchdog thread last saw of a runtime's workers, published for
/// the end of a slow poll to read ([`poll_held_a_worker`]).
#[derive(Debug)]
pub(crate) struct WorkerBoard {
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
static WATCHED: Mutex<Vec<Weak<RuntimeEntry>>> = Mutex::new(Vec::new());

/// Adds a newly watched runtime to the list [`poll_held_a_worker`] reads.
pub(crate) fn publish(entry: &Arc<RuntimeEntry>) {
    let mut watched = WATCHED.lock();
    watched.retain(|w| w.strong_count() > 0);
    watched.push(Arc::downgrade(entry));
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
    let entry = WATCHED
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .find(|e| e.handle.id() == id)?;
    let board = &entry.board;
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

impl RuntimeEntry {
    pub(crate) fn identity(&self) -> RuntimeRef {
        RuntimeRef {
            name: self.name.clone(),
            serial: self.serial,
        }
    }
}

/// Which runtime a stall belongs to; travels with the stall from detection
/// to its report and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuntimeRef {
    pub(crate) name: Arc<str>,
    pub(crate) serial: u64,
}

/// What the watchdog thread keeps about one runtime across checks, beside
/// its detection state.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct History {
    /// Stalls flagged since it was watched.
    pub(crate) stalls: u64,
    /// Length of the last stall that ended (ns), and when it ended.
    pub(crate) last_stall_ns: Option<u64>,
    pub(crate) last_stall_end: u64,
    /// Heartbeats already published.
    pub(crate) published_beats: u64,
    /// The stalled-workers gauge as last set, and when the gauges were last set (ns).
    pub(crate) last_stalled_gauge: Option<usize>,
    pub(crate) last_gauges: u64,
}

/// One watched runtime on the watchdog thread.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) monitor: RuntimeMonitor,
    pub(crate) history: History,
}

/// The runtimes the watchdog thread watches, kept in step with the list
/// `watch_runtime` adds to.
#[derive(Debug, Default)]
pub(crate) struct RuntimeSet {
    watched: Vec<Watched>,
}

impl RuntimeSet {
    /// Takes in newly watched runtimes and drops those that shut down (their
    /// heartbeat task was dropped); returns the ones dropped.
    pub(crate) fn sync(&mut self, registered: &mut Vec<Arc<RuntimeEntry>>) -> Vec<RuntimeRef> {
        registered.retain(|r| r.beat.view().alive);
        let mut gone = Vec::new();
        self.watched.retain(|w| {
            let keep = registered.iter().any(|r| Arc::ptr_eq(r, &w.monitor.entry));
            if !keep {
                gone.push(w.monitor.entry.identity());
            }
            keep
        });
        for entry in registered.iter() {
            if !self
                .watched
                .iter()
                .any(|w| Arc::ptr_eq(&w.monitor.entry, entry))
            {
                self.watched.push(Watched {
                    monitor: RuntimeMonitor::new(entry.clone()),
                    history: History::default(),
                });
            }
        }
        gone
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Watched> {
        self.watched.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Watched> {
        self.watched.iter_mut()
    }

    /// The runtime with this serial, if still watched.
    pub(crate) fn get(&self, serial: u64) -> Option<&Watched> {
        self.watched
            .iter()
            .find(|w| w.monitor.entry.serial == serial)
    }

    pub(crate) fn get_mut(&mut self, serial: u64) -> Option<&mut Watched> {
        self.watched
            .iter_mut()
            .find(|w| w.monitor.entry.serial == serial)
    }
}

/// Figures of one watched runtime, read at one instant (for the exporter).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
pub(crate) struct RuntimeSample {
    pub(crate) name: Arc<str>,
    pub(crate) workers: usize,
    pub(crate) alive_tasks: usize,
    pub(crate) global_queue_depth: usize,
    pub(crate) busy_seconds: f64,
    pub(crate) parks: u64,
    /// Figures only tokio_unstable has.
    #[cfg(tokio_unstable)]
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) unstable: UnstableSample,
}

/// Runtime figures available under `--cfg tokio_unstable`.
#[cfg(tokio_unstable)]
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
pub(crate) struct UnstableSample {
    pub(crate) polls: u64,
    pub(crate) steals: u64,
    pub(crate) overflows: u64,
    pub(crate) spawned_tasks: u64,
    pub(crate) budget_forced_yields: u64,
    pub(crate) blocking_threads: usize,
}

impl RuntimeSample {
    /// Reads tokio's metrics of one runtime now (any thread).
    pub(crate) fn read(e: &RuntimeEntry) -> RuntimeSample {
        let m = e.handle.metrics();
        let workers = m.num_workers();
        #[cfg(target_has_atomic = "64")]
        let (busy_seconds, parks) = (0..workers).fold((0.0, 0), |(busy, parks), w| {
            (
                busy + m.worker_total_busy_duration(w).as_secs_f64(),
                parks + m.worker_park_count(w),
            )
        });
        #[cfg(not(target_has_atomic = "64"))]
        let (busy_seconds, parks) = (0.0, 0);
        RuntimeSample {
            name: e.name.clone(),
            workers,
            alive_tasks: m.num_alive_tasks(),
            global_queue_depth: m.global_queue_depth(),
            busy_seconds,
            parks,
            #[cfg(tokio_unstable)]
            unstable: UnstableSample {
                polls: (0..workers).map(|w| m.worker_poll_count(w)).sum(),
                steals: (0..workers).map(|w| m.worker_steal_count(w)).sum(),
                overflows: (0..workers).map(|w| m.worker_overflow_count(w)).sum(),
                spawned_tasks: m.spawned_tasks_count(),
                budget_forced_yields: m.budget_forced_yield_count(),
                blocking_threads: m.num_blocking_threads(),
            },
        }
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let reason = if name.trim().is_empty() {
        "it is empty; use a short name such as \"main\""
    } else if name.len() > Watchdog::MAX_NAME_LEN {
        "it is longer than 128 bytes; use a short name such as \"main\""
    } else if name.chars().any(char::is_control) {
        "it contains control characters; use letters, digits, '-', '_' or '.'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.into(),
        reason,
    })
}
