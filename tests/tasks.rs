//! Instrumented spawns: exact outcomes, slow polls, hung tasks, names.

mod common;

use std::future::pending;
use std::time::Duration;

use common::{multi_thread, serial, wait_until};
use loopwatch::{TaskCounts, Watchdog};

fn watchdog(hung: Duration) -> Watchdog {
    Watchdog::builder()
        .stall_threshold(Duration::from_secs(2))
        .blocking_threshold(Duration::from_millis(100))
        .hung_task_threshold(hung)
        .check_interval(Duration::from_millis(50))
        .start()
        .unwrap()
}

/// Task counts gained since `before` (the counters are process-wide).
fn delta(now: TaskCounts, before: TaskCounts) -> [i64; 7] {
    let d = |a: u64, b: u64| a as i64 - b as i64;
    [
        d(now.spawned, before.spawned),
        d(now.completed, before.completed),
        d(now.failed, before.failed),
        d(now.panicked, before.panicked),
        d(now.cancelled, before.cancelled),
        d(now.alive, before.alive),
        d(now.slow_polls, before.slow_polls),
    ]
}

#[test]
fn outcomes_partition_thousands_of_tasks_across_workers() {
    let _serial = serial();
    let watchdog = watchdog(Duration::from_secs(60));
    let rt = multi_thread(2);
    std::thread::sleep(Duration::from_millis(100));
    let before = watchdog.health().tasks;

    // The 200 panics are on purpose: keep them out of the test output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if info.payload().downcast_ref::<&str>() != Some(&"task bug") {
            eprintln!("{info}");
        }
    }));

    let mut ok = Vec::new();
    let mut fallible = Vec::new();
    let mut panics = Vec::new();
    let mut aborted = Vec::new();
    rt.block_on(async {
        for i in 0..1000u32 {
            ok.push(loopwatch::spawn_named("partition.ok", async move {
                tokio::task::yield_now().await;
                i
            }));
            fallible.push(loopwatch::spawn_fallible(
                "partition.fallible",
                async move {
                    tokio::task::yield_now().await;
                    if i % 2 == 0 {
                        Ok(i)
                    } else {
                        Err(format!("job {i} failed"))
                    }
                },
            ));
        }
        for _ in 0..200 {
            panics.push(loopwatch::spawn_named("partition.panic", async {
                tokio::task::yield_now().await;
                panic!("task bug");
            }));
        }
        for _ in 0..300 {
            aborted.push(loopwatch::spawn_named("partition.aborted", pending::<()>()));
        }
        // Detached: the JoinHandle is dropped, the task still runs to the end.
        for _ in 0..200 {
            drop(loopwatch::spawn_named("partition.detached", async {
                tokio::task::yield_now().await;
            }));
        }
    });

    // While the 300 pending tasks live, they are alive.
    assert!(wait_until(Duration::from_secs(3), || {
        delta(watchdog.health().tasks, before)[5] == 300
    }));
    for h in &aborted {
        h.abort();
    }
    rt.block_on(async {
        for (i, h) in ok.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), i as u32);
        }
        let errors = futures_count(fallible).await;
        assert_eq!(errors, 500);
        for h in panics {
            assert!(
                h.await.unwrap_err().is_panic(),
                "the panic reaches the JoinHandle"
            );
        }
        for h in aborted {
            assert!(h.await.unwrap_err().is_cancelled());
        }
    });
    assert!(
        wait_until(Duration::from_secs(3), || {
            delta(watchdog.health().tasks, before) == [2700, 1700, 500, 200, 300, 0, 0]
        }),
        "spawned, completed, failed, panicked, cancelled, alive, slow: {:?}",
        delta(watchdog.health().tasks, before)
    );
    let t = watchdog.health().tasks;
    assert_eq!(
        t.spawned,
        t.completed + t.failed + t.panicked + t.cancelled + t.alive
    );
    std::panic::set_hook(default_hook);
    watchdog.shutdown();
}

async fn futures_count(handles: Vec<tokio::task::JoinHandle<Result<u32, String>>>) -> usize {
    let mut errors = 0;
    for h in handles {
        if h.await.unwrap().is_err() {
            errors += 1;
        }
    }
    errors
}

#[test]
fn tasks_dropped_at_runtime_shutdown_are_cancelled() {
    let _serial = serial();
    let watchdog = watchdog(Duration::from_secs(60));
    let before = watchdog.health().tasks;
    let rt = multi_thread(2);
    rt.block_on(async {
        for _ in 0..50 {
            loopwatch::spawn_named("shutdown.pending", pending::<()>());
        }
    });
    drop(rt);
    assert!(wait_until(Duration::from_secs(2), || {
        let d = delta(watchdog.health().tasks, before);
        d[0] == 50 && d[4] == 50 && d[5] == 0
    }));
    watchdog.shutdown();
}

#[test]
fn polls_at_the_blocking_threshold_are_slow_polls() {
    let _serial = serial();
    let watchdog = watchdog(Duration::from_secs(60));
    let rt = multi_thread(2);
    let before = watchdog.health().tasks;
    rt.block_on(async {
        loopwatch::spawn_named("slow.polls", async {
            for i in 0..12 {
                if i % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(150)); // slow
                } else {
                    std::thread::sleep(Duration::from_millis(5)); // not slow
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    });
    assert!(
        wait_until(Duration::from_secs(1), || {
            delta(watchdog.health().tasks, before)[6] == 3
        }),
        "{:?}",
        delta(watchdog.health().tasks, before)
    );
    watchdog.shutdown();
}

#[test]
fn hung_tasks_are_found_named_by_their_spawn_site_and_cleared_when_they_end() {
    let _serial = serial();
    let watchdog = watchdog(Duration::from_millis(600));
    let rt = multi_thread(2);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let line = line!() + 2;
    let entered = rt.enter();
    let hung = loopwatch::spawn(async move {
        let _ = rx.await; // waits on a channel nobody sends on: hung
    });
    // A busy task that keeps being polled is not hung.
    let busy = loopwatch::spawn_named("hung.busy", async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    drop(entered);
    assert!(
        wait_until(Duration::from_secs(3), || watchdog.health().tasks.hung == 1),
        "{:?}",
        watchdog.health()
    );
    let health = watchdog.health();
    assert_eq!(health.status, loopwatch::Status::Degraded);
    assert_eq!(health.hung_tasks.len(), 1);
    let name = &health.hung_tasks[0].task;
    assert!(name.ends_with(&format!("tasks.rs:{line}")), "{name}");
    assert!(health.hung_tasks[0].idle_seconds >= 0.6);
    assert!(
        health.issues.iter().any(|i| i.contains("hung")),
        "{:?}",
        health.issues
    );

    drop(tx);
    rt.block_on(hung).unwrap();
    assert!(wait_until(Duration::from_secs(3), || watchdog
        .health()
        .tasks
        .hung
        == 0));
    rt.block_on(busy).unwrap();
    watchdog.shutdown();
}

#[test]
fn counts_are_kept_without_a_watchdog_and_shown_once_one_starts() {
    let _serial = serial();
    let rt = multi_thread(2);
    let before = {
        let w = watchdog(Duration::from_secs(60));
        let t = w.health().tasks;
        w.shutdown();
        t
    };
    // No watchdog runs now.
    rt.block_on(async {
        for _ in 0..10 {
            loopwatch::spawn_named("no_watchdog", async {})
                .await
                .unwrap();
        }
    });
    let w = watchdog(Duration::from_secs(60));
    assert_eq!(delta(w.health().tasks, before)[..2], [10, 10]);
    w.shutdown();
}
