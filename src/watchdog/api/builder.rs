//! [`WatchdogBuilder`]: the watchdog's settings, their defaults and their checks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, StallReport, Watchdog};

pub(crate) type Callback = Arc<dyn Fn(&StallReport) + Send + Sync>;

/// Settings, validated by [`WatchdogBuilder::start`].
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
    pub(crate) full_stacks: bool,
    pub(crate) notify_systemd: bool,
    pub(crate) abort_after: Option<Duration>,
    pub(crate) on_stall: Option<Callback>,
    /// Turned off (`LOOPWATCH=off`): `start()` gives a watchdog that
    /// watches nothing.
    pub(crate) off: bool,
    /// Settings taken from the environment and not set by code since:
    /// (builder method, variable, value), to name the variable when a value
    /// cannot work.
    pub(crate) from_env: Vec<(&'static str, &'static str, String)>,
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
            .field("full_stacks", &self.full_stacks)
            .field("notify_systemd", &self.notify_systemd)
            .field("abort_after", &self.abort_after)
            .field("off", &self.off)
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
/// [`start`](WatchdogBuilder::start) checks them all together.
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
pub struct WatchdogBuilder {
    config: Config,
}

impl Default for WatchdogBuilder {
    fn default() -> Self {
        WatchdogBuilder {
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
                full_stacks: false,
                notify_systemd: false,
                abort_after: None,
                on_stall: None,
                off: false,
                from_env: Vec::new(),
            },
        }
    }
}

impl WatchdogBuilder {
    /// The default settings with those the environment gives applied (see
    /// [`loopwatch::env`](crate::env) for the variables and what they
    /// accept): `LOOPWATCH_STALL_THRESHOLD`, `LOOPWATCH_BLOCKING_THRESHOLD`,
    /// `LOOPWATCH_SLOW_CALL_THRESHOLD`, `LOOPWATCH_HUNG_TASK_THRESHOLD`,
    /// `LOOPWATCH_CHECK_INTERVAL`, `LOOPWATCH_ABORT_AFTER`,
    /// `LOOPWATCH_NOTIFY_SYSTEMD`, `LOOPWATCH_SAMPLE_STACKS`; with
    /// `LOOPWATCH=off`, [`start`](Self::start) gives a watchdog that is off
    /// (it watches nothing, and says so in [`Watchdog::health`]).
    ///
    /// **Code wins over the environment**: a setting called on the builder
    /// after `from_env()` replaces the variable's value. Call the settings
    /// the environment must not change after it, and the defaults you want
    /// the environment to be able to change not at all.
    ///
    /// ```
    /// # fn main() -> Result<(), loopwatch::Error> {
    /// // LOOPWATCH_STALL_THRESHOLD=2s ./service: a 2 s threshold; the
    /// // callback is the code's.
    /// let watchdog = loopwatch::WatchdogBuilder::from_env()?
    ///     .on_stall(|report| eprintln!("{report:#}"))
    ///     .start()?;
    /// # watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEnv`]: a variable's value is not one it accepts (not
    /// a duration, not a boolean, not Unicode). A value that parses but
    /// cannot work (a zero threshold, a stall threshold under the check
    /// interval) is the same error from [`start`](Self::start), naming the
    /// variable.
    pub fn from_env() -> Result<WatchdogBuilder, Error> {
        use crate::env;
        let mut b = WatchdogBuilder::default();
        b.config.off = env::turned_off()?;
        /// A duration setting: its method, its variable, how to set it.
        type DurationVar = (&'static str, &'static str, fn(&mut Config, Duration));
        let durations: [DurationVar; 5] = [
            ("stall_threshold", "LOOPWATCH_STALL_THRESHOLD", |c, d| {
                c.stall_threshold = d
            }),
            (
                "blocking_threshold",
                "LOOPWATCH_BLOCKING_THRESHOLD",
                |c, d| c.blocking_threshold = d,
            ),
            (
                "slow_call_threshold",
                "LOOPWATCH_SLOW_CALL_THRESHOLD",
                |c, d| c.slow_call_threshold = d,
            ),
            (
                "hung_task_threshold",
                "LOOPWATCH_HUNG_TASK_THRESHOLD",
                |c, d| c.hung_task_threshold = d,
            ),
            ("check_interval", "LOOPWATCH_CHECK_INTERVAL", |c, d| {
                c.check_interval = d
            }),
        ];
        for (setting, variable, set) in durations {
            if let Some(d) = env::duration(variable)? {
                set(&mut b.config, d);
                b.took_from_env(setting, variable);
            }
        }
        if let Some(after) = env::duration_or_off("LOOPWATCH_ABORT_AFTER")? {
            b.config.abort_after = after;
            b.took_from_env("abort_after", "LOOPWATCH_ABORT_AFTER");
        }
        if let Some(on) = env::boolean("LOOPWATCH_NOTIFY_SYSTEMD")? {
            b.config.notify_systemd = on;
        }
        if let Some(on) = env::boolean("LOOPWATCH_SAMPLE_STACKS")? {
            b.config.sample_stacks = on;
        }
        Ok(b)
    }

    fn took_from_env(&mut self, setting: &'static str, variable: &'static str) {
        let value = crate::env::var(variable).ok().flatten().unwrap_or_default();
        self.config.from_env.push((setting, variable, value));
    }

    fn set_by_code(&mut self, setting: &'static str) {
        self.config.from_env.retain(|(s, _, _)| *s != setting);
    }

    /// A settings error naming a setting that came from the environment,
    /// told as the variable's.
    fn blame_env(&self, e: Error) -> Error {
        let named: Vec<&'static str> = match &e {
            Error::ZeroDuration { setting, .. } | Error::DurationTooLarge { setting, .. } => {
                vec![*setting]
            }
            Error::CheckIntervalTooShort { .. } => vec!["check_interval"],
            Error::Inconsistent {
                smaller, larger, ..
            } => vec![*smaller, *larger],
            _ => Vec::new(),
        };
        let found = named.iter().find_map(|n| {
            self.config
                .from_env
                .iter()
                .find(|(setting, _, _)| setting == n)
        });
        match found {
            Some((_, variable, value)) => Error::InvalidEnv {
                variable,
                value: value.clone(),
                expected: e.to_string().trim_start_matches("loopwatch: ").to_owned(),
            },
            None => e,
        }
    }

    /// A worker stuck this long in one poll is stalled.
    /// Default: [`Watchdog::DEFAULT_STALL_THRESHOLD`] (5 s).
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.set_by_code("stall_threshold");
        self.config.stall_threshold = threshold;
        self
    }

    /// A poll or sync call this long on an async worker thread is blocking.
    /// Must be shorter than the stall threshold.
    /// Default: [`Watchdog::DEFAULT_BLOCKING_THRESHOLD`] (100 ms).
    pub fn blocking_threshold(mut self, threshold: Duration) -> Self {
        self.set_by_code("blocking_threshold");
        self.config.blocking_threshold = threshold;
        self
    }

    /// An instrumented call this long is slow.
    /// Default: [`Watchdog::DEFAULT_SLOW_CALL_THRESHOLD`] (2 s).
    pub fn slow_call_threshold(mut self, threshold: Duration) -> Self {
        self.set_by_code("slow_call_threshold");
        self.config.slow_call_threshold = threshold;
        self
    }

    /// A live task not polled for this long is hung. Live tasks are scanned
    /// every tenth of it (at most every 10 s), so a hung task shows within
    /// the threshold plus a tenth.
    /// Default: [`Watchdog::DEFAULT_HUNG_TASK_THRESHOLD`] (60 s).
    pub fn hung_task_threshold(mut self, threshold: Duration) -> Self {
        self.set_by_code("hung_task_threshold");
        self.config.hung_task_threshold = threshold;
        self
    }

    /// How often the watchdog thread looks. A stall is flagged no later than
    /// `stall_threshold + check_interval` after it began (plus scheduling
    /// noise). Must be at least 1 ms and shorter than the stall threshold.
    /// Default: [`Watchdog::DEFAULT_CHECK_INTERVAL`] (100 ms).
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.set_by_code("check_interval");
        self.config.check_interval = interval;
        self
    }

    /// The most first reports of stalls sent per minute (in logs and to the
    /// callback), and as many escalations, counted apart so that a long
    /// stall's escalations never use up a new stall's report; the rest are
    /// counted in `loopwatch_reports_suppressed_total`. A report held back
    /// still has its evidence taken: stalls are counted and shown in
    /// [`Health`](crate::Health), with their stacks in
    /// [`Health::recent_stalls`](crate::Health::recent_stalls). Default:
    /// [`Watchdog::DEFAULT_MAX_REPORTS_PER_MINUTE`] (10).
    pub fn max_reports_per_minute(mut self, max: u32) -> Self {
        self.config.max_reports_per_minute = max;
        self
    }

    /// Whether the watchdog takes a stuck thread's stack (Linux on x86_64).
    /// No thread is ever signalled: a thread waiting in the kernel is read
    /// from outside (`/proc/self/task/TID/syscall` and a copy of its stack),
    /// and a stuck thread running on a CPU is sampled by the kernel with
    /// `perf_event_open` (where that is refused, as by many container
    /// seccomp profiles, it has no stack and the report says why:
    /// [`StallReport::stack_missing`]). The stack goes into the stall report
    /// ([`StallReport::backtrace`], [`StallReport::culprit`]); it is also how a
    /// current-thread runtime stuck in a poll is told from one that nobody
    /// drives, and how the stuck worker of a runtime known only by its
    /// handle is found. Default: `true`. Without it, reports carry no stack,
    /// and a current-thread runtime left undriven after being driven is
    /// reported as stalled, marked unconfirmed
    /// ([`StallReport::unconfirmed`]).
    pub fn sample_stacks(mut self, enabled: bool) -> Self {
        self.set_by_code("sample_stacks");
        self.config.sample_stacks = enabled;
        self
    }

    /// Whether stall reports carry the whole stack of the stuck thread. By
    /// default the frames of tokio's scheduler (at the bottom) are left out.
    /// Default: `false`.
    pub fn full_stacks(mut self, full: bool) -> Self {
        self.config.full_stacks = full;
        self
    }

    /// How many of the last reported stalls [`Health::recent_stalls`](crate::Health::recent_stalls) keeps,
    /// with their stacks, for an operator who arrives after the fact.
    /// Default: [`Watchdog::DEFAULT_RECENT_STALLS`] (10).
    pub fn recent_stalls(mut self, count: usize) -> Self {
        self.config.recent_stalls = count;
        self
    }

    /// Resident memory (bytes) above which [`Health`](crate::Health) is `degraded`, with an
    /// issue line. Default: none. Health is also degraded when open file
    /// descriptors reach 90 % of the process's limit.
    pub fn resident_memory_limit(mut self, bytes: u64) -> Self {
        self.config.resident_memory_limit = Some(bytes);
        self
    }

    /// Called when a stall is first flagged and again at each escalation
    /// (2x, 4x, ... the threshold), on a thread of its own
    /// (`loopwatch-callback`), after the stall shows in
    /// [`Watchdog::health`], `/health` and the metrics.
    ///
    /// The watchdog never waits for it: a slow callback (one that sends an
    /// email or writes to a slow disk) delays only the reports queued behind
    /// it. Up to 64 reports wait; a report that finds the queue full is not
    /// given to the callback, and is counted
    /// (`loopwatch_callback_reports_dropped_total`,
    /// [`Watchdog::callback_reports_dropped`]). A panic in it is caught,
    /// logged and counted (`loopwatch_callback_panics_total`); the next
    /// report is delivered as usual. [`Watchdog::shutdown`] waits at most
    /// 0.5 s for a callback still running. Do not move a clone of the
    /// [`Watchdog`] into it: the watchdog would then keep itself alive and
    /// stop only on an explicit [`Watchdog::shutdown`].
    pub fn on_stall<F>(mut self, callback: F) -> Self
    where
        F: Fn(&StallReport) + Send + Sync + 'static,
    {
        self.config.on_stall = Some(Arc::new(callback));
        self
    }

    /// Whether the watchdog pings systemd's watchdog: when `NOTIFY_SOCKET`
    /// and `WATCHDOG_USEC` are set (systemd sets them for a unit with
    /// `WatchdogSec=`) and `WATCHDOG_PID`, if set, is this process, the
    /// watchdog thread sends `WATCHDOG=1` at least every half of
    /// `WATCHDOG_USEC` while no watched runtime is stalled, and none while
    /// one is, so that systemd restarts a service stalled for about
    /// `stall_threshold + WatchdogSec`. It also sends `STATUS=` with the
    /// health status and first issue line when they change (at most once a
    /// second while a stall's line counts up), which `systemctl status`
    /// shows. The unit needs `NotifyAccess=main` (or `all`).
    ///
    /// The first ping goes out when the watchdog starts (`start()` runs the
    /// first check), so start it early: systemd counts `WatchdogSec` from
    /// the service's start. Unix only; elsewhere the setting does nothing.
    /// Without those variables nothing is sent; a socket that cannot be
    /// reached is logged once and never stops the watchdog. Pings stop when
    /// the watchdog stops, as they should if the process lives on without
    /// it. Keep `check_interval` under a quarter of `WatchdogSec`. The
    /// example unit is `deploy/systemd/loopwatch-example.service`. Default:
    /// `false`.
    ///
    /// ```
    /// # fn main() -> Result<(), loopwatch::Error> {
    /// let watchdog = loopwatch::Watchdog::builder().notify_systemd(true).start()?;
    /// # watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn notify_systemd(mut self, enabled: bool) -> Self {
        self.set_by_code("notify_systemd");
        self.config.notify_systemd = enabled;
        self
    }

    /// Ends the process when a stall lasts this long: the stall's full
    /// report (the summary line, the stuck thread's stack or why there is
    /// none) is written straight to stderr, so that it reaches the journal
    /// or the pod's log with no `tracing` subscriber installed (it is also
    /// logged as an error), then the process aborts (`SIGABRT`), so that its
    /// supervisor restarts it. The process ends within about
    /// `check_interval` of the stall reaching `abort_after`, plus the time to
    /// take the stack, plus at most 2 s for the write (stderr may be a pipe
    /// nobody reads). Stalls shorter than it are only reported. Must not be
    /// shorter than the stall threshold. Default: off.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), loopwatch::Error> {
    /// let watchdog = loopwatch::Watchdog::builder()
    ///     .stall_threshold(Duration::from_secs(5))
    ///     .abort_after(Duration::from_secs(60))
    ///     .start()?;
    /// # watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn abort_after(mut self, after: Duration) -> Self {
        self.set_by_code("abort_after");
        self.config.abort_after = Some(after);
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
        let abort = c
            .abort_after
            .map(|d| ("abort_after", d, "Duration::from_secs(60)"));
        for (setting, value, example) in durations.into_iter().chain(abort) {
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
        if let Some(abort_after) = c.abort_after {
            if abort_after < c.stall_threshold {
                return Err(Error::Inconsistent {
                    smaller: "stall_threshold",
                    smaller_value: c.stall_threshold,
                    larger: "abort_after",
                    larger_value: abort_after,
                    hint: "the process is aborted only for a stall, which lasts the stall threshold at least; raise abort_after or lower stall_threshold",
                });
            }
        }
        if c.max_reports_per_minute == 0 {
            return Err(Error::ZeroReportRate);
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
    ///   [`Error::ZeroReportRate`], [`Error::InvalidSetting`]: a setting
    ///   cannot work; the message says which and what to change.
    /// - [`Error::InvalidEnv`]: the same, for a setting taken from the
    ///   environment by [`from_env`](Self::from_env): it names the variable.
    /// - [`Error::AlreadyRunning`]: another watchdog runs in this process.
    ///   Share the first one (it is `Clone`) or shut it down first.
    /// - [`Error::Thread`]: the OS refused to start the thread.
    pub fn start(self) -> Result<Watchdog, Error> {
        self.validate().map_err(|e| self.blame_env(e))?;
        if self.config.off {
            return Ok(Watchdog::off(self.config));
        }
        Watchdog::launch(self.config)
    }
}
