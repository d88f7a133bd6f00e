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
//! `loopwatch`), your [`on_stall`](Builder::on_stall) callback, metrics through
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
//! # Tasks
//!
//! Spawn through [`spawn_named`], [`spawn`] or [`spawn_fallible`] instead of
//! `tokio::spawn`, and loopwatch counts every task's outcome per name
//! (spawned, completed, failed, panicked, cancelled, alive), finds hung
//! tasks (alive, not polled for `hung_task_threshold`) and slow polls (one
//! poll of `blocking_threshold` or longer), all in [`Health`] and metrics.
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
//! On Linux, a current-thread runtime that looks stuck is told apart from one
//! nobody drives by sampling its driver thread's stack (see
//! [`Builder::sample_stacks`]).
//!
//! # Features
//!
//! - `macros` (default): `#[instrument_blocking]` (arriving in a later release).
//!
//! # Minimum supported Rust version
//!
//! Rust 1.85, the minimum of tokio 1.54.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod call;
mod clock;
mod error;
mod health;
mod heartbeat;
mod hooks;
mod monitor;
mod names;
mod poll;
pub mod series;
mod slot;
mod stack;
mod stall;
mod task;
mod usage;
mod watchdog;
mod watched;

#[doc(hidden)]
pub use call::__private;
pub use call::{blocking, blocking_fallible};
pub use error::Error;
pub use health::{
    CallCounts, Health, ProcessHealth, RuntimeHealth, StalledWorker, Status, TaskCounts,
};
pub use hooks::{install_runtime_hooks, thread_parked, thread_started, thread_unparked};
pub use names::{MAX_NAMES, OTHER};
pub use stall::StallReport;
pub use task::{spawn, spawn_fallible, spawn_named};
pub use watchdog::{Builder, Watchdog};
pub use watched::{WatchExt, Watched};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
