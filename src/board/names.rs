//! Names of instrumented work, interned once, each with its counters.
//!
//! A name is a `&'static str` given by the caller, or the `file:line` of a
//! spawn. Each distinct name gets one [`NameEntry`], leaked and never freed,
//! with an index into every thread's counter shards
//! ([`crate::board::shard`]) and the counters of rare events (slow
//! polls, blocking and slow calls, call panics, long durations) as shared
//! relaxed atomics. The number of distinct names is capped
//! ([`MAX_NAMES`](crate::MAX_NAMES)); names past the cap share the entry
//! `other`, so that metric labels stay bounded.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;

use parking_lot::RwLock;

use crate::board::shard::{Shard, ShardSum};

/// Largest number of distinct task and call names; more are counted as `other`.
pub const MAX_NAMES: usize = 1000;

/// The name that names past [`MAX_NAMES`] share.
pub const OTHER: &str = "other";

/// Number of poll and call duration buckets: bucket `i` holds durations
/// below `2^i` "microseconds" of 1,024 ns (the last one everything longer).
pub(crate) const BUCKETS: usize = 24;

/// Durations this long or longer (2^26 ns, 67.1 ms) are counted one by one
/// in their bucket; shorter ones are known by their exact number and, for
/// their spread over the buckets, by a sample.
pub(crate) const LONG_NS: u64 = 1 << 26;

/// How a duration was measured, which says how it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timed {
    /// One of the sampled polls or calls, timed with the fine clock.
    Sampled,
    /// Any other.
    Unsampled,
}

/// A duration histogram whose size never depends on how many durations it
/// holds. Durations of [`LONG_NS`] or more are counted exactly in their
/// bucket (`long`); of shorter ones, only the sampled are bucketed
/// (`sampled`), and reading spreads the exact number of short ones (the
/// total count, kept in the counter shards, less the long ones) over the
/// short buckets in the proportions of the sample.
#[derive(Debug)]
pub(crate) struct Histogram {
    long: [AtomicU64; BUCKETS],
    sampled: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            long: std::array::from_fn(|_| AtomicU64::new(0)),
            sampled: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of a duration.
#[inline]
pub(crate) fn bucket_of(nanos: u64) -> usize {
    let micros = nanos >> 10; // ~microseconds, cheaply
    let index = (u64::BITS - micros.leading_zeros()) as usize;
    index.min(BUCKETS - 1)
}

/// The first bucket of long durations.
const FIRST_LONG: usize = 17;
const _: () = assert!(1u64 << (FIRST_LONG - 1) << 10 == LONG_NS);

/// What a histogram holds at one instant (read by the exporter).
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketCounts {
    /// Durations per bucket (short buckets estimated from the sample).
    pub(crate) counts: [u64; BUCKETS],
    /// Sum of every duration recorded (ns).
    pub(crate) sum_ns: u64,
}

impl Default for BucketCounts {
    fn default() -> Self {
        BucketCounts {
            counts: [0; BUCKETS],
            sum_ns: 0,
        }
    }
}

#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
impl BucketCounts {
    /// How many durations were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Histogram {
    /// Buckets a duration if it is long, or sampled; the caller counts it
    /// (and adds it to the sum) in its shard.
    #[inline]
    pub(crate) fn record(&self, nanos: u64, timed: Timed) {
        if nanos >= LONG_NS {
            self.long_duration(nanos);
        } else if timed == Timed::Sampled {
            self.sampled_duration(nanos);
        }
    }

    #[cold]
    fn long_duration(&self, nanos: u64) {
        self.long[bucket_of(nanos)].fetch_add(1, Relaxed);
    }

    #[cold]
    fn sampled_duration(&self, nanos: u64) {
        self.sampled[bucket_of(nanos)].fetch_add(1, Relaxed);
    }

    /// The buckets of `count` durations summing to `sum_ns`, of which the
    /// long ones are counted here: each long bucket as counted, the rest
    /// spread over the short buckets as the sample is (cumulatively rounded
    /// down, so that the counts add up to `count` exactly). With no sample
    /// yet, the short ones are put in the last short bucket (below 67 ms,
    /// which they are).
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn read(&self, count: u64, sum_ns: u64) -> BucketCounts {
        let long: [u64; BUCKETS] = std::array::from_fn(|i| self.long[i].load(Relaxed));
        let sampled: [u64; BUCKETS] = std::array::from_fn(|i| self.sampled[i].load(Relaxed));
        let mut counts = [0; BUCKETS];
        counts[FIRST_LONG..].copy_from_slice(&long[FIRST_LONG..]);
        // The shards and the long buckets are read at slightly different
        // instants: never let the short ones go negative.
        let short = count.saturating_sub(long.iter().sum());
        let in_sample: u64 = sampled[..FIRST_LONG].iter().sum();
        if in_sample == 0 {
            counts[FIRST_LONG - 1] = short;
        } else {
            let mut seen = 0u64;
            let mut placed = 0u64;
            for i in 0..FIRST_LONG {
                seen += sampled[i];
                let upto = (u128::from(short) * u128::from(seen) / u128::from(in_sample)) as u64;
                counts[i] = upto - placed;
                placed = upto;
            }
        }
        BucketCounts { counts, sum_ns }
    }

    /// The upper bound (exclusive, seconds) of bucket `i`; the last bucket has none.
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn upper_bound_seconds(i: usize) -> Option<f64> {
        (i < BUCKETS - 1).then(|| (1u64 << i) as f64 * 1.024e-6)
    }
}

/// Rare events of the tasks spawned under one name (their common counts
/// are in the shards).
#[derive(Debug, Default)]
pub(crate) struct TaskStats {
    pub(crate) slow_polls: AtomicU64,
    pub(crate) polls: Histogram,
}

/// Rare events of instrumented calls under one name.
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) panics: AtomicU64,
    pub(crate) blocking: AtomicU64,
    pub(crate) slow: AtomicU64,
    pub(crate) durations: Histogram,
}

/// Index of names that have no shards (loopwatch's own work).
pub(crate) const NO_INDEX: usize = usize::MAX;

/// A name given to instrumented work, with its counters.
#[derive(Debug)]
pub(crate) struct NameEntry {
    pub(crate) name: &'static str,
    /// Its shard in every thread's table ([`NO_INDEX`] = none).
    pub(crate) index: usize,
    /// Counts made where no own shard could be had.
    pub(crate) spill: Shard,
    pub(crate) tasks: TaskStats,
    pub(crate) calls: CallStats,
}

/// Everything counted under one name, summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NameCounts {
    pub(crate) shards: ShardSum,
    pub(crate) slow_polls: u64,
    pub(crate) call_panics: u64,
    pub(crate) blocking: u64,
    pub(crate) slow_calls: u64,
}

impl NameEntry {
    /// An entry outside the registry (not exported), for loopwatch's own work.
    pub(crate) fn unlisted(name: &'static str) -> &'static NameEntry {
        NameEntry::new(name, NO_INDEX)
    }

    fn new(name: &'static str, index: usize) -> &'static NameEntry {
        Box::leak(Box::new(NameEntry {
            name,
            index,
            spill: Shard::default(),
            tasks: TaskStats::default(),
            calls: CallStats::default(),
        }))
    }

    /// The counts of this name, given its shards' sum.
    pub(crate) fn counts(&self, shards: ShardSum) -> NameCounts {
        let mut shards = shards;
        shards.add(&self.spill);
        NameCounts {
            shards,
            slow_polls: self.tasks.slow_polls.load(Relaxed),
            call_panics: self.calls.panics.load(Relaxed),
            blocking: self.calls.blocking.load(Relaxed),
            slow_calls: self.calls.slow.load(Relaxed),
        }
    }
}

impl NameCounts {
    /// The poll duration histogram.
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn poll_buckets(&self, entry: &NameEntry) -> BucketCounts {
        entry
            .tasks
            .polls
            .read(self.shards.polls, self.shards.poll_ns)
    }

    /// The call duration histogram.
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn call_buckets(&self, entry: &NameEntry) -> BucketCounts {
        entry
            .calls
            .durations
            .read(self.calls(), self.shards.call_ns)
    }

    /// Calls made (returned or panicked).
    pub(crate) fn calls(&self) -> u64 {
        self.shards.calls_ok + self.shards.calls_error + self.call_panics
    }
}

/// Every name with its counts now, summed over every thread's shards (the
/// watchdog and the exporter).
pub(crate) fn read_all() -> Vec<(&'static NameEntry, NameCounts)> {
    let entries = all();
    let mut sums = vec![ShardSum::default(); entries.len()];
    crate::board::slot::for_each_table(|table| {
        table.for_each(|index, shard| {
            if let Some(sum) = sums.get_mut(index) {
                sum.add(shard);
            }
        });
    });
    entries
        .into_iter()
        .zip(sums)
        .map(|(entry, sum)| (entry, entry.counts(sum)))
        .collect()
}
struct Registry {
    by_name: HashMap<&'static str, &'static NameEntry>,
    /// In order of creation, for the watchdog to read.
    all: Vec<&'static NameEntry>,
    other: &'static NameEntry,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
    let other = NameEntry::new(OTHER, 0);
    RwLock::new(Registry {
        by_name: HashMap::from([(OTHER, other)]),
        all: vec![other],
        other,
    })
});

/// Whether the cap has been reached (warned about once).
static OVERFLOWED: AtomicBool = AtomicBool::new(false);

/// Returns the entry for `name`, creating it on first use (or `other` past
/// the cap). Called when instrumented work is created, never per poll.
pub(crate) fn intern(name: &'static str) -> &'static NameEntry {
    {
        let registry = REGISTRY.read();
        if let Some(entry) = registry.by_name.get(name) {
            return entry;
        }
        // Past the cap, a new name costs no more than a known one: no
        // exclusive lock, nothing stored.
        if OVERFLOWED.load(Relaxed) {
            return registry.other;
        }
    }
    let mut registry = REGISTRY.write();
    if let Some(entry) = registry.by_name.get(name) {
        return entry;
    }
    if registry.by_name.len() > MAX_NAMES {
        if !OVERFLOWED.swap(true, Relaxed) {
            tracing::warn!(
                target: "loopwatch",
                name,
                "more than {MAX_NAMES} distinct task and call names; this one and later new ones are counted as '{OTHER}'. Give tasks and calls names from a fixed set"
            );
        }
        return registry.other;
    }
    let entry = NameEntry::new(name, registry.all.len());
    registry.by_name.insert(name, entry);
    registry.all.push(entry);
    entry
}

/// Every name so far (with `other`), in index order.
pub(crate) fn all() -> Vec<&'static NameEntry> {
    REGISTRY.read().all.clone()
}

type NameCacheEntry = Cell<(usize, usize, Option<&'static NameEntry>)>;
type LocationCacheEntry = Cell<(usize, Option<&'static NameEntry>)>;

thread_local! {
    /// Last names seen on this thread by `intern_cached`.
    static NAME_CACHE: [NameCacheEntry; 16] = const { [const { Cell::new((0, 0, None)) }; 16] };
    /// Last spawn locations seen on this thread, so that the shared map is
    /// read only on a miss.
    static LOCATION_CACHE: [LocationCacheEntry; 16] = const { [const { Cell::new((0, None)) }; 16] };
}

/// [`intern`], with a small per-thread cache in front, for names looked up
/// at every call (`blocking("name", ..)`).
#[inline]
pub(crate) fn intern_cached(name: &'static str) -> &'static NameEntry {
    let (ptr, len) = (name.as_ptr() as usize, name.len());
    let index = (ptr >> 3) % 16;
    let cached = NAME_CACHE
        .try_with(|c| c[index].get())
        .ok()
        .and_then(|(p, l, entry)| entry.filter(|_| p == ptr && l == len));
    cached.unwrap_or_else(|| {
        let entry = intern(name);
        let _ = NAME_CACHE.try_with(|c| c[index].set((ptr, len, Some(entry))));
        entry
    })
}

static LOCATIONS: LazyLock<RwLock<HashMap<usize, &'static NameEntry>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// The entry named `file:line` of a code location, interned once per location.
#[inline]
pub(crate) fn of_location(at: &'static Location<'static>) -> &'static NameEntry {
    let key = std::ptr::from_ref(at) as usize;
    let index = (key >> 4) % 16;
    let cached = LOCATION_CACHE
        .try_with(|c| c[index].get())
        .ok()
        .and_then(|(k, entry)| entry.filter(|_| k == key));
    cached.unwrap_or_else(|| {
        let entry = location_entry(at, key);
        let _ = LOCATION_CACHE.try_with(|c| c[index].set((key, Some(entry))));
        entry
    })
}

#[cold]
fn location_entry(at: &'static Location<'static>, key: usize) -> &'static NameEntry {
    let known = LOCATIONS.read().get(&key).copied();
    known.unwrap_or_else(|| {
        *LOCATIONS.write().entry(key).or_insert_with(|| {
            let name: &'static str =
                Box::leak(format!("{}:{}", at.file(), at.line()).into_boxed_str());
            intern(name)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(500), 0); // < 1 us
        assert_eq!(bucket_of(1_500), 1); // 1-2 us
        let top = bucket_of(3_000_000_000);
        let upper = Histogram::upper_bound_seconds(top).unwrap();
        let lower = Histogram::upper_bound_seconds(top - 1).unwrap();
        assert!(lower <= 3.0 && 3.0 < upper, "3 s in [{lower}, {upper})");
        assert_eq!(Histogram::upper_bound_seconds(BUCKETS - 1), None);
        assert_eq!(bucket_of(LONG_NS - 1), FIRST_LONG - 1);
        assert_eq!(bucket_of(LONG_NS), FIRST_LONG);
    }

    #[test]
    fn long_durations_are_exact_and_short_ones_spread_as_sampled() {
        let h = Histogram::default();
        // 1,000 short durations, of which 4 sampled: 3 under 1 us, 1 of 3 us.
        for _ in 0..3 {
            h.record(500, Timed::Sampled);
        }
        h.record(3_000, Timed::Sampled);
        h.record(2_000, Timed::Unsampled); // counted, not bucketed
                                           // Two long ones, sampled or not.
        h.record(100_000_000, Timed::Unsampled);
        h.record(3_000_000_000, Timed::Sampled);
        let c = h.read(1_002, 7);
        assert_eq!(c.count(), 1_002);
        assert_eq!(c.sum_ns, 7);
        assert_eq!(c.counts[0], 750);
        assert_eq!(c.counts[bucket_of(3_000)], 250);
        assert_eq!(c.counts[bucket_of(100_000_000)], 1);
        assert_eq!(c.counts[bucket_of(3_000_000_000)], 1);
    }

    #[test]
    fn without_a_sample_short_durations_are_put_below_the_long_ones() {
        let h = Histogram::default();
        h.record(200_000_000, Timed::Unsampled);
        let c = h.read(10, 0);
        assert_eq!(c.counts[FIRST_LONG - 1], 9);
        assert_eq!(c.count(), 10);
        // Shards read before a long duration landed: never negative.
        assert_eq!(Histogram::default().read(0, 0).count(), 0);
        let c = h.read(0, 0);
        assert_eq!(c.counts[FIRST_LONG - 1], 0);
    }

    #[test]
    fn the_same_name_is_one_entry() {
        let a = intern("names-test-a");
        let b = intern("names-test-a");
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.name, "names-test-a");
    }
}
