//! The last reported stalls, ongoing or ended, for an operator who arrives
//! after the fact ([`Health::recent_stalls`](crate::Health::recent_stalls)).

use std::collections::VecDeque;
use std::time::Duration;

use crate::model::health::RecentStall;
use crate::watchdog::stall::StallKey;
use crate::StallReport;

/// A ring of the last `capacity` reported stalls, oldest first.
#[derive(Debug)]
pub(crate) struct RecentStalls {
    capacity: usize,
    ring: VecDeque<(StallKey, RecentStall)>,
}

impl RecentStalls {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentStalls {
            capacity,
            ring: VecDeque::with_capacity(capacity.min(64)),
        }
    }

    /// Keeps a report: a new stall's, or the latest of one already kept.
    pub(crate) fn record(&mut self, key: StallKey, report: &StallReport) {
        let recent = RecentStall::of_report(report);
        match self.ring.iter_mut().find(|(k, _)| *k == key) {
            Some((_, entry)) => *entry = recent,
            None => {
                self.ring.push_back((key, recent));
                while self.ring.len() > self.capacity {
                    self.ring.pop_front();
                }
            }
        }
    }

    /// A kept stall ended after `duration`.
    pub(crate) fn ended(&mut self, key: StallKey, duration: Duration) {
        if let Some((_, entry)) = self.ring.iter_mut().find(|(k, _)| *k == key) {
            entry.ended = true;
            entry.stalled_for_seconds = duration.as_secs_f64();
        }
    }

    /// The kept stalls, newest first.
    pub(crate) fn newest_first(&self) -> Vec<RecentStall> {
        self.ring.iter().rev().map(|(_, r)| r.clone()).collect()
    }
}
