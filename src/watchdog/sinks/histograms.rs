//! The per-runtime histograms (stall lengths, heartbeat lag), aggregated
//! where they are recorded: fixed buckets with an exact count and sum, never
//! one entry per observation, so that memory does not depend on how often
//! anyone scrapes. The watchdog thread records; the exporter reads.

use std::sync::Arc;

use parking_lot::Mutex;

/// Bucket bounds of `loopwatch_stall_duration_seconds`.
pub(crate) const STALL_BOUNDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Bucket bounds of `loopwatch_heartbeat_lag_seconds`.
pub(crate) const LAG_BOUNDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Runtime names kept; a runtime named after that many others shares the
/// series of [`OTHER`](crate::OTHER).
pub(crate) const MAX_RUNTIMES: usize = 256;

/// A histogram with fixed bounds: a count per bucket (the last one past
/// every bound), the exact sum and count.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fixed {
    pub(crate) bounds: &'static [f64],
    /// Not cumulative; `bounds.len() + 1` entries.
    pub(crate) counts: Vec<u64>,
    pub(crate) sum: f64,
    pub(crate) count: u64,
}

impl Fixed {
    fn new(bounds: &'static [f64]) -> Self {
        Fixed {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn record(&mut self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// One runtime's histograms.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeHistograms {
    pub(crate) runtime: Arc<str>,
    pub(crate) stalls: Fixed,
    pub(crate) lag: Fixed,
}

static RUNTIMES: Mutex<Vec<RuntimeHistograms>> = Mutex::new(Vec::new());

fn with_runtime(runtime: &str, f: impl FnOnce(&mut RuntimeHistograms)) {
    let mut all = RUNTIMES.lock();
    let i = match all.iter().position(|r| &*r.runtime == runtime) {
        Some(i) => i,
        None => {
            let name = if all.len() < MAX_RUNTIMES {
                runtime
            } else {
                crate::OTHER
            };
            match all.iter().position(|r| &*r.runtime == name) {
                Some(i) => i,
                None => {
                    all.push(RuntimeHistograms {
                        runtime: Arc::from(name),
                        stalls: Fixed::new(STALL_BOUNDS),
                        lag: Fixed::new(LAG_BOUNDS),
                    });
                    all.len() - 1
                }
            }
        }
    };
    f(&mut all[i]);
}

/// A stall of `runtime` ended after `seconds`.
pub(crate) fn stall_ended(runtime: &str, seconds: f64) {
    with_runtime(runtime, |r| r.stalls.record(seconds));
}

/// A heartbeat of `runtime` ran `seconds` late.
pub(crate) fn heartbeat_lag(runtime: &str, seconds: f64) {
    with_runtime(runtime, |r| r.lag.record(seconds));
}

/// Every runtime's histograms now, in the order the runtimes were first seen.
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
pub(crate) fn snapshot() -> Vec<RuntimeHistograms> {
    RUNTIMES.lock().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_values_up_to_their_bound_and_the_sum_is_exact() {
        let mut h = Fixed::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 7.0] {
            h.record(v);
        }
        assert_eq!(h.counts, vec![2, 2, 1]);
        assert_eq!(h.count, 5);
        assert_eq!(h.sum, 12.0);
    }
}
