//! The watched runtimes: their identity, the set the watchdog thread keeps
//! in step with `watch_runtime`, and the figures the exporter reads.

use std::sync::Arc;

use tokio::runtime::Handle;

use crate::board::workers::WorkerBoard;
use crate::watchdog::detect::RuntimeMonitor;
use crate::watchdog::heartbeat::Beat;
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
    /// [`poll_held_a_worker`](crate::board::workers::poll_held_a_worker).
    pub(crate) board: Arc<WorkerBoard>,
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
