//! The stall state machine: a stall seen at a check is flagged, escalated
//! at 2x, 4x, ... the threshold, and ended when it is no longer seen. The
//! rate limit holds reports back from the log and the callback only, with a
//! budget for first reports and another for escalations (a long stall's
//! escalations never use up what a new stall needs): every report still
//! gets its evidence, in health and the recent stalls. It decides what to
//! report, not how.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::watchdog::runtimes::RuntimeRef;
use crate::StallReport;

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
    pub(crate) runtime: RuntimeRef,
    pub(crate) worker: Option<usize>,
    /// When the stall began (ns).
    pub(crate) since: u64,
    pub(crate) task: Option<&'static str>,
    pub(crate) thread: Option<Arc<str>>,
    /// Kernel id of the stuck thread, when known (0 = unknown).
    pub(crate) os_tid: i64,
    /// Why this could not be confirmed to be a stall, when it could not.
    pub(crate) unconfirmed: Option<String>,
}

impl Candidate {
    pub(crate) fn report(&self, now: u64, escalation: u32) -> StallReport {
        StallReport {
            runtime: self.runtime.name.to_string(),
            worker: self.worker,
            stalled_for: Duration::from_nanos(now.saturating_sub(self.since)),
            task: self.task.map(str::to_owned),
            thread: self.thread.as_deref().map(str::to_owned),
            backtrace: None,
            culprit: None,
            spans: Vec::new(),
            stack_missing: None,
            stack_complete: None,
            stack_method: None,
            unconfirmed: self.unconfirmed.clone(),
            cpu_bound: None,
            cpu: None,
            cause: crate::StallCause::Unknown,
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
    /// A stall flagged now (`report.escalation == 0`) or escalated; `held`
    /// when the rate limit holds it back from the log and the callback (its
    /// evidence is still taken, for health and the recent stalls).
    Report {
        report: Box<StallReport>,
        candidate: Candidate,
        held: bool,
    },
    /// A stall that ended; `reported` when its first report went out.
    End {
        candidate: Candidate,
        duration: Duration,
        reported: bool,
    },
}

/// Tracks the stalls in progress.
#[derive(Debug)]
pub(crate) struct StallMachine {
    threshold_ns: u64,
    active: HashMap<StallKey, Active>,
    /// Budget of first reports.
    firsts: RateLimit,
    /// Budget of escalations, apart.
    escalations: RateLimit,
}

/// At most `max_per_minute` reports in any sliding minute.
#[derive(Debug)]
struct RateLimit {
    max_per_minute: usize,
    /// Times (ns) of the reports sent in the last minute.
    sent: VecDeque<u64>,
}

impl RateLimit {
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
}

const MINUTE_NS: u64 = 60_000_000_000;

impl StallMachine {
    pub(crate) fn new(threshold: Duration, max_per_minute: u32) -> Self {
        let limit = || RateLimit {
            max_per_minute: max_per_minute as usize,
            sent: VecDeque::new(),
        };
        StallMachine {
            threshold_ns: crate::clock::nanos(threshold),
            active: HashMap::new(),
            firsts: limit(),
            escalations: limit(),
        }
    }

    /// The stalls in progress.
    pub(crate) fn active(&self) -> impl Iterator<Item = &Candidate> {
        self.active.values().map(|a| &a.candidate)
    }

    /// The stall in progress that has lasted longest, if it has lasted at
    /// least `ns`, with its escalation count.
    pub(crate) fn lasting(&self, now: u64, ns: u64) -> Option<(&Candidate, u32)> {
        self.active
            .values()
            .filter(|a| now.saturating_sub(a.candidate.since) >= ns)
            .min_by_key(|a| a.candidate.since)
            .map(|a| (&a.candidate, a.escalation))
    }

    /// Takes back a stall flagged at this check that its evidence showed
    /// was none: it ends without a word, as if never seen.
    pub(crate) fn withdraw(&mut self, key: StallKey) {
        if let Some(active) = self.active.remove(&key) {
            if active.reported {
                self.firsts.sent.pop_back();
            }
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
                    let report = Box::new(active.candidate.report(now, active.escalation));
                    events.push(Event::Report {
                        report,
                        candidate: active.candidate.clone(),
                        held: !self.escalations.allow(now),
                    });
                }
                continue;
            }
            let mut next_multiple = 2;
            while stalled_for >= self.threshold_ns.saturating_mul(next_multiple)
                && next_multiple < u64::MAX / 2
            {
                next_multiple *= 2;
            }
            let reported = self.firsts.allow(now);
            events.push(Event::Report {
                report: Box::new(candidate.report(now, 0)),
                candidate: candidate.clone(),
                held: !reported,
            });
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
                    duration: Duration::from_nanos(now.saturating_sub(c.since)),
                    candidate: c,
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
            runtime: RuntimeRef {
                name: Arc::from("main"),
                serial: 1,
            },
            worker: Some(0),
            since,
            task: Some("job"),
            thread: None,
            os_tid: 0,
            unconfirmed: None,
        }
    }

    fn reports(events: &[Event]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Report {
                    report,
                    held: false,
                    ..
                } => Some(report.escalation),
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
    fn a_withdrawn_stall_ends_without_an_event_and_gives_its_report_back() {
        // A budget of one first report a minute.
        let mut m = StallMachine::new(Duration::from_secs(1), 1);
        let since = 10 * S;
        assert_eq!(reports(&m.update(since + S, vec![cand(since)])), vec![0]);
        m.withdraw(cand(since).key);
        assert_eq!(m.active().count(), 0);
        assert!(m.update(since + 2 * S, vec![]).is_empty());
        // The budget it used is back: the next stall is reported, not held.
        let other = 20 * S;
        assert_eq!(reports(&m.update(other + S, vec![cand(other)])), vec![0]);
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
                    Event::Report { held: false, .. } => sent += 1,
                    Event::Report { held: true, .. } => suppressed += 1,
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

    #[test]
    fn escalations_do_not_use_up_the_budget_of_first_reports() {
        let mut m = StallMachine::new(Duration::from_secs(1), 2);
        let long = cand(0);
        // One long stall escalates at 2, 4, 8, 16 and 32 s: two logged,
        // the rest held back.
        let mut escalations = (0, 0);
        for t in 1..=40 {
            for e in m.update(t * S, vec![long.clone()]) {
                if let Event::Report { report, held, .. } = e {
                    if report.escalation > 0 {
                        if held {
                            escalations.1 += 1;
                        } else {
                            escalations.0 += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(escalations, (2, 3));
        // A new stall's first report still goes out, with the long one's.
        let mut new = cand(39 * S);
        new.key = StallKey::Poll {
            slot: 9,
            start: 39 * S,
        };
        let events = m.update(41 * S, vec![long, new]);
        assert!(
            events.iter().any(
                |e| matches!(e, Event::Report { report, held: false, .. } if report.escalation == 0)
            ),
            "{events:?}"
        );
    }
}
