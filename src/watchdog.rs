//! The watchdog: its builder, its handle and its thread.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::clock::{nanos, now_ns, unix_seconds};
use crate::health::{Health, RecentStall, RuntimeHealth, StalledWorker, Status};
use crate::heartbeat::{Beat, Heartbeat};
use crate::monitor::{RuntimeEntry, RuntimeMonitor, Thresholds};
use crate::series;
use crate::stall::{Event, StallKey, StallMachine, StallReport};
use crate::{slot, Error};

type Callback = Arc<dyn Fn(&StallReport) + Send + Sync>;

/// Only one watchdog runs per process.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Settings, validated.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) stall_threshold: Duration,
    pub(crate) blocking_threshold: Duration,
    pub(crate) slow_call_threshold: Duration,
    pub(crate) hung_task_threshold: Duration,
    pub(crate) check_interval: Duration,
    pub(crate) max_reports_per_minute: u32,
    pub(crate) sample_stacks: bool,
    pub(crate) resident_memory_limit: Option<u64>,
    pub(crate) recent_stalls: usize,
    pub(crate) stack_signal: Option<i32>,
    pub(crate) full_stacks: bool,
    on_stall: Option<Callback>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("stall_threshold", &self.stall_threshold)
            .field("blocking_threshold", &self.blocking_threshold)
            .field("slow_call_threshold", &self.slow_call_threshold)
            .field("hung_task_threshold", &self.hung_task_threshold)
            .field("check_interval", &self.check_interval)
            .field("max_reports_per_minute", &self.max_reports_per_minute)
            .field("sample_stacks", &self.sample_stacks)
            .field("resident_memory_limit", &self.resident_memory_limit)
            .field("recent_stalls", &self.recent_stalls)
            .field("stack_signal", &self.stack_signal)
            .field("full_stacks", &self.full_stacks)
            .field(
                "on_stall",
                &self.on_stall.as_ref().map(|_| "Fn(&StallReport)"),
            )
            .finish()
    }
}

/// Configures and starts a [`Watchdog`]. Made by [`Watchdog::builder`].
///
/// Every setting has a default (the `DEFAULT_*` constants of [`Watchdog`]);
/// [`start`](Builder::start) checks them all together.
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), loopwatch::Error> {
/// let watchdog = loopwatch::Watchdog::builder()
///     .stall_threshold(Duration::from_secs(2))
///     .check_interval(Duration::from_millis(50))
///     .on_stall(|report| eprintln!("stall: {report}"))
///     .start()?;
/// # watchdog.shutdown();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start()` is called"]
pub struct Builder {
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            config: Config {
                stall_threshold: Watchdog::DEFAULT_STALL_THRESHOLD,
                blocking_threshold: Watchdog::DEFAULT_BLOCKING_THRESHOLD,
                slow_call_threshold: Watchdog::DEFAULT_SLOW_CALL_THRESHOLD,
                hung_task_threshold: Watchdog::DEFAULT_HUNG_TASK_THRESHOLD,
                check_interval: Watchdog::DEFAULT_CHECK_INTERVAL,
                max_reports_per_minute: Watchdog::DEFAULT_MAX_REPORTS_PER_MINUTE,
                sample_stacks: true,
                resident_memory_limit: None,
                recent_stalls: Watchdog::DEFAULT_RECENT_STALLS,
                stack_signal: None,
                full_stacks: false,
                on_stall: None,
            },
        }
    }
}

impl Builder {
    /// A worker stuck this long in one poll is stalled.
    /// Default: [`Watchdog::DEFAULT_STALL_THRESHOLD`] (5 s).
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.config.stall_threshold = threshold;
        self
    }

    /// A poll or sync call this long on an async worker thread is blocking.
    /// Must be shorter than the stall threshold.
    /// Default: [`Watchdog::DEFAULT_BLOCKING_THRESHOLD`] (100 ms).
    pub fn blocking_threshold(mut self, threshold: Duration) -> Self {
        self.config.blocking_threshold = threshold;
        self
    }

    /// An instrumented call this long is slow.
    /// Default: [`Watchdog::DEFAULT_SLOW_CALL_THRESHOLD`] (2 s).
    pub fn slow_call_threshold(mut self, threshold: Duration) -> Self {
        self.config.slow_call_threshold = threshold;
        self
    }

    /// A live task not polled for this long is hung. Live tasks are scanned
    /// every tenth of it (at most every 10 s), so a hung task shows within
    /// the threshold plus a tenth.
    /// Default: [`Watchdog::DEFAULT_HUNG_TASK_THRESHOLD`] (60 s).
    pub fn hung_task_threshold(mut self, threshold: Duration) -> Self {
        self.config.hung_task_threshold = threshold;
        self
    }

    /// How often the watchdog thread looks. A stall is flagged no later than
    /// `stall_threshold + check_interval` after it began (plus scheduling
    /// noise). Must be at least 1 ms and shorter than the stall threshold.
    /// Default: [`Watchdog::DEFAULT_CHECK_INTERVAL`] (100 ms).
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.config.check_interval = interval;
        self
    }

    /// The most stall reports (first reports and escalations, in logs and to
    /// the callback) sent per minute; the rest are counted in
    /// `loopwatch_reports_suppressed_total`. Stalls are still counted and
    /// shown in [`Health`]. Default: [`Watchdog::DEFAULT_MAX_REPORTS_PER_MINUTE`] (10).
    pub fn max_reports_per_minute(mut self, max: u32) -> Self {
        self.config.max_reports_per_minute = max;
        self
    }

    /// Whether the watchdog may take another thread's stack by sending it a
    /// real-time signal (Linux: `SIGRTMIN + 6`, handled by loopwatch; not
    /// installed if the application handles that signal). Today it is used
    /// to tell a current-thread runtime stuck in a poll from one that nobody
    /// drives; only a thread that tokio shows as running is signalled.
    /// Interrupted system calls restart (`SA_RESTART`); `sleep` resumes with
    /// its remaining time. Default: `true`. Without it, a current-thread
    /// runtime left undriven after being driven is reported as stalled.
    pub fn sample_stacks(mut self, enabled: bool) -> Self {
        self.config.sample_stacks = enabled;
        self
    }

    /// The real-time signal used to take stacks (Linux), if `SIGRTMIN + 6`
    /// is taken by something else in the process: a number between
    /// `SIGRTMIN` and `SIGRTMAX`. The first watchdog's choice holds for the
    /// process (the handler is installed once).
    pub fn stack_signal(mut self, signal: i32) -> Self {
        self.config.stack_signal = Some(signal);
        self
    }

    /// Whether stall reports carry the whole stack of the stuck thread. By
    /// default the frames of the signal handler (at the top) and of tokio's
    /// scheduler (at the bottom) are left out. Default: `false`.
    pub fn full_stacks(mut self, full: bool) -> Self {
        self.config.full_stacks = full;
        self
    }

    /// How many of the last reported stalls [`Health::recent_stalls`] keeps,
    /// with their stacks, for an operator who arrives after the fact.
    /// Default: [`Watchdog::DEFAULT_RECENT_STALLS`] (10).
    pub fn recent_stalls(mut self, count: usize) -> Self {
        self.config.recent_stalls = count;
        self
    }

    /// Resident memory (bytes) above which [`Health`] is `degraded`, with an
    /// issue line. Default: none. Health is also degraded when open file
    /// descriptors reach 90 % of the process's limit.
    pub fn resident_memory_limit(mut self, bytes: u64) -> Self {
        self.config.resident_memory_limit = Some(bytes);
        self
    }

    /// Called on the watchdog thread when a stall is first flagged and again
    /// at each escalation (2x, 4x, ... the threshold). A panic in it is
    /// caught, logged and counted (`loopwatch_callback_panics_total`); the
    /// watchdog goes on. Keep it short: the watchdog waits for it. Do not
    /// move a clone of the [`Watchdog`] into it: the watchdog would then keep
    /// itself alive and stop only on an explicit [`Watchdog::shutdown`].
    pub fn on_stall<F>(mut self, callback: F) -> Self
    where
        F: Fn(&StallReport) + Send + Sync + 'static,
    {
        self.config.on_stall = Some(Arc::new(callback));
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let c = &self.config;
        let durations = [
            (
                "stall_threshold",
                c.stall_threshold,
                "Duration::from_secs(5)",
            ),
            (
                "blocking_threshold",
                c.blocking_threshold,
                "Duration::from_millis(100)",
            ),
            (
                "slow_call_threshold",
                c.slow_call_threshold,
                "Duration::from_secs(2)",
            ),
            (
                "hung_task_threshold",
                c.hung_task_threshold,
                "Duration::from_secs(60)",
            ),
            (
                "check_interval",
                c.check_interval,
                "Duration::from_millis(100)",
            ),
        ];
        for (setting, value, example) in durations {
            if value.is_zero() {
                return Err(Error::ZeroDuration { setting, example });
            }
            if value > Watchdog::MAX_DURATION {
                return Err(Error::DurationTooLarge {
                    setting,
                    value,
                    max: Watchdog::MAX_DURATION,
                });
            }
        }
        if c.check_interval < Watchdog::MIN_CHECK_INTERVAL {
            return Err(Error::CheckIntervalTooShort {
                value: c.check_interval,
                min: Watchdog::MIN_CHECK_INTERVAL,
            });
        }
        let pairs = [
            (
                "check_interval",
                c.check_interval,
                "stall_threshold",
                c.stall_threshold,
                "the watchdog must look several times per threshold to flag a stall in time; lower check_interval or raise stall_threshold",
            ),
            (
                "blocking_threshold",
                c.blocking_threshold,
                "stall_threshold",
                c.stall_threshold,
                "a stall is a poll that blocks for much longer than a blocking poll; lower blocking_threshold or raise stall_threshold",
            ),
            (
                "check_interval",
                c.check_interval,
                "hung_task_threshold",
                c.hung_task_threshold,
                "the watchdog must look at least once per hung-task threshold; lower check_interval or raise hung_task_threshold",
            ),
        ];
        for (smaller, smaller_value, larger, larger_value, hint) in pairs {
            if smaller_value >= larger_value {
                return Err(Error::Inconsistent {
                    smaller,
                    smaller_value,
                    larger,
                    larger_value,
                    hint,
                });
            }
        }
        if c.max_reports_per_minute == 0 {
            return Err(Error::ZeroReportRate);
        }
        if let Some(signal) = c.stack_signal {
            if !valid_realtime_signal(signal) {
                return Err(Error::InvalidSetting {
                    setting: "stack_signal",
                    reason: "must be a real-time signal, between SIGRTMIN and SIGRTMAX",
                });
            }
        }
        if c.resident_memory_limit == Some(0) {
            return Err(Error::InvalidSetting {
                setting: "resident_memory_limit",
                reason: "must be greater than zero; leave it unset for no limit",
            });
        }
        Ok(())
    }

    /// Checks the settings and starts the watchdog thread (`loopwatch-watchdog`).
    ///
    /// # Errors
    ///
    /// - [`Error::ZeroDuration`], [`Error::DurationTooLarge`],
    ///   [`Error::CheckIntervalTooShort`], [`Error::Inconsistent`],
    ///   [`Error::ZeroReportRate`]: a setting cannot work; the message says
    ///   which and what to change.
    /// - [`Error::AlreadyRunning`]: another watchdog runs in this process.
    ///   Share the first one (it is `Clone`) or shut it down first.
    /// - [`Error::Thread`]: the OS refused to start the thread.
    pub fn start(self) -> Result<Watchdog, Error> {
        self.validate()?;
        if RUNNING
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_err()
        {
            return Err(Error::AlreadyRunning);
        }
        series::describe_all();
        crate::poll::set_blocking_threshold(self.config.blocking_threshold);
        crate::call::set_slow_call_threshold(self.config.slow_call_threshold);
        let shared = Arc::new(Shared {
            config: self.config,
            runtimes: Mutex::new(Vec::new()),
            health: Mutex::new(Arc::new(initial_health())),
            next_serial: AtomicU64::new(1),
            callback_panics: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        if let Some(signal) = shared.config.stack_signal {
            crate::stack::choose_signal(signal);
        }
        if shared.config.sample_stacks {
            // Load the symbol tables before a stall needs them (once per process).
            let _ = std::thread::Builder::new()
                .name("loopwatch-symbols".into())
                .spawn(|| {
                    crate::stack::warm_up();
                    crate::evidence::warm_up();
                });
        }
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("loopwatch-watchdog".into())
            .spawn(move || run(&thread_shared, &stop_rx))
            .map_err(|e| {
                RUNNING.store(false, Relaxed);
                Error::Thread(e)
            })?;
        Ok(Watchdog {
            inner: Arc::new(Inner {
                shared,
                stop: Mutex::new(Some((stop_tx, thread))),
            }),
        })
    }
}

/// The health before the first check: no runtime yet, the task and call
/// counts as they stand (they are kept whether or not a watchdog runs).
fn initial_health() -> Health {
    let (tasks, calls, hung_tasks) = crate::usage::Usage::default().totals();
    Health {
        tasks,
        calls,
        hung_tasks,
        ..Health::default()
    }
}

/// State shared by the handles and the watchdog thread.
pub(crate) struct Shared {
    pub(crate) config: Config,
    runtimes: Mutex<Vec<Arc<RuntimeEntry>>>,
    health: Mutex<Arc<Health>>,
    next_serial: AtomicU64,
    callback_panics: AtomicU64,
    stopped: AtomicBool,
}

struct Inner {
    shared: Arc<Shared>,
    stop: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Inner {
    fn stop(&self) {
        let Some((tx, thread)) = self.stop.lock().take() else {
            return;
        };
        self.shared.stopped.store(true, Relaxed);
        drop(tx);
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
        RUNNING.store(false, Relaxed);
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
    /// Default [`Builder::stall_threshold`]: 5 s.
    pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(5);
    /// Default [`Builder::blocking_threshold`]: 100 ms.
    pub const DEFAULT_BLOCKING_THRESHOLD: Duration = Duration::from_millis(100);
    /// Default [`Builder::slow_call_threshold`]: 2 s.
    pub const DEFAULT_SLOW_CALL_THRESHOLD: Duration = Duration::from_secs(2);
    /// Default [`Builder::hung_task_threshold`]: 60 s.
    pub const DEFAULT_HUNG_TASK_THRESHOLD: Duration = Duration::from_secs(60);
    /// Default [`Builder::check_interval`]: 100 ms.
    pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
    /// Default [`Builder::recent_stalls`]: 10.
    pub const DEFAULT_RECENT_STALLS: usize = 10;
    /// Default [`Builder::max_reports_per_minute`]: 10.
    pub const DEFAULT_MAX_REPORTS_PER_MINUTE: u32 = 10;
    /// Smallest [`Builder::check_interval`] accepted: 1 ms.
    pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);
    /// Largest duration accepted for any setting: 30 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Longest runtime name accepted by [`watch_runtime`](Watchdog::watch_runtime).
    pub const MAX_NAME_LEN: usize = 128;

    /// Starts configuring a watchdog.
    pub fn builder() -> Builder {
        Builder::default()
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
    /// - [`Error::RuntimeShutDown`]: the runtime has already shut down.
    /// - [`Error::ShutDown`]: this watchdog has been shut down.
    pub fn watch_runtime(&self, name: &str, handle: &Handle) -> Result<(), Error> {
        let shared = &self.inner.shared;
        validate_name(name)?;
        let mut runtimes = shared.runtimes.lock();
        if shared.stopped.load(Relaxed) {
            return Err(Error::ShutDown);
        }
        if runtimes
            .iter()
            .any(|r| &*r.name == name && r.beat.view().alive)
        {
            return Err(Error::DuplicateRuntime { name: name.into() });
        }
        runtimes.retain(|r| &*r.name != name);
        let beat = Beat::new();
        drop(handle.spawn(Heartbeat::new(beat.clone())));
        if !beat.view().alive {
            return Err(Error::RuntimeShutDown { name: name.into() });
        }
        let watched_from_inside = Handle::try_current().is_ok_and(|h| h.id() == handle.id());
        if watched_from_inside {
            beat.set_driver_to_current_thread();
        }
        runtimes.push(Arc::new(RuntimeEntry {
            name: Arc::from(name),
            serial: shared.next_serial.fetch_add(1, Relaxed),
            handle: handle.clone(),
            beat,
            watched_at: now_ns(),
            watched_from_inside,
        }));
        Ok(())
    }

    /// A snapshot of the watched runtimes' state, refreshed at every check.
    /// Serialize it with serde for the JSON of `/health`.
    ///
    /// The status is `stalled` while any worker is stalled; after a stall it
    /// is `degraded` for a minute (the stall shows in `issues`), then
    /// `healthy` again.
    pub fn health(&self) -> Health {
        Health::clone(&self.inner.shared.health.lock())
    }

    /// Stops the watchdog thread and waits for it (at most about one check
    /// interval). Every clone of this handle stops watching. Calling it again
    /// does nothing. Afterwards a new watchdog may be started.
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    /// Whether the watchdog thread is running.
    pub fn is_running(&self) -> bool {
        !self.inner.shared.stopped.load(Relaxed)
    }

    /// Panics caught in the [`on_stall`](Builder::on_stall) callback so far.
    pub fn callback_panics(&self) -> u64 {
        self.inner.shared.callback_panics.load(Relaxed)
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

impl Watchdog {
    /// Reads tokio's metrics of every watched runtime now (any thread).
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn runtime_samples(&self) -> Vec<RuntimeSample> {
        let entries: Vec<Arc<RuntimeEntry>> = self.inner.shared.runtimes.lock().clone();
        entries
            .iter()
            .filter(|e| e.beat.view().alive)
            .map(|e| {
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
            })
            .collect()
    }
}

#[cfg(target_os = "linux")]
fn valid_realtime_signal(signal: i32) -> bool {
    (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal)
}

#[cfg(not(target_os = "linux"))]
fn valid_realtime_signal(_signal: i32) -> bool {
    true
}

fn validate_name(name: &str) -> Result<(), Error> {
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

/// Per-runtime figures kept across checks by the watchdog thread.
#[derive(Debug, Default, Clone, Copy)]
struct RuntimeTotals {
    stalls: u64,
    last_stall_ns: Option<u64>,
    last_stall_end: u64,
    last_beats: u64,
    /// The stalled-workers gauge as last set, and when the gauges were last set (ns).
    last_stalled_gauge: Option<usize>,
    last_gauges: u64,
}

/// The watchdog thread's state.
struct Checker {
    shared: Arc<Shared>,
    thresholds: Thresholds,
    /// How often each runtime's heartbeat task is woken.
    heartbeat_ns: u64,
    monitors: Vec<RuntimeMonitor>,
    totals: std::collections::HashMap<u64, RuntimeTotals>,
    stalls: StallMachine,
    /// Tasks and calls, read from the name registry.
    usage: crate::usage::Usage,
    /// When hung tasks were last looked for and usage last published (ns).
    last_usage: u64,
    /// How often that happens (ns).
    usage_every_ns: u64,
    hung_ns: u64,
    /// Each active stall's last stack sample, to tell whether it moved.
    last_frames: std::collections::HashMap<StallKey, Vec<usize>>,
    /// Threads found stuck for stalls of handle-only runtimes.
    stuck_threads: std::collections::HashMap<StallKey, i64>,
    /// The last reported stalls, oldest first.
    recent: std::collections::VecDeque<(StallKey, RecentStall)>,
    /// When live tasks were last scanned for hung ones, and how often (ns).
    last_hung_scan: u64,
    hung_scan_every_ns: u64,
    /// The process's resources at the last reading.
    process: crate::process::ProcessStats,
}

/// How often the heartbeat task of each runtime is woken: a tenth of the
/// stall threshold, at least every check and at most every second. Each wake
/// is a cross-thread wake-up, the largest part of a check's cost per runtime.
fn heartbeat_interval(config: &Config) -> Duration {
    let floor = config.check_interval;
    (config.stall_threshold / 10).clamp(floor, floor.max(Duration::from_secs(1)))
}

/// How often live tasks are scanned for hung ones (every live task is
/// read): a tenth of the hung-task threshold, between the usage interval and
/// 10 s. A task is reported hung within `hung_task_threshold` plus this.
fn hung_scan_interval(config: &Config) -> Duration {
    let floor = usage_interval(config);
    (config.hung_task_threshold / 10).clamp(floor, floor.max(Duration::from_secs(10)))
}

/// How often the per-name series are published and the process's resources
/// read: every second, or every tenth of the hung-task threshold if that is
/// shorter, and at least every check.
fn usage_interval(config: &Config) -> Duration {
    (config.hung_task_threshold / 10)
        .min(Duration::from_secs(1))
        .max(config.check_interval)
}

fn run(shared: &Arc<Shared>, stop: &mpsc::Receiver<()>) {
    let config = &shared.config;
    let mut checker = Checker {
        shared: shared.clone(),
        thresholds: Thresholds {
            stall_ns: nanos(config.stall_threshold),
            check_ns: nanos(config.check_interval),
            sample_stacks: config.sample_stacks,
        },
        heartbeat_ns: nanos(heartbeat_interval(config)),
        monitors: Vec::new(),
        totals: std::collections::HashMap::new(),
        stalls: StallMachine::new(config.stall_threshold, config.max_reports_per_minute),
        usage: crate::usage::Usage::default(),
        last_usage: 0,
        usage_every_ns: nanos(usage_interval(config)),
        hung_ns: nanos(config.hung_task_threshold),
        last_frames: std::collections::HashMap::new(),
        stuck_threads: std::collections::HashMap::new(),
        recent: std::collections::VecDeque::new(),
        last_hung_scan: 0,
        hung_scan_every_ns: nanos(hung_scan_interval(config)),
        process: crate::process::read(),
    };
    tracing::debug!(target: "loopwatch", ?config, "watchdog started");
    // Returns at once when the handle drops the sender (shutdown).
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(config.check_interval) {
        checker.check();
    }
    tracing::debug!(target: "loopwatch", "watchdog stopped");
}

impl Checker {
    fn sync_runtimes(&mut self) {
        let mut registered = self.shared.runtimes.lock();
        // Runtimes whose heartbeat task was dropped have shut down.
        registered.retain(|r| r.beat.view().alive);
        self.monitors
            .retain(|m| registered.iter().any(|r| Arc::ptr_eq(r, &m.entry)));
        for entry in registered.iter() {
            if !self.monitors.iter().any(|m| Arc::ptr_eq(&m.entry, entry)) {
                self.monitors.push(RuntimeMonitor::new(entry.clone()));
            }
        }
    }

    fn check(&mut self) {
        let gone: Vec<(Arc<str>, u64)> = {
            let before: Vec<(Arc<str>, u64)> = self
                .monitors
                .iter()
                .map(|m| (m.entry.name.clone(), m.entry.serial))
                .collect();
            self.sync_runtimes();
            before
                .into_iter()
                .filter(|(_, s)| !self.monitors.iter().any(|m| m.entry.serial == *s))
                .collect()
        };
        for (name, serial) in &gone {
            series::runtime_gone(name);
            self.totals.remove(serial);
            tracing::debug!(target: "loopwatch", runtime = %name, "runtime shut down; no longer watched");
        }

        let now = now_ns();
        let slots = slot::snapshot();
        let mut seen = Vec::new();
        for m in &mut self.monitors {
            m.sample(now);
            seen.extend(m.detect(now, &slots, self.thresholds));
            if now.saturating_sub(m.last_poke) >= self.heartbeat_ns {
                m.last_poke = now;
                m.entry.beat.poke(now);
            }
        }
        // Stalls of runtimes that shut down end without being counted as ended stalls.
        let events = self.stalls.update(now, seen);
        for event in events {
            self.deliver(event, &gone);
        }
        if now.saturating_sub(self.last_usage) >= self.usage_every_ns {
            self.last_usage = now;
            if now.saturating_sub(self.last_hung_scan) >= self.hung_scan_every_ns {
                self.last_hung_scan = now;
                self.usage.scan_hung(now, self.hung_ns);
            }
            self.usage.publish();
            self.process = crate::process::read();
        }
        self.publish(now);
    }

    fn deliver(&mut self, event: Event, gone: &[(Arc<str>, u64)]) {
        match event {
            Event::Report {
                mut report,
                key,
                os_tid,
            } => {
                self.add_evidence(&mut report, key, os_tid);
                if report.escalation == 0 {
                    series::stall_flagged(&report.runtime);
                    if report.cpu_bound == Some(true) {
                        series::stall_on_cpu(&report.runtime);
                    }
                    if let Some(m) = self
                        .monitors
                        .iter()
                        .find(|m| *m.entry.name == report.runtime)
                    {
                        self.totals.entry(m.entry.serial).or_default().stalls += 1;
                    }
                    tracing::warn!(
                        target: "loopwatch",
                        runtime = %report.runtime,
                        worker = report.worker,
                        stalled_for_seconds = report.stalled_for.as_secs_f64(),
                        task = report.task.as_deref(),
                        thread = report.thread.as_deref(),
                        cpu_bound = report.cpu_bound,
                        "stall: {report}{}",
                        report.backtrace.as_deref().map_or(String::new(), |b| format!("\nstack of the stuck thread:\n{b}"))
                    );
                } else {
                    tracing::warn!(
                        target: "loopwatch",
                        runtime = %report.runtime,
                        worker = report.worker,
                        stalled_for_seconds = report.stalled_for.as_secs_f64(),
                        task = report.task.as_deref(),
                        thread = report.thread.as_deref(),
                        escalation = report.escalation,
                        cpu_bound = report.cpu_bound,
                        stack_moved = report.stack_moved,
                        "stall continues: {report}{}",
                        match report.stack_moved {
                            Some(false) => "; stuck at the same place",
                            Some(true) => "; the stack moved since the last report",
                            None => "",
                        }
                    );
                }
                self.callback(&report);
            }
            Event::Suppressed { runtime, new } => {
                if new {
                    series::stall_flagged(&runtime);
                    if let Some(m) = self.monitors.iter().find(|m| m.entry.name == runtime) {
                        self.totals.entry(m.entry.serial).or_default().stalls += 1;
                    }
                }
                series::report_suppressed();
            }
            Event::End {
                key,
                runtime,
                runtime_serial,
                worker,
                task,
                duration,
                reported,
            } => {
                if gone.iter().any(|(_, s)| *s == runtime_serial) {
                    if reported {
                        tracing::info!(target: "loopwatch", runtime = %runtime, "runtime shut down during a stall; stall no longer watched");
                    }
                    return;
                }
                series::stall_ended(&runtime, duration);
                self.last_frames.remove(&key);
                self.stuck_threads.remove(&key);
                if let Some((_, entry)) = self.recent.iter_mut().find(|(k, _)| *k == key) {
                    entry.ended = true;
                    entry.stalled_for_seconds = duration.as_secs_f64();
                }
                let totals = self.totals.entry(runtime_serial).or_default();
                totals.last_stall_ns = Some(nanos(duration));
                totals.last_stall_end = now_ns();
                if reported {
                    tracing::info!(
                        target: "loopwatch",
                        runtime = %runtime,
                        worker,
                        task,
                        duration_seconds = duration.as_secs_f64(),
                        "stall ended after {:.1} s",
                        duration.as_secs_f64()
                    );
                }
            }
        }
    }

    /// Adds the stuck thread's stack and CPU state to a report, and keeps it
    /// among the recent stalls.
    fn add_evidence(&mut self, report: &mut StallReport, key: StallKey, mut os_tid: i64) {
        let began = std::time::Instant::now();
        let sample_stacks = self.shared.config.sample_stacks;
        if os_tid == 0 && sample_stacks {
            os_tid = self.find_stuck_worker(&report.runtime, key);
        }
        let config = &self.shared.config;
        let evidence = crate::evidence::gather(os_tid, sample_stacks, config.full_stacks);
        tracing::debug!(
            target: "loopwatch",
            os_tid,
            frames = evidence.frames.len(),
            seconds = began.elapsed().as_secs_f64(),
            "took the stuck thread's stack and state"
        );
        report.cpu_bound = evidence.cpu_bound;
        report.backtrace = evidence.backtrace;
        if report.escalation > 0 && !evidence.frames.is_empty() {
            if let Some(previous) = self.last_frames.get(&key) {
                // The top frames are the handler's; compare from the interrupted code down.
                report.stack_moved = Some(previous.get(3..) != evidence.frames.get(3..));
            }
        }
        if !evidence.frames.is_empty() {
            self.last_frames.insert(key, evidence.frames);
        }
        let recent = RecentStall {
            runtime: report.runtime.clone(),
            worker: report.worker,
            task: report.task.clone(),
            thread: report.thread.clone(),
            stalled_for_seconds: report.stalled_for.as_secs_f64(),
            ended: false,
            cpu_bound: report.cpu_bound,
            backtrace: report.backtrace.clone(),
        };
        match self.recent.iter_mut().find(|(k, _)| *k == key) {
            Some((_, entry)) => *entry = recent,
            None => {
                self.recent.push_back((key, recent));
                while self.recent.len() > config.recent_stalls {
                    self.recent.pop_front();
                }
            }
        }
    }

    /// For a runtime known only by its handle, finds the thread of a stalled
    /// worker: among the runtime's worker threads seen so far (every worker
    /// runs the heartbeat task now and then), the ones not in an instrumented
    /// poll have their stacks taken; a thread inside a task's poll and not in
    /// tokio's park code is stuck. Threads already given to another stall of
    /// this runtime are skipped. 0 when none is found.
    fn find_stuck_worker(&mut self, runtime: &str, key: StallKey) -> i64 {
        let Some(monitor) = self.monitors.iter().find(|m| &*m.entry.name == runtime) else {
            return 0;
        };
        if monitor.flavor != "multi_thread" {
            return 0;
        }
        let id = monitor.id;
        let taken: Vec<i64> = self
            .stuck_threads
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, tid)| *tid)
            .collect();
        if let Some(&tid) = self.stuck_threads.get(&key) {
            return tid;
        }
        for slot in crate::slot::snapshot() {
            let tid = slot.info.os_tid;
            if slot.info.runtime != Some(id)
                || !slot.is_worker
                || slot.poll_start != 0
                || tid == 0
                || taken.contains(&tid)
            {
                continue;
            }
            let Ok(frames) = crate::stack::capture(tid, Duration::from_millis(50)) else {
                continue;
            };
            let Some(stack) = crate::evidence::symbolize(&frames, true) else {
                continue;
            };
            let in_task = stack.contains("tokio::runtime::task::");
            let parked = stack.contains("tokio::runtime::park")
                || stack.contains("::park_internal")
                || stack.contains("::park_timeout")
                || stack.contains("Parker");
            if in_task && !parked {
                self.stuck_threads.insert(key, tid);
                return tid;
            }
        }
        0
    }

    fn callback(&self, report: &StallReport) {
        let Some(callback) = &self.shared.config.on_stall else {
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| callback(report))).is_err() {
            self.shared.callback_panics.fetch_add(1, Relaxed);
            series::callback_panicked();
            tracing::error!(target: "loopwatch", "the on_stall callback panicked; the watchdog goes on");
        }
    }

    /// Updates gauges and the health snapshot.
    fn publish(&mut self, now: u64) {
        let stall_ns = self.thresholds.stall_ns;
        let mut issues = Vec::new();
        let mut stalled_any = false;
        let mut degraded = false;
        let mut runtimes = Vec::with_capacity(self.monitors.len());
        let unix_now = unix_seconds();
        for m in &self.monitors {
            let serial = m.entry.serial;
            let mut stalled: Vec<_> = self
                .stalls
                .active()
                .filter(|c| c.runtime_serial == serial)
                .collect();
            stalled.sort_by_key(|c| (c.worker, c.since));
            for c in &stalled {
                issues.push(c.report(now, 0).to_string());
            }
            stalled_any |= !stalled.is_empty();
            let age = m.heartbeat_age_ns(now);
            let totals = self.totals.entry(serial).or_default();
            if m.beat.beats > totals.last_beats {
                totals.last_beats = m.beat.beats;
                series::heartbeat(&m.entry.name, m.beat.last_lag);
            }
            // Gauges: at once when the stalled count changes, else every second.
            if totals.last_stalled_gauge != Some(stalled.len())
                || now.saturating_sub(totals.last_gauges) >= 1_000_000_000
            {
                totals.last_stalled_gauge = Some(stalled.len());
                totals.last_gauges = now;
                series::runtime_gauges(&m.entry.name, stalled.len(), unix_now - age as f64 / 1e9);
            }
            if stalled.is_empty() && m.beat.beats > 0 && age >= stall_ns && !m.undriven() {
                degraded = true;
                issues.push(format!(
                    "runtime {}: heartbeat {:.1} s late; workers are busy but not stuck in one poll",
                    m.entry.name,
                    age as f64 / 1e9
                ));
            }
            if let Some(len) = totals.last_stall_ns {
                if stalled.is_empty() && now.saturating_sub(totals.last_stall_end) < 60_000_000_000
                {
                    degraded = true;
                    issues.push(format!(
                        "runtime {}: a stall of {:.1} s ended {:.0} s ago",
                        m.entry.name,
                        len as f64 / 1e9,
                        now.saturating_sub(totals.last_stall_end) as f64 / 1e9
                    ));
                }
            }
            runtimes.push(RuntimeHealth {
                name: m.entry.name.to_string(),
                flavor: m.flavor.to_owned(),
                workers: m.num_workers(),
                heartbeat_age_seconds: age as f64 / 1e9,
                heartbeat_lag_seconds: m.beat.last_lag as f64 / 1e9,
                stalls_total: totals.stalls,
                last_stall_seconds: totals.last_stall_ns.map(|n| n as f64 / 1e9),
                stalled_workers: stalled
                    .iter()
                    .map(|c| StalledWorker {
                        worker: c.worker,
                        stalled_for_seconds: now.saturating_sub(c.since) as f64 / 1e9,
                        task: c.task.map(str::to_owned),
                        thread: c.thread.as_deref().map(str::to_owned),
                    })
                    .collect(),
            });
        }
        let status = if stalled_any {
            Status::Stalled
        } else if degraded {
            Status::Degraded
        } else {
            Status::Healthy
        };
        let (tasks, calls, hung_tasks) = self.usage.totals();
        if tasks.hung > 0 {
            let oldest: Vec<String> = hung_tasks
                .iter()
                .map(|h| format!("'{}' idle for {:.0} s", h.task, h.idle_seconds))
                .collect();
            issues.push(format!(
                "{} task(s) hung (alive, not polled for {:.0} s): {}",
                tasks.hung,
                self.hung_ns as f64 / 1e9,
                oldest.join(", ")
            ));
        }
        let p = &self.process;
        if let Some(limit) = self.shared.config.resident_memory_limit {
            if p.resident_memory_bytes > limit {
                issues.push(format!(
                    "resident memory {} MiB is above the limit of {} MiB",
                    p.resident_memory_bytes >> 20,
                    limit >> 20
                ));
                degraded = true;
            }
        }
        if p.max_fds > 0 && p.open_fds * 10 >= p.max_fds * 9 {
            issues.push(format!(
                "{} of {} file descriptors open",
                p.open_fds, p.max_fds
            ));
            degraded = true;
        }
        let status = if status == Status::Healthy && degraded {
            Status::Degraded
        } else {
            status
        };
        let status = if status == Status::Healthy && tasks.hung > 0 {
            Status::Degraded
        } else {
            status
        };
        let health = Health {
            status,
            issues,
            runtimes,
            tasks,
            hung_tasks,
            calls,
            process: p.health(),
            recent_stalls: self.recent.iter().rev().map(|(_, r)| r.clone()).collect(),
        };
        *self.shared.health.lock() = Arc::new(health);
    }
}
