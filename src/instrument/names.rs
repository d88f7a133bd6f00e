//! Names of instrumented work, interned once, each with its counters.
//!
//! A name is a `&'static str` given by the caller, or the `file:line` of a
//! spawn. Each distinct name gets one [`NameEntry`], leaked and never freed,
//! holding the task and call counters of that name as relaxed atomics. The
//! number of distinct names is capped ([`MAX_NAMES`](crate::MAX_NAMES));
//! names past the cap share the entry `other`, so that metric labels stay
//! bounded.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;

use parking_lot::RwLock;

/// Largest number of distinct task and call names; more are counted as `other`.
pub const MAX_NAMES: usize = 1000;

/// The name that names past [`MAX_NAMES`] share.
pub const OTHER: &str = "other";

/// Number of poll and call duration buckets: bucket `i` holds durations
/// below `2^i` "microseconds" of 1,024 ns (the last one everything longer).
pub(crate) const BUCKETS: usize = 24;

/// A duration histogram aggregated as it is recorded: power-of-two buckets
/// and the exact sum. Its size never depends on how many durations it holds.
#[derive(Debug)]
pub(crate) struct Buckets {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// What a [`Buckets`] holds at one instant (read by the exporter).
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketCounts {
    /// Durations per bucket.
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

impl Buckets {
    #[inline]
    pub(crate) fn record(&self, nanos: u64) {
        let micros = nanos >> 10; // ~microseconds, cheaply
        let index = (u64::BITS - micros.leading_zeros()) as usize;
        self.counts[index.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(nanos, Relaxed);
    }

    /// Counts per bucket and the sum so far.
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn read(&self) -> BucketCounts {
        BucketCounts {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }

    /// The upper bound (exclusive, seconds) of bucket `i`; the last bucket has none.
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    pub(crate) fn upper_bound_seconds(i: usize) -> Option<f64> {
        (i < BUCKETS - 1).then(|| (1u64 << i) as f64 * 1.024e-6)
    }
}

/// Outcomes and polls of the tasks spawned under one name.
#[derive(Debug, Default)]
pub(crate) struct TaskStats {
    pub(crate) spawned: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) slow_polls: AtomicU64,
    pub(crate) polls: Buckets,
}

/// Instrumented calls under one name.
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) ok: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) blocking: AtomicU64,
    pub(crate) slow: AtomicU64,
    pub(crate) durations: Buckets,
}

/// A name given to instrumented work, with its counters.
#[derive(Debug)]
pub(crate) struct NameEntry {
    pub(crate) name: &'static str,
    pub(crate) tasks: TaskStats,
    pub(crate) calls: CallStats,
}

impl NameEntry {
    /// An entry outside the registry (not exported), for loopwatch's own work.
    pub(crate) fn unlisted(name: &'static str) -> &'static NameEntry {
        NameEntry::new(name)
    }

    fn new(name: &'static str) -> &'static NameEntry {
        Box::leak(Box::new(NameEntry {
            name,
            tasks: TaskStats::default(),
            calls: CallStats::default(),
        }))
    }
}

struct Registry {
    by_name: HashMap<&'static str, &'static NameEntry>,
    /// In order of creation, for the watchdog to read.
    all: Vec<&'static NameEntry>,
    other: &'static NameEntry,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
    let other = NameEntry::new(OTHER);
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
    let entry = NameEntry::new(name);
    registry.by_name.insert(name, entry);
    registry.all.push(entry);
    entry
}

/// Every name so far (with `other`).
pub(crate) fn all() -> Vec<&'static NameEntry> {
    REGISTRY.read().all.clone()
}

thread_local! {
    /// Last names seen on this thread by `intern_cached`.
    static NAME_CACHE: Cell<[(usize, usize, Option<&'static NameEntry>); 16]> =
        const { Cell::new([(0, 0, None); 16]) };
    /// Last spawn locations seen on this thread, so that the shared map is
    /// read only on a miss.
    static LOCATION_CACHE: Cell<[(usize, Option<&'static NameEntry>); 16]> =
        const { Cell::new([(0, None); 16]) };
}

/// [`intern`], with a small per-thread cache in front, for names looked up
/// at every call (`blocking("name", ..)`).
pub(crate) fn intern_cached(name: &'static str) -> &'static NameEntry {
    let (ptr, len) = (name.as_ptr() as usize, name.len());
    let index = (ptr >> 3) % 16;
    let mut cache = NAME_CACHE.with(Cell::get);
    if let (p, l, Some(entry)) = cache[index] {
        if p == ptr && l == len {
            return entry;
        }
    }
    let entry = intern(name);
    cache[index] = (ptr, len, Some(entry));
    let _ = NAME_CACHE.try_with(|c| c.set(cache));
    entry
}

static LOCATIONS: LazyLock<RwLock<HashMap<usize, &'static NameEntry>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// The entry named `file:line` of a code location, interned once per location.
pub(crate) fn of_location(at: &'static Location<'static>) -> &'static NameEntry {
    let key = std::ptr::from_ref(at) as usize;
    let index = (key >> 4) % 16;
    let mut cache = LOCATION_CACHE.with(Cell::get);
    if let (k, Some(entry)) = cache[index] {
        if k == key {
            return entry;
        }
    }
    let known = LOCATIONS.read().get(&key).copied();
    let entry = known.unwrap_or_else(|| {
        *LOCATIONS.write().entry(key).or_insert_with(|| {
            let name: &'static str =
                Box::leak(format!("{}:{}", at.file(), at.line()).into_boxed_str());
            intern(name)
        })
    });
    cache[index] = (key, Some(entry));
    let _ = LOCATION_CACHE.try_with(|c| c.set(cache));
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds_with_an_exact_sum() {
        let b = Buckets::default();
        b.record(0);
        b.record(500); // < 1 us
        b.record(1_500); // 1-2 us
        b.record(3_000_000_000); // 3 s
        let c = b.read();
        assert_eq!(c.counts[0], 2);
        assert_eq!(c.counts[1], 1);
        assert_eq!(c.count(), 4);
        assert_eq!(c.sum_ns, 3_000_002_000);
        let top = c.counts.iter().rposition(|&n| n > 0).unwrap();
        let upper = Buckets::upper_bound_seconds(top).unwrap();
        let lower = Buckets::upper_bound_seconds(top - 1).unwrap();
        assert!(lower <= 3.0 && 3.0 < upper, "3 s in [{lower}, {upper})");
        assert_eq!(Buckets::upper_bound_seconds(BUCKETS - 1), None);
    }

    #[test]
    fn the_same_name_is_one_entry() {
        let a = intern("names-test-a");
        let b = intern("names-test-a");
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.name, "names-test-a");
    }
}
