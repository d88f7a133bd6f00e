//! A cheap monotonic clock shared by the hot path and the watchdog thread.
//!
//! Times are nanoseconds since the clock was first used, never zero, so that
//! zero can mean "none" in an atomic slot.

use std::sync::LazyLock;

struct Base {
    clock: quanta::Clock,
    start: u64,
}

static BASE: LazyLock<Base> = LazyLock::new(|| {
    let clock = quanta::Clock::new();
    let start = clock.raw();
    Base { clock, start }
});

/// Nanoseconds since the clock's base; always at least 1.
#[inline]
pub(crate) fn now_ns() -> u64 {
    let base = &*BASE;
    base.clock
        .delta_as_nanos(base.start, base.clock.raw())
        .saturating_add(1)
}

/// Seconds since the unix epoch, as a float (for gauges and JSON).
pub(crate) fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Lets something happen at most once a second across threads (for warnings
/// logged from the instrumented paths).
#[derive(Debug)]
pub(crate) struct OncePerSecond(std::sync::atomic::AtomicU64);

impl OncePerSecond {
    pub(crate) const fn new() -> Self {
        OncePerSecond(std::sync::atomic::AtomicU64::new(0))
    }

    /// Whether the caller may go ahead now (a second since the last one).
    pub(crate) fn ready(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_ns();
        let last = self.0.load(Relaxed);
        now.saturating_sub(last) >= 1_000_000_000
            && self.0.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }
}

/// Converts a duration to nanoseconds, saturating.
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
