//! The application threads' side: what runs inside your tasks, polls and calls.
//!
//! Everything here can run on every poll, so it only touches relaxed atomics:
//! no lock, no allocation, one clock read at each end of a poll (the coarse
//! clock where the thresholds allow, see [`crate::clock`]), and no cache
//! line that another thread writes. The watchdog
//! thread reads what is written here; nothing here waits for it.
//!
//! - [`poll`]: the one per-poll function every instrumented future goes through;
//! - [`slot`]: each thread's poll slot, where a running poll says since when and what;
//! - [`names`]: the name registry, with each name's rare-event counters and duration buckets;
//! - [`shard`]: the per-thread counter shards that the frequent counts go to;
//! - [`live`]: the records of live tasks, for hung-task scans;
//! - [`outcome`]: how a task or call ended, told by where it stood when dropped;
//! - [`settings`]: the thresholds these paths compare against;
//! - [`watched`], [`task`], [`call`]: `WatchExt::watched`, the spawns, and
//!   `blocking()` / `#[instrument_blocking]`;
//! - [`hooks`]: the runtime thread hooks (public as `loopwatch::hooks`).

pub(crate) mod call;
pub mod hooks;
pub(crate) mod live;
pub(crate) mod names;
pub(crate) mod outcome;
pub(crate) mod poll;
pub(crate) mod settings;
pub(crate) mod shard;
pub(crate) mod slot;
pub(crate) mod task;
pub(crate) mod watched;
