//! loopwatch tells the operators of a tokio application, while it is
//! happening, that a runtime has stopped making progress, where it is stuck,
//! and what its tasks are doing.
//!
//! A worker thread blocked by a sync call (file I/O, a `std` mutex, a sync
//! database driver, a CPU loop) freezes every task queued behind it, and
//! nothing says so. loopwatch runs a **watchdog thread** of its own, outside
//! every runtime, that looks at each watched runtime's workers every
//! `check_interval` and flags a worker stuck in one poll for `stall_threshold`
//! (5 s by default) **while it is stuck**: a `tracing` warning (target
//! `loopwatch`), your [`on_stall`](WatchdogBuilder::on_stall) callback, metrics through
//! the [`metrics`](https://docs.rs/metrics) facade, and [`Watchdog::health`].
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let watchdog = loopwatch::Watchdog::builder()
//!         .stall_threshold(Duration::from_secs(5))
//!         .on_stall(|report| eprintln!("{report}"))
//!         .start()?;
//!     watchdog.watch_runtime("main", &tokio::runtime::Handle::current())?;
//!
//!     // A worker blocked for 6 s: loopwatch reports it after 5 s, while it is blocked.
//!     tokio::spawn(async { std::thread::sleep(Duration::from_secs(6)) }).await?;
//!     println!("{}", serde_json::to_string_pretty(&watchdog.health())?);
//!     Ok(())
//! }
//! ```
//!
//! # Prometheus and `/health`
//!
//! [`Exporter`] (default feature `exporter`) serves `GET /metrics`,
//! `GET /health` (HTTP 503 while stalled), `GET /tasks` (the live tasks)
//! and a status page at `GET /` from a thread of its own, so that they
//! answer while every worker is blocked.
//!
//! # Tasks
//!
//! Spawn through [`spawn_named`], [`spawn`] or [`spawn_fallible`] instead of
//! `tokio::spawn`, and loopwatch counts every task's outcome per name
//! (spawned, completed, failed, panicked, cancelled, alive), finds hung
//! tasks (alive, not polled for `hung_task_threshold`) and slow polls (one
//! poll of `blocking_threshold` or longer), all in [`Health`] and metrics.
//! [`Watchdog::tasks`] and [`Watchdog::task_dump`] (`GET /tasks`) list every
//! live one, like Go's goroutine dump: its id, name, spawn site, age,
//! whether it runs or waits and for how long, and where it waits (the chain
//! of its open `tracing` spans, with [`spans::layer()`]).
//!
//! # How stalls are found
//!
//! Stable tokio publishes each worker's park count and busy time when the
//! worker parks and every 61 polls. A worker whose figures stop moving while
//! it is not parked is stuck in one poll, or completing polls too slow to
//! reach the next publication. loopwatch combines this with **poll slots**:
//! every instrumented poll ([`WatchExt::watched`]) records its start and name
//! in a slot of its thread, so a worker stuck in an instrumented task is
//! named exactly, and a worker completing slow instrumented polls is never
//! called stalled. For uninstrumented tasks, a worker is not called stalled
//! while each of its polls stays shorter than `stall_threshold / 61`.
//! A heartbeat task on each runtime measures scheduling lag.
//! [`install_runtime_hooks`] makes detection sharper on runtimes you build,
//! and exact for every task under `--cfg tokio_unstable` (task poll hooks).
//! On Linux, every report carries the stuck thread's stack where the thread
//! can be found, and a current-thread runtime that looks stuck is told apart
//! from one nobody drives by its driver thread's stack (see
//! [`WatchdogBuilder::sample_stacks`]). Every report says why the worker
//! is stuck ([`StallReport::cause`]: blocked in the kernel, busy on a CPU,
//! or starved of one by a CPU limit, other load or the host), from what its
//! thread did with its time during the stall ([`StallReport::cpu`]); a pause
//! of the whole process (SIGSTOP, a frozen cgroup) is never a stall.
//!
//! # Where things live
//!
//! Three kinds of threads, three modules (see `ARCHITECTURE.md`):
//! `instrument` runs on the application's threads (the per-poll path, poll
//! slots, names and counters); `watchdog` on the watchdog thread (detection,
//! the stall machine, reports, evidence, health); `exporter` on the
//! exporter's thread (HTTP and rendering). `stack` reads other threads'
//! stacks for the watchdog.
//!
//! # Features
//!
//! - `macros` (default): [`#[instrument_blocking]`](instrument_blocking).
//! - `exporter` (default): [`Exporter`], with metrics-exporter-prometheus.
//! - `spans` (default): [`spans::layer()`], a `tracing-subscriber` layer
//!   that puts the stuck thread's `tracing` spans in stall reports
//!   ([`StallReport::spans`]).
//! - `taskdump`: with `--cfg tokio_unstable` on Linux, hung tasks' await
//!   traces from tokio's task dumps ([`TaskInfo::await_trace`]); turns on
//!   tokio's `taskdump` feature. Without that cfg it does nothing.
//! - `stacks` (default): the stuck thread's stack and culprit in stall
//!   reports (Linux on x86_64), read from outside the thread when it waits
//!   in the kernel, sampled by the kernel (`perf_event_open`) when it is
//!   stuck on a CPU, never signalled ([`StallReport::stack_method`]), and
//!   walked right in release builds without frame pointers (every frame
//!   verified, [`StallReport::stack_complete`]); keep
//!   `debug = "limited"` in the release profile for the names of inlined
//!   functions. Without the feature reports carry no stack, and a
//!   current-thread runtime left undriven after `block_on` returned is
//!   reported as stalled, marked unconfirmed.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88, the highest minimum among the dependencies (`addr2line` and
//! `gimli`, used for stacks). Raising it is a minor-version change.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod board;
mod clock;
pub mod env;
mod error;
#[cfg(feature = "exporter")]
mod exporter;
mod instrument;
pub mod metric_names;
mod model;
mod setup;
#[cfg(feature = "spans")]
#[cfg_attr(docsrs, doc(cfg(feature = "spans")))]
pub mod spans;
mod tasks;
mod watchdog;

pub use board::names::{MAX_NAMES, OTHER};
pub use error::Error;
#[cfg(feature = "exporter")]
#[cfg_attr(docsrs, doc(cfg(feature = "exporter")))]
pub use exporter::{Exporter, ExporterBuilder};
pub use model::health::{
    CallCounts, Health, HungTask, ProcessHealth, RecentStall, RuntimeHealth, StalledWorker, Status,
    TaskCounts,
};
#[doc(hidden)]
/// What loopwatch's macros expand to, in one place (as tracing's
/// `__macro_support`). Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::instrument::call::call_support::*;
    pub use crate::setup::run_main;
    pub use tokio;
}
pub use instrument::call::{blocking, blocking_fallible};
pub use instrument::hooks;
pub use instrument::hooks::install_runtime_hooks;
pub use instrument::task::{spawn, spawn_fallible, spawn_named};
pub use instrument::watched::{WatchExt, Watched};
/// Times and counts every call of the function it marks, like [`blocking`].
///
/// - **Sync functions**: the call is *blocking* when it ran on an async
///   worker thread (a task's poll or a `block_on` future; not
///   `spawn_blocking`, `block_in_place` or a plain thread) and took at least
///   the blocking threshold; *slow* when it took at least the slow-call
///   threshold; *failed* when the function returns a `Result` (a return type
///   spelled `...Result<..>`) that is `Err`, or panics (the panic goes on).
///   Otherwise the function behaves exactly as before.
/// - **`async fn`**: the future is instrumented: a single poll of the blocking
///   threshold or longer counts as blocking, awaiting never does, and the
///   whole future's time is the call's duration.
///
/// Arguments, all optional:
/// - `name = "db.query"`: the call's name (default: module path and function
///   name, e.g. `"my_app::db::query"`);
/// - `warn = "150ms"`: this site's blocking threshold;
/// - `slow = "3s"`: this site's slow-call threshold.
///
/// Durations are a number and a unit among `ns`, `us`, `ms`, `s`, `m`,
/// checked at compile time. Works on free functions, methods (`&self`,
/// `&mut self`, `self`), generic functions, `impl Trait` arguments and
/// returns, and `async fn` in impls and traits. A function returning `impl
/// Future` without being `async` is timed while it builds the future only.
///
/// ```
/// #[loopwatch::instrument_blocking]
/// fn load_config(path: &str) -> Result<String, std::io::Error> {
///     std::fs::read_to_string(path)
/// }
///
/// #[loopwatch::instrument_blocking(name = "db.query", warn = "50ms", slow = "1s")]
/// async fn query(sql: &str) -> Result<usize, String> {
///     Ok(sql.len())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(load_config("/nonexistent").is_err());
/// assert_eq!(query("select 1").await, Ok(8));
/// # }
/// ```
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use loopwatch_macros::instrument_blocking;
/// `#[tokio::main]` with loopwatch set up around it: the one line to adopt
/// it.
///
/// ```no_run
/// #[loopwatch::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // LOOPWATCH_ADDR=0.0.0.0:9377 serves /metrics and /health.
///     Ok(())
/// }
/// ```
///
/// It takes `#[tokio::main]`'s arguments with their meaning and errors:
/// `flavor = "multi_thread"` (the default) or `"current_thread"`,
/// `worker_threads = N` (multi-thread only), `start_paused = true`
/// (current-thread only, with tokio's `test-util` feature), and
/// `crate = "path"` for loopwatch renamed. Then, before the body runs:
///
/// 1. the runtime is built with [`install_runtime_hooks`] (the stronger
///    detection: every stuck worker's thread is known) and `enable_all`;
/// 2. the watchdog starts from [`WatchdogBuilder::from_env`] (settings from
///    the `LOOPWATCH_*` variables, see [`env`](mod@env));
/// 3. the runtime is watched as `"main"`;
/// 4. with `LOOPWATCH_ADDR` set (e.g. `0.0.0.0:9377`), the [`Exporter`]
///    starts on it.
///
/// When the body returns, the exporter and the watchdog shut down and its
/// value (`()` or a `Result`) is `main`'s. `LOOPWATCH=off` runs the body on
/// the same runtime without hooks, watchdog or exporter. A `LOOPWATCH_*`
/// value that is not valid, or an address that cannot be bound, ends the
/// process before the body runs, with the error on stderr and exit status 2:
/// a typo in a deployment shows at once rather than leaving it unwatched.
///
/// Install the `tracing` subscriber (and [`spans::layer()`] for the
/// request in each report) first thing in the body: the watchdog logs
/// through it from then on.
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use loopwatch_macros::main;
pub use tasks::{TaskDump, TaskInfo, TaskState};
pub use watchdog::{CpuAccount, StallCause, StallReport, Throttling, Watchdog, WatchdogBuilder};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The guide's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
struct GuideDoctests;
