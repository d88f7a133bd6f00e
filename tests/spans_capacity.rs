//! Span descriptions are bounded: past the arena's capacity a span is shown
//! as undescribed, nothing fails, and closed spans' slots are used again.
//! A process of its own: it takes every description slot for a moment.
#![cfg(all(target_os = "linux", feature = "spans"))]

mod common;

use std::time::Duration;

use common::{multi_thread, serial, start, wait_until, Reports};
use loopwatch::WatchExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// `MAX_DESCRIBED` in `src/spans/arena.rs`.
const CAPACITY: usize = 32_768;

#[inline(never)]
fn stuck(d: Duration) {
    std::thread::sleep(d);
    std::hint::black_box(());
}

/// The first report of the stall in task `task`.
fn first_of(reports: &Reports, task: &str) -> loopwatch::StallReport {
    let find = || {
        reports
            .first_reports()
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.task.as_deref() == Some(task))
    };
    assert!(
        wait_until(Duration::from_secs(5), || find().is_some()),
        "{task} reported"
    );
    find().unwrap()
}

#[test]
fn spans_past_the_capacity_are_undescribed_and_slots_come_back() {
    let _serial = serial();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(loopwatch::spans::layer()),
    )
    .unwrap();
    let (watchdog, reports) = start(Duration::from_millis(500), Duration::from_millis(20));
    let rt = multi_thread(2);
    watchdog.watch_runtime("cap", rt.handle()).unwrap();
    // Every slot taken by open spans, then one more.
    let open: Vec<tracing::Span> = (0..CAPACITY)
        .map(|i| tracing::info_span!("open", i))
        .collect();
    let task = rt.spawn(
        async {
            let _beyond = tracing::info_span!("beyond").entered();
            stuck(Duration::from_millis(1200));
        }
        .watched("cap"),
    );
    let report = first_of(&reports, "cap");
    assert_eq!(report.spans.len(), 1, "{report}");
    assert!(
        report.spans[0].contains("without description"),
        "{:?}",
        report.spans
    );
    rt.block_on(task).unwrap();
    // Closed spans give their slots back: a new span is described again.
    drop(open);
    let task = rt.spawn(
        async {
            let _again = tracing::info_span!("again", n = 2u64).entered();
            stuck(Duration::from_millis(1200));
        }
        .watched("cap2"),
    );
    let report = first_of(&reports, "cap2");
    assert_eq!(report.spans, ["again{n=2}"], "{report}");
    rt.block_on(task).unwrap();
}
