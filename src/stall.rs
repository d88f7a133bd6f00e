//! Stall reports and the stall state machine: flag, escalate, end, rate limit.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What loopwatch knows about a stall, handed to the
/// [`on_stall`](crate::Builder::on_stall) callback when the stall is first
/// flagged and again at each escalation (2x, 4x, ... the stall threshold).
///
/// Its `Display` form is the one-line summary used in logs and in
/// [`Health::issues`](crate::Health::issues).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StallReport {
    /// The name the runtime was watched under.
    pub runtime: String,
    /// The stuck worker's index, when known.
    pub worker: Option<usize>,
    /// How long the worker has been stuck in one poll so far.
    pub stalled_for: Duration,
    /// The task it is stuck in, when that task is instrumented
    /// ([`WatchExt::watched`](crate::WatchExt::watched)).
    pub task: Option<String>,
    /// The stuck thread's name, when known.
    pub thread: Option<String>,
    /// The stuck thread's stack, innermost first, trimmed to the frames a
    /// person needs (Linux, with [`sample_stacks`](crate::Builder::sample_stacks),
    /// when the stuck thread can be found: an instrumented task, a runtime
    /// built with [`install_runtime_hooks`](crate::install_runtime_hooks), a
    /// current-thread runtime, or a worker the heartbeat has run on).
    pub backtrace: Option<String>,
    /// Whether the stuck thread was running on a CPU (a CPU hog) rather than
    /// waiting in the kernel (a blocking call, a lock, a sleep), when known.
    pub cpu_bound: Option<bool>,
    /// At an escalation: whether the stack changed since the last report
    /// (`false`: stuck at the same place).
    pub stack_moved: Option<bool>,
    /// 0 for the first report of this stall, 1 at twice the threshold, 2 at
    /// four times, and so on.
    pub escalation: u32,
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runtime {}: ", self.runtime)?;
        match self.worker {
            Some(w) => write!(f, "worker {w}")?,
            None => f.write_str("a worker")?,
        }
        write!(f, " stalled for {:.1} s", self.stalled_for.as_secs_f64())?;
        if let Some(task) = &self.task {
            write!(f, " in task '{task}'")?;
        }
        if let Some(thread) = &self.thread {
            write!(f, " on thread '{thread}'")?;
        }
        match self.cpu_bound {
            Some(true) => f.write_str(" (on CPU)")?,
            Some(false) => f.write_str(" (waiting, off CPU)")?,
            None => {}
        }
        Ok(())
    }
}

/// Identity of one stall, stable from its start to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StallKey {
    /// An instrumented poll: the slot and the poll's start time.
    Poll { slot: usize, start: u64 },
    /// A worker whose runtime metrics stopped moving at `since`.
    Worker {
        runtime: u64,
        worker: usize,
        since: u64,
    },
    /// A runtime whose heartbeat stopped at `since` (no per-worker data).
    Heartbeat { runtime: u64, since: u64 },
}

/// A stall seen at one check.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) key: StallKey,
    pub(crate) runtime: Arc<str>,
    pub(crate) runtime_serial: u64,
    pub(crate) worker: Option<usize>,
    /// When the stall began (ns).
    pub(crate) since: u64,
    pub(crate) task: Option<&'static str>,
    pub(crate) thread: Option<Arc<str>>,
    /// Kernel id of the stuck thread, when known (0 = unknown).
    pub(crate) os_tid: i64,
}

impl Candidate {
    pub(crate) fn report(&self, now: u64, escalation: u32) -> StallReport {
        StallReport {
            runtime: self.runtime.to_string(),
            worker: self.worker,
            stalled_for: Duration::from_nanos(now.saturating_sub(self.since)),
            task: self.task.map(str::to_owned),
            thread: self.thread.as_deref().map(str::to_owned),
            backtrace: None,
            cpu_bound: None,
            stack_moved: None,
            escalation,
        }
    }
}

#[derive(Debug)]
struct Active {
    candidate: Candidate,
    /// Next report when stalled for `threshold * next_multiple`.
    next_multiple: u64,
    escalation: u32,
    /// Whether the first report went out (not rate limited).
    reported: bool,
}

/// What the state machine decided at one check.
#[derive(Debug)]
pub(crate) enum Event {
    /// A stall flagged now (`escalation == 0`) or escalated.
    Report {
        report: StallReport,
        key: StallKey,
        /// Kernel id of the stuck thread (0 = unknown).
        os_tid: i64,
    },
    /// A report held back by the rate limit; `new` when it was a stall's first.
    Suppressed { runtime: Arc<str>, new: bool },
    /// A stall that ended; `reported` when its first report went out.
    End {
        key: StallKey,
        runtime: Arc<str>,
        runtime_serial: u64,
        worker: Option<usize>,
        task: Option<&'static str>,
        duration: Duration,
        reported: bool,
    },
}

/// Tracks the stalls in progress.
#[derive(Debug)]
pub(crate) struct StallMachine {
    threshold_ns: u64,
    max_per_minute: usize,
    active: HashMap<StallKey, Active>,
    /// Times (ns) of the reports sent in the last minute.
    sent: VecDeque<u64>,
}

const MINUTE_NS: u64 = 60_000_000_000;

impl StallMachine {
    pub(crate) fn new(threshold: Duration, max_per_minute: u32) -> Self {
        StallMachine {
            threshold_ns: crate::clock::nanos(threshold),
            max_per_minute: max_per_minute as usize,
            active: HashMap::new(),
            sent: VecDeque::new(),
        }
    }

    /// The stalls in progress.
    pub(crate) fn active(&self) -> impl Iterator<Item = &Candidate> {
        self.active.values().map(|a| &a.candidate)
    }

    fn allow(&mut self, now: u64) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= MINUTE_NS)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max_per_minute {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// Feeds the stalls seen at this check; returns what to report.
    pub(crate) fn update(&mut self, now: u64, seen: Vec<Candidate>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut still = std::collections::HashSet::with_capacity(seen.len());
        for candidate in seen {
            let key = candidate.key;
            still.insert(key);
            let stalled_for = now.saturating_sub(candidate.since);
            if let Some(active) = self.active.get_mut(&key) {
                active.candidate = candidate;
                if stalled_for >= self.threshold_ns.saturating_mul(active.next_multiple) {
                    active.escalation = active.escalation.saturating_add(1);
                    active.next_multiple = active.next_multiple.saturating_mul(2);
                    // Skip multiples already passed (the watchdog may have been slow).
                    while stalled_for >= self.threshold_ns.saturating_mul(active.next_multiple)
                        && active.next_multiple < u64::MAX / 2
                    {
                        active.next_multiple = active.next_multiple.saturating_mul(2);
                    }
                    let report = active.candidate.report(now, active.escalation);
                    let runtime = active.candidate.runtime.clone();
                    let os_tid = active.candidate.os_tid;
                    if self.allow(now) {
                        events.push(Event::Report {
                            report,
                            key,
                            os_tid,
                        });
                    } else {
                        events.push(Event::Suppressed {
                            runtime,
                            new: false,
                        });
                    }
                }
                continue;
            }
            let mut next_multiple = 2;
            while stalled_for >= self.threshold_ns.saturating_mul(next_multiple)
                && next_multiple < u64::MAX / 2
            {
                next_multiple *= 2;
            }
            let reported = self.allow(now);
            if reported {
                events.push(Event::Report {
                    report: candidate.report(now, 0),
                    key,
                    os_tid: candidate.os_tid,
                });
            } else {
                events.push(Event::Suppressed {
                    runtime: candidate.runtime.clone(),
                    new: true,
                });
            }
            self.active.insert(
                key,
                Active {
                    candidate,
                    next_multiple,
                    escalation: 0,
                    reported,
                },
            );
        }
        let ended: Vec<StallKey> = self
            .active
            .keys()
            .filter(|k| !still.contains(k))
            .copied()
            .collect();
        for key in ended {
            if let Some(active) = self.active.remove(&key) {
                let c = active.candidate;
                events.push(Event::End {
                    key,
                    duration: Duration::from_nanos(now.saturating_sub(c.since)),
                    runtime: c.runtime,
                    runtime_serial: c.runtime_serial,
                    worker: c.worker,
                    task: c.task,
                    reported: active.reported,
                });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cand(since: u64) -> Candidate {
        Candidate {
            key: StallKey::Worker {
                runtime: 1,
                worker: 0,
                since,
            },
            runtime: Arc::from("main"),
            runtime_serial: 1,
            worker: Some(0),
            since,
            task: Some("job"),
            thread: None,
            os_tid: 0,
        }
    }

    fn reports(events: &[Event]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Report { report, .. } => Some(report.escalation),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn flags_once_then_escalates_at_powers_of_two_and_ends() {
        let mut m = StallMachine::new(Duration::from_secs(1), 100);
        let since = 10 * S;
        assert_eq!(reports(&m.update(since + S, vec![cand(since)])), vec![0]);
        assert!(reports(&m.update(since + S + S / 2, vec![cand(since)])).is_empty());
        assert_eq!(
            reports(&m.update(since + 2 * S, vec![cand(since)])),
            vec![1]
        );
        assert!(reports(&m.update(since + 3 * S, vec![cand(since)])).is_empty());
        assert_eq!(
            reports(&m.update(since + 4 * S, vec![cand(since)])),
            vec![2]
        );
        let end = m.update(since + 5 * S, vec![]);
        match &end[..] {
            [Event::End {
                duration, reported, ..
            }] => {
                assert_eq!(*duration, Duration::from_secs(5));
                assert!(reported);
            }
            other => panic!("expected one end event, got {other:?}"),
        }
        assert_eq!(m.active().count(), 0);
    }

    #[test]
    fn rate_limit_suppresses_past_the_cap_and_recovers_after_a_minute() {
        let mut m = StallMachine::new(Duration::from_secs(1), 2);
        let mut t = 100 * S;
        let mut suppressed = 0;
        let mut sent = 0;
        for i in 0..5 {
            let since = t - S;
            let mut c = cand(since);
            c.key = StallKey::Poll {
                slot: i,
                start: since,
            };
            for e in m.update(t, vec![c]) {
                match e {
                    Event::Report { .. } => sent += 1,
                    Event::Suppressed { new: true, .. } => suppressed += 1,
                    _ => {}
                }
            }
            m.update(t + 1, vec![]);
            t += S;
        }
        assert_eq!((sent, suppressed), (2, 3));
        t += 61 * S;
        let c = cand(t - S);
        assert_eq!(reports(&m.update(t, vec![c])), vec![0]);
    }
}
