//! Hung tasks' await traces, by tokio task id: written by the watchdog's
//! task dumps (`watchdog/traces.rs`, with `--cfg tokio_unstable` and the
//! `taskdump` feature), read by the task dump. Empty otherwise.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The traces kept, by tokio task id.
pub(crate) static TRACES: Mutex<Option<HashMap<u64, Arc<str>>>> = Mutex::new(None);

/// The await trace of the task with tokio id `id`, if one was taken.
pub(crate) fn trace_of(id: u64) -> Option<String> {
    TRACES.lock().as_ref()?.get(&id).map(|t| t.to_string())
}
