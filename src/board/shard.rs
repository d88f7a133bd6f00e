//! Per-thread counter shards: the counts written at every poll, call, spawn
//! and task end, kept per thread so that no cache line is written by two
//! threads on the hot path.
//!
//! Each thread's poll slot ([`crate::board::slot`]) holds a [`Table`]
//! of [`Shard`]s, one per name the thread has counted, in chunks of
//! [`CHUNK`] names allocated at the thread's first count of a name in the
//! chunk (never again). Only the owning thread writes a shard, with a plain
//! relaxed load and store (no read-modify-write, no lock prefix); the
//! watchdog and the exporter read every shard and sum. When a thread exits,
//! its slot, table and counts stay and are reused by the next thread, so the
//! sums never go back and the memory is bounded by the most threads alive at
//! once, times the chunks they touched.
//!
//! Where a thread has no slot (it is being torn down) or the name has no
//! index (loopwatch's own work), counts go to the name's shared `spill`
//! shard with `fetch_add`.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::board::names::MAX_NAMES;

/// Names per chunk.
pub(crate) const CHUNK: usize = 16;

/// Chunks in a table: enough for every index a name can get (`other` and
/// [`MAX_NAMES`] more).
const CHUNKS: usize = (MAX_NAMES + 1).div_ceil(CHUNK);

/// The counts of one name, on one thread (or shared, for the spill shard).
#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub(crate) spawned: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    /// Polls, and the sum of their durations (ns).
    pub(crate) polls: AtomicU64,
    pub(crate) poll_ns: AtomicU64,
    /// Calls that returned, by result, and the sum of all calls' durations (ns).
    pub(crate) calls_ok: AtomicU64,
    pub(crate) calls_error: AtomicU64,
    pub(crate) call_ns: AtomicU64,
}

/// The sums of [`Shard`]s (plain numbers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardSum {
    pub(crate) spawned: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) panicked: u64,
    pub(crate) cancelled: u64,
    pub(crate) polls: u64,
    pub(crate) poll_ns: u64,
    pub(crate) calls_ok: u64,
    pub(crate) calls_error: u64,
    pub(crate) call_ns: u64,
}

impl ShardSum {
    /// Adds what `shard` holds now.
    pub(crate) fn add(&mut self, shard: &Shard) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.spawned = self.spawned.wrapping_add(r(&shard.spawned));
        self.completed = self.completed.wrapping_add(r(&shard.completed));
        self.failed = self.failed.wrapping_add(r(&shard.failed));
        self.panicked = self.panicked.wrapping_add(r(&shard.panicked));
        self.cancelled = self.cancelled.wrapping_add(r(&shard.cancelled));
        self.polls = self.polls.wrapping_add(r(&shard.polls));
        self.poll_ns = self.poll_ns.wrapping_add(r(&shard.poll_ns));
        self.calls_ok = self.calls_ok.wrapping_add(r(&shard.calls_ok));
        self.calls_error = self.calls_error.wrapping_add(r(&shard.calls_error));
        self.call_ns = self.call_ns.wrapping_add(r(&shard.call_ns));
    }
}

/// Where a count goes: the thread's own shard, or a shared one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counts<'a> {
    /// Written by this thread only.
    Own(&'a Shard),
    /// Written by any thread.
    Shared(&'a Shard),
}

impl<'a> Counts<'a> {
    /// Adds `n` to the counter `field` picks.
    #[inline]
    pub(crate) fn add(self, field: impl FnOnce(&'a Shard) -> &'a AtomicU64, n: u64) {
        match self {
            Counts::Own(shard) => {
                let counter = field(shard);
                // The only writer: a load and a store, no locked instruction.
                counter.store(
                    counter.load(Ordering::Relaxed).wrapping_add(n),
                    Ordering::Relaxed,
                );
            }
            Counts::Shared(shard) => {
                field(shard).fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The shards of [`CHUNK`] names, on cache lines of their own (one thread
/// writes them).
#[derive(Debug)]
#[repr(align(128))]
struct Chunk([Shard; CHUNK]);

/// One thread's shards, by name index.
#[derive(Debug)]
pub(crate) struct Table {
    chunks: [AtomicPtr<Chunk>; CHUNKS],
}

impl Table {
    pub(crate) const fn new() -> Self {
        Table {
            chunks: [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS],
        }
    }

    /// The shard of name `index`, for the thread that owns the table (the
    /// only one that may call this).
    #[inline]
    pub(crate) fn own(&self, index: usize) -> Option<&Shard> {
        let slot = self.chunks.get(index / CHUNK)?;
        let mut chunk = slot.load(Ordering::Acquire);
        if chunk.is_null() {
            chunk = Self::grow(slot);
        }
        // SAFETY: non-null chunks are leaked boxes, never freed.
        Some(&unsafe { &*chunk }.0[index % CHUNK])
    }

    #[cold]
    fn grow(slot: &AtomicPtr<Chunk>) -> *mut Chunk {
        let chunk: &'static mut Chunk =
            Box::leak(Box::new(Chunk(std::array::from_fn(|_| Shard::default()))));
        let chunk = std::ptr::from_mut(chunk);
        slot.store(chunk, Ordering::Release);
        chunk
    }

    /// Calls `visit` with each shard of the table and its name index.
    pub(crate) fn for_each(&self, mut visit: impl FnMut(usize, &Shard)) {
        for (c, slot) in self.chunks.iter().enumerate() {
            let chunk = slot.load(Ordering::Acquire);
            // SAFETY: as in `own`.
            if let Some(chunk) = unsafe { chunk.as_ref() } {
                for (i, shard) in chunk.0.iter().enumerate() {
                    visit(c * CHUNK + i, shard);
                }
            }
        }
    }

    /// Bytes the table holds beyond its own size (its chunks).
    #[cfg(test)]
    pub(crate) fn chunk_bytes(&self) -> usize {
        let chunks = self
            .chunks
            .iter()
            .filter(|c| !c.load(Ordering::Relaxed).is_null())
            .count();
        chunks * std::mem::size_of::<Chunk>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_gives_each_index_its_own_shard_and_visits_what_was_counted() {
        let table = Table::new();
        let a = table.own(3).unwrap();
        let b = table.own(CHUNK * 5 + 1).unwrap();
        assert!(!std::ptr::eq(a, b));
        assert!(std::ptr::eq(a, table.own(3).unwrap()));
        Counts::Own(a).add(|s| &s.polls, 2);
        Counts::Own(b).add(|s| &s.polls, 5);
        Counts::Shared(b).add(|s| &s.polls, 1);
        let mut seen = Vec::new();
        table.for_each(|i, s| {
            let n = s.polls.load(Ordering::Relaxed);
            if n > 0 {
                seen.push((i, n));
            }
        });
        assert_eq!(seen, vec![(3, 2), (CHUNK * 5 + 1, 6)]);
        assert_eq!(table.chunk_bytes(), 2 * std::mem::size_of::<Chunk>());
        assert!(table.own(CHUNKS * CHUNK).is_none());
    }
}
