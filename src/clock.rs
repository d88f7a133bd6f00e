//! The clocks shared by the hot path and the watchdog thread: one timebase,
//! two precisions.
//!
//! - [`now_ns`], the fine clock: `CLOCK_MONOTONIC` on Linux (the kernel's
//!   vDSO function, called directly on x86_64: about 20 ns a read),
//!   `Instant` elsewhere. The watchdog thread and
//!   sampled polls read it.
//! - [`coarse_ns`], the coarse clock: `CLOCK_MONOTONIC_COARSE` on Linux (a
//!   few nanoseconds a read), the time of the kernel's last tick; the fine
//!   clock elsewhere. Polls and calls read it when their thresholds are long
//!   enough for its resolution ([`coarse_min_ns`]).
//!
//! Both count nanoseconds of the same clock (the coarse one is the fine one
//! as of the kernel's last timekeeping update: never ahead of it, never
//! going back, but behind by up to two ticks, and by 20 ms and more on a
//! loaded machine, measured), so a stamp taken with either can be compared
//! with a reading of either. No bound on that lag is assumed: to order a
//! stamp against an event, compare it with a coarse reading taken before
//! the event (a stamp below it was taken before). Times are never zero, so
//! that zero can mean "none" in an atomic slot.

use std::sync::LazyLock;

/// A threshold is judged with the coarse clock only when it is at least this
/// many of its ticks: the error on a duration is then below 5 % of it.
const COARSE_TICKS_PER_THRESHOLD: u64 = 20;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use loopwatch_stack::os::vdso;

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

    type Gettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

    /// The `clock_gettime` to call: [`first_read`] until the first read has
    /// found the vDSO's (or settled for libc's), then that one, so that a
    /// read is one load and one call.
    static GETTIME: AtomicPtr<()> = AtomicPtr::new(first_read as *mut ());

    unsafe extern "C" fn first_read(
        clock: libc::clockid_t,
        ts: *mut libc::timespec,
    ) -> libc::c_int {
        #[cfg(target_arch = "x86_64")]
        let gettime: Gettime = super::vdso::clock_gettime().unwrap_or(libc::clock_gettime);
        #[cfg(not(target_arch = "x86_64"))]
        let gettime: Gettime = libc::clock_gettime;
        GETTIME.store(gettime as *mut (), Relaxed);
        // SAFETY: the caller's arguments, passed on.
        unsafe { gettime(clock, ts) }
    }

    #[inline(always)]
    fn read(clock: libc::clockid_t) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: GETTIME only ever holds functions of this signature;
        // `ts` is a valid timespec to write to; both clocks exist on every
        // Linux loopwatch supports (2.6.32 and later), and the vDSO's
        // function is the one libc calls, with the same arguments.
        unsafe {
            let gettime = std::mem::transmute::<*mut (), Gettime>(GETTIME.load(Relaxed));
            gettime(clock, &mut ts);
        }
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }

    #[inline(always)]
    pub(super) fn fine() -> u64 {
        read(libc::CLOCK_MONOTONIC)
    }

    #[inline(always)]
    pub(super) fn coarse() -> u64 {
        read(libc::CLOCK_MONOTONIC_COARSE)
    }

    /// The coarse clock's resolution (its tick), or `None` if unknown.
    pub(super) fn coarse_resolution() -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        let ns = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64);
        (rc == 0 && ns > 0).then_some(ns)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::sync::LazyLock;
    use std::time::Instant;

    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

    #[inline]
    pub(super) fn fine() -> u64 {
        u64::try_from(BASE.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    pub(super) fn coarse() -> u64 {
        fine()
    }

    pub(super) fn coarse_resolution() -> Option<u64> {
        None
    }
}

/// Nanoseconds on the fine clock; always at least 1.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    imp::fine().max(1)
}

/// Nanoseconds on the coarse clock (never ahead of [`now_ns`], usually
/// one or two ticks behind it, more on a loaded machine); always at least 1.
#[inline(always)]
pub(crate) fn coarse_ns() -> u64 {
    imp::coarse().max(1)
}

static COARSE_TICK: LazyLock<Option<u64>> = LazyLock::new(imp::coarse_resolution);

static COARSE_MIN: LazyLock<u64> = LazyLock::new(|| {
    coarse_tick_ns().map_or(u64::MAX, |tick| {
        tick.saturating_mul(COARSE_TICKS_PER_THRESHOLD)
    })
});

/// The shortest threshold judged with the coarse clock (20 of its ticks:
/// 80 ms with the 4 ms tick of a kernel built with `HZ=250`); `u64::MAX`
/// where there is no coarse clock.
#[inline]
pub(crate) fn coarse_min_ns() -> u64 {
    *COARSE_MIN
}

/// The coarse clock's tick in nanoseconds, if there is one.
pub(crate) fn coarse_tick_ns() -> Option<u64> {
    *COARSE_TICK
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
        (last == 0 || now.saturating_sub(last) >= 1_000_000_000)
            && self.0.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }
}

/// Converts a duration to nanoseconds, saturating.
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_never_ahead_of_the_fine_one_nor_far_behind() {
        let tick = coarse_tick_ns().unwrap_or(0);
        for _ in 0..10_000 {
            let before = now_ns();
            let coarse = coarse_ns();
            let after = now_ns();
            assert!(coarse <= after, "coarse {coarse} ahead of fine {after}");
            // Two ticks, plus slack for ticks delayed on a loaded machine
            // (nothing relies on a bound: this only catches a broken clock).
            assert!(
                before.saturating_sub(coarse) <= 2 * tick + 50_000_000,
                "coarse {coarse} far behind {before} (tick {tick} ns)"
            );
        }
    }

    #[test]
    fn the_fine_clock_never_goes_back() {
        let mut last = now_ns();
        for _ in 0..10_000 {
            let now = now_ns();
            assert!(now >= last);
            last = now;
        }
    }
}
