//! Evidence about a stuck thread for its report: which thread it is (for a
//! runtime known only by its handle), whether it is on a CPU, its stack and
//! the culprit frame, taken once per report and compared with the previous
//! one at escalations.
//!
//! Only a thread known to be stuck is ever signalled, and only when it is on
//! a CPU; every other stack is read from outside ([`crate::stack`]).

use std::collections::HashMap;
use std::time::Instant;

use super::detect::RuntimeMonitor;
use super::stall::{Candidate, StallKey};
use crate::instrument::slot;
use crate::stack::{self, NoStack};
use crate::StallReport;

/// How long the candidates of a handle-only runtime are watched for context
/// switches before one is called stuck.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

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
}

/// Adds the stuck thread's state, stack and culprit to reports.
#[derive(Debug)]
pub(crate) struct EvidenceCollector {
    sample_stacks: bool,
    full_stacks: bool,
    known: HashMap<StallKey, Known>,
    /// Symbol and line tables read during this check, dropped at its end.
    symbolizer: Option<stack::Symbolizer>,
}

impl EvidenceCollector {
    pub(crate) fn new(sample_stacks: bool, full_stacks: bool) -> Self {
        EvidenceCollector {
            sample_stacks,
            full_stacks,
            known: HashMap::new(),
            symbolizer: None,
        }
    }

    /// The check is over: the symbol and line tables it read are dropped.
    pub(crate) fn end_check(&mut self) {
        self.symbolizer = None;
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
    pub(crate) fn add(
        &mut self,
        report: &mut StallReport,
        candidate: &Candidate,
        monitor: Option<&RuntimeMonitor>,
    ) {
        if !self.sample_stacks {
            if candidate.os_tid != 0 {
                report.spans = spans_of(candidate.os_tid);
                self.known.entry(candidate.key).or_default().spans = report.spans.clone();
            }
            return;
        }
        let began = Instant::now();
        let mut tid = candidate.os_tid;
        let mut sample = None;
        if tid == 0 {
            match monitor.map(|m| self.find_stuck_worker(m, candidate.key)) {
                Some(Ok((found, taken))) => {
                    tid = found;
                    sample = taken;
                }
                Some(Err(why)) => report.stack_missing = Some(why.to_string()),
                None => {}
            }
        }
        if tid == 0 {
            return;
        }
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
            // Known stuck: may be signalled if on a CPU.
            None => stack::sample(tid, true),
        };
        let sample = match sample {
            Ok(sample) => sample,
            Err(why) => {
                report.stack_missing = Some(why.to_string());
                return;
            }
        };
        let read = began.elapsed();
        let symbolizer = self.symbolizer.get_or_insert_with(Default::default);
        if let Some(symbolized) = symbolizer.symbolize(&sample.frames, self.full_stacks) {
            report.backtrace = Some(if sample.complete {
                symbolized.text
            } else {
                format!("{}     (the walk stopped here)\n", symbolized.text)
            });
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
            signalled = sample.signalled,
            complete = sample.complete,
            read_seconds = read.as_secs_f64(),
            seconds = began.elapsed().as_secs_f64(),
            "took the stuck thread's stack and state"
        );
    }

    /// The stall ended: what was kept about it goes.
    pub(crate) fn forget(&mut self, key: StallKey) {
        self.known.remove(&key);
    }

    /// For a multi-thread runtime known only by its handle, finds the thread
    /// of a stalled worker among the runtime's worker threads seen so far
    /// (every worker runs the heartbeat task now and then), without
    /// signalling any. Each candidate's voluntary context switches are read
    /// twice, [`SETTLE`] apart: a thread stuck in one call makes none, a
    /// healthy worker completing short blocking polls makes some. A thread
    /// that made none, waiting in the kernel inside a task's poll (its stack
    /// read from outside), is stuck. A worker on a CPU is chosen only when it
    /// is the one candidate left unexplained. Threads already given to
    /// another stall are skipped. Returns the thread, and its stack when it
    /// was read now.
    fn find_stuck_worker(
        &mut self,
        monitor: &RuntimeMonitor,
        key: StallKey,
    ) -> Result<(i64, Option<stack::Sample>), NoStack> {
        if monitor.flavor != "multi_thread" {
            return Err(NoStack::NotFound);
        }
        if let Some(known) = self.known.get(&key).filter(|k| k.thread != 0) {
            return Ok((known.thread, None));
        }
        let taken: Vec<i64> = self.known.values().map(|k| k.thread).collect();
        let candidates: Vec<(i64, Option<String>, Option<u64>)> = slot::snapshot()
            .into_iter()
            .filter(|s| {
                let tid = s.info.os_tid;
                s.info.runtime == Some(monitor.id)
                    && s.is_worker
                    && s.poll_start == 0
                    && tid != 0
                    && !taken.contains(&tid)
            })
            .map(|s| {
                let tid = s.info.os_tid;
                let name = s.info.name.as_deref().map(str::to_owned);
                (tid, name, stack::voluntary_switches(tid))
            })
            .collect();
        if candidates.is_empty() {
            return Err(NoStack::NotFound);
        }
        std::thread::sleep(SETTLE);
        let mut on_cpu = Vec::new();
        let mut unexplained = 0;
        for (tid, name, before) in candidates {
            let still = before.is_some() && stack::voluntary_switches(tid) == before;
            match stack::sample(tid, false) {
                Ok(sample) => match stack::in_task_poll(&sample.frames) {
                    Some(true) if still => {
                        self.remember(key, tid, name);
                        return Ok((tid, Some(sample)));
                    }
                    Some(_) => {}
                    None => unexplained += 1,
                },
                Err(NoStack::OnCpu) if still => on_cpu.push((tid, name)),
                Err(NoStack::OnCpu | NoStack::Gone) => {}
                Err(_) => unexplained += 1,
            }
        }
        match (on_cpu.len(), unexplained) {
            (1, 0) => {
                let (tid, name) = on_cpu.remove(0);
                self.remember(key, tid, name);
                Ok((tid, None))
            }
            _ => Err(NoStack::NotFound),
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
