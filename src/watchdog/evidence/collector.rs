//! Evidence about a stuck thread for its report: which thread it is (for a
//! runtime known only by its handle), whether it is on a CPU, its stack and
//! the culprit frame, taken once per report and compared with the previous
//! one at escalations.
//!
//! No thread is ever signalled: a thread waiting in the kernel is read from
//! outside, and only a thread known to be stuck and running on a CPU is
//! sampled by the kernel (`loopwatch_stack`).

use std::collections::HashMap;
use std::time::Instant;

use crate::board::slot;
use crate::watchdog::cause::{CpuAccount, CpuTracker, StallCause};
use crate::watchdog::detect::RuntimeMonitor;
use crate::watchdog::stall::{Candidate, StallKey};
use crate::watchdog::threads::NotFound;
use crate::StallReport;
use loopwatch_stack as stack;

/// What is kept about each stall in progress.
#[derive(Debug, Default, Clone)]
pub(crate) struct Known {
    /// The stuck thread found for a runtime known only by its handle (0 = none).
    thread: i64,
    /// That thread's name.
    pub(crate) thread_name: Option<String>,
    /// The culprit frame at the last report.
    pub(crate) culprit: Option<String>,
    /// The frames at the last report, to tell whether the stack moved.
    frames: Vec<usize>,
    /// The spans the thread was in at the last report.
    pub(crate) spans: Vec<String>,
    /// Why it is stuck, as of the last report.
    pub(crate) cause: StallCause,
    /// What its thread did with its time, as of the last report.
    pub(crate) cpu: Option<CpuAccount>,
}

/// What a report's stack said about an unconfirmed stall of a
/// current-thread runtime (one whose driver's stack detection could not
/// read): [`add`](EvidenceCollector::add) read it since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverRead {
    /// Nothing new: the stall was confirmed by detection, the stack was not
    /// read, or it could not tell.
    Nothing,
    /// The driver is inside the runtime's scheduler: the stall is real
    /// (`unconfirmed` was cleared).
    Inside,
    /// A complete walk of the driver's stack is outside the scheduler:
    /// nobody drives the runtime, and nobody is stuck in it.
    Outside,
}

/// Adds the stuck thread's state, stack and culprit to reports.
#[derive(Debug)]
pub(crate) struct EvidenceCollector {
    sample_stacks: bool,
    full_stacks: bool,
    known: HashMap<StallKey, Known>,
    /// Symbol and line tables read during this check, dropped at its end;
    /// the names found in them are kept (bounded).
    symbolizer: stack::Symbolizer,
    /// Stuck threads found this check by [`find_threads`](Self::find_threads),
    /// not yet taken by a report.
    found: HashMap<StallKey, crate::watchdog::threads::Found>,
    /// The threads that may be stuck, timed check by check.
    cpu: CpuTracker,
}

impl EvidenceCollector {
    pub(crate) fn new(sample_stacks: bool, full_stacks: bool) -> Self {
        EvidenceCollector {
            sample_stacks,
            full_stacks,
            known: HashMap::new(),
            symbolizer: stack::Symbolizer::default(),
            found: HashMap::new(),
            cpu: CpuTracker::default(),
        }
    }

    /// The timer of the threads that may be stuck.
    pub(crate) fn cpu(&mut self) -> &mut CpuTracker {
        &mut self.cpu
    }

    /// Fills `report`'s `cpu` and `cause` from what thread `tid` did since
    /// the stall began.
    fn account(&mut self, report: &mut StallReport, candidate: &Candidate, tid: i64) {
        report.cpu = self.cpu.account(tid, candidate.since);
        report.cause = report.cpu.map_or(StallCause::Unknown, |a| a.cause());
        let known = self.known.entry(candidate.key).or_default();
        known.cause = report.cause;
        known.cpu = report.cpu;
    }

    /// The symbolizer (its tables are read once per check, whoever needs
    /// them first: detection or a report).
    pub(crate) fn symbolizer(&mut self) -> &mut stack::Symbolizer {
        &mut self.symbolizer
    }

    /// The check is over: the symbol and line tables it read are dropped
    /// (tens of MiB for a large binary); the names found in them are kept,
    /// so that a stall seen again at the same code is named at once.
    pub(crate) fn end_check(&mut self) {
        self.symbolizer.forget_tables();
        self.found.clear();
    }

    /// What is known about a stall in progress.
    pub(crate) fn known(&self, key: StallKey) -> Option<&Known> {
        self.known.get(&key)
    }

    /// Fills `report`'s `thread` (when found here), `spans`, `cpu_bound`,
    /// `backtrace`, `culprit`, `stack_missing` and (at escalations)
    /// `stack_moved`. The stuck thread is the candidate's, or for a
    /// multi-thread runtime known only by its handle, the worker found
    /// stuck by its stack.
    ///
    /// The stack of the driver of a current-thread runtime whose stall
    /// detection could not confirm settles it, when it can: see
    /// [`DriverRead`].
    pub(crate) fn add(
        &mut self,
        report: &mut StallReport,
        candidate: &Candidate,
        monitor: Option<&RuntimeMonitor>,
    ) -> DriverRead {
        if !self.sample_stacks {
            if candidate.os_tid != 0 {
                report.spans = spans_of(candidate.os_tid);
                self.known.entry(candidate.key).or_default().spans = report.spans.clone();
                self.account(report, candidate, candidate.os_tid);
            }
            return DriverRead::Nothing;
        }
        let began = Instant::now();
        let mut tid = candidate.os_tid;
        let mut sample = None;
        if tid == 0 {
            match monitor.map(|m| self.stuck_thread(candidate, m)) {
                Some(Ok((found, taken))) => {
                    tid = found;
                    sample = taken;
                }
                // A current-thread runtime whose driver could not be
                // found: the reason detection met says why.
                Some(Err(_)) if report.unconfirmed.is_some() => {
                    report.stack_missing = report.unconfirmed.clone();
                }
                Some(Err(why)) => report.stack_missing = Some(why.to_string()),
                None => {}
            }
        }
        if tid == 0 {
            return DriverRead::Nothing;
        }
        // What the thread did with its time, before anything else looks at it.
        self.account(report, candidate, tid);
        let known = self.known.entry(candidate.key).or_default();
        if report.thread.is_none() {
            report.thread = known.thread_name.clone();
        }
        report.spans = spans_of(tid);
        known.spans = report.spans.clone();
        // The thread's state first: it decides how the stack is read.
        report.cpu_bound = stack::on_cpu(tid);
        let sample = match sample {
            Some(s) => Ok(s),
            None => {
                // A thread caught on a CPU for a moment (a stuck call that
                // wakes now and then) is given a few milliseconds to wait
                // again, to be read from outside; one that stays on its CPU
                // is known stuck, and is sampled by the kernel.
                let mut patience = crate::watchdog::threads::ON_CPU_PATIENCE;
                let mut live = crate::watchdog::threads::Live {
                    symbolizer: &mut self.symbolizer,
                };
                match crate::watchdog::threads::sample_waiting(&mut live, tid, &mut patience) {
                    Err(stack::NoStack::OnCpu) => stack::sample(tid, true),
                    other => other,
                }
            }
        };
        let sample = match sample {
            Ok(sample) => sample,
            Err(why) => {
                if matches!(
                    why,
                    stack::NoStack::InKernel | stack::NoStack::PerfRefused(_)
                ) {
                    report.cpu_bound = Some(true);
                }
                report.stack_missing = Some(why.to_string());
                return DriverRead::Nothing;
            }
        };
        // Detection could not tell whether this thread drives the runtime;
        // its stack, read now, may: inside the scheduler, the stall is
        // confirmed; a complete walk outside it, there is no stall.
        let mut driver = DriverRead::Nothing;
        if report.unconfirmed.is_some() && monitor.is_some_and(|m| m.is_driver(tid)) {
            match stack::role(&mut self.symbolizer, &sample.frames).map(|r| r.current_thread) {
                Some(true) => {
                    report.unconfirmed = None;
                    driver = DriverRead::Inside;
                }
                Some(false) if sample.complete => return DriverRead::Outside,
                _ => {}
            }
        }
        // Read from outside: it was waiting; sampled: it ran on its CPU.
        report.cpu_bound = Some(sample.method == stack::Method::Perf);
        report.stack_method = Some(sample.method.name());
        let read = began.elapsed();
        let symbolizer = &mut self.symbolizer;
        if let Some(symbolized) = symbolizer.symbolize(&sample, self.full_stacks) {
            report.backtrace = Some(match sample.stopped {
                None => symbolized.text,
                Some(why) => format!(
                    "{}      (partial: the walk stopped here: {why})\n",
                    symbolized.text
                ),
            });
            report.stack_complete = Some(sample.complete);
            report.culprit = symbolized.culprit;
        }
        if report.escalation > 0 && !known.frames.is_empty() {
            report.stack_moved = Some(known.frames != sample.frames);
        }
        known.frames = sample.frames;
        known.culprit = report.culprit.clone();
        tracing::debug!(
            target: "loopwatch",
            os_tid = tid,
            method = sample.method.name(),
            complete = sample.complete,
            read_seconds = read.as_secs_f64(),
            seconds = began.elapsed().as_secs_f64(),
            "took the stuck thread's stack and state"
        );
        driver
    }

    /// The stall ended: what was kept about it goes.
    pub(crate) fn forget(&mut self, key: StallKey) {
        self.known.remove(&key);
    }

    /// Finds, in one search, the stuck threads of the stalls about to be
    /// reported whose thread is not known: a multi-thread runtime's worker
    /// known only by its handle (see [`threads`](crate::watchdog::threads)). What it
    /// finds is taken by [`add`](Self::add).
    pub(crate) fn find_threads(&mut self, stalls: &[(&Candidate, &RuntimeMonitor)]) {
        if !self.sample_stacks {
            return;
        }
        let wanted: Vec<(StallKey, &RuntimeMonitor)> = stalls
            .iter()
            .filter(|(c, m)| {
                c.os_tid == 0
                    && m.flavor == "multi_thread"
                    && self.known.get(&c.key).is_none_or(|k| k.thread == 0)
                    && !self.found.contains_key(&c.key)
            })
            .map(|(c, m)| (c.key, *m))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let taken: Vec<i64> = self.known.values().map(|k| k.thread).collect();
        let pokes: Vec<Box<dyn Fn() + '_>> = wanted
            .iter()
            .map(|(_, m)| {
                let beat = &m.entry.beat;
                Box::new(move || beat.poke(crate::clock::now_ns())) as Box<dyn Fn() + '_>
            })
            .collect();
        let requests: Vec<(tokio::runtime::Id, &dyn Fn())> = wanted
            .iter()
            .zip(&pokes)
            .map(|((_, m), poke)| (m.id, &**poke))
            .collect();
        let mut live = crate::watchdog::threads::Live {
            symbolizer: &mut self.symbolizer,
        };
        let results = crate::watchdog::threads::find_stuck_workers(
            &mut live,
            &slot::snapshot(),
            &taken,
            &requests,
        );
        for ((key, _), result) in wanted.iter().zip(results) {
            if let Ok((tid, name, _)) = &result {
                self.remember(*key, *tid, name.clone());
            }
            self.found.insert(*key, result);
        }
    }

    /// The thread of a stall whose thread is not known: found by
    /// [`find_threads`](Self::find_threads) this check, or found now.
    fn stuck_thread(
        &mut self,
        candidate: &Candidate,
        monitor: &RuntimeMonitor,
    ) -> Result<(i64, Option<stack::Sample>), NotFound> {
        if let Some(known) = self.known.get(&candidate.key).filter(|k| k.thread != 0) {
            let tid = known.thread;
            let sample = match self.found.remove(&candidate.key) {
                Some(Ok((_, _, sample))) => sample,
                _ => None,
            };
            return Ok((tid, sample));
        }
        if let Some(found) = self.found.remove(&candidate.key) {
            return found.map(|(tid, _, sample)| (tid, sample));
        }
        if monitor.flavor != "multi_thread" {
            return Err(NotFound::Because(
                "the thread that drives this current-thread runtime is not known",
            ));
        }
        self.find_threads(&[(candidate, monitor)]);
        match self.found.remove(&candidate.key) {
            Some(found) => found.map(|(tid, _, sample)| (tid, sample)),
            None => Err(NotFound::Stack(stack::NoStack::NotFound)),
        }
    }

    fn remember(&mut self, key: StallKey, tid: i64, name: Option<String>) {
        let known = self.known.entry(key).or_default();
        known.thread = tid;
        known.thread_name = name;
    }
}

/// The spans thread `tid` is in (nothing without the `spans` feature).
fn spans_of(tid: i64) -> Vec<String> {
    #[cfg(feature = "spans")]
    {
        crate::spans::of_thread(tid)
    }
    #[cfg(not(feature = "spans"))]
    {
        let _ = tid;
        Vec::new()
    }
}
