//! Finding the stuck thread of a runtime that loopwatch knows only by its
//! handle: among the process's threads, read from outside (a few on a CPU
//! sampled by the kernel; none signalled), without waiting for the heartbeat to have visited each
//! worker.
//!
//! A multi-thread runtime's worker stuck in a task's poll has tokio's worker
//! loop on its stack with the task harness inside it and no park code; a
//! worker that is parked, a blocking-pool thread running `spawn_blocking`
//! work and any other thread do not. Read twice, [`SETTLE`] apart, a stuck
//! worker's stack is the same from the harness frame outwards (same return
//! addresses at the same stack addresses) even when the stuck call inside
//! wakes now and then (a retry loop, SQLite's busy handler sleeping in
//! steps); a healthy worker has moved on to another task or parked.
//!
//! Threads known to be the runtime's workers (the heartbeat ran on them)
//! are looked at first; threads known to be another runtime's, loopwatch's
//! own and the process's main thread are never candidates.

use std::time::Duration;

use tokio::runtime::Id;

use crate::board::slot::SlotView;
use loopwatch_stack::{self as stack, NoStack, Role, Sample, Symbolizer};

/// What a search reads of the process's threads. The decisions (which
/// thread is stuck, which drives a runtime) are made over what this gives,
/// so that they are tested over scripted answers ([`Live`] asks the kernel
/// and the stack reader).
pub(crate) trait ThreadSource {
    /// The process's threads, but loopwatch's own and the main thread
    /// ([`process_threads`]).
    fn threads(&mut self) -> Vec<ProcessThread>;
    /// The main thread's id.
    fn main_thread(&self) -> i64;
    /// Thread `tid`'s stack ([`stack::sample`]).
    fn sample(&mut self, tid: i64, may_sample: bool) -> Result<Sample, NoStack>;
    /// What a stack says its thread is doing ([`stack::role`]); `None`
    /// when the executable has no names.
    fn role(&mut self, sample: &Sample) -> Option<Role>;
    /// The thread's voluntary context switches so far.
    fn voluntary_switches(&mut self, tid: i64) -> Option<u64>;
    /// Whether the thread is on a CPU now.
    fn on_cpu(&mut self, tid: i64) -> Option<bool>;
    /// Wakes the heartbeat tasks of `wanted`, waits [`SETTLE`], and says
    /// which thread completed an instrumented poll last when (each slot's
    /// thread and the end of its last poll).
    fn settle(&mut self, wanted: &[(Id, &dyn Fn())]) -> Vec<(i64, u64)>;
    /// Waits `d` before a thread caught on a CPU is looked at again.
    fn pause(&mut self, d: Duration);
}

/// The process's threads as the kernel shows them, read with the stack
/// reader; names resolved with `symbolizer`.
#[derive(Debug)]
pub(crate) struct Live<'a> {
    pub(crate) symbolizer: &'a mut Symbolizer,
}

impl ThreadSource for Live<'_> {
    fn threads(&mut self) -> Vec<ProcessThread> {
        process_threads()
    }

    fn main_thread(&self) -> i64 {
        i64::from(std::process::id())
    }

    fn sample(&mut self, tid: i64, may_sample: bool) -> Result<Sample, NoStack> {
        stack::sample(tid, may_sample)
    }

    fn role(&mut self, sample: &Sample) -> Option<Role> {
        stack::role(self.symbolizer, &sample.frames)
    }

    fn voluntary_switches(&mut self, tid: i64) -> Option<u64> {
        stack::voluntary_switches(tid)
    }

    fn on_cpu(&mut self, tid: i64) -> Option<bool> {
        stack::on_cpu(tid)
    }

    fn settle(&mut self, wanted: &[(Id, &dyn Fn())]) -> Vec<(i64, u64)> {
        for (_, poke) in wanted {
            poke();
        }
        std::thread::sleep(SETTLE);
        crate::board::slot::snapshot()
            .iter()
            .map(|s| (s.info.os_tid, s.last_completed))
            .collect()
    }

    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// How long apart a candidate's stack is read twice.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);

/// The most threads not known to loopwatch that one search reads.
const MAX_UNKNOWN: usize = 128;

/// The most threads on a CPU that one search for a current-thread
/// runtime's driver has the kernel sample.
const MAX_ON_CPU_SAMPLES: usize = 4;

/// A thread of this process: its kernel id and its name (`comm`).
#[derive(Debug, Clone)]
pub(crate) struct ProcessThread {
    pub(crate) tid: i64,
    pub(crate) name: String,
}

/// The threads of this process, but loopwatch's own and the main thread.
pub(crate) fn process_threads() -> Vec<ProcessThread> {
    let pid = i64::from(std::process::id());
    let mut threads: Vec<ProcessThread> = stack::os::thread::named()
        .into_iter()
        .filter(|(tid, name)| *tid != pid && !name.starts_with("loopwatch"))
        .map(|(tid, name)| ProcessThread { tid, name })
        .collect();
    threads.sort_by_key(|t| t.tid);
    threads
}

/// Threads of the process named as known workers are (tokio's default name
/// when none is known), not in `skip`, at most `max`: those a stuck worker
/// of a runtime known only by its handle may be.
pub(crate) fn worker_named_threads(slots: &[SlotView], skip: &[i64], max: usize) -> Vec<i64> {
    let names: Vec<String> = slots
        .iter()
        .filter(|s| s.is_worker)
        .filter_map(|s| s.info.name.as_deref().map(comm))
        .chain(std::iter::once(comm("tokio-runtime-worker")))
        .collect();
    process_threads()
        .into_iter()
        .filter(|t| names.contains(&t.name) && !skip.contains(&t.tid))
        .map(|t| t.tid)
        .take(max)
        .collect()
}

/// The process's threads, the main thread first, not in `skip`, at most
/// `max`: those the driver of a current-thread runtime may be.
pub(crate) fn all_threads(skip: &[i64], max: usize) -> Vec<i64> {
    let pid = i64::from(std::process::id());
    std::iter::once(pid)
        .chain(process_threads().into_iter().map(|t| t.tid))
        .filter(|t| !skip.contains(t))
        .take(max)
        .collect()
}

/// How long one search waits in all for threads caught on a CPU to go back
/// to waiting (a stuck call that wakes now and then is on a CPU for a
/// moment at each wake-up).
pub(crate) const ON_CPU_PATIENCE: Duration = Duration::from_millis(20);

/// Reads thread `tid`'s stack from outside; one caught on a CPU is looked at
/// again a few times, a millisecond apart, while `patience` lasts: a thread
/// that just woke is soon back in the kernel, a busy one stays on its CPU.
pub(crate) fn sample_waiting<S: ThreadSource>(
    source: &mut S,
    tid: i64,
    patience: &mut Duration,
) -> Result<Sample, NoStack> {
    const STEP: Duration = Duration::from_millis(1);
    let mut tries = 0;
    loop {
        match source.sample(tid, false) {
            Err(NoStack::OnCpu) if tries < 5 && *patience >= STEP => {
                tries += 1;
                *patience -= STEP;
                source.pause(STEP);
            }
            other => return other,
        }
    }
}

/// A thread name as `/proc` shows it (`comm`: at most 15 bytes).
fn comm(name: &str) -> String {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// Why no stuck thread was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotFound {
    /// A reason the stack module knows.
    Stack(NoStack),
    /// Another reason, in words.
    Because(&'static str),
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotFound::Stack(why) => write!(f, "{why}"),
            NotFound::Because(why) => f.write_str(why),
        }
    }
}

/// The rank of a known worker on a CPU that could not be sampled: the
/// last.
const UNSAMPLED: u8 = 6;

/// One candidate's first look.
#[derive(Debug)]
struct Seen {
    tid: i64,
    name: Option<String>,
    /// The runtime whose worker it is known to be (`None`: not known).
    known: Option<Id>,
    /// What its stack says (`None`: on a CPU, not read).
    part: Option<Part>,
    /// Voluntary context switches at the first look.
    switches: Option<u64>,
    /// Whether it was on a CPU, sampled by the kernel, at the first look.
    on_cpu: bool,
    /// The end of its last instrumented poll at the first look.
    completed: u64,
}

/// A stack from one frame outwards: return addresses and stack pointers.
type Outer = (Vec<usize>, Vec<u64>);

/// What a thread's stack says about it being stuck in a task's poll.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// A worker inside a task's poll: the stack from the task harness frame
    /// outwards.
    Polling(Outer),
    /// A walk that stopped before it reached tokio's frames (code without
    /// unwind tables, a frame it could not verify), with no park code in
    /// what it walked: a worker stuck there, if it is one, in a poll. The
    /// whole walk.
    Partial(Outer),
}

/// The part of a thread's stack that says it is stuck in a task's poll, or
/// may be (see [`Part`]); `None` when it says otherwise (parked, another
/// kind of thread).
fn polling_part<S: ThreadSource>(
    source: &mut S,
    sample: &Sample,
) -> Result<Option<Part>, NotFound> {
    let role = source.role(sample).ok_or(NotFound::Because(
        "the executable has no symbol table to tell tokio's frames by",
    ))?;
    if let Some(at) = role.polling {
        let outer = (sample.frames[at..].to_vec(), sample.sps[at..].to_vec());
        return Ok(Some(Part::Polling(outer)));
    }
    let stopped_early = !sample.complete && !role.worker && !role.current_thread && !role.parked;
    Ok(stopped_early.then(|| Part::Partial((sample.frames.clone(), sample.sps.clone()))))
}

/// What a search found for one stall: the thread, its name, its stack.
pub(crate) type Found = Result<(i64, Option<String>, Option<Sample>), NotFound>;

/// Finds the threads of stalled workers of multi-thread runtimes, one per
/// entry of `wanted` (the runtime, and how to wake its heartbeat task), in
/// one search: every thread is read twice at most, [`SETTLE`] apart, for
/// all of them. `slots` is what the poll slots say; `taken` are threads
/// already given to other stalls.
///
/// A candidate is a worker inside a task's poll whose stack from the task
/// harness outwards is the same in both reads. A healthy worker polling the
/// same task again and again (short blocking calls in a loop) looks the
/// same; it is told apart two ways. The heartbeat tasks are woken before
/// the second read: each runs on a free worker, never on a stuck one, and a
/// thread that completes an instrumented poll meanwhile is not stuck. And a
/// thread that gave up its CPU in between (its voluntary context switches
/// grew) comes after one that did not, which is stuck in one call; a stuck
/// call that wakes now and then (a retry loop) is still found when it is
/// the one candidate left.
///
/// A thread on a CPU (known to be the runtime's, or named as its workers
/// are; the first [`MAX_ON_CPU_SAMPLES`]) is sampled by the kernel, twice,
/// and is a candidate when both samples are inside the same task poll; it
/// ranks after the waiting ones. A thread that may be a worker whose walk
/// stopped before tokio's frames (code without unwind tables, a frame it
/// could not verify) and shows no park code is a candidate when both walks
/// are the same, ranked after every thread whose walk shows it in a poll:
/// the stuck worker is not hidden by a partial walk, and the report has
/// what was walked. A known worker on a CPU that could not be sampled ranks
/// last, and is taken only when no thread was unreadable.
///
/// Threads known to be a runtime's workers are that runtime's; a thread not
/// known to loopwatch is given to a stall only when it is the one such
/// candidate left of its rank.
pub(crate) fn find_stuck_workers<S: ThreadSource>(
    source: &mut S,
    slots: &[SlotView],
    taken: &[i64],
    wanted: &[(Id, &dyn Fn())],
) -> Vec<Found> {
    let ids: Vec<Id> = wanted.iter().map(|(id, _)| *id).collect();
    // A thread whose slot was taken inside one of these runtimes (the
    // heartbeat or an instrumented call ran on it, or the runtime's hooks
    // registered it) is that runtime's; whether it is a worker its stack
    // says.
    let known: Vec<(i64, Option<String>, Option<Id>, u64)> = slots
        .iter()
        .filter(|s| s.poll_start == 0 && s.info.os_tid != 0)
        .filter(|s| s.info.runtime.is_some_and(|r| ids.contains(&r)))
        .map(|s| {
            let name = s.info.name.as_deref().map(str::to_owned);
            (s.info.os_tid, name, s.info.runtime, s.last_completed)
        })
        .filter(|(tid, ..)| !taken.contains(tid))
        .collect();
    // Threads known to be another runtime's are not candidates; those with
    // a slot outside any runtime (a plain thread that made an instrumented
    // call) are as unknown as those without.
    let elsewhere: Vec<i64> = slots
        .iter()
        .filter(|s| s.info.runtime.is_some())
        .map(|s| s.info.os_tid)
        .collect();
    // Unknown threads named as known workers are (tokio's default name when
    // none is known) are read first: a process may have more threads than
    // one search reads.
    let worker_names: Vec<String> = slots
        .iter()
        .filter(|s| s.is_worker)
        .filter_map(|s| s.info.name.as_deref().map(comm))
        .chain(std::iter::once(comm("tokio-runtime-worker")))
        .collect();
    let mut unknown: Vec<ProcessThread> = source
        .threads()
        .into_iter()
        .filter(|t| !elsewhere.contains(&t.tid) && !taken.contains(&t.tid))
        .collect();
    unknown.sort_by_key(|t| (!worker_names.contains(&t.name), t.tid));
    let unknown = unknown
        .into_iter()
        .take(MAX_UNKNOWN)
        .map(|t| (t.tid, Some(t.name), None, 0));
    let mut patience = ON_CPU_PATIENCE;
    // Threads on a CPU that may be this runtime's workers (known ones, and
    // unknown ones named as workers are) are sampled by the kernel (never
    // signalled), the first few only.
    let mut samples_left = MAX_ON_CPU_SAMPLES;
    let mut first = Vec::new();
    // Why a known worker could not be read, by runtime.
    let mut unreadable: Vec<(Option<Id>, NotFound)> = Vec::new();
    // Why a thread on a CPU, named as workers are but not known to be one,
    // could not be sampled: the reason given when nothing is found, but no
    // bar to picking a known worker (it may be no worker of these runtimes).
    let mut unsampled: Option<NotFound> = None;
    for (tid, name, known, completed) in known.into_iter().chain(unknown) {
        let switches = source.voluntary_switches(tid);
        let worker_named = name.as_ref().is_some_and(|n| worker_names.contains(n));
        let seen = |part, on_cpu| Seen {
            tid,
            name,
            known,
            part,
            switches,
            on_cpu,
            completed,
        };
        let mut sample = sample_waiting(source, tid, &mut patience);
        let mut on_cpu = false;
        if sample == Err(NoStack::OnCpu) && samples_left > 0 && (known.is_some() || worker_named) {
            samples_left -= 1;
            on_cpu = true;
            sample = match source.sample(tid, true) {
                Ok(s) => Ok(s),
                // Not sampled (perf_event_open refused, inside the kernel):
                // known workers are still candidates, by their state alone.
                Err(why) => {
                    if known.is_none() && unsampled.is_none() {
                        if let NoStack::PerfRefused(_) = why {
                            unsampled = Some(NotFound::Stack(why));
                        }
                    }
                    Err(NoStack::OnCpu)
                }
            };
        }
        match sample {
            Ok(sample) => match polling_part(source, &sample) {
                Ok(Some(part @ Part::Polling(_))) => first.push(seen(Some(part), on_cpu)),
                // A walk that stopped early is looked at again only for a
                // thread that may be one of these runtimes' workers.
                Ok(Some(part @ Part::Partial(_))) if known.is_some() || worker_named => {
                    first.push(seen(Some(part), on_cpu));
                }
                Ok(_) => {}
                Err(why) => unreadable.push((None, why)),
            },
            Err(NoStack::OnCpu) if known.is_some() => first.push(seen(None, true)),
            Err(NoStack::OnCpu | NoStack::Gone) => {}
            // The kernel shows no thread's registers or stack: none can be
            // told stuck, and none is picked for lack of data.
            Err(why @ (NoStack::ProcUnreadable | NoStack::MemoryRefused(_))) => {
                unreadable.push((None, NotFound::Stack(why)));
            }
            Err(why) => {
                if known.is_some() {
                    unreadable.push((known, NotFound::Stack(why)));
                }
            }
        }
    }
    let mut stuck: Vec<(u8, Seen, Option<Sample>)> = Vec::new();
    if !first.is_empty() {
        let progressed = source.settle(wanted);
        for seen in first {
            // It completed an instrumented poll meanwhile (the heartbeat,
            // maybe on a thread not known before): not stuck.
            if progressed
                .iter()
                .any(|&(tid, completed)| tid == seen.tid && completed != seen.completed)
            {
                continue;
            }
            let quiet =
                seen.switches.is_some() && source.voluntary_switches(seen.tid) == seen.switches;
            match &seen.part {
                Some(part) => {
                    let again = match sample_waiting(source, seen.tid, &mut patience) {
                        Err(NoStack::OnCpu) if seen.on_cpu => source.sample(seen.tid, true),
                        other => other,
                    };
                    let Ok(again) = again else {
                        continue;
                    };
                    if polling_part(source, &again).ok().flatten().as_ref() == Some(part) {
                        // 0: waiting in one call; 1: gave up its CPU
                        // meanwhile; 2: on a CPU inside the same poll; the
                        // same after a walk that stopped early (3 to 5).
                        let rank = match (seen.on_cpu, quiet) {
                            (true, _) => 2,
                            (false, true) => 0,
                            (false, false) => 1,
                        } + if matches!(part, Part::Partial(_)) {
                            3
                        } else {
                            0
                        };
                        stuck.push((rank, seen, Some(again)));
                    }
                }
                None => {
                    if quiet && source.on_cpu(seen.tid) == Some(true) {
                        stuck.push((UNSAMPLED, seen, None));
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (id, _) in wanted {
        let why = unreadable
            .iter()
            .find(|(r, _)| r.is_none() || *r == Some(*id))
            .map(|(_, why)| why.clone());
        let found = pick(&mut stuck, *id, why);
        // Nothing found where a possible worker could not be sampled: that
        // is the reason, not "could not be told".
        let found = match (found, &unsampled) {
            (Err(NotFound::Stack(NoStack::NotFound)), Some(why)) => Err(why.clone()),
            (found, _) => found,
        };
        out.push(found);
    }
    out
}

/// Takes the stuck thread of one stall of runtime `id` out of `stuck`: the
/// best rank, this runtime's known workers first (another stall of it
/// takes the next); an unknown thread only when it is the one of its rank;
/// a thread on a CPU only when nothing could not be read (`unreadable`).
fn pick(
    stuck: &mut Vec<(u8, Seen, Option<Sample>)>,
    id: Id,
    unreadable: Option<NotFound>,
) -> Found {
    let mine = |seen: &Seen| seen.known == Some(id) || seen.known.is_none();
    let not_found = |why: Option<NotFound>| why.unwrap_or(NotFound::Stack(NoStack::NotFound));
    let Some(best) = stuck
        .iter()
        .filter(|(_, s, _)| mine(s))
        .map(|(rank, _, _)| *rank)
        .min()
    else {
        return Err(not_found(unreadable));
    };
    let of_rank: Vec<usize> = (0..stuck.len())
        .filter(|&i| stuck[i].0 == best && mine(&stuck[i].1))
        .collect();
    let chosen = match of_rank.iter().find(|&&i| stuck[i].1.known == Some(id)) {
        Some(&i) if best < UNSAMPLED || unreadable.is_none() => i,
        Some(_) => return Err(not_found(unreadable)),
        None if of_rank.len() == 1 && best < UNSAMPLED => of_rank[0],
        None if of_rank.is_empty() => return Err(not_found(unreadable)),
        None => {
            return Err(NotFound::Because(
                "several threads are stuck in a task's poll, and which one is this runtime's could not be told",
            ))
        }
    };
    let (_, seen, sample) = stuck.swap_remove(chosen);
    Ok((seen.tid, seen.name, sample))
}

/// Finds the thread that drives a current-thread runtime whose heartbeat
/// never ran: the one thread inside tokio's current-thread scheduler and
/// not known to drive another runtime (`others`). `Ok(None)`: no thread is.
pub(crate) fn find_current_thread_driver<S: ThreadSource>(
    source: &mut S,
    others: &[i64],
) -> Result<Option<i64>, NotFound> {
    let mut found = Vec::new();
    let mut unreadable = None;
    let pid = source.main_thread();
    // The main thread first: it is where `block_on` is most often called.
    let threads: Vec<i64> = std::iter::once(pid)
        .chain(source.threads().into_iter().map(|t| t.tid))
        .filter(|t| !others.contains(t))
        .take(MAX_UNKNOWN)
        .collect();
    // Threads waiting in the kernel are read from outside first; threads on
    // a CPU are sampled by the kernel (never signalled) only when none of
    // those drives it, and the first few of them only: each sample may wait
    // for the thread to run its own code.
    let mut on_cpu = Vec::new();
    for &tid in &threads {
        match source.sample(tid, false) {
            Err(NoStack::OnCpu) => on_cpu.push(tid),
            result => classify_driver(source, tid, result, &mut found, &mut unreadable)?,
        }
    }
    if found.is_empty() {
        for (i, &tid) in on_cpu.iter().enumerate() {
            if i >= MAX_ON_CPU_SAMPLES {
                unreadable = Some(NotFound::Because(
                    "more threads are on a CPU than one search samples",
                ));
                break;
            }
            let result = source.sample(tid, true);
            classify_driver(source, tid, result, &mut found, &mut unreadable)?;
        }
    }
    match (found.as_slice(), unreadable) {
        ([tid], _) => Ok(Some(*tid)),
        ([], None) => Ok(None),
        ([], Some(why)) => Err(why),
        _ => Err(NotFound::Because(
            "several threads drive current-thread runtimes, and which one drives this one could not be told",
        )),
    }
}

/// Notes what one thread's stack says in the search for a current-thread
/// runtime's driver; `Err` when no thread can be told (no symbol table).
fn classify_driver<S: ThreadSource>(
    source: &mut S,
    tid: i64,
    result: Result<Sample, NoStack>,
    found: &mut Vec<i64>,
    unreadable: &mut Option<NotFound>,
) -> Result<(), NotFound> {
    match result {
        Ok(sample) => match source.role(&sample) {
            Some(role) if role.current_thread => found.push(tid),
            Some(_) if !sample.complete => {
                *unreadable = Some(NotFound::Because(
                    "the walk of a thread's stack stopped before it could be told whether it drives the runtime",
                ))
            }
            Some(_) => {}
            None => {
                return Err(NotFound::Because(
                    "the executable has no symbol table to tell tokio's frames by",
                ))
            }
        },
        Err(NoStack::Gone) => {}
        Err(NoStack::OnCpu) => {
            *unreadable = Some(NotFound::Because(
                "a thread that may drive it is on a CPU, and was not sampled",
            ))
        }
        Err(why) => *unreadable = Some(NotFound::Stack(why)),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
