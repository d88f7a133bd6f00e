//! The application threads' side: what runs inside your tasks, polls and calls.
//!
//! Everything here can run on every poll, so it only touches relaxed atomics:
//! no lock, no allocation, one clock read at each end of a poll (the coarse
//! clock where the thresholds allow, see [`crate::clock`]), and no cache
//! line that another thread writes. The watchdog
//! thread reads what is written here; nothing here waits for it.
//!
//! What it writes lives in [`crate::board`], the shared state below it;
//! nothing here imports from the watchdog, the exporter or the task dump.
//!
//! - [`poll`]: the one per-poll function every instrumented future goes through;
//! - [`outcome`]: how a task or call ended, told by where it stood when dropped;
//! - [`watched`], [`task`], [`call`]: `WatchExt::watched`, the spawns, and
//!   `blocking()` / `#[instrument_blocking]`;
//! - [`hooks`]: the runtime thread hooks (public as `loopwatch::hooks`).

pub(crate) mod call;
pub mod hooks;
pub(crate) mod outcome;
pub(crate) mod poll;
pub(crate) mod task;
pub(crate) mod watched;
