//! Live-task records: what loopwatch knows of each task spawned through it
//! while it lives, for the task dump ([`crate::Watchdog::tasks`]) and for
//! finding hung tasks: its name, spawn site and time, tokio's id for it,
//! whether it is in a poll and since when, how many polls it had, and its
//! `tracing` spans.
//!
//! A record is one cache line (64 bytes) of its own, so that the task's
//! poll writes it without touching another task's record (no line is shared
//! between two tasks polled on two workers). Records are allocated in
//! blocks of [`BLOCK`] that are never freed (so a record can be read at any
//! time, whatever became of its task), and recycled through per-thread free
//! lists: a spawn pops a record from its thread's list, a task's end pushes
//! its record onto the list of the thread it ends on. No lock and no shared
//! cache line on either path; a thread whose list runs empty takes a batch
//! from a shared pool (or a new block), one whose list grows past
//! [`LOCAL_MAX`] gives a batch back, so that tasks spawned on one thread
//! and ending on another do not make either list grow without bound.
//! Memory: 64 bytes per record for the most tasks ever alive at once, plus
//! at most [`LOCAL_MAX`] spare records per thread.
//!
//! A reader (any thread) sees a whole record or none: a record's
//! generation, bumped each time it is given to a new task, is read before
//! and after its fields, like a sequence lock.

use std::cell::RefCell;
use std::hash::Hasher;
use std::panic::Location;
use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::board::names::NameEntry;

/// Records per block.
pub(crate) const BLOCK: usize = 256;

/// Most spare records a thread keeps; past it, [`BATCH`] go back to the pool.
const LOCAL_MAX: usize = 2 * BATCH;

/// Records moved between a thread and the pool at once.
const BATCH: usize = 128;

/// Low bits of [`LiveRecord::polls`] that count polls; the high ones hold
/// the record's generation.
const POLLS_MASK: u64 = (1 << 48) - 1;

/// What loopwatch knows of one live task. Written by the spawning thread
/// at spawn and by the polling thread at each poll; read by anyone.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct LiveRecord {
    /// The task's name; null while the record is free.
    entry: AtomicPtr<NameEntry>,
    /// Where it was spawned.
    site: AtomicPtr<Location<'static>>,
    /// When it was spawned (ns).
    spawned: AtomicU64,
    /// `time << 1 | running`: the start of the poll it is in (running), or
    /// the end of its last poll (its spawn before the first).
    stamp: AtomicU64,
    /// `generation << 48 | polls`.
    polls: AtomicU64,
    /// Tokio's id of the task, from its first poll (0 before).
    id: AtomicU64,
    /// The span the spawning thread was in, as a span-description handle
    /// (0: none; see `crate::spans`).
    spawn_span: AtomicU64,
    /// The first span entered in the task's last poll: the span it is
    /// instrumented with (0: none).
    poll_span: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<LiveRecord>() == 64);

impl LiveRecord {
    const fn free() -> Self {
        LiveRecord {
            entry: AtomicPtr::new(std::ptr::null_mut()),
            site: AtomicPtr::new(std::ptr::null_mut()),
            spawned: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            id: AtomicU64::new(0),
            spawn_span: AtomicU64::new(0),
            poll_span: AtomicU64::new(0),
        }
    }
}

type Block = [LiveRecord; BLOCK];

/// Every block ever allocated (read by the scans).
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

/// Takes a record for a task named `entry`, spawned at `site` at `now`,
/// from inside span `spawn_span` (description handle bits, 0 for none).
#[inline]
pub(crate) fn register(
    entry: &'static NameEntry,
    site: &'static Location<'static>,
    now: u64,
    spawn_span: u64,
) -> &'static LiveRecord {
    let record = SPARE
        .try_with(|s| {
            let mut spare = s.0.borrow_mut();
            match spare.pop() {
                Some(record) => record,
                None => refill(&mut spare),
            }
        })
        .unwrap_or_else(|_| take_one());
    // A new generation first, so that a reader that sees any field written
    // below sees the new generation when it checks.
    let generation = (record.polls.load(Ordering::Relaxed) >> 48).wrapping_add(1) & 0xffff;
    record.polls.store(generation << 48, Ordering::Relaxed);
    fence(Ordering::Release);
    record
        .site
        .store(std::ptr::from_ref(site).cast_mut(), Ordering::Relaxed);
    record.spawned.store(now, Ordering::Relaxed);
    record.stamp.store(now << 1, Ordering::Relaxed);
    record.id.store(0, Ordering::Relaxed);
    record.spawn_span.store(spawn_span, Ordering::Relaxed);
    record.poll_span.store(0, Ordering::Relaxed);
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

    /// The task's poll that began at `start` (ns) runs now (its polling
    /// thread only). Its first poll also notes tokio's id of the task.
    #[inline]
    pub(crate) fn poll_started(&'static self, start: u64) -> Capture {
        if !dumping() {
            self.stamp.store(start << 1 | 1, Ordering::Relaxed);
        }
        if self.polls.load(Ordering::Relaxed) & POLLS_MASK == 0 {
            self.note_id();
        }
        Capture::arm(self)
    }

    #[cold]
    fn note_id(&self) {
        if let Some(id) = tokio::task::try_id() {
            self.id.store(task_id_bits(id), Ordering::Relaxed);
        }
    }

    /// The poll ended at `end` (ns).
    #[inline]
    pub(crate) fn poll_ended(&self, end: u64, capture: Capture) {
        drop(capture);
        if !dumping() {
            self.stamp.store(end << 1, Ordering::Relaxed);
        }
        let polls = self.polls.load(Ordering::Relaxed);
        self.polls.store(polls + 1, Ordering::Relaxed);
    }
}

/// Catches the first span entered during a task's poll (feature `spans`):
/// the span the task is instrumented with. Armed by
/// [`LiveRecord::poll_started`] in a thread-local the spans layer looks at
/// on each enter ([`capture_span`]); dropped at the poll's end (or by its
/// unwind), when a poll that entered no span leaves the task with none.
#[derive(Debug)]
#[must_use]
pub(crate) struct Capture {
    #[cfg(feature = "spans")]
    record: &'static LiveRecord,
    #[cfg(feature = "spans")]
    previous: Option<&'static LiveRecord>,
}

#[cfg(feature = "spans")]
thread_local! {
    /// The record of the task being polled on this thread whose first span
    /// is still to be caught.
    static CAPTURE: std::cell::Cell<Option<&'static LiveRecord>> =
        const { std::cell::Cell::new(None) };
}

impl Capture {
    #[inline]
    fn arm(record: &'static LiveRecord) -> Capture {
        #[cfg(feature = "spans")]
        {
            Capture {
                record,
                previous: CAPTURE.replace(Some(record)),
            }
        }
        #[cfg(not(feature = "spans"))]
        {
            let _ = record;
            Capture {}
        }
    }
}

#[cfg(feature = "spans")]
impl Drop for Capture {
    #[inline]
    fn drop(&mut self) {
        if CAPTURE.replace(self.previous).is_some() {
            // No span was entered in this poll.
            self.record.poll_span.store(0, Ordering::Relaxed);
        }
    }
}

/// Whether a task dump the watchdog asked for may be polling tasks now:
/// from just before it is asked until 100 ms after it answered (or it was
/// given up). Such a poll (and the wake-up tokio makes after it) is no sign
/// of progress, so it leaves the task's idle time as it was.
static DUMPING: AtomicBool = AtomicBool::new(false);

/// Whether a task dump may be polling tasks now ([`DUMPING`]).
#[inline]
pub(crate) fn dumping() -> bool {
    DUMPING.load(Ordering::Relaxed)
}

/// Set by the watchdog's task dumps (`watchdog/traces.rs`).
#[allow(dead_code)]
pub(crate) fn set_dumping(on: bool) {
    DUMPING.store(on, Ordering::Relaxed);
}

/// The calling thread entered the span whose description handle bits are
/// `bits`: if it is the first span entered in a task's poll, that task is
/// instrumented with it.
#[cfg(feature = "spans")]
#[inline]
pub(crate) fn capture_span(bits: u64) {
    if let Some(record) = CAPTURE.take() {
        record.poll_span.store(bits, Ordering::Relaxed);
    }
}

/// Tokio's task id as a number: tokio prints it, and hashes it as that
/// `u64` (checked against its `Display` once, with a fallback to parsing
/// what it prints).
pub(crate) fn task_id_bits(id: tokio::task::Id) -> u64 {
    use std::sync::atomic::AtomicU8;
    /// 0: not checked yet; 1: hashing gives the number; 2: it does not.
    static HASH_GIVES_NUMBER: AtomicU8 = AtomicU8::new(0);
    let parsed = || id.to_string().parse::<u64>().unwrap_or(0);
    match HASH_GIVES_NUMBER.load(Ordering::Relaxed) {
        1 => hashed(id),
        2 => parsed(),
        _ => {
            let (h, p) = (hashed(id), parsed());
            HASH_GIVES_NUMBER.store(if h == p { 1 } else { 2 }, Ordering::Relaxed);
            p
        }
    }
}

/// What `id` hashes as, when it hashes as one `u64`.
fn hashed(id: tokio::task::Id) -> u64 {
    #[derive(Default)]
    struct Capture(u64);
    impl Hasher for Capture {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            // Not one u64: make it disagree with the printed number.
            self.0 = u64::MAX ^ bytes.len() as u64;
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }
    let mut hasher = Capture::default();
    std::hash::Hash::hash(&id, &mut hasher);
    hasher.finish()
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

/// One live task as read from its record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveTask {
    pub(crate) entry: &'static NameEntry,
    pub(crate) site: Option<&'static Location<'static>>,
    /// Spawn time (ns).
    pub(crate) spawned: u64,
    /// Whether it is in a poll now.
    pub(crate) running: bool,
    /// Start of the poll it is in (running), or end of its last poll (its
    /// spawn before the first) (ns).
    pub(crate) since: u64,
    pub(crate) polls: u64,
    /// Tokio's id, once polled.
    pub(crate) id: Option<u64>,
    /// Span description handle bits: the span of its last poll, and the
    /// span it was spawned in (0: none).
    #[cfg_attr(not(feature = "spans"), allow(dead_code))]
    pub(crate) poll_span: u64,
    #[cfg_attr(not(feature = "spans"), allow(dead_code))]
    pub(crate) spawn_span: u64,
}

impl LiveTask {
    /// How long it has been idle at `now`; 0 while it runs.
    pub(crate) fn idle_ns(&self, now: u64) -> u64 {
        if self.running {
            0
        } else {
            now.saturating_sub(self.since)
        }
    }
}

impl LiveRecord {
    /// The task holding the record, read whole, or `None` when it is free
    /// (or given to another task while being read).
    fn read(&'static self) -> Option<LiveTask> {
        for _ in 0..4 {
            let before = self.polls.load(Ordering::Acquire);
            let entry = self.entry()?;
            let site = self.site.load(Ordering::Relaxed);
            let spawned = self.spawned.load(Ordering::Relaxed);
            let stamp = self.stamp.load(Ordering::Relaxed);
            let id = self.id.load(Ordering::Relaxed);
            let spawn_span = self.spawn_span.load(Ordering::Relaxed);
            let poll_span = self.poll_span.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let after = self.polls.load(Ordering::Relaxed);
            let entry_after = self.entry.load(Ordering::Relaxed);
            if before >> 48 != after >> 48 || !std::ptr::eq(entry, entry_after) {
                continue;
            }
            return Some(LiveTask {
                entry,
                // SAFETY: null or a `&'static Location` stored by `register`.
                site: unsafe { site.as_ref() },
                spawned,
                running: stamp & 1 == 1,
                since: stamp >> 1,
                polls: after & POLLS_MASK,
                id: (id != 0).then_some(id),
                poll_span,
                spawn_span,
            });
        }
        None
    }
}

/// Calls `visit` with every live task (any thread). Blocks are copied out
/// under the lock; records are read without it.
pub(crate) fn for_each_live(mut visit: impl FnMut(&LiveTask)) {
    let blocks: Vec<&'static Block> = BLOCKS.lock().clone();
    for block in blocks {
        for record in block {
            if let Some(task) = record.read() {
                visit(&task);
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

    /// The slab is process-wide: its tests take turns, each on a thread of
    /// its own that is joined before the next (a thread gives its spare
    /// records to the pool as it exits).
    fn serially(test: impl FnOnce() + Send + 'static) {
        static SERIAL: Mutex<()> = Mutex::new(());
        let _serial = SERIAL.lock();
        std::thread::spawn(test).join().unwrap();
    }

    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    #[test]
    fn records_are_recycled_across_threads_without_growing() {
        serially(records_are_recycled);
    }

    fn records_are_recycled() {
        let entry = NameEntry::unlisted("live-test");
        // Spawned on this thread, ended on another, many times: the records
        // come back through the pool instead of piling up on one side.
        let before = allocated();
        for _ in 0..50 {
            let records: Vec<_> = (0..1_000).map(|_| register(entry, here(), 1, 0)).collect();
            std::thread::spawn(move || records.into_iter().for_each(release))
                .join()
                .unwrap();
        }
        let grown = allocated() - before;
        assert!(grown <= 4_000, "{grown} records for 1,000 alive at a time");
        let mut live = 0;
        for_each_live(|t| live += usize::from(std::ptr::eq(t.entry, entry)));
        assert_eq!(live, 0);
        let kept: Vec<_> = (0..10).map(|_| register(entry, here(), 7, 0)).collect();
        let mut seen = 0;
        for_each_live(|t| {
            if std::ptr::eq(t.entry, entry) {
                assert_eq!((t.spawned, t.since, t.running, t.polls), (7, 7, false, 0));
                seen += 1;
            }
        });
        assert_eq!(seen, 10);
        kept.into_iter().for_each(release);
    }

    #[test]
    fn a_record_shows_its_polls_and_whether_one_runs() {
        serially(a_record_shows_its_polls);
    }

    fn a_record_shows_its_polls() {
        let entry = NameEntry::unlisted("live-polls");
        let site = here();
        let record = register(entry, site, 10, 0);
        let find = || {
            let mut found = None;
            for_each_live(|t| {
                if std::ptr::eq(t.entry, entry) {
                    found = Some(*t);
                }
            });
            found.expect("the task is live")
        };
        let capture = record.poll_started(20);
        let t = find();
        assert!(t.running);
        assert_eq!((t.since, t.polls, t.spawned), (20, 0, 10));
        assert_eq!(t.site.map(|s| s.line()), Some(site.line()));
        record.poll_ended(25, capture);
        let capture = record.poll_started(30);
        record.poll_ended(31, capture);
        let t = find();
        assert!(!t.running);
        assert_eq!((t.since, t.polls), (31, 2));
        assert_eq!(t.idle_ns(100), 69);
        release(record);
        // Given to another task: fresh fields.
        let again = register(entry, site, 50, 0);
        let t = find();
        assert_eq!((t.polls, t.spawned, t.id), (0, 50, None));
        release(again);
    }

    #[test]
    fn tokio_task_ids_are_read_as_the_numbers_tokio_prints() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..3 {
            let id =
                rt.block_on(async { tokio::spawn(async { tokio::task::id() }).await.unwrap() });
            assert_eq!(task_id_bits(id).to_string(), id.to_string());
            assert_eq!(
                hashed(id).to_string(),
                id.to_string(),
                "hashing gives the number"
            );
        }
    }

    #[test]
    fn a_record_taken_without_a_free_list_leaves_the_rest_in_the_pool() {
        serially(a_record_taken_without_a_free_list);
    }

    fn a_record_taken_without_a_free_list() {
        let pooled = || POOL.lock().iter().map(Vec::len).sum::<usize>();
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
