//! Distinct names are capped; later new names are counted as `other`.
//! (Its own test binary: it fills the process-wide name registry.)

mod common;

use std::future::pending;
use std::time::Duration;

use common::{multi_thread, serial, wait_until};

#[test]
fn names_past_the_cap_are_counted_as_other() {
    let _serial = serial();
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(Duration::from_secs(2))
        .hung_task_threshold(Duration::from_millis(300))
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let rt = multi_thread(2);
    let _enter = rt.enter();
    // One task under a name within the cap, kept pending: hung under its name.
    let kept = loopwatch::spawn_named("cap.kept", pending::<()>());
    // Fill the registry with distinct names.
    let fill: Vec<_> = (0..loopwatch::MAX_NAMES)
        .map(|i| {
            let name: &'static str = Box::leak(format!("cap.fill-{i}").into_boxed_str());
            loopwatch::spawn_named(name, async {})
        })
        .collect();
    // A new name past the cap.
    let late = loopwatch::spawn_named("cap.late", pending::<()>());
    rt.block_on(async {
        for h in fill {
            h.await.unwrap();
        }
    });
    assert!(
        wait_until(Duration::from_secs(3), || watchdog.health().tasks.hung == 2),
        "{:?}",
        watchdog.health().hung_tasks
    );
    let mut hung: Vec<String> = watchdog
        .health()
        .hung_tasks
        .into_iter()
        .map(|h| h.task)
        .collect();
    hung.sort();
    assert_eq!(
        hung,
        vec!["cap.kept".to_owned(), loopwatch::OTHER.to_owned()]
    );
    kept.abort();
    late.abort();
    watchdog.shutdown();
}
