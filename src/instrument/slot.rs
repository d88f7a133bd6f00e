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

use crate::clock::now_ns;
pub(crate) use crate::instrument::names::NameEntry;

/// Park state as reported by the runtime hooks of [`crate::hooks`].
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

/// One thread's slot.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Start of the outermost instrumented poll running on the thread (0 = none).
    poll_start: AtomicU64,
    /// Start of the last outermost instrumented poll that has completed
    /// (0 = none yet): evidence that the thread makes progress.
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
        *slot.info.lock() = current_thread_info();
        Local {
            slot,
            worker_checked: Cell::new(false),
        }
    }
}

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
        os_tid: crate::stack::current_tid(),
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
            if !l.worker_checked.get() {
                l.worker_checked.set(true);
                if tokio::task::try_id().is_some() {
                    l.slot.is_worker.store(true, Relaxed);
                }
            }
            l.slot
        })
        .ok()
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
    /// Start of this poll (ns).
    pub(crate) start: u64,
}

/// Records the start of an instrumented poll named `name` on this thread.
///
/// The hot path: one thread-local access, one clock read, two relaxed loads
/// and two relaxed stores here, three relaxed stores when the guard drops
/// (the end records the start of the poll that completed as progress).
/// Nested instrumented polls keep the outermost start (the thread is busy
/// since then) and show the innermost name.
#[inline]
pub(crate) fn enter(name: &'static NameEntry) -> Option<PollGuard> {
    let slot = poll_slot()?;
    let start = now_ns();
    let outermost_start = if slot.poll_start.load(Relaxed) == 0 {
        slot.poll_start.store(start, Relaxed);
        start
    } else {
        0
    };
    let prev_task = slot.task.load(Relaxed);
    slot.task
        .store(std::ptr::from_ref(name).cast_mut(), Relaxed);
    Some(PollGuard {
        slot,
        prev_task,
        outermost_start,
        start,
    })
}

impl Drop for PollGuard {
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
/// built with [`crate::install_runtime_hooks`] is recorded like an
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
        let guard = enter(crate::instrument::names::of_location(at));
        drop(GUARD.with(|g| g.replace(guard)));
    }

    pub(crate) fn poll_ended() {
        drop(GUARD.with(Cell::take));
    }
}
