//! The error type of loopwatch.

use std::time::Duration;

/// Everything that can go wrong when configuring or using loopwatch.
///
/// Every message says what to change. The enum is `#[non_exhaustive]`: later
/// releases may add variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A duration setting was zero.
    #[error("loopwatch: `{setting}` must be greater than zero (got 0); use a positive duration such as {example}")]
    ZeroDuration {
        /// The builder method whose value was zero.
        setting: &'static str,
        /// A sensible value, as text.
        example: &'static str,
    },

    /// A duration setting was too large to be represented in nanoseconds, or
    /// larger than loopwatch supports.
    #[error("loopwatch: `{setting}` is {value:?}, more than the supported maximum of {max:?}; use a shorter duration")]
    DurationTooLarge {
        /// The builder method whose value was too large.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// The largest value accepted.
        max: Duration,
    },

    /// `check_interval` was shorter than the watchdog can usefully run at.
    #[error("loopwatch: `check_interval` is {value:?}, below the minimum of {min:?}; the watchdog would spend its time waking up. Use {min:?} or more")]
    CheckIntervalTooShort {
        /// The value given.
        value: Duration,
        /// The smallest value accepted.
        min: Duration,
    },

    /// Two settings contradict each other: `smaller` must be below `larger`.
    #[error("loopwatch: `{smaller}` ({smaller_value:?}) must be shorter than `{larger}` ({larger_value:?}); {hint}")]
    Inconsistent {
        /// The setting that must be the shorter one.
        smaller: &'static str,
        /// Its value.
        smaller_value: Duration,
        /// The setting that must be the longer one.
        larger: &'static str,
        /// Its value.
        larger_value: Duration,
        /// Why, and what to change.
        hint: &'static str,
    },

    /// `max_reports_per_minute` was zero.
    #[error("loopwatch: `max_reports_per_minute` must be at least 1 (got 0); to silence reports, filter the `loopwatch` tracing target instead")]
    ZeroReportRate,

    /// A watchdog is already running in this process.
    #[error("loopwatch: a watchdog is already running in this process; keep one `Watchdog` (it is `Clone`) and share it, or call `shutdown()` on the old one first")]
    AlreadyRunning,

    /// The watchdog was shut down; it cannot watch more runtimes.
    #[error("loopwatch: the watchdog has been shut down; start a new one with `Watchdog::builder().start()`")]
    ShutDown,

    /// A runtime name was empty, too long or contained control characters.
    #[error("loopwatch: invalid runtime name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A runtime with this name is already watched.
    #[error(
        "loopwatch: a runtime named {name:?} is already watched; give each runtime its own name"
    )]
    DuplicateRuntime {
        /// The name given.
        name: String,
    },

    /// The same runtime (by tokio's runtime id) is already watched under
    /// another name: its stalls would be counted twice.
    #[error("loopwatch: this runtime is already watched as {watched_as:?}; watch each runtime once (asked to watch it again as {name:?})")]
    RuntimeAlreadyWatched {
        /// The name given now.
        name: String,
        /// The name it is watched under.
        watched_as: String,
    },

    /// The runtime has already been shut down; there is nothing to watch.
    #[error("loopwatch: runtime {name:?} has been shut down; watch a running runtime")]
    RuntimeShutDown {
        /// The name given.
        name: String,
    },

    /// The exporter could not bind its address.
    #[error("loopwatch: cannot listen on {addr}: {source}; choose a free port (or port 0) on a local address")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A `metrics` recorder is installed already, so the exporter cannot install its own.
    #[error("loopwatch: a `metrics` recorder is installed already; if it is a metrics-exporter-prometheus recorder, pass its handle with `Exporter::builder().prometheus_handle(handle)`")]
    RecorderInstalled,

    /// A setting of [`WatchdogBuilder`](crate::WatchdogBuilder) (`resident_memory_limit`) or of `ExporterBuilder` (`max_connections`,
    /// `head_timeout`, `request_timeout`) cannot work.
    #[error("loopwatch: `{setting}` {reason}")]
    InvalidSetting {
        /// The builder method.
        setting: &'static str,
        /// What is wrong.
        reason: &'static str,
    },

    /// An environment variable read by
    /// [`WatchdogBuilder::from_env`](crate::WatchdogBuilder::from_env),
    /// [`ExporterBuilder::from_env`](crate::ExporterBuilder::from_env) or
    /// `#[loopwatch::main]` has a value it does not accept, or one that
    /// cannot work (see [`loopwatch::env`](crate::env)).
    #[error("loopwatch: environment variable {variable}={value:?} is not valid: {expected}")]
    InvalidEnv {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it accepts, or why the value cannot work.
        expected: String,
    },

    /// The operating system refused to start a loopwatch thread.
    #[error("loopwatch: could not start a thread: {0}")]
    Thread(#[source] std::io::Error),
}
