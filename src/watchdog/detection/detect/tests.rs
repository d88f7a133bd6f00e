//! The stall decision over plain inputs ([`judge`]): what tokio published
//! of each worker, the poll slots of the runtime's threads, and the age of
//! a stamp. No runtime, thread or clock; each row says what it proves.

use std::sync::Arc;

use super::*;
use crate::board::slot::{ThreadInfo, PARK_PARKED};

const STALL: u64 = 1_000;
const NOW: u64 = 10_000;

fn age(x: u64) -> u64 {
    NOW.saturating_sub(x)
}

/// A worker not parked whose metrics stood still since `changed_at`, and
/// changed after the look at `after`.
fn running(changed_at: u64, after: u64) -> Option<WorkerLook> {
    Some(WorkerLook {
        running: true,
        changed_at,
        changed_after: after,
    })
}

fn parked() -> Option<WorkerLook> {
    Some(WorkerLook {
        running: false,
        changed_at: 0,
        changed_after: 0,
    })
}

/// A thread's poll slot: in a poll since `poll_start` (0: none), its last
/// poll ended at `completed`.
fn slot(id: usize, poll_start: u64, completed: u64) -> SlotView {
    SlotView {
        id,
        poll_start,
        last_completed: completed,
        task: Some("job"),
        park: PARK_UNKNOWN,
        park_since: 0,
        is_worker: true,
        info: ThreadInfo {
            runtime: None,
            name: Some(Arc::from(format!("worker-{id}"))),
            os_tid: id as i64 + 100,
        },
    }
}

/// The same with the runtime hooks: active (not parked) or parked since
/// `since`.
fn hooked(id: usize, active: bool, since: u64) -> SlotView {
    SlotView {
        park: if active { PARK_ACTIVE } else { PARK_PARKED },
        park_since: since,
        ..slot(id, 0, 0)
    }
}

struct Row {
    what: &'static str,
    looks: Vec<Option<WorkerLook>>,
    slots: Vec<SlotView>,
    current_thread: bool,
    /// (slot id, worker) of each instrumented stall.
    instrumented: Vec<(usize, usize)>,
    /// How many workers stall with no instrumented poll to show.
    anonymous: usize,
    /// The slot ids that name them, when they do.
    named: Option<Vec<usize>>,
}

#[test]
fn which_workers_are_stalled() {
    let rows = vec![
        Row {
            what: "an instrumented poll on a worker frozen since before it began",
            looks: vec![running(8_000, 7_900), parked()],
            slots: vec![slot(1, 8_500, 0)],
            current_thread: false,
            instrumented: vec![(1, 0)],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "a long poll whose worker moved after it began gave its worker away",
            looks: vec![running(8_650, 8_600)],
            slots: vec![slot(1, 8_500, 0)],
            current_thread: false,
            instrumented: vec![],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "a poll shorter than the threshold is no stall",
            looks: vec![running(8_000, 7_900)],
            slots: vec![slot(1, 9_500, 0)],
            current_thread: false,
            instrumented: vec![],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "a current-thread runtime's stuck poll is its one worker's",
            looks: vec![None],
            slots: vec![slot(1, 8_000, 0)],
            current_thread: true,
            instrumented: vec![(1, 0)],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "two stuck polls take the latest workers that stood still before each",
            looks: vec![running(7_100, 7_000), running(8_100, 8_000)],
            slots: vec![slot(1, 9_000, 0), slot(2, 8_200, 0)],
            current_thread: false,
            instrumented: vec![(2, 1), (1, 0)],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "a frozen worker with no instrumented poll is a stall nothing names",
            looks: vec![running(8_000, 7_900)],
            slots: vec![],
            current_thread: false,
            instrumented: vec![],
            anonymous: 1,
            named: None,
        },
        Row {
            what: "a parked worker is never stalled",
            looks: vec![parked()],
            slots: vec![],
            current_thread: false,
            instrumented: vec![],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "a worker frozen for less than the threshold is no stall",
            looks: vec![running(9_500, 9_400)],
            slots: vec![],
            current_thread: false,
            instrumented: vec![],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "a thread seen completing polls explains one frozen worker away",
            looks: vec![running(8_000, 7_900), running(8_000, 7_900)],
            slots: vec![slot(1, 0, 9_900)],
            current_thread: false,
            instrumented: vec![],
            anonymous: 1,
            named: None,
        },
        Row {
            what: "with hooks on every worker, the one thread active all along names the stall",
            looks: vec![running(8_000, 7_900), parked()],
            slots: vec![hooked(1, true, 8_000), hooked(2, false, 9_900)],
            current_thread: false,
            instrumented: vec![],
            anonymous: 1,
            named: Some(vec![1]),
        },
        Row {
            what: "with hooks on every worker, no thread active all along: no stall",
            looks: vec![running(8_000, 7_900), parked()],
            slots: vec![hooked(1, true, 9_800), hooked(2, false, 9_900)],
            current_thread: false,
            instrumented: vec![],
            anonymous: 0,
            named: Some(vec![]),
        },
        Row {
            what: "hooks on some workers only do not bound the count",
            looks: vec![running(8_000, 7_900), running(8_000, 7_900)],
            slots: vec![hooked(1, true, 9_800)],
            current_thread: false,
            instrumented: vec![],
            anonymous: 2,
            named: None,
        },
    ];
    for row in rows {
        let mine: Vec<&SlotView> = row.slots.iter().collect();
        let judged = judge(&row.looks, &mine, row.current_thread, STALL, &age);
        let instrumented: Vec<(usize, usize)> = judged
            .instrumented
            .iter()
            .map(|(s, w)| (s.id, *w))
            .collect();
        assert_eq!(instrumented, row.instrumented, "{}", row.what);
        assert_eq!(judged.anonymous, row.anonymous, "{}", row.what);
        let named = judged
            .named
            .as_ref()
            .map(|n| n.iter().map(|s| s.id).collect::<Vec<_>>());
        assert_eq!(named, row.named, "{}", row.what);
        assert!(
            judged.frozen.len() >= judged.anonymous,
            "{}: every anonymous stall is a frozen worker",
            row.what
        );
    }
}

#[test]
fn a_pause_of_the_whole_process_is_no_stall() {
    let looks = vec![running(8_000, 7_900)];
    let slots = [slot(1, 8_500, 0)];
    let mine: Vec<&SlotView> = slots.iter().collect();
    // The process was paused for 1.5 of the last 2 units: every age shrinks.
    let paused = |x: u64| age(x).saturating_sub(1_500);
    let judged = judge(&looks, &mine, false, STALL, &paused);
    assert!(judged.instrumented.is_empty());
    assert_eq!(judged.anonymous, 0);
    // Unpaused, the same look is a stall.
    let judged = judge(&looks, &mine, false, STALL, &age);
    assert_eq!(judged.instrumented.len(), 1);
}
