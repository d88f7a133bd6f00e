//! Evidence about a stuck thread for its report: which thread it is (for a
//! runtime known only by its handle), whether it is on a CPU, and its stack,
//! taken once per report and compared with the previous one at escalations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::detect::RuntimeMonitor;
use super::stall::{Candidate, StallKey};
use crate::instrument::slot;
use crate::{stack, StallReport};

/// How long a capture may take before it is given up.
const CAPTURE_TIMEOUT: Duration = Duration::from_millis(100);

/// What is kept about each stall in progress.
#[derive(Debug, Default)]
struct Known {
    /// The stuck thread found for a runtime known only by its handle (0 = none).
    thread: i64,
    /// The interrupted frames at the last report, to tell whether the stack moved.
    frames: Vec<usize>,
}

/// Adds the stuck thread's state and stack to reports.
#[derive(Debug)]
pub(crate) struct EvidenceCollector {
    sample_stacks: bool,
    full_stacks: bool,
    known: HashMap<StallKey, Known>,
}

impl EvidenceCollector {
    pub(crate) fn new(sample_stacks: bool, full_stacks: bool) -> Self {
        EvidenceCollector {
            sample_stacks,
            full_stacks,
            known: HashMap::new(),
        }
    }

    /// Fills `report`'s `cpu_bound`, `backtrace` and (at escalations)
    /// `stack_moved`. The stuck thread is the candidate's, or for a
    /// multi-thread runtime known only by its handle, the worker found stuck
    /// by its stack (whose capture is then the report's).
    pub(crate) fn add(
        &mut self,
        report: &mut StallReport,
        candidate: &Candidate,
        monitor: Option<&RuntimeMonitor>,
    ) {
        let began = Instant::now();
        let mut tid = candidate.os_tid;
        let mut frames = None;
        if tid == 0 && self.sample_stacks {
            if let Some((found, taken)) =
                monitor.and_then(|m| self.find_stuck_worker(m, candidate.key))
            {
                tid = found;
                frames = taken;
            }
        }
        if tid == 0 {
            return;
        }
        // The thread's state first: a signal would wake it.
        report.cpu_bound = stack::on_cpu(tid);
        if self.sample_stacks && frames.is_none() {
            frames = stack::capture(tid, CAPTURE_TIMEOUT).ok();
        }
        let Some(frames) = frames else { return };
        report.backtrace = stack::symbolize(&frames, self.full_stacks);
        let interrupted = frames[stack::interrupted_from(&frames)..].to_vec();
        let known = self.known.entry(candidate.key).or_default();
        if report.escalation > 0 && !known.frames.is_empty() {
            report.stack_moved = Some(known.frames != interrupted);
        }
        known.frames = interrupted;
        tracing::debug!(
            target: "loopwatch",
            os_tid = tid,
            frames = frames.len(),
            seconds = began.elapsed().as_secs_f64(),
            "took the stuck thread's stack and state"
        );
    }

    /// The stall ended: what was kept about it goes.
    pub(crate) fn forget(&mut self, key: StallKey) {
        self.known.remove(&key);
    }

    /// For a multi-thread runtime known only by its handle, finds the thread
    /// of a stalled worker: among the runtime's worker threads seen so far
    /// (every worker runs the heartbeat task now and then), those not in an
    /// instrumented poll have their stacks taken; a thread inside a task's
    /// poll and not in tokio's park code is stuck. Threads already given to
    /// another stall are skipped. Returns the thread, and its stack when it
    /// was taken now.
    fn find_stuck_worker(
        &mut self,
        monitor: &RuntimeMonitor,
        key: StallKey,
    ) -> Option<(i64, Option<Vec<usize>>)> {
        if monitor.flavor != "multi_thread" {
            return None;
        }
        if let Some(known) = self.known.get(&key).filter(|k| k.thread != 0) {
            return Some((known.thread, None));
        }
        let taken: Vec<i64> = self.known.values().map(|k| k.thread).collect();
        for s in slot::snapshot() {
            let tid = s.info.os_tid;
            if s.info.runtime != Some(monitor.id)
                || !s.is_worker
                || s.poll_start != 0
                || tid == 0
                || taken.contains(&tid)
            {
                continue;
            }
            let Ok(frames) = stack::capture(tid, CAPTURE_TIMEOUT / 2) else {
                continue;
            };
            if stack::in_task_poll(&frames) == Some(true) {
                self.known.entry(key).or_default().thread = tid;
                return Some((tid, Some(frames)));
            }
        }
        None
    }
}
