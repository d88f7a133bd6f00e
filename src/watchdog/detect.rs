//! Stall detection for one runtime, on the watchdog thread: samples the
//! runtime's metrics and heartbeat, and combines them with the poll slots to
//! find stalled workers. It decides *that* a worker is stalled; the
//! [`stall`](super::stall) machine decides what to report.

use std::sync::Arc;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::heartbeat::BeatView;
use super::runtimes::RuntimeEntry;
use super::stall::{Candidate, StallKey};
use crate::instrument::slot::{SlotView, PARK_ACTIVE, PARK_UNKNOWN};

/// What is published per worker by tokio: (park/unpark count, park count, busy ns).
type Triple = (u64, u64, u64);

#[derive(Debug)]
struct WorkerTrack {
    last: Option<Triple>,
    /// When `last` was first seen (ns).
    changed_at: u64,
    /// When the value before `last` was last seen (ns): the change happened
    /// after this, even when a check ran late.
    changed_after: u64,
}

/// Detection state of one watched runtime.
#[derive(Debug)]
pub(crate) struct RuntimeMonitor {
    pub(crate) entry: Arc<RuntimeEntry>,
    pub(crate) id: tokio::runtime::Id,
    pub(crate) flavor: &'static str,
    current_thread: bool,
    workers: Vec<WorkerTrack>,
    pub(crate) beat: BeatView,
    /// Last verdict on whether a current-thread runtime is driven:
    /// (what it was decided for, when, verdict).
    driven: Option<(DrivenKey, u64, bool)>,
    /// When the heartbeat task was last woken (ns).
    pub(crate) last_poke: u64,
    /// When the metrics were last read (ns).
    last_sample: u64,
}

/// The state a "driven?" verdict was reached in: it holds while nothing moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrivenKey {
    beats: u64,
    changed_at: u64,
    driver_tid: i64,
}

/// Settings the detection needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub(crate) stall_ns: u64,
    pub(crate) check_ns: u64,
    /// Whether threads may be signalled to take their stack.
    pub(crate) sample_stacks: bool,
}

fn flavor_name(flavor: &RuntimeFlavor) -> &'static str {
    match flavor {
        RuntimeFlavor::CurrentThread => "current_thread",
        RuntimeFlavor::MultiThread => "multi_thread",
        _ => "other",
    }
}

#[cfg(target_has_atomic = "64")]
fn sample(handle: &Handle, worker: usize) -> Option<Triple> {
    let m = handle.metrics();
    Some((
        m.worker_park_unpark_count(worker),
        m.worker_park_count(worker),
        crate::clock::nanos(m.worker_total_busy_duration(worker)),
    ))
}

#[cfg(not(target_has_atomic = "64"))]
fn sample(_handle: &Handle, _worker: usize) -> Option<Triple> {
    None
}

impl RuntimeMonitor {
    pub(crate) fn new(entry: Arc<RuntimeEntry>) -> Self {
        let flavor = entry.handle.runtime_flavor();
        let workers = entry.handle.metrics().num_workers();
        RuntimeMonitor {
            id: entry.handle.id(),
            flavor: flavor_name(&flavor),
            current_thread: flavor == RuntimeFlavor::CurrentThread,
            workers: (0..workers)
                .map(|_| WorkerTrack {
                    last: None,
                    changed_at: entry.watched_at,
                    changed_after: 0,
                })
                .collect(),
            beat: entry.beat.view(),
            driven: None,
            last_poke: 0,
            last_sample: 0,
            entry,
        }
    }

    pub(crate) fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// Reads the runtime's metrics and heartbeat.
    pub(crate) fn sample(&mut self, now: u64) {
        self.beat = self.entry.beat.view();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let triple = sample(&self.entry.handle, i);
            if triple != w.last {
                w.last = triple;
                w.changed_at = now;
                w.changed_after = self.last_sample;
            }
        }
        self.last_sample = now;
    }

    /// Whether this is a current-thread runtime that nobody drives now (idle,
    /// not stalled), as last found.
    pub(crate) fn undriven(&self) -> bool {
        self.current_thread && matches!(self.driven, Some((_, _, false)))
    }

    /// Seconds since the heartbeat last ran (or since the runtime was watched).
    pub(crate) fn heartbeat_age_ns(&self, now: u64) -> u64 {
        let since = if self.beat.beats > 0 {
            self.beat.last_beat
        } else {
            self.entry.watched_at
        };
        now.saturating_sub(since)
    }

    /// Finds the stalls of this runtime at `now`.
    ///
    /// - An instrumented poll running on one of the runtime's worker threads for
    ///   the threshold or longer is a stall, exactly (the poll slot says since
    ///   when and which task).
    /// - A worker whose published metrics have not moved for the threshold while
    ///   it was not parked (even park/unpark count) is stuck in one poll, or is
    ///   completing polls that are too slow to reach tokio's next publication
    ///   (every 61 polls). Worker threads seen completing instrumented polls
    ///   within the threshold explain such workers away; the rest are stalls.
    /// - With loopwatch's runtime hooks, a thread that parked within the
    ///   threshold is not stuck, which bounds the count further.
    pub(crate) fn detect(&mut self, now: u64, slots: &[SlotView], t: Thresholds) -> Vec<Candidate> {
        let mut found = Vec::new();
        if !self.beat.alive {
            return found;
        }
        let mine: Vec<&SlotView> = slots
            .iter()
            .filter(|s| s.info.runtime == Some(self.id) && (self.current_thread || s.is_worker))
            .collect();
        let stuck: Vec<&SlotView> = mine
            .iter()
            .copied()
            .filter(|s| s.poll_start != 0 && now.saturating_sub(s.poll_start) >= t.stall_ns)
            .collect();
        let progressing = |s: &SlotView| {
            if s.poll_start != 0 {
                now.saturating_sub(s.poll_start) < t.stall_ns
            } else {
                s.last_completed != 0 && now.saturating_sub(s.last_completed) < t.stall_ns
            }
        };

        // Workers not parked, with when their metrics last moved; the frozen
        // ones (for the threshold or longer) come first, longest frozen first.
        // Entries: (worker, changed_at, changed_after).
        let mut active: Vec<(usize, u64, u64)> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let (park_unpark, _, _) = w.last?;
                (park_unpark % 2 == 0).then_some((i, w.changed_at, w.changed_after))
            })
            .collect();
        active.sort_by_key(|&(_, since, _)| since);
        let is_frozen = |since: u64| now.saturating_sub(since) >= t.stall_ns;
        let frozen_count = active
            .iter()
            .filter(|&&(_, since, _)| is_frozen(since))
            .count();

        // Instrumented stalls, each matched to an unparked worker whose
        // metrics may have stopped before the poll began (and so stand still
        // for at least as long as the poll has run); the latest such.
        let mut stuck_sorted = stuck.clone();
        stuck_sorted.sort_by_key(|s| s.poll_start);
        let mut unmatched = active.clone();
        // A poll's stamp may be up to a tick of the coarse clock earlier
        // than its start, and the watchdog's times are fine: a worker whose
        // metrics last changed after the stamp but within that tick may
        // still have changed them before the poll began.
        let lag = crate::clock::coarse_lag_ns();
        for s in &stuck_sorted {
            let began_by = s.poll_start.saturating_add(lag);
            let pick = unmatched
                .iter()
                .enumerate()
                .filter(|(_, &(_, _, after))| after <= began_by)
                .max_by_key(|(_, &(_, _, after))| after)
                .map(|(idx, _)| idx);
            let worker = match (pick, self.current_thread) {
                (Some(idx), _) => Some(unmatched.remove(idx).0),
                (None, true) => Some(0),
                // No worker stands still behind this poll: its thread gave
                // the worker away (`block_in_place`) or is not a worker, so
                // no worker is stalled.
                (None, false) => continue,
            };
            found.push(Candidate {
                key: StallKey::Poll {
                    slot: s.id,
                    start: s.poll_start,
                },
                runtime: self.entry.identity(),
                worker,
                since: s.poll_start,
                task: s.task,
                thread: s.info.name.clone(),
                os_tid: s.info.os_tid,
            });
        }
        unmatched.retain(|&(_, since, _)| is_frozen(since));

        // Uninstrumented stalls.
        let progressing_count = mine
            .iter()
            .filter(|s| !stuck.iter().any(|x| x.id == s.id) && progressing(s))
            .count();
        let not_frozen = self.workers.len().saturating_sub(frozen_count);
        let mut anonymous = frozen_count
            .saturating_sub(stuck.len())
            .saturating_sub(progressing_count.saturating_sub(not_frozen));

        // With hooks on every worker, find the threads that could be stuck:
        // active (not parked) for the whole threshold, not in a stuck
        // instrumented poll and not seen progressing. They bound the count,
        // and when they match it, they name the stuck threads.
        let mut suspects: Vec<&SlotView> = Vec::new();
        let hooked = mine.iter().filter(|s| s.park != PARK_UNKNOWN).count();
        if !self.current_thread && hooked >= self.workers.len() {
            suspects = mine
                .iter()
                .copied()
                .filter(|s| {
                    s.park == PARK_ACTIVE
                        && now.saturating_sub(s.park_since) >= t.stall_ns
                        && s.poll_start == 0
                        && !progressing(s)
                })
                .collect();
            suspects.sort_by_key(|s| s.park_since);
            anonymous = anonymous.min(suspects.len());
        }
        let named = suspects.len() == anonymous;

        if self.current_thread && anonymous > 0 && !self.current_thread_driven(now, t) {
            anonymous = 0;
        }

        for (n, &(worker, since, _)) in unmatched.iter().take(anonymous).enumerate() {
            let suspect = if named { suspects.get(n) } else { None };
            let thread = suspect.and_then(|s| s.info.name.clone());
            // The stuck thread: a hooked suspect, or the driver of a current-thread runtime.
            let os_tid = match suspect {
                Some(s) => s.info.os_tid,
                None if self.current_thread => self.beat.driver_tid,
                None => 0,
            };
            found.push(Candidate {
                key: StallKey::Worker {
                    runtime: self.entry.serial,
                    worker,
                    since,
                },
                runtime: self.entry.identity(),
                worker: Some(worker),
                since,
                task: None,
                thread,
                os_tid,
            });
        }

        // No per-worker data (targets without 64-bit atomics): the heartbeat
        // is the only signal.
        if self.workers.iter().all(|w| w.last.is_none()) && found.is_empty() {
            let age = self.heartbeat_age_ns(now);
            if self.beat.beats > 0 && age >= t.stall_ns {
                let since = now.saturating_sub(age);
                found.push(Candidate {
                    key: StallKey::Heartbeat {
                        runtime: self.entry.serial,
                        since,
                    },
                    runtime: self.entry.identity(),
                    worker: None,
                    since,
                    task: None,
                    thread: None,
                    os_tid: 0,
                });
            }
        }
        found
    }

    /// Whether someone is driving this current-thread runtime right now
    /// (inside `block_on`), for a runtime whose metrics and heartbeat stand
    /// still. Tokio shows no difference between a runtime stuck in a poll and
    /// one whose `block_on` returned, so the driver thread (where the
    /// heartbeat last ran) is asked for its stack: inside tokio's
    /// current-thread scheduler means driven. Without stack sampling (turned
    /// off, not Linux, or a stripped binary) a runtime driven since it was
    /// watched counts as driven. The verdict is kept while nothing moves and
    /// taken again every quarter threshold.
    fn current_thread_driven(&mut self, now: u64, t: Thresholds) -> bool {
        if !(self.beat.beats > 0 || self.entry.watched_from_inside)
            || self.heartbeat_age_ns(now) < t.stall_ns
        {
            return false;
        }
        let key = DrivenKey {
            beats: self.beat.beats,
            changed_at: self.workers.first().map_or(0, |w| w.changed_at),
            driver_tid: self.beat.driver_tid,
        };
        let recheck_ns = (t.stall_ns / 4).max(t.check_ns);
        if let Some((k, at, verdict)) = self.driven {
            if k == key && now.saturating_sub(at) < recheck_ns {
                return verdict;
            }
        }
        let verdict = if !t.sample_stacks || key.driver_tid == 0 {
            true
        } else {
            // A driver thread waiting in the kernel is read from outside; one
            // on a CPU while its runtime stands still is signalled (it runs
            // user code, so no call of its is interrupted).
            match crate::stack::sample(key.driver_tid, true) {
                Ok(sample) => {
                    crate::stack::in_current_thread_scheduler(&sample.frames).unwrap_or(true)
                }
                // The driver thread exited: nobody drives the runtime.
                Err(crate::stack::NoStack::Gone) => false,
                Err(_) => true,
            }
        };
        self.driven = Some((key, now, verdict));
        verdict
    }
}
