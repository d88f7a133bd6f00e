//! Hung tasks' await traces from tokio's task dumps (`--cfg tokio_unstable`
//! and loopwatch's `taskdump` feature, which turns on tokio's).
//!
//! `Handle::dump()` pauses the runtime's workers and polls every task in a
//! tracing mode that records where it awaits; it may never finish while a
//! worker is blocked, and it panicked on current-thread runtimes in 2026
//! (tokio#8391). So a dump is asked for only:
//! - of a multi-thread runtime (never a current-thread one);
//! - while the runtime is responsive: its heartbeat ran within the last
//!   heartbeat interval and 250 ms (a worker blocked for 250 ms can hold a
//!   dump up for good);
//! - when a hung task has no trace yet, at most once per hung-task threshold
//!   (and at least 10 s apart) per runtime, one at a time.
//!
//! The dump runs as a task of that runtime and hands its result over a
//! channel; the watchdog never waits for it. A dump that has not answered
//! after [`GIVE_UP_NS`] is given up (no other is asked of that runtime until
//! it answers). Traces are kept for the longest hung tasks only
//! ([`MAX_TRACES`], each cut at [`MAX_TRACE_BYTES`]).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::Arc;

use crate::board::live;
use crate::board::traces::TRACES;
use crate::watchdog::runtimes::RuntimeEntry;

/// How long after a dump answered its polls may still come (ns).
const SETTLE_NS: u64 = 100_000_000;

/// Traces kept at most (of the longest hung tasks).
pub(crate) const MAX_TRACES: usize = 64;
/// Longest trace kept, in bytes.
const MAX_TRACE_BYTES: usize = 4096;
/// How long a dump may take before it is given up (ns).
const GIVE_UP_NS: u64 = 2_000_000_000;
/// Least time between two dumps of one runtime (ns).
const MIN_EVERY_NS: u64 = 10_000_000_000;
/// How long a heartbeat may be late, past its interval, for the runtime to
/// count as responsive (ns).
const RESPONSIVE_SLACK_NS: u64 = 250_000_000;

/// One runtime's dump in flight.
#[derive(Debug)]
struct InFlight {
    since: u64,
    rx: mpsc::Receiver<Vec<(u64, String)>>,
    given_up: bool,
}

/// The dumps asked for and the traces they gave.
#[derive(Debug, Default)]
pub(crate) struct AwaitTraces {
    /// By runtime serial.
    in_flight: HashMap<u64, InFlight>,
    last_asked: HashMap<u64, u64>,
    /// The hung tasks wanted at the last tick.
    wanted: HashSet<u64>,
    /// When the dumping flag (`board::live::set_dumping`) is to be cleared (ns; 0: not set).
    settle_until: u64,
}

impl AwaitTraces {
    /// Takes in the dumps that answered (every check: it closes the window
    /// in which polls leave idle times alone soon after a dump).
    pub(crate) fn collect(&mut self, now: u64) {
        if self.in_flight.is_empty() && self.settle_until == 0 {
            return;
        }
        let wanted = &self.wanted;
        let mut answered = false;
        self.in_flight.retain(|serial, dump| match dump.rx.try_recv() {
            Ok(traces) => {
                store(traces, wanted);
                answered = true;
                false
            }
            Err(mpsc::TryRecvError::Disconnected) => false,
            Err(mpsc::TryRecvError::Empty) => {
                if !dump.given_up && now.saturating_sub(dump.since) > GIVE_UP_NS {
                    dump.given_up = true;
                    tracing::debug!(
                        target: "loopwatch",
                        runtime = serial,
                        "a task dump did not answer within 2 s; no other is asked of this runtime until it does"
                    );
                }
                true
            }
        });
        let pending = self.in_flight.values().any(|d| !d.given_up);
        if answered && !pending {
            self.settle_until = self.settle_until.min(now + SETTLE_NS);
        }
        if self.settle_until != 0 && now >= self.settle_until {
            live::set_dumping(false);
            self.settle_until = 0;
        }
    }

    /// Asks for dumps where a hung task (`hung`, tokio ids, the longest
    /// hung first) has no trace yet.
    pub(crate) fn tick(
        &mut self,
        now: u64,
        runtimes: &[Arc<RuntimeEntry>],
        hung: &[u64],
        heartbeat_ns: u64,
        every_ns: u64,
    ) {
        let wanted: HashSet<u64> = hung.iter().copied().take(MAX_TRACES).collect();
        self.wanted = wanted.clone();
        let lacking = {
            let mut traces = TRACES.lock();
            let traces = traces.get_or_insert_with(HashMap::new);
            traces.retain(|id, _| wanted.contains(id));
            wanted.iter().any(|id| !traces.contains_key(id))
        };
        if !lacking {
            return;
        }
        for entry in runtimes {
            if self.in_flight.contains_key(&entry.serial)
                || entry.handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread
            {
                continue;
            }
            let beat = entry.beat.view();
            if !beat.alive
                || beat.last_beat == 0
                || now.saturating_sub(beat.last_beat) > heartbeat_ns + RESPONSIVE_SLACK_NS
            {
                continue;
            }
            let last = self.last_asked.get(&entry.serial).copied().unwrap_or(0);
            if last != 0 && now.saturating_sub(last) < every_ns.max(MIN_EVERY_NS) {
                continue;
            }
            self.last_asked.insert(entry.serial, now);
            // Polls from here on may be the dump's: they leave idle times
            // alone until shortly after it answers.
            live::set_dumping(true);
            self.settle_until = self.settle_until.max(now + GIVE_UP_NS + SETTLE_NS);
            let (tx, rx) = mpsc::sync_channel(1);
            let handle = entry.handle.clone();
            entry.handle.spawn(async move {
                let dump = handle.dump().await;
                let traces = dump
                    .tasks()
                    .iter()
                    .map(|t| {
                        let mut text = t.trace().to_string();
                        if text.len() > MAX_TRACE_BYTES {
                            let mut cut = MAX_TRACE_BYTES;
                            while !text.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            text.truncate(cut);
                            text.push_str("\n…");
                        }
                        (live::task_id_bits(t.id()), text)
                    })
                    .collect();
                let _ = tx.send(traces);
            });
            self.in_flight.insert(
                entry.serial,
                InFlight {
                    since: now,
                    rx,
                    given_up: false,
                },
            );
        }
    }
}

/// Keeps the traces of the wanted tasks.
fn store(traces: Vec<(u64, String)>, wanted: &HashSet<u64>) {
    let mut kept = TRACES.lock();
    let kept = kept.get_or_insert_with(HashMap::new);
    for (id, trace) in traces {
        if wanted.contains(&id) {
            kept.insert(id, Arc::from(trace));
        }
    }
}
