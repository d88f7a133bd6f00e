//! Per-thread poll slots: where instrumented polls record that they are running.
//!
//! Each thread that runs an instrumented poll owns one [`Slot`], found through a
//! thread-local. The poll writes its start time and its name there with relaxed
//! atomics (no lock, no allocation); the watchdog thread reads every slot once
//! per check. Slots are leaked once and reused when their thread exits, so the
//! registry's size is bounded by the largest number of threads alive at once.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) use crate::board::names::NameEntry;
use crate::board::names::Timed;
use crate::board::shard::{Counts, Table};
use crate::clock::{coarse_min_ns, coarse_ns, now_ns};

/// Park state as reported by the runtime hooks (`loopwatch::hooks`).
pub(crate) const PARK_UNKNOWN: u8 = 0;
pub(crate) const PARK_ACTIVE: u8 = 1;
pub(crate) const PARK_PARKED: u8 = 2;

/// What is known about the thread that owns a slot. Written when the slot is
/// taken (not per poll); read by the watchdog.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadInfo {
    /// The runtime whose context the thread was in when it took the slot.
    pub(crate) runtime: Option<tokio::runtime::Id>,
    /// The thread's name.
    pub(crate) name: Option<Arc<str>>,
    /// The kernel's id of the thread (Linux; 0 elsewhere), for its stack.
    pub(crate) os_tid: i64,
}

/// One thread's slot, on cache lines of its own (its owner writes it at
/// every poll).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Slot {
    /// Start of the outermost instrumented poll running on the thread (0 = none).
    poll_start: AtomicU64,
    /// End of the last outermost instrumented poll that has completed (its
    /// start for polls timed by the runtime hooks; 0 = none yet): evidence
    /// that the thread makes progress.
    last_completed: AtomicU64,
    /// Name of the innermost instrumented poll running now (null = none).
    task: AtomicPtr<NameEntry>,
    /// Park state from the runtime hooks, and since when.
    park: AtomicU8,
    park_since: AtomicU64,
    /// Whether the thread has been seen running spawned tasks or parking as a
    /// runtime worker (as opposed to a `block_on` caller or a blocking thread).
    is_worker: AtomicBool,
    /// Whether a live thread owns the slot.
    in_use: AtomicBool,
    info: Mutex<ThreadInfo>,
    /// The counter shards of the threads that owned the slot (kept when one
    /// exits: its counts still count).
    shards: Table,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            poll_start: AtomicU64::new(0),
            last_completed: AtomicU64::new(0),
            task: AtomicPtr::new(std::ptr::null_mut()),
            park: AtomicU8::new(PARK_UNKNOWN),
            park_since: AtomicU64::new(0),
            is_worker: AtomicBool::new(false),
            in_use: AtomicBool::new(false),
            info: Mutex::new(ThreadInfo {
                runtime: None,
                name: None,
                os_tid: 0,
            }),
            shards: Table::new(),
        }
    }

    /// Where the owning thread counts for `entry`.
    #[inline]
    pub(crate) fn counts(&'static self, entry: &'static NameEntry) -> Counts<'static> {
        match self.shards.own(entry.index) {
            Some(shard) => Counts::Own(shard),
            None => Counts::Shared(&entry.spill),
        }
    }
}

static SLOTS: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

/// The thread-local owner of a slot; gives the slot back when the thread exits.
struct Local {
    slot: &'static Slot,
    /// Whether the thread has been checked for being a runtime worker since
    /// it took the slot (at its first instrumented poll).
    worker_checked: Cell<bool>,
    /// Polls and calls until the next sampled one.
    countdown: Cell<u32>,
    /// State of the generator that spaces the samples.
    rng: Cell<u32>,
}

impl Local {
    fn acquire() -> Self {
        let slot = {
            let mut slots = SLOTS.lock();
            let free = slots.iter().copied().find(|s| {
                s.in_use
                    .compare_exchange(false, true, Relaxed, Relaxed)
                    .is_ok()
            });
            match free {
                Some(slot) => slot,
                None => {
                    let slot: &'static Slot = Box::leak(Box::new(Slot::new()));
                    slot.in_use.store(true, Relaxed);
                    slots.push(slot);
                    slot
                }
            }
        };
        let info = current_thread_info();
        let seed = (std::ptr::from_ref(slot) as usize as u32) ^ (info.os_tid as u32) | 1;
        *slot.info.lock() = info;
        Local {
            slot,
            worker_checked: Cell::new(false),
            countdown: Cell::new(1),
            rng: Cell::new(seed),
        }
    }

    /// Whether the next poll or call is one of the sampled: one in
    /// [`SAMPLE_EVERY`] on average, at random intervals (so that work that
    /// alternates with a fixed period is sampled evenly).
    #[inline]
    fn next_timed(&self) -> Timed {
        let left = self.countdown.get();
        if left > 1 {
            self.countdown.set(left - 1);
            Timed::Unsampled
        } else {
            self.countdown.set(self.next_interval());
            Timed::Sampled
        }
    }

    #[cold]
    fn next_interval(&self) -> u32 {
        // xorshift32
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng.set(x);
        1 + x % (2 * SAMPLE_EVERY - 1)
    }
}

/// One poll or call in this many, on average, is timed with the fine clock
/// and has its duration bucketed whatever it is ([`Timed::Sampled`]).
pub(crate) const SAMPLE_EVERY: u32 = 128;

impl Drop for Local {
    fn drop(&mut self) {
        let slot = self.slot;
        slot.poll_start.store(0, Relaxed);
        slot.last_completed.store(0, Relaxed);
        slot.task.store(std::ptr::null_mut(), Relaxed);
        slot.park.store(PARK_UNKNOWN, Relaxed);
        slot.is_worker.store(false, Relaxed);
        *slot.info.lock() = ThreadInfo::default();
        slot.in_use.store(false, Relaxed);
    }
}

thread_local! {
    static LOCAL: Local = Local::acquire();
}

fn current_thread_info() -> ThreadInfo {
    let runtime = tokio::runtime::Handle::try_current().ok().map(|h| h.id());
    ThreadInfo {
        runtime,
        name: std::thread::current().name().map(Arc::from),
        os_tid: loopwatch_stack::current_tid(),
    }
}

/// The current thread's slot, or `None` while the thread is being torn down.
#[inline]
fn local_slot() -> Option<&'static Slot> {
    LOCAL.try_with(|l| l.slot).ok()
}

/// The current thread's slot, for an instrumented poll. The first such poll
/// after the slot was taken tells whether the thread runs spawned tasks (a
/// runtime worker) rather than a `block_on` future.
#[inline]
fn poll_slot() -> Option<&'static Slot> {
    LOCAL
        .try_with(|l| {
            l.check_worker();
            l.slot
        })
        .ok()
}

impl Local {
    #[inline]
    fn check_worker(&self) {
        if !self.worker_checked.get() {
            self.worker_checked.set(true);
            if tokio::task::try_id().is_some() {
                self.slot.is_worker.store(true, Relaxed);
            }
        }
    }
}

/// How one poll or call is timed, decided as it begins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The thread's slot.
    pub(crate) slot: &'static Slot,
    /// Whether it is one of the sampled.
    pub(crate) timed: Timed,
    /// Whether it is timed with the fine clock: when sampled, or when the
    /// shortest threshold its duration is compared with is too short for
    /// the coarse clock ([`coarse_min_ns`]).
    pub(crate) fine: bool,
}

impl Timing {
    /// The time now, on the clock this poll or call is timed with.
    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        if self.fine {
            now_ns()
        } else {
            coarse_ns()
        }
    }
}

/// Begins timing a poll (`poll`, which also tells a runtime worker apart) or
/// a call on this thread, whose duration will be compared with thresholds
/// of `shortest_threshold_ns` or more. `None` while the thread is being torn
/// down.
#[inline]
pub(crate) fn timing(shortest_threshold_ns: u64, poll: bool) -> Option<Timing> {
    LOCAL
        .try_with(|l| {
            if poll {
                l.check_worker();
            }
            let timed = l.next_timed();
            Timing {
                slot: l.slot,
                timed,
                fine: timed == Timed::Sampled || shortest_threshold_ns < coarse_min_ns(),
            }
        })
        .ok()
}

/// Calls `visit` with the counter shards of every slot, owned or not.
pub(crate) fn for_each_table(mut visit: impl FnMut(&Table)) {
    let slots: Vec<&'static Slot> = SLOTS.lock().clone();
    for slot in slots {
        visit(&slot.shards);
    }
}

/// Where the current thread counts for `entry` (off the per-poll path:
/// spawns, task ends).
#[inline]
pub(crate) fn counts_here(entry: &'static NameEntry) -> Counts<'static> {
    LOCAL
        .try_with(|l| l.slot.counts(entry))
        .unwrap_or_else(|_| shared_counts(entry))
}

/// Where counts for `entry` go when the thread has no slot.
#[inline]
pub(crate) fn shared_counts(entry: &'static NameEntry) -> Counts<'static> {
    Counts::Shared(&entry.spill)
}

/// Marks the current thread as a runtime worker.
#[cfg(tokio_unstable)]
fn mark_worker() {
    if let Some(slot) = local_slot() {
        slot.is_worker.store(true, Relaxed);
    }
}

/// Makes sure the current thread has a slot and refreshes what is known about
/// it (called from runtime hooks, off the per-poll path).
pub(crate) fn register_current_thread() {
    if let Some(slot) = local_slot() {
        *slot.info.lock() = current_thread_info();
    }
}

/// Records a park state change of the current thread (runtime hooks). Only
/// runtime workers park, so this also marks the thread as a worker.
pub(crate) fn set_park_state(state: u8) {
    if let Some(slot) = local_slot() {
        slot.is_worker.store(true, Relaxed);
        slot.park.store(state, Relaxed);
        slot.park_since.store(now_ns(), Relaxed);
    }
}

/// Marks one instrumented poll as running on this thread until dropped.
#[derive(Debug)]
pub(crate) struct PollGuard {
    slot: &'static Slot,
    prev_task: *mut NameEntry,
    /// Start of this poll when it is the outermost one, else 0.
    outermost_start: u64,
}

/// Records the start of an instrumented poll named `name` on this thread,
/// stamped now on the coarse clock (runtime task hooks, the heartbeat).
#[inline]
pub(crate) fn enter(name: &'static NameEntry) -> Option<PollGuard> {
    let slot = poll_slot()?;
    Some(slot.enter(name, coarse_ns()))
}

impl Slot {
    /// Records the start, at `start`, of an instrumented poll named `name`
    /// on the thread that owns this slot.
    ///
    /// The hot path: two relaxed loads and two relaxed stores here, three
    /// relaxed stores when the guard drops (the end records the start of the
    /// poll that completed as progress). Nested instrumented polls keep the
    /// outermost start (the thread is busy since then) and show the
    /// innermost name.
    #[inline]
    pub(crate) fn enter(&'static self, name: &'static NameEntry, start: u64) -> PollGuard {
        let slot = self;
        let outermost_start = if slot.poll_start.load(Relaxed) == 0 {
            slot.poll_start.store(start, Relaxed);
            start
        } else {
            0
        };
        let prev_task = slot.task.load(Relaxed);
        slot.task
            .store(std::ptr::from_ref(name).cast_mut(), Relaxed);
        PollGuard {
            slot,
            prev_task,
            outermost_start,
        }
    }
}

impl PollGuard {
    /// Ends the poll at `end` (ns): the thread is seen to have made
    /// progress then, however long the poll took.
    #[inline]
    pub(crate) fn finish(mut self, end: u64) {
        if self.outermost_start != 0 {
            self.outermost_start = end;
        }
    }
}

impl Drop for PollGuard {
    /// Ends the poll; without [`PollGuard::finish`] (runtime hooks, the
    /// heartbeat, an unwind), its start is what is known to have passed.
    #[inline]
    fn drop(&mut self) {
        self.slot.task.store(self.prev_task, Relaxed);
        if self.outermost_start != 0 {
            self.slot
                .last_completed
                .store(self.outermost_start, Relaxed);
            self.slot.poll_start.store(0, Relaxed);
        }
    }
}

/// What the watchdog sees of one slot at one instant.
#[derive(Debug, Clone)]
pub(crate) struct SlotView {
    /// Identity of the slot (stable while its thread lives).
    pub(crate) id: usize,
    pub(crate) poll_start: u64,
    pub(crate) last_completed: u64,
    pub(crate) task: Option<&'static str>,
    pub(crate) park: u8,
    pub(crate) park_since: u64,
    pub(crate) is_worker: bool,
    pub(crate) info: ThreadInfo,
}

/// Reads every slot in use. Takes the registry lock only to copy the list.
pub(crate) fn snapshot() -> Vec<SlotView> {
    let slots: Vec<&'static Slot> = SLOTS.lock().clone();
    let mut views = Vec::with_capacity(slots.len());
    for slot in slots {
        if !slot.in_use.load(Relaxed) {
            continue;
        }
        // Read the start twice around the name so that the name belongs to the
        // poll whose start we report; a poll that changed meanwhile is read as
        // "not stuck" this round and seen again at the next check.
        let start = slot.poll_start.load(Relaxed);
        let task = slot.task.load(Relaxed);
        let start_again = slot.poll_start.load(Relaxed);
        let (poll_start, task) = if start == start_again {
            (start, task)
        } else {
            (0, std::ptr::null_mut())
        };
        // SAFETY: `task` is null or points to a leaked, never-freed `NameEntry`.
        let task = unsafe { task.as_ref() }.map(|e| e.name);
        views.push(SlotView {
            id: std::ptr::from_ref(slot) as usize,
            poll_start,
            last_completed: slot.last_completed.load(Relaxed),
            task,
            park: slot.park.load(Relaxed),
            park_since: slot.park_since.load(Relaxed),
            is_worker: slot.is_worker.load(Relaxed),
            info: slot.info.lock().clone(),
        });
    }
    views
}

/// Task poll hooks (`--cfg tokio_unstable`): every task poll of a runtime
/// built with `install_runtime_hooks` is recorded like an
/// instrumented poll, named by the task's spawn location.
#[cfg(tokio_unstable)]
pub(crate) mod task_hooks {
    use std::cell::Cell;
    use std::panic::Location;

    use super::{enter, PollGuard};

    thread_local! {
        static GUARD: Cell<Option<PollGuard>> = const { Cell::new(None) };
    }

    pub(crate) fn poll_started(at: &'static Location<'static>) {
        // Task poll hooks run on workers only, before the task id is set.
        super::mark_worker();
        let guard = enter(crate::board::names::of_location(at));
        drop(GUARD.with(|g| g.replace(guard)));
    }

    pub(crate) fn poll_ended() {
        drop(GUARD.with(Cell::take));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_too_short_for_the_coarse_clock_are_timed_with_the_fine_one() {
        let min = coarse_min_ns();
        let mut fine = [0u32; 2];
        const TIMES: u32 = 10_000;
        for _ in 0..TIMES {
            fine[0] += u32::from(timing(min.saturating_sub(1), false).unwrap().fine);
            fine[1] += u32::from(timing(min, false).unwrap().fine);
        }
        assert_eq!(fine[0], TIMES, "below the coarse clock's minimum");
        if min == u64::MAX {
            return; // no coarse clock here
        }
        // At the minimum, only the sampled (one in SAMPLE_EVERY on average).
        let expected = TIMES / SAMPLE_EVERY;
        assert!(
            (expected / 2..expected * 2).contains(&fine[1]),
            "{} of {TIMES} fine, about {expected} expected",
            fine[1]
        );
    }
}
