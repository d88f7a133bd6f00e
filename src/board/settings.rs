//! The thresholds the instrumented paths compare against, in one place.
//!
//! A running watchdog sets them when it starts ([`HotSettings::apply`]) and
//! puts the documented defaults back when it stops ([`HotSettings::reset`]),
//! so that polls and calls made while no watchdog runs are judged by the
//! defaults, not by the last watchdog's settings.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::clock::nanos;

/// The default blocking threshold (`Watchdog::DEFAULT_BLOCKING_THRESHOLD`):
/// 100 ms.
pub(crate) const DEFAULT_BLOCKING: Duration = Duration::from_millis(100);
/// The default slow-call threshold (`Watchdog::DEFAULT_SLOW_CALL_THRESHOLD`):
/// 2 s.
pub(crate) const DEFAULT_SLOW_CALL: Duration = Duration::from_secs(2);

/// What the per-poll and per-call paths read: relaxed loads only.
#[derive(Debug)]
pub(crate) struct HotSettings {
    /// A poll or sync call this long on an async worker is blocking (ns).
    blocking_ns: AtomicU64,
    /// An instrumented call this long is slow (ns).
    slow_call_ns: AtomicU64,
}

const DEFAULT_BLOCKING_NS: u64 = DEFAULT_BLOCKING.as_nanos() as u64;
const DEFAULT_SLOW_CALL_NS: u64 = DEFAULT_SLOW_CALL.as_nanos() as u64;

/// The process's settings for instrumented work.
pub(crate) static SETTINGS: HotSettings = HotSettings {
    blocking_ns: AtomicU64::new(DEFAULT_BLOCKING_NS),
    slow_call_ns: AtomicU64::new(DEFAULT_SLOW_CALL_NS),
};

impl HotSettings {
    /// Takes a starting watchdog's thresholds.
    pub(crate) fn apply(&self, blocking: Duration, slow_call: Duration) {
        self.blocking_ns.store(nanos(blocking), Relaxed);
        self.slow_call_ns.store(nanos(slow_call), Relaxed);
    }

    /// Back to the documented defaults (the watchdog stopped).
    pub(crate) fn reset(&self) {
        self.blocking_ns.store(DEFAULT_BLOCKING_NS, Relaxed);
        self.slow_call_ns.store(DEFAULT_SLOW_CALL_NS, Relaxed);
    }

    #[inline]
    pub(crate) fn blocking_ns(&self) -> u64 {
        self.blocking_ns.load(Relaxed)
    }

    #[inline]
    pub(crate) fn slow_call_ns(&self) -> u64 {
        self.slow_call_ns.load(Relaxed)
    }
}
