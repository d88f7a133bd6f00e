//! The shared state: what the application threads write and the watchdog
//! thread (and the exporter, and the task dump) reads. Everything here is
//! written on the hot path with relaxed atomics only, or (the name registry,
//! the live-record pages, the list of watched runtimes) on a cold path
//! under a short lock; readers never make a writer wait.
//!
//! It imports nothing from the rooms above it (instrument, spans, watchdog,
//! exporter): they all meet here.
//!
//! - [`settings`]: the thresholds the instrumented paths compare against,
//!   and their defaults;
//! - [`slot`]: each thread's poll slot, where a running poll says since when
//!   and what;
//! - [`names`]: the name registry, with each name's rare-event counters and
//!   duration buckets;
//! - [`shard`]: the per-thread counter shards that the frequent counts go to;
//! - [`live`]: the records of live tasks, for hung-task scans and the task
//!   dump, and whether a task dump is polling tasks;
//! - [`traces`]: hung tasks' await traces from tokio's task dumps;
//! - [`workers`]: what the watchdog last saw of each runtime's workers, for
//!   the end of a slow poll.

pub(crate) mod live;
pub(crate) mod names;
pub(crate) mod settings;
pub(crate) mod shard;
pub(crate) mod slot;
pub(crate) mod traces;
pub(crate) mod workers;
