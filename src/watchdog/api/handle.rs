//! [`Watchdog`]: the handle the application keeps, and the state it shares
//! with the watchdog thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::board::settings::SETTINGS;
use crate::watchdog::builder::Config;
use crate::watchdog::callback::{CallbackStats, CallbackThread, SHUTDOWN_WAIT};
use crate::watchdog::process::ProcessStats;
use crate::watchdog::runtimes::{validate_name, RuntimeEntry, RuntimeSample};
use crate::watchdog::{check, heartbeat, publish, WatchdogBuilder};
use crate::{Error, Health};

/// Only one watchdog runs per process: the id of the process whose
/// watchdog runs, 0 if none. A child made by `fork()` inherits its parent's
/// id here but none of its threads, so it may start its own.
static RUNNING: AtomicU32 = AtomicU32::new(0);

/// The running watchdog, for [`Watchdog::current`]; weak, so that it stops
/// when the application drops its last handle.
static CURRENT: Mutex<std::sync::Weak<Inner>> = Mutex::new(std::sync::Weak::new());

/// Takes the one-watchdog slot for this process.
fn claim_running() -> Result<(), Error> {
    let me = std::process::id();
    let mut owner = RUNNING.load(Relaxed);
    loop {
        if owner == me {
            return Err(Error::AlreadyRunning);
        }
        // Free, or held by the parent this process was forked from.
        match RUNNING.compare_exchange(owner, me, Relaxed, Relaxed) {
            Ok(_) => return Ok(()),
            Err(now) => owner = now,
        }
    }
}

fn release_running() {
    let _ = RUNNING.compare_exchange(std::process::id(), 0, Relaxed, Relaxed);
}

/// State shared by the handles and the watchdog thread.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The runtimes handed to `watch_runtime`; the watchdog thread syncs
    /// its own list from this one at every check.
    pub(crate) runtimes: Mutex<Vec<Arc<RuntimeEntry>>>,
    /// The last health snapshot, replaced whole at every check.
    pub(crate) health: Mutex<Arc<Health>>,
    /// The process's resources as last read (once a second), for health
    /// and for the exporter.
    pub(crate) process: Mutex<ProcessStats>,
    next_serial: AtomicU64,
    pub(crate) callback: Arc<CallbackStats>,
    /// The process that started the watchdog; in a child made by `fork()`
    /// the watchdog's threads do not exist.
    pid: u32,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What stopping the watchdog needs.
struct Threads {
    stop: mpsc::Sender<()>,
    watchdog: JoinHandle<()>,
    callback: Option<CallbackThread>,
}

struct Inner {
    shared: Arc<Shared>,
    threads: Mutex<Option<Threads>>,
}

impl Inner {
    /// Stops the watchdog thread (which closes the callback's queue) and
    /// waits for the callback thread, in all at most about
    /// [`SHUTDOWN_WAIT`] past the end of the check in progress.
    fn stop(&self) {
        let Some(threads) = self.threads.lock().take() else {
            return;
        };
        self.shared.stopped.store(true, Relaxed);
        if self.shared.forked() {
            // The threads belong to the parent: joining them would wait
            // forever, and the settings and slot are the child's own now.
            std::mem::forget(threads);
            return;
        }
        drop(threads.stop);
        if threads.watchdog.thread().id() != std::thread::current().id() {
            let _ = threads.watchdog.join();
        }
        // Each watched runtime's heartbeat task ends at its next poll.
        for entry in self.shared.runtimes.lock().drain(..) {
            entry.beat.stop();
        }
        if let Some(callback) = threads.callback {
            callback.finish(Instant::now() + SHUTDOWN_WAIT);
        }
        SETTINGS.reset();
        release_running();
    }
}

impl Shared {
    /// Whether this is a child process made by `fork()` after the watchdog
    /// started (its threads stayed in the parent).
    pub(crate) fn forked(&self) -> bool {
        std::process::id() != self.pid
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process's watchdog: a thread of its own that watches tokio runtimes
/// and flags a worker stuck in one poll while it is stuck.
///
/// `Watchdog` is a cheap `Clone` handle. The thread stops when
/// [`shutdown`](Watchdog::shutdown) is called or the last handle is dropped,
/// within one check interval. One watchdog runs per process at a time.
///
/// ```no_run
/// # async fn serve() {}
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let watchdog = loopwatch::Watchdog::builder().start()?;
///     watchdog.watch_runtime("main", &tokio::runtime::Handle::current())?;
///     serve().await;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
#[must_use = "dropping the last handle of a watchdog stops it; keep it for as long as the application runs"]
pub struct Watchdog {
    inner: Arc<Inner>,
}

impl fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchdog")
            .field("config", &self.inner.shared.config)
            .field("running", &!self.inner.shared.stopped.load(Relaxed))
            .finish()
    }
}

impl Watchdog {
    /// Default [`WatchdogBuilder::stall_threshold`]: 5 s.
    pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(5);
    /// Default [`WatchdogBuilder::blocking_threshold`]: 100 ms.
    pub const DEFAULT_BLOCKING_THRESHOLD: Duration = crate::board::settings::DEFAULT_BLOCKING;
    /// Default [`WatchdogBuilder::slow_call_threshold`]: 2 s.
    pub const DEFAULT_SLOW_CALL_THRESHOLD: Duration = crate::board::settings::DEFAULT_SLOW_CALL;
    /// Default [`WatchdogBuilder::hung_task_threshold`]: 60 s.
    pub const DEFAULT_HUNG_TASK_THRESHOLD: Duration = Duration::from_secs(60);
    /// Default [`WatchdogBuilder::check_interval`]: 100 ms.
    pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
    /// Default [`WatchdogBuilder::recent_stalls`]: 10.
    pub const DEFAULT_RECENT_STALLS: usize = 10;
    /// Default [`WatchdogBuilder::max_reports_per_minute`]: 10.
    pub const DEFAULT_MAX_REPORTS_PER_MINUTE: u32 = 10;
    /// Smallest [`WatchdogBuilder::check_interval`] accepted: 1 ms.
    pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);
    /// Largest duration accepted for any setting: 30 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Longest runtime name accepted by [`watch_runtime`](Watchdog::watch_runtime).
    pub const MAX_NAME_LEN: usize = 128;

    /// Starts configuring a watchdog.
    pub fn builder() -> WatchdogBuilder {
        WatchdogBuilder::default()
    }

    /// A watchdog that is off (`LOOPWATCH=off`): no thread, nothing
    /// watched; [`watch_runtime`](Self::watch_runtime) checks the name and
    /// does nothing, [`health`](Self::health) says it is off.
    pub(super) fn off(config: Config) -> Watchdog {
        let health = Health {
            issues: vec!["loopwatch is off (LOOPWATCH=off): nothing is watched".to_owned()],
            ..Health::default()
        };
        Watchdog {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    config,
                    runtimes: Mutex::new(Vec::new()),
                    health: Mutex::new(Arc::new(health)),
                    process: Mutex::new(ProcessStats::default()),
                    next_serial: AtomicU64::new(1),
                    callback: Arc::default(),
                    pid: std::process::id(),
                    stopped: AtomicBool::new(true),
                }),
                threads: Mutex::new(None),
            }),
        }
    }

    /// Whether this watchdog is off (`LOOPWATCH=off` with
    /// [`WatchdogBuilder::from_env`]): it watches nothing.
    pub fn is_off(&self) -> bool {
        self.inner.shared.config.off
    }

    /// Starts the watchdog thread with validated settings.
    pub(super) fn launch(config: Config) -> Result<Watchdog, Error> {
        claim_running()?;
        publish::describe_all();
        SETTINGS.apply(config.blocking_threshold, config.slow_call_threshold);
        let shared = Arc::new(Shared {
            config,
            runtimes: Mutex::new(Vec::new()),
            health: Mutex::new(Arc::new(Health::default())),
            process: Mutex::new(ProcessStats::default()),
            next_serial: AtomicU64::new(1),
            callback: Arc::default(),
            pid: std::process::id(),
            stopped: AtomicBool::new(false),
        });
        if shared.config.sample_stacks {
            prepare_stacks();
        }
        let failed = |e| {
            SETTINGS.reset();
            release_running();
            Error::Thread(e)
        };
        // The callback runs on a thread of its own, fed by a bounded queue.
        let (callback, queue) = match shared.config.on_stall.clone() {
            Some(f) => {
                let (thread, queue) =
                    CallbackThread::start(f, shared.callback.clone()).map_err(failed)?;
                (Some(thread), Some(queue))
            }
            None => (None, None),
        };
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        // The first check runs before `start()` returns, so that `health()`
        // has the tasks, calls and process figures from the start.
        let mut checker = check::Checker::new(shared.clone(), queue);
        checker.check();
        let watchdog = std::thread::Builder::new()
            .name("loopwatch-watchdog".into())
            .spawn(move || check::run(checker, &stop_rx))
            .map_err(failed)?;
        let inner = Arc::new(Inner {
            shared,
            threads: Mutex::new(Some(Threads {
                stop: stop_tx,
                watchdog,
                callback,
            })),
        });
        *CURRENT.lock() = Arc::downgrade(&inner);
        Ok(Watchdog { inner })
    }

    /// The watchdog running in this process, if one is: the one
    /// `#[loopwatch::main]` started, for its [`health`](Self::health) in a
    /// handler of your own. `None` once it is shut down, and in a child
    /// process made by `fork()`.
    ///
    /// ```
    /// # fn main() -> Result<(), loopwatch::Error> {
    /// let watchdog = loopwatch::Watchdog::builder().start()?;
    /// let same = loopwatch::Watchdog::current().expect("running");
    /// assert_eq!(same.health().status, loopwatch::Status::Healthy);
    /// watchdog.shutdown();
    /// assert!(loopwatch::Watchdog::current().is_none());
    /// # Ok(()) }
    /// ```
    pub fn current() -> Option<Watchdog> {
        let inner = CURRENT.lock().upgrade()?;
        let watchdog = Watchdog { inner };
        watchdog.is_running().then_some(watchdog)
    }

    /// Watches a runtime under `name`: its workers are checked at every
    /// interval, and a small heartbeat task is spawned on it (it shows in
    /// tokio's alive-task count). Works for multi-thread and current-thread
    /// runtimes, including the one `#[tokio::main]` made
    /// (`Handle::current()`). A runtime that shuts down leaves the watch list
    /// by itself, without a stall.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidName`]: `name` is empty, longer than
    ///   [`MAX_NAME_LEN`](Watchdog::MAX_NAME_LEN) bytes, or has control characters.
    /// - [`Error::DuplicateRuntime`]: a runtime is already watched under `name`.
    /// - [`Error::RuntimeAlreadyWatched`]: this runtime (by tokio's runtime
    ///   id) is already watched under another name.
    /// - [`Error::RuntimeShutDown`]: the runtime has already shut down.
    /// - [`Error::ShutDown`]: this watchdog has been shut down, or this is a
    ///   child process made by `fork()` and the watchdog is the parent's.
    pub fn watch_runtime(&self, name: &str, handle: &Handle) -> Result<(), Error> {
        let shared = &self.inner.shared;
        validate_name(name)?;
        if shared.config.off {
            return Ok(());
        }
        let mut runtimes = shared.runtimes.lock();
        if shared.stopped.load(Relaxed) || shared.forked() {
            return Err(Error::ShutDown);
        }
        if runtimes
            .iter()
            .any(|r| &*r.name == name && r.beat.view().alive)
        {
            return Err(Error::DuplicateRuntime { name: name.into() });
        }
        if let Some(same) = runtimes
            .iter()
            .find(|r| r.handle.id() == handle.id() && r.beat.view().alive)
        {
            return Err(Error::RuntimeAlreadyWatched {
                name: name.into(),
                watched_as: same.name.to_string(),
            });
        }
        runtimes.retain(|r| &*r.name != name);
        let beat = heartbeat::Beat::new();
        drop(handle.spawn(heartbeat::Heartbeat::new(beat.clone())));
        if !beat.view().alive {
            return Err(Error::RuntimeShutDown { name: name.into() });
        }
        let watched_from_inside = Handle::try_current().is_ok_and(|h| h.id() == handle.id());
        if watched_from_inside {
            beat.set_driver_to_current_thread();
        }
        let board = Arc::new(crate::board::workers::WorkerBoard::new(handle));
        let entry = Arc::new(RuntimeEntry {
            name: Arc::from(name),
            serial: shared.next_serial.fetch_add(1, Relaxed),
            handle: handle.clone(),
            beat,
            watched_at: crate::clock::now_ns(),
            watched_from_inside,
            board: Arc::clone(&board),
        });
        crate::board::workers::publish(&board);
        runtimes.push(entry);
        Ok(())
    }

    /// A snapshot of the watched runtimes' state, refreshed at every check.
    /// Serialize it with serde for the JSON of `/health`.
    ///
    /// The status is `stalled` while any worker is stalled; after a stall it
    /// is `degraded` for a minute (the stall shows in `issues`), then
    /// `healthy` again.
    ///
    /// In a child process made by `fork()`, the watchdog inherited from the
    /// parent watches nothing (its thread stayed in the parent): its health
    /// is `degraded` with an issue that says so, never the parent's state.
    pub fn health(&self) -> Health {
        let shared = &self.inner.shared;
        if shared.forked() {
            return Health {
                status: crate::Status::Degraded,
                issues: vec![format!(
                    "this watchdog was started by process {} and watches nothing in this forked child (process {}); start a new one here",
                    shared.pid,
                    std::process::id()
                )],
                ..Health::default()
            };
        }
        Health::clone(&shared.health.lock())
    }

    /// Every live task spawned through loopwatch ([`spawn`](crate::spawn),
    /// [`spawn_named`](crate::spawn_named),
    /// [`spawn_fallible`](crate::spawn_fallible)), the longest idle first,
    /// with its id, name, spawn site, age, state, polls and `tracing` spans
    /// (see [`TaskInfo`](crate::TaskInfo)). Read from the tasks' own
    /// records, not from the runtime: it answers while every worker is
    /// blocked. It allocates a [`TaskInfo`](crate::TaskInfo) per live task
    /// (about 200 bytes each, more with spans); for a bounded view of a
    /// large service use [`task_dump`](Watchdog::task_dump).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), loopwatch::Error> {
    /// let watchdog = loopwatch::Watchdog::builder().start()?;
    /// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// let waiting = loopwatch::spawn_named("waits", async move { let _ = rx.await; });
    /// tokio::task::yield_now().await; // its first poll
    /// let tasks = watchdog.tasks();
    /// let task = tasks.iter().find(|t| t.name == "waits").unwrap();
    /// assert_eq!(task.state, loopwatch::TaskState::Idle);
    /// assert_eq!(task.polls, 1);
    /// assert_eq!(task.id, Some(waiting.id().to_string().parse().unwrap()));
    /// # drop(tx); waiting.await.unwrap(); watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn tasks(&self) -> Vec<crate::TaskInfo> {
        crate::tasks::all(crate::clock::nanos(
            self.inner.shared.config.hung_task_threshold,
        ))
    }

    /// The live tasks' exact counts (running, idle, hung) and the first
    /// `max` of them, the longest idle first (see [`tasks`](Watchdog::tasks)):
    /// what `GET /tasks` serves. Time grows with the number of live tasks
    /// (a read of each task's 64-byte record), memory with `max` only. Its
    /// `Display` is a text dump, one block per task.
    ///
    /// ```
    /// # fn main() -> Result<(), loopwatch::Error> {
    /// let watchdog = loopwatch::Watchdog::builder().start()?;
    /// let dump = watchdog.task_dump(100);
    /// assert!(dump.tasks.len() as u64 <= dump.total);
    /// println!("{dump}");
    /// # watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn task_dump(&self, max: usize) -> crate::TaskDump {
        crate::tasks::dump(
            crate::clock::nanos(self.inner.shared.config.hung_task_threshold),
            max,
        )
    }

    /// Stops the watchdog thread and waits for it (at most about one check
    /// interval), ends the heartbeat task of every watched runtime (at its
    /// next poll), then waits for the [`on_stall`](WatchdogBuilder::on_stall)
    /// callback if one is running, at most 0.5 s more (a slower callback
    /// finishes on its own thread). Every clone of this handle stops
    /// watching. Calling it again does nothing. Afterwards a new watchdog may
    /// be started. In a child process made by `fork()` it returns at once
    /// (the threads stayed in the parent), and the child may start its own
    /// watchdog whether or not it calls this.
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    /// Whether the watchdog thread is running.
    pub fn is_running(&self) -> bool {
        !self.inner.shared.stopped.load(Relaxed) && !self.inner.shared.forked()
    }

    /// Panics caught in the [`on_stall`](WatchdogBuilder::on_stall) callback so far.
    pub fn callback_panics(&self) -> u64 {
        self.inner.shared.callback.panics.load(Relaxed)
    }

    /// Reports not given to the [`on_stall`](WatchdogBuilder::on_stall)
    /// callback because it was too far behind (its queue holds 64 reports).
    pub fn callback_reports_dropped(&self) -> u64 {
        self.inner.shared.callback.dropped.load(Relaxed)
    }

    /// The stall threshold in force.
    pub fn stall_threshold(&self) -> Duration {
        self.inner.shared.config.stall_threshold
    }

    /// The blocking threshold in force.
    pub fn blocking_threshold(&self) -> Duration {
        self.inner.shared.config.blocking_threshold
    }

    /// The slow-call threshold in force.
    pub fn slow_call_threshold(&self) -> Duration {
        self.inner.shared.config.slow_call_threshold
    }

    /// The hung-task threshold in force.
    pub fn hung_task_threshold(&self) -> Duration {
        self.inner.shared.config.hung_task_threshold
    }

    /// The check interval in force.
    pub fn check_interval(&self) -> Duration {
        self.inner.shared.config.check_interval
    }
}

impl Watchdog {
    /// Reads tokio's metrics of every watched runtime now (any thread).
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn runtime_samples(&self) -> Vec<RuntimeSample> {
        let entries: Vec<Arc<RuntimeEntry>> = self.inner.shared.runtimes.lock().clone();
        entries
            .iter()
            .filter(|e| e.beat.view().alive)
            .map(|e| RuntimeSample::read(e))
            .collect()
    }

    /// The process's resources as the watchdog last read them.
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn process_stats(&self) -> ProcessStats {
        *self.inner.shared.process.lock()
    }
}

/// Says once per process when threads stuck on a CPU will have no stack
/// (the kernel refuses `perf_event_open`), and loads the symbol tables
/// before a stall needs them, saying once how memory is copied when the
/// kernel refuses `process_vm_readv`.
fn prepare_stacks() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(why @ loopwatch_stack::NoStack::PerfRefused(errno)) =
        loopwatch_stack::check_sampling()
    {
        if !WARNED.swap(true, Relaxed) {
            tracing::warn!(target: "loopwatch", errno, "threads stuck on a CPU will have no stack in stall reports: {why}");
        }
    }
    let _ = std::thread::Builder::new()
        .name("loopwatch-symbols".into())
        .spawn(|| {
            loopwatch_stack::warm_up();
            report_memory_access();
        });
}

/// Says once how this process's memory is copied, when not by
/// `process_vm_readv`.
fn report_memory_access() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        use loopwatch_stack::os::memory;
        // One copy of a local settles how memory is copied.
        let probe = 0u64;
        let mut out = [0u8; 8];
        memory::copy_memory(std::ptr::addr_of!(probe) as u64, &mut out);
        static SAID: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        if let Some(errno) = memory::refused() {
            if SAID.swap(2, Relaxed) < 2 {
                tracing::warn!(target: "loopwatch", process_vm_readv_errno = errno, "the kernel refuses to copy this process's memory (process_vm_readv and /proc/self/mem): stall reports carry no stack");
            }
        } else if let Some(errno) = memory::vm_readv_refused() {
            if SAID.swap(1, Relaxed) < 1 {
                tracing::debug!(target: "loopwatch", errno, "process_vm_readv refused; stacks are read from /proc/self/mem");
            }
        }
    }
}
