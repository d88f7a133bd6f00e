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

/// Converts a duration to nanoseconds, saturating.
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
