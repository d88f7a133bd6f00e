//! Why a worker is stuck: what its thread did with its time during the
//! stall ([`CpuAccount`], from `/proc/self/task/TID/schedstat`, the
//! cgroup's throttling and the machine's steal time), the verdict drawn from
//! it ([`StallCause`]), and pauses of the whole process (SIGSTOP, a frozen
//! cgroup, a paused VM), which are never stalls.
//!
//! A thread is only timed once it may be stuck: at each check, the threads
//! in an instrumented poll for a check interval or longer, and the threads
//! of a runtime with a worker whose metrics stood still since the last
//! check, get a reading. A report's figures run from the first reading
//! taken in its stall to the report: they cover the stall but for its
//! first check interval or two.

use std::collections::HashMap;
use std::time::Duration;

pub use crate::model::cause::{CpuAccount, StallCause, Throttling};
use crate::watchdog::cgroup::{Cgroup, CpuStat};
use loopwatch_stack::os::thread::{times as thread_times, OwnTimes, Times as ThreadTimes};

/// Readings of the whole machine and cgroup, taken with a thread's.
#[derive(Debug, Clone, Copy, Default)]
struct HostPoint {
    steal_ns: Option<u64>,
    cpu: Option<CpuStat>,
}

/// One reading of a thread.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: u64,
    times: ThreadTimes,
    host: HostPoint,
}

/// Readings kept per thread: enough for long stalls, thinned by half when
/// full (the first kept).
const MAX_POINTS: usize = 32;

/// The threads timed at most (their readings, and those of a runtime's
/// unknown threads, are bounded by this).
pub(crate) const MAX_TIMED: usize = 256;

/// Times the threads that may be stuck, check by check.
#[derive(Debug, Default)]
pub(crate) struct CpuTracker {
    threads: HashMap<i64, Vec<Point>>,
    cgroup: Cgroup,
    cgroup_at: u64,
    cpu_limit: Option<f64>,
}

impl CpuTracker {
    fn cgroup(&mut self, now: u64) -> &Cgroup {
        if self.cgroup_at == 0
            || now.saturating_sub(self.cgroup_at) >= crate::watchdog::cgroup::DISCOVER_EVERY_NS
        {
            self.cgroup = Cgroup::discover();
            self.cgroup_at = now;
            self.cpu_limit = self.cgroup.cpu().0;
        }
        &self.cgroup
    }

    fn host(&mut self, now: u64) -> HostPoint {
        let cpu = self.cgroup(now).throttling();
        HostPoint {
            steal_ns: crate::watchdog::cgroup::steal_ns(),
            cpu,
        }
    }

    /// Takes a reading of each thread in `suspects` (at most
    /// [`MAX_TIMED`]); threads not in it are forgotten.
    pub(crate) fn observe(&mut self, now: u64, suspects: &[i64]) {
        self.threads.retain(|tid, _| suspects.contains(tid));
        if suspects.is_empty() {
            return;
        }
        let host = self.host(now);
        for &tid in suspects.iter().take(MAX_TIMED) {
            let Some(times) = thread_times(tid) else {
                continue;
            };
            let points = self.threads.entry(tid).or_default();
            if points.len() >= MAX_POINTS {
                let mut i = 0;
                points.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
            }
            points.push(Point {
                at: now,
                times,
                host,
            });
        }
    }

    /// What thread `tid` did with its time since the first reading taken
    /// at or after `since` (the stall's start), up to now.
    ///
    /// The figures run to this check's reading, taken when the check began
    /// (the report's `stalled_for` is measured to the same instant), so that
    /// the time a report takes to find the thread and its stack is not in
    /// them; to a reading taken now when this check took none.
    pub(crate) fn account(&mut self, tid: i64, since: u64) -> Option<CpuAccount> {
        let points = self.threads.get(&tid)?;
        let first = *points.iter().find(|p| p.at >= since)?;
        let last = *points.last()?;
        let (now, times, host) = if last.at > first.at {
            (last.at, last.times, last.host)
        } else {
            let now = crate::clock::now_ns();
            let times = thread_times(tid)?;
            (now, times, self.host(now))
        };
        let span = now.saturating_sub(first.at);
        let on = times.on_cpu_ns.saturating_sub(first.times.on_cpu_ns);
        let wait = times.waiting_ns.saturating_sub(first.times.waiting_ns);
        // The readings are a moment apart from the clock's: never more than
        // the span in all.
        let on = on.min(span);
        let wait = wait.min(span - on);
        let off = span - on - wait;
        // Throttling, where a CPU limit is set or the cgroup was held back.
        let throttling = match (first.host.cpu, host.cpu) {
            (Some(a), Some(b)) => Some(Throttling {
                cpu_limit_cores: self.cpu_limit,
                periods: b.periods.saturating_sub(a.periods),
                throttled_periods: b.throttled_periods.saturating_sub(a.throttled_periods),
                throttled: Duration::from_nanos(b.throttled_ns.saturating_sub(a.throttled_ns)),
            }),
            _ => None,
        }
        .filter(|t| t.cpu_limit_cores.is_some() || t.throttled_periods > 0);
        let steal = match (first.host.steal_ns, host.steal_ns) {
            (Some(a), Some(b)) if b > a => Some(Duration::from_nanos(b - a)),
            _ => None,
        };
        Some(CpuAccount {
            span: Duration::from_nanos(span),
            on_cpu: Duration::from_nanos(on),
            waiting_for_cpu: Duration::from_nanos(wait),
            off_cpu: Duration::from_nanos(off),
            throttling,
            steal,
        })
    }
}

/// A pause of the whole process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pause {
    /// When it ended (ns): the check that noticed it.
    pub(crate) end: u64,
    pub(crate) len: u64,
}

/// The pauses shorter than this are not told from a late wake-up.
const MIN_PAUSE_NS: u64 = 100_000_000;

/// Pauses kept to correct the ages of stalls.
const MAX_PAUSES: usize = 16;

/// How often the watchdog thread's own times are read when no wake-up is
/// late: the baseline a late one is judged against.
const BASELINE_EVERY_NS: u64 = 1_000_000_000;

/// Tells pauses of the whole process (SIGSTOP, a frozen cgroup, a paused
/// VM) from the watchdog thread's own times: between two checks it sleeps
/// for the check interval, then waits for a CPU (its run-queue delay) and
/// runs. A wake-up later than that by more than its time waiting for and on
/// a CPU explains was a time nothing of the process could run: stopped or
/// frozen threads are neither running nor runnable.
///
/// A check whose wake-up was on time reads nothing (the lateness is two
/// clock readings); the thread's times are read at a late one, against a
/// reading taken at the end of a check at most a second earlier. The times
/// waiting for and on a CPU since that reading are all taken as
/// explanation, so a pause is never overstated: under a heavy load, by at
/// most the waits of that second, it is understated.
#[derive(Debug)]
pub(crate) struct PauseDetector {
    own: OwnTimes,
    interval_ns: u64,
    /// When the last check ended.
    last_end: Option<u64>,
    /// The thread's times at the end of a check, and when.
    baseline: Option<(u64, ThreadTimes)>,
    pauses: Vec<Pause>,
}

impl PauseDetector {
    pub(crate) fn new(interval: Duration) -> Self {
        PauseDetector {
            own: OwnTimes::default(),
            interval_ns: crate::clock::nanos(interval),
            last_end: None,
            baseline: None,
            pauses: Vec::new(),
        }
    }

    /// At the start of a check (`now`): whether the process was paused
    /// since the end of the last one, and for how long.
    pub(crate) fn check_started(&mut self, now: u64) -> Option<Pause> {
        let end = self.last_end.take()?;
        let least = MIN_PAUSE_NS.max(self.interval_ns);
        let late = now.saturating_sub(end).saturating_sub(self.interval_ns);
        if late < least {
            return None;
        }
        let times = self.own.read()?;
        // Read again at this check's end: the next late wake-up is judged
        // against a reading after this one.
        let (_, before) = self.baseline.take()?;
        let explained = times.on_cpu_ns.saturating_sub(before.on_cpu_ns)
            + times.waiting_ns.saturating_sub(before.waiting_ns);
        let unexplained = late.saturating_sub(explained);
        if unexplained < least {
            return None;
        }
        let pause = Pause {
            end: now,
            len: unexplained,
        };
        if self.pauses.len() >= MAX_PAUSES {
            self.pauses.remove(0);
        }
        self.pauses.push(pause);
        Some(pause)
    }

    /// At the end of a check.
    pub(crate) fn check_ended(&mut self, now: u64) {
        self.last_end = Some(now);
        if self
            .baseline
            .is_none_or(|(at, _)| now.saturating_sub(at) >= BASELINE_EVERY_NS)
        {
            self.baseline = self.own.read().map(|t| (now, t));
        }
    }

    /// How long the process was paused between `since` and now: taken off
    /// the age of anything that began at `since`.
    pub(crate) fn paused_since(&self, since: u64) -> u64 {
        self.pauses
            .iter()
            .filter(|p| p.end > since)
            .map(|p| p.len.min(p.end - since))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(on: u64, wait: u64, off: u64) -> CpuAccount {
        CpuAccount {
            span: Duration::from_millis(on + wait + off),
            on_cpu: Duration::from_millis(on),
            waiting_for_cpu: Duration::from_millis(wait),
            off_cpu: Duration::from_millis(off),
            throttling: None,
            steal: None,
        }
    }

    #[test]
    fn the_largest_share_is_the_cause() {
        assert_eq!(account(300, 2900, 0).cause(), StallCause::Starved);
        assert_eq!(account(2900, 300, 0).cause(), StallCause::Busy);
        assert_eq!(account(10, 5, 2900).cause(), StallCause::Blocked);
        assert_eq!(account(0, 0, 0).cause(), StallCause::Unknown);
        assert_eq!(account(1000, 400, 900).cause(), StallCause::Busy);
    }

    #[test]
    fn the_account_says_what_held_it_back() {
        let mut a = account(300, 2900, 0);
        a.throttling = Some(Throttling {
            cpu_limit_cores: Some(0.1),
            periods: 39,
            throttled_periods: 32,
            throttled: Duration::from_millis(2800),
        });
        assert_eq!(
            a.to_string(),
            "on a CPU 0.3 s, waiting for one 2.9 s, waiting in the kernel 0.0 s of 3.2 s; \
             the cgroup's CPU limit (0.10 cores) throttled 32 of 39 periods, 2.8 s"
        );
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["waiting_for_cpu_seconds"], 2.9);
        assert_eq!(json["throttling"]["throttled_periods"], 32);
        assert_eq!(json["steal_seconds"], serde_json::Value::Null);
    }

    #[test]
    fn pauses_are_taken_off_the_ages_that_span_them() {
        let mut d = PauseDetector::new(Duration::from_millis(100));
        d.pauses.push(Pause {
            end: 10_000,
            len: 4_000,
        });
        assert_eq!(d.paused_since(1_000), 4_000);
        assert_eq!(d.paused_since(8_000), 2_000);
        assert_eq!(d.paused_since(10_000), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_that_sleeps_is_off_cpu_and_one_that_spins_on_it() {
        let tid = loopwatch_stack::current_tid();
        let mut tracker = CpuTracker::default();
        let start = crate::clock::now_ns();
        tracker.observe(start, &[tid]);
        std::thread::sleep(Duration::from_millis(300));
        let slept = tracker.account(tid, start).unwrap();
        assert!(slept.span >= Duration::from_millis(300), "{slept:?}");
        assert!(slept.off_cpu >= Duration::from_millis(250), "{slept:?}");
        assert_eq!(slept.cause(), StallCause::Blocked, "{slept:?}");
        let start = crate::clock::now_ns();
        tracker.observe(start, &[tid]);
        let until = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        let spun = tracker.account(tid, start).unwrap();
        assert!(
            spun.on_cpu + spun.waiting_for_cpu >= Duration::from_millis(250),
            "{spun:?}"
        );
        assert_eq!(spun.on_cpu + spun.waiting_for_cpu + spun.off_cpu, spun.span);
        // A thread no longer suspected is forgotten.
        tracker.observe(crate::clock::now_ns(), &[]);
        assert!(tracker.account(tid, start).is_none());
    }
}
