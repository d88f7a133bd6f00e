//! Live-task records: what the watchdog knows of each task spawned through
//! loopwatch while it lives (its name, and when it was last polled), for
//! finding hung tasks.
//!
//! Records are 16 bytes, allocated in blocks of [`BLOCK`] that are never
//! freed (so a record can be read at any time, whatever became of its
//! task), and recycled through per-thread free lists: a spawn pops a record
//! from its thread's list, a task's end pushes its record onto the list of
//! the thread it ends on. No lock and no shared cache line on either path;
//! a thread whose list runs empty takes a batch from a shared pool (or a new
//! block), one whose list grows past [`LOCAL_MAX`] gives a batch back, so
//! that tasks spawned on one thread and ending on another do not make
//! either list grow without bound. Memory: 16 bytes per record for the most
//! tasks ever alive at once, plus at most [`LOCAL_MAX`] spare records per
//! thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::instrument::names::NameEntry;

/// Records per block.
pub(crate) const BLOCK: usize = 256;

/// Most spare records a thread keeps; past it, [`BATCH`] go back to the pool.
const LOCAL_MAX: usize = 2 * BATCH;

/// Records moved between a thread and the pool at once.
const BATCH: usize = 128;

/// What the watchdog knows of one live task.
#[derive(Debug)]
pub(crate) struct LiveRecord {
    /// The task's name; null while the record is free.
    entry: AtomicPtr<NameEntry>,
    /// Start of the task's last poll, or its spawn time before the first (ns).
    pub(crate) last_poll: AtomicU64,
}

impl LiveRecord {
    const fn free() -> Self {
        LiveRecord {
            entry: AtomicPtr::new(std::ptr::null_mut()),
            last_poll: AtomicU64::new(0),
        }
    }
}

type Block = [LiveRecord; BLOCK];

/// Every block ever allocated (read by the watchdog's scans).
static BLOCKS: Mutex<Vec<&'static Block>> = Mutex::new(Vec::new());

/// Free records given back by threads, in batches.
static POOL: Mutex<Vec<Vec<&'static LiveRecord>>> = Mutex::new(Vec::new());

/// A thread's free records; given back to the pool when the thread exits.
struct Spare(RefCell<Vec<&'static LiveRecord>>);

impl Drop for Spare {
    fn drop(&mut self) {
        let spare = std::mem::take(self.0.get_mut());
        if !spare.is_empty() {
            POOL.lock().push(spare);
        }
    }
}

thread_local! {
    static SPARE: Spare = const { Spare(RefCell::new(Vec::new())) };
}

/// Takes a record for a task named `entry`, last polled `now`.
#[inline]
pub(crate) fn register(entry: &'static NameEntry, now: u64) -> &'static LiveRecord {
    let record = SPARE
        .try_with(|s| {
            let mut spare = s.0.borrow_mut();
            match spare.pop() {
                Some(record) => record,
                None => refill(&mut spare),
            }
        })
        .unwrap_or_else(|_| take_one());
    record.last_poll.store(now, Ordering::Relaxed);
    record
        .entry
        .store(std::ptr::from_ref(entry).cast_mut(), Ordering::Release);
    record
}

/// Gives a task's record back (its task ended).
#[inline]
pub(crate) fn release(record: &'static LiveRecord) {
    record.entry.store(std::ptr::null_mut(), Ordering::Release);
    let kept = SPARE.try_with(|s| {
        let mut spare = s.0.borrow_mut();
        spare.push(record);
        if spare.len() > LOCAL_MAX {
            give_back(&mut spare);
        }
    });
    if kept.is_err() {
        POOL.lock().push(vec![record]);
    }
}

impl LiveRecord {
    /// The name of the task that holds the record, if one does.
    #[inline]
    pub(crate) fn entry(&self) -> Option<&'static NameEntry> {
        // SAFETY: null or a leaked, never-freed `NameEntry`.
        unsafe { self.entry.load(Ordering::Acquire).as_ref() }
    }
}

#[cold]
fn refill(spare: &mut Vec<&'static LiveRecord>) -> &'static LiveRecord {
    let mut batch = take_batch();
    if batch.is_empty() {
        batch = new_block();
    }
    let record = batch.pop().expect("a batch is never empty");
    spare.append(&mut batch);
    record
}

#[cold]
fn give_back(spare: &mut Vec<&'static LiveRecord>) {
    let batch = spare.split_off(spare.len() - BATCH);
    POOL.lock().push(batch);
}

/// One record for a thread without its free list (being torn down): the
/// rest of the batch it comes from goes back to the pool, so none is lost.
#[cold]
fn take_one() -> &'static LiveRecord {
    let mut batch = take_batch();
    if batch.is_empty() {
        batch = new_block();
    }
    let record = batch.pop().expect("a batch is never empty");
    if !batch.is_empty() {
        POOL.lock().push(batch);
    }
    record
}

fn take_batch() -> Vec<&'static LiveRecord> {
    POOL.lock().pop().unwrap_or_default()
}

#[cold]
fn new_block() -> Vec<&'static LiveRecord> {
    let block: &'static Block = Box::leak(Box::new([const { LiveRecord::free() }; BLOCK]));
    BLOCKS.lock().push(block);
    block.iter().collect()
}

/// Calls `visit` with every live task's record (watchdog thread). Blocks
/// are copied out under the lock; records are read without it.
pub(crate) fn for_each_live(mut visit: impl FnMut(&'static NameEntry, &LiveRecord)) {
    let blocks: Vec<&'static Block> = BLOCKS.lock().clone();
    for block in blocks {
        for record in block {
            if let Some(entry) = record.entry() {
                visit(entry, record);
            }
        }
    }
}

/// Records allocated so far.
#[cfg(test)]
pub(crate) fn allocated() -> usize {
    BLOCKS.lock().len() * BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab is process-wide: its tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn records_are_recycled_across_threads_without_growing() {
        let _serial = SERIAL.lock();
        let entry = NameEntry::unlisted("live-test");
        // Spawned on this thread, ended on another, many times: the records
        // come back through the pool instead of piling up on one side.
        let before = allocated();
        for _ in 0..50 {
            let records: Vec<_> = (0..1_000).map(|_| register(entry, 1)).collect();
            std::thread::spawn(move || records.into_iter().for_each(release))
                .join()
                .unwrap();
        }
        let grown = allocated() - before;
        assert!(grown <= 4_000, "{grown} records for 1,000 alive at a time");
        let mut live = 0;
        for_each_live(|e, _| live += usize::from(std::ptr::eq(e, entry)));
        assert_eq!(live, 0);
        let kept: Vec<_> = (0..10).map(|_| register(entry, 7)).collect();
        let mut seen = 0;
        for_each_live(|e, r| {
            if std::ptr::eq(e, entry) {
                assert_eq!(r.last_poll.load(Ordering::Relaxed), 7);
                seen += 1;
            }
        });
        assert_eq!(seen, 10);
        kept.into_iter().for_each(release);
    }

    #[test]
    fn a_record_taken_without_a_free_list_leaves_the_rest_in_the_pool() {
        let pooled = || POOL.lock().iter().map(Vec::len).sum::<usize>();
        let _serial = SERIAL.lock();
        let before = (pooled(), allocated());
        let record = take_one();
        let (pool, blocks) = (pooled(), allocated());
        // Either a pooled batch gave one record, or a new block gave one
        // and pooled the others: nothing went missing.
        assert_eq!(
            pool + 1,
            before.0 + (blocks - before.1),
            "pooled {pool} after {before:?}, blocks {blocks}"
        );
        POOL.lock().push(vec![record]);
    }
}
