//! Stall detection for one runtime, on the watchdog thread: samples the
//! runtime's metrics and heartbeat, and combines them with the poll slots to
//! find stalled workers. It decides *that* a worker is stalled; the
//! [`stall`](crate::watchdog::stall) machine decides what to report.

use std::sync::Arc;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::board::slot::{SlotView, PARK_ACTIVE, PARK_UNKNOWN};
use crate::watchdog::cause::PauseDetector;
use crate::watchdog::heartbeat::BeatView;
use crate::watchdog::runtimes::RuntimeEntry;
use crate::watchdog::stall::{Candidate, StallKey};

/// What is published per worker by tokio: (park/unpark count, park count, busy ns).
type Triple = (u64, u64, u64);

#[derive(Debug)]
struct WorkerTrack {
    last: Option<Triple>,
    /// When `last` was first seen (ns).
    changed_at: u64,
    /// The coarse clock as read just before the last look that still saw
    /// the value before `last` (ns): the change was made after that look, so
    /// after any stamp, fine or coarse, lower than this reading (the coarse
    /// clock never runs ahead of the fine one and never goes back).
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
    driven: Option<(DrivenKey, u64, Driven)>,
    /// The driver thread's last stack looked at, and whether it was inside
    /// the scheduler.
    driver_seen: Option<(Vec<usize>, Vec<u64>, Option<bool>)>,
    /// The thread found driving this current-thread runtime when its
    /// heartbeat never ran (0 = none found).
    found_driver: i64,
    /// When the heartbeat task was last woken (ns).
    pub(crate) last_poke: u64,
    /// The coarse clock as read just before the metrics were last read (ns).
    last_sample: u64,
}

/// The state a "driven?" verdict was reached in: it holds while nothing moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DrivenKey {
    beats: u64,
    changed_at: u64,
    driver_tid: i64,
}

/// Whether a current-thread runtime whose heartbeat and metrics stand still
/// is driven (its thread inside `block_on`, stuck in a poll) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Driven {
    Yes,
    No,
    /// It could not be told, for this reason: reported as an unconfirmed
    /// stall, never dropped.
    Unknown(String),
}

/// Which threads not known to loopwatch may be a runtime's stuck one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Unknowns {
    None,
    /// Threads named as workers are.
    Workers,
    /// Any thread of the process.
    Any,
}

/// Settings the detection needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub(crate) stall_ns: u64,
    pub(crate) check_ns: u64,
    /// Whether stacks are taken.
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
            found_driver: 0,
            driver_seen: None,
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
        // Read before the metrics: a stamp lower than this was taken before
        // they were read.
        let looked = crate::clock::coarse_ns();
        self.beat = self.entry.beat.view();
        let mut known = true;
        for (i, w) in self.workers.iter_mut().enumerate() {
            let triple = sample(&self.entry.handle, i);
            if triple != w.last {
                w.last = triple;
                w.changed_at = now;
                w.changed_after = self.last_sample;
            }
            known &= w.last.is_some();
            let running = w
                .last
                .is_some_and(|(park_unpark, _, _)| park_unpark % 2 == 0);
            self.entry.board.set(i, running, w.changed_after);
        }
        if known {
            self.entry.board.observed(looked);
        }
        self.last_sample = looked;
    }

    /// Whether this is a current-thread runtime that nobody drives now (idle,
    /// not stalled), as last found.
    pub(crate) fn undriven(&self) -> bool {
        self.current_thread && matches!(self.driven, Some((_, _, Driven::No)))
    }

    /// The thread that drives this current-thread runtime, whose stack was
    /// read for the report of a stall detection could not confirm, was
    /// found inside its scheduler (`inside`: driven, the stall is real) or,
    /// by a complete walk, outside it (not driven: no stall). The verdict
    /// holds as if detection had reached it, until something moves.
    pub(crate) fn driver_read(&mut self, now: u64, inside: bool) {
        if !self.current_thread {
            return;
        }
        let key = self.driven_key();
        let verdict = if inside { Driven::Yes } else { Driven::No };
        self.driven = Some((key, now, verdict));
    }

    /// The state a "driven?" verdict is reached in now.
    fn driven_key(&self) -> DrivenKey {
        DrivenKey {
            beats: self.beat.beats,
            changed_at: self.workers.first().map_or(0, |w| w.changed_at),
            driver_tid: self.beat.driver_tid,
        }
    }

    /// Whether `tid` is the thread that drives this current-thread runtime.
    pub(crate) fn is_driver(&self, tid: i64) -> bool {
        self.current_thread && tid != 0 && self.driver_tid() == tid
    }

    /// Whether the driver thread whose stack is `sample` is inside tokio's
    /// current-thread scheduler; the answer for the same frames at the same
    /// places is kept, so that a runtime standing still is not symbolized
    /// again at every look.
    fn driver_role(
        &mut self,
        symbolizer: &mut loopwatch_stack::Symbolizer,
        sample: &loopwatch_stack::Sample,
    ) -> Option<bool> {
        if let Some((frames, sps, inside)) = &self.driver_seen {
            if *frames == sample.frames && *sps == sample.sps {
                return *inside;
            }
        }
        let inside = loopwatch_stack::role(symbolizer, &sample.frames).map(|r| r.current_thread);
        self.driver_seen = Some((sample.frames.clone(), sample.sps.clone(), inside));
        inside
    }

    /// The thread that drives this current-thread runtime, when known: where
    /// its heartbeat last ran, or the thread found inside its scheduler.
    pub(crate) fn driver_tid(&self) -> i64 {
        if self.beat.driver_tid != 0 {
            self.beat.driver_tid
        } else {
            self.found_driver
        }
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

    /// Adds to `out` the threads of this runtime that may be stuck at
    /// `now`, to be timed for the CPU accounts of stall reports: those in an
    /// instrumented poll for `check_ns` or longer, and, while one of its
    /// workers is not parked and its metrics stood still as long, the
    /// threads known to be its own that are not in a poll (and a
    /// current-thread runtime's driver). Returns which threads not known to
    /// loopwatch may be the stuck one: threads named as workers (a runtime
    /// known only by its handle, with such a worker), or any (a
    /// current-thread runtime whose driver is not known yet).
    pub(crate) fn suspects(
        &self,
        now: u64,
        slots: &[SlotView],
        check_ns: u64,
        out: &mut Vec<i64>,
    ) -> Unknowns {
        if !self.beat.alive {
            return Unknowns::None;
        }
        let mine = slots
            .iter()
            .filter(|s| s.info.runtime == Some(self.id) && (self.current_thread || s.is_worker))
            .filter(|s| s.info.os_tid != 0);
        let mut known = 0;
        let frozen = self.workers.iter().any(|w| {
            w.last
                .is_some_and(|(park_unpark, _, _)| park_unpark % 2 == 0)
                && now.saturating_sub(w.changed_at) >= check_ns
        });
        for s in mine {
            known += 1;
            let long_poll = s.poll_start != 0 && now.saturating_sub(s.poll_start) >= check_ns;
            if (long_poll || (frozen && s.poll_start == 0)) && !out.contains(&s.info.os_tid) {
                out.push(s.info.os_tid);
            }
        }
        if !frozen {
            return Unknowns::None;
        }
        if self.current_thread {
            // Found not driven (its `block_on` returned, or never called):
            // nobody is stuck in it.
            if self.undriven() {
                return Unknowns::None;
            }
            let driver = self.driver_tid();
            if driver == 0 {
                return Unknowns::Any;
            }
            if !out.contains(&driver) {
                out.push(driver);
            }
            return Unknowns::None;
        }
        if known < self.workers.len() {
            Unknowns::Workers
        } else {
            Unknowns::None
        }
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
    pub(crate) fn detect(
        &mut self,
        now: u64,
        slots: &[SlotView],
        drivers: &[i64],
        t: Thresholds,
        pauses: &PauseDetector,
        symbolizer: &mut loopwatch_stack::Symbolizer,
    ) -> Vec<Candidate> {
        let mut found = Vec::new();
        if !self.beat.alive {
            return found;
        }
        // How long since `x`, the time the whole process was paused taken
        // off: a pause (SIGSTOP, a frozen cgroup, a paused VM) is no stall.
        let age = |x: u64| now.saturating_sub(x).saturating_sub(pauses.paused_since(x));
        let mine: Vec<&SlotView> = slots
            .iter()
            .filter(|s| s.info.runtime == Some(self.id) && (self.current_thread || s.is_worker))
            .collect();
        let looks: Vec<Option<WorkerLook>> = self
            .workers
            .iter()
            .map(|w| {
                w.last.map(|(park_unpark, _, _)| WorkerLook {
                    running: park_unpark % 2 == 0,
                    changed_at: w.changed_at,
                    changed_after: w.changed_after,
                })
            })
            .collect();
        let judged = judge(&looks, &mine, self.current_thread, t.stall_ns, &age);
        for &(s, worker) in &judged.instrumented {
            found.push(Candidate {
                key: StallKey::Poll {
                    slot: s.id,
                    start: s.poll_start,
                },
                runtime: self.entry.identity(),
                worker: Some(worker),
                since: s.poll_start,
                task: s.task,
                thread: s.info.name.clone(),
                os_tid: s.info.os_tid,
                unconfirmed: None,
            });
        }
        let Judged {
            frozen: unmatched,
            mut anonymous,
            named: suspects,
            ..
        } = judged;
        let named = suspects.is_some();
        let suspects = suspects.unwrap_or_default();

        let mut unconfirmed = None;
        if self.current_thread && anonymous > 0 {
            match self.current_thread_driven(now, drivers, t, pauses, symbolizer) {
                Driven::Yes => {}
                Driven::No => anonymous = 0,
                Driven::Unknown(why) => unconfirmed = Some(why),
            }
        }

        for (n, &(worker, since)) in unmatched.iter().take(anonymous).enumerate() {
            let suspect = if named { suspects.get(n) } else { None };
            let thread = suspect.and_then(|s| s.info.name.clone());
            // The stuck thread: a hooked suspect, or the driver of a current-thread runtime.
            let os_tid = match suspect {
                Some(s) => s.info.os_tid,
                None if self.current_thread => self.driver_tid(),
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
                unconfirmed: unconfirmed.clone(),
            });
        }

        // No per-worker data (targets without 64-bit atomics): the heartbeat
        // is the only signal.
        if self.workers.iter().all(|w| w.last.is_none()) && found.is_empty() {
            let raw = self.heartbeat_age_ns(now);
            let since = now.saturating_sub(raw);
            if self.beat.beats > 0 && age(since) >= t.stall_ns {
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
                    unconfirmed: None,
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
    /// current-thread scheduler means driven, and a complete walk without it
    /// means not driven. Anything less (a partial walk without it, no symbol
    /// table to tell tokio's frames by, no stack) cannot tell, and the stall
    /// is reported as unconfirmed with the reason: never dropped. The verdict
    /// is kept while nothing moves and taken again every quarter threshold.
    fn current_thread_driven(
        &mut self,
        now: u64,
        drivers: &[i64],
        t: Thresholds,
        pauses: &PauseDetector,
        symbolizer: &mut loopwatch_stack::Symbolizer,
    ) -> Driven {
        let beat_age = self.heartbeat_age_ns(now);
        if beat_age.saturating_sub(pauses.paused_since(now.saturating_sub(beat_age))) < t.stall_ns {
            return Driven::No;
        }
        // Never driven since it was watched: only a thread found inside a
        // current-thread scheduler (and not driving another watched
        // runtime) can be stuck in its first poll.
        let never_ran = self.beat.beats == 0 && !self.entry.watched_from_inside;
        let key = self.driven_key();
        let recheck_ns = if never_ran {
            t.stall_ns
        } else {
            (t.stall_ns / 4).max(t.check_ns)
        };
        if let Some((k, at, verdict)) = &self.driven {
            if *k == key && now.saturating_sub(*at) < recheck_ns {
                return verdict.clone();
            }
        }
        if never_ran {
            let verdict = if !t.sample_stacks {
                Driven::No
            } else {
                let others: Vec<i64> = drivers
                    .iter()
                    .copied()
                    .filter(|&d| d != 0 && d != self.found_driver)
                    .collect();
                let mut live = crate::watchdog::threads::Live {
                    symbolizer: &mut *symbolizer,
                };
                match crate::watchdog::threads::find_current_thread_driver(&mut live, &others) {
                    Ok(Some(tid)) => {
                        self.found_driver = tid;
                        Driven::Yes
                    }
                    Ok(None) => Driven::No,
                    Err(why) => Driven::Unknown(format!(
                        "it has not run since it was watched, and whether a thread is stuck inside its block_on could not be told: {why}"
                    )),
                }
            };
            self.driven = Some((key, now, verdict.clone()));
            return verdict;
        }
        let unknown = |why: String| {
            Driven::Unknown(format!(
                "whether its thread is still inside block_on could not be told: {why}"
            ))
        };
        let verdict = if !t.sample_stacks {
            unknown("stack sampling is off".to_owned())
        } else if key.driver_tid == 0 {
            unknown("the thread that drives it is not known".to_owned())
        } else {
            // A driver thread waiting in the kernel is read from outside; one
            // on a CPU while its runtime stands still is sampled by the
            // kernel (never signalled: it may be doing anything, a system
            // call included, and a signal could cut that call short).
            match loopwatch_stack::sample(key.driver_tid, true) {
                Ok(sample) => match self.driver_role(symbolizer, &sample) {
                    Some(true) => Driven::Yes,
                    Some(false) if sample.complete => Driven::No,
                    Some(false) => unknown(format!(
                        "the walk of its stack stopped before tokio's frames ({})",
                        sample.stopped.unwrap_or("partial")
                    )),
                    None => unknown(
                        "the executable has no symbol table to tell tokio's frames by".to_owned(),
                    ),
                },
                // The driver thread exited: nobody drives the runtime.
                Err(loopwatch_stack::NoStack::Gone) => Driven::No,
                Err(why) => unknown(format!("its stack could not be read: {why}")),
            }
        };
        self.driven = Some((key, now, verdict.clone()));
        verdict
    }
}

/// One worker as the last look saw it (tokio publishes its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerLook {
    /// Not parked (an even park/unpark count).
    pub(crate) running: bool,
    /// When its metrics were first seen as they are now (ns).
    pub(crate) changed_at: u64,
    /// The coarse clock as read before the last look that still saw them as
    /// they were before (ns): they changed after that.
    pub(crate) changed_after: u64,
}

/// What one look at a runtime's workers and its threads' poll slots says,
/// before a current-thread runtime's driver is asked whether it is driven.
#[derive(Debug)]
pub(crate) struct Judged<'a> {
    /// Instrumented polls running for the threshold or longer, each with
    /// the worker that stands still behind it (a poll with none behind it
    /// gave its worker away, and is no stall).
    pub(crate) instrumented: Vec<(&'a SlotView, usize)>,
    /// Workers not parked whose metrics stood still for the threshold, no
    /// instrumented poll matched to them, longest first: (worker, since).
    pub(crate) frozen: Vec<(usize, u64)>,
    /// How many of `frozen` are stalls: those not explained by threads seen
    /// completing polls, nor ruled out by the runtime hooks.
    pub(crate) anonymous: usize,
    /// With the runtime hooks on every worker, the threads that name those
    /// stalls, in order, when they are exactly as many.
    pub(crate) named: Option<Vec<&'a SlotView>>,
}

/// Decides which workers of a runtime are stalled, from plain inputs: what
/// tokio published of each worker (`None`: nothing), the poll slots of the
/// runtime's threads (`mine`), and `age`, the time since a stamp with the
/// process's pauses taken off. No clock, thread or runtime is read.
///
/// - An instrumented poll running for the threshold is a stall of the
///   latest unparked worker whose metrics may have stopped before it began.
/// - A worker not parked whose metrics stood still for the threshold is
///   stuck in one poll, or completing polls too slow to reach tokio's next
///   publication (every 61 polls): threads seen completing polls within the
///   threshold explain such workers away; the rest are stalls.
/// - With the runtime hooks on every worker, only threads active (not
///   parked) for the whole threshold, in no stuck poll and not progressing,
///   can be stuck: they bound the count, and name the stalls when they
///   match it.
pub(crate) fn judge<'a>(
    looks: &[Option<WorkerLook>],
    mine: &[&'a SlotView],
    current_thread: bool,
    stall_ns: u64,
    age: &dyn Fn(u64) -> u64,
) -> Judged<'a> {
    let stuck: Vec<&SlotView> = mine
        .iter()
        .copied()
        .filter(|s| s.poll_start != 0 && age(s.poll_start) >= stall_ns)
        .collect();
    let progressing = |s: &SlotView| {
        if s.poll_start != 0 {
            age(s.poll_start) < stall_ns
        } else {
            s.last_completed != 0 && age(s.last_completed) < stall_ns
        }
    };
    // Workers not parked, with when their metrics last moved; the frozen
    // ones (for the threshold or longer) come first, longest frozen first.
    // Entries: (worker, changed_at, changed_after).
    let mut active: Vec<(usize, u64, u64)> = looks
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let w = (*w)?;
            w.running.then_some((i, w.changed_at, w.changed_after))
        })
        .collect();
    active.sort_by_key(|&(_, since, _)| since);
    let is_frozen = |since: u64| age(since) >= stall_ns;
    let frozen_count = active
        .iter()
        .filter(|&&(_, since, _)| is_frozen(since))
        .count();

    // Instrumented stalls, each matched to an unparked worker whose
    // metrics may have stopped before the poll began (and so stand still
    // for at least as long as the poll has run); the latest such.
    let mut stuck_sorted = stuck.clone();
    stuck_sorted.sort_by_key(|s| s.poll_start);
    let mut unmatched = active;
    // Both sides are coarse-clock readings (or a fine stamp, never
    // lower than the coarse reading of the same instant), so no lag is
    // guessed: a worker whose look with the old metrics read the clock
    // above the poll's stamp changed them after the poll began; any
    // other may have changed them before. (The coarse clock may lag the
    // fine one by two ticks, and far more on a loaded machine.)
    let mut instrumented = Vec::new();
    for s in &stuck_sorted {
        let pick = unmatched
            .iter()
            .enumerate()
            .filter(|(_, &(_, _, after))| after <= s.poll_start)
            .max_by_key(|(_, &(_, _, after))| after)
            .map(|(idx, _)| idx);
        let worker = match (pick, current_thread) {
            (Some(idx), _) => unmatched.remove(idx).0,
            (None, true) => 0,
            // No worker stands still behind this poll: its thread gave
            // the worker away (`block_in_place`) or is not a worker, so
            // no worker is stalled.
            (None, false) => continue,
        };
        instrumented.push((*s, worker));
    }
    unmatched.retain(|&(_, since, _)| is_frozen(since));

    // Uninstrumented stalls.
    let progressing_count = mine
        .iter()
        .filter(|s| !stuck.iter().any(|x| x.id == s.id) && progressing(s))
        .count();
    let not_frozen = looks.len().saturating_sub(frozen_count);
    let mut anonymous = frozen_count
        .saturating_sub(stuck.len())
        .saturating_sub(progressing_count.saturating_sub(not_frozen));

    // With hooks on every worker, find the threads that could be stuck:
    // active (not parked) for the whole threshold, not in a stuck
    // instrumented poll and not seen progressing. They bound the count,
    // and when they match it, they name the stuck threads.
    let mut suspects: Vec<&SlotView> = Vec::new();
    let hooked = mine.iter().filter(|s| s.park != PARK_UNKNOWN).count();
    if !current_thread && hooked >= looks.len() {
        suspects = mine
            .iter()
            .copied()
            .filter(|s| {
                s.park == PARK_ACTIVE
                    && age(s.park_since) >= stall_ns
                    && s.poll_start == 0
                    && !progressing(s)
            })
            .collect();
        suspects.sort_by_key(|s| s.park_since);
        anonymous = anonymous.min(suspects.len());
    }
    let named = (suspects.len() == anonymous).then_some(suspects);
    Judged {
        instrumented,
        frozen: unmatched
            .into_iter()
            .map(|(worker, since, _)| (worker, since))
            .collect(),
        anonymous,
        named,
    }
}

#[cfg(test)]
mod tests;
