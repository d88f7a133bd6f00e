//! Stall detection on real runtimes with real blocking.

mod common;

use std::time::{Duration, Instant};

use common::{
    current_thread, multi_thread, run_slow_polls, serial, spawn_block, spin, start, wait_until,
};
use loopwatch::{Status, WatchExt as _};

const STALL: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_millis(50);
/// Scheduling noise allowed on a loaded 2-core machine, on top of
/// `stall_threshold + check_interval`.
const NOISE: Duration = Duration::from_millis(750);

/// Asserts a first report came within `STALL + CHECK + NOISE` of `began` and not
/// before `STALL - CHECK`.
fn assert_latency(began: Instant, reported: Instant) {
    let latency = reported.saturating_duration_since(began);
    assert!(
        latency >= STALL - CHECK && latency <= STALL + CHECK + NOISE,
        "stall reported {latency:?} after it began; expected between {:?} and {:?}",
        STALL - CHECK,
        STALL + CHECK + NOISE
    );
}

#[test]
fn multi_thread_uninstrumented_sleep_is_flagged_while_it_lasts() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("mt", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (task, began) = spawn_block(&rt, Duration::from_millis(2500), None);
    let (at, report) = reports
        .wait_first("mt", Duration::from_secs(5))
        .expect("a stall is reported while the worker sleeps");
    assert_latency(began, at);
    assert!(report.worker.is_some_and(|w| w < 2), "{report:?}");
    assert_eq!(report.task, None, "the task is not instrumented");
    let health = watchdog.health();
    assert_eq!(health.status, Status::Stalled, "{health:?}");
    assert_eq!(health.runtimes[0].stalled_workers.len(), 1, "{health:?}");
    assert!(!task.is_finished(), "reported while still stuck");

    rt.block_on(task).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || watchdog.health().status
            != Status::Stalled),
        "health leaves 'stalled' when the stall ends"
    );
    let health = watchdog.health();
    let last = health.runtimes[0]
        .last_stall_seconds
        .expect("stall length recorded");
    assert!(
        (2.0..=3.5).contains(&last),
        "stall of 2.5 s measured as {last} s"
    );
    assert_eq!(health.runtimes[0].stalls_total, 1);
    assert_eq!(
        reports.first_reports().len(),
        1,
        "one stall, one first report"
    );
}

#[test]
fn multi_thread_spin_loop_is_flagged() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("spin", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (tx, rx) = std::sync::mpsc::channel();
    let task = rt.spawn(async move {
        tx.send(Instant::now()).unwrap();
        spin(Duration::from_millis(2000));
    });
    let began = rx.recv().unwrap();
    let (at, report) = reports
        .wait_first("spin", Duration::from_secs(5))
        .expect("a spinning worker is reported");
    assert_latency(began, at);
    assert_eq!(report.runtime, "spin");
    rt.block_on(task).unwrap();
}

#[test]
fn instrumented_stall_names_the_task_and_thread() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ingest-worker")
        .build()
        .unwrap();
    watchdog.watch_runtime("named", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (task, began) = spawn_block(&rt, Duration::from_millis(2000), Some("ingest"));
    let (at, report) = reports
        .wait_first("named", Duration::from_secs(5))
        .expect("reported");
    assert_latency(began, at);
    assert_eq!(report.task.as_deref(), Some("ingest"));
    assert_eq!(report.thread.as_deref(), Some("ingest-worker"));
    assert!(report.to_string().contains("in task 'ingest'"), "{report}");
    let health = watchdog.health();
    assert_eq!(
        health.runtimes[0].stalled_workers[0].task.as_deref(),
        Some("ingest")
    );
    assert!(health.issues[0].contains("'ingest'"), "{:?}", health.issues);
    rt.block_on(task).unwrap();
    assert_eq!(
        reports.first_reports().len(),
        1,
        "one stall reported once, not twice"
    );
}

#[test]
fn current_thread_block_is_flagged() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = current_thread();
    watchdog.watch_runtime("ct", rt.handle()).unwrap();
    let began = rt.block_on(async {
        // Let the runtime run its heartbeat once, as any application does.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            tx.send(Instant::now()).unwrap();
            std::thread::sleep(Duration::from_millis(2000));
        });
        let began = rx.await.unwrap();
        task.await.unwrap();
        began
    });
    let (at, report) = reports
        .wait_first("ct", Duration::from_millis(100))
        .expect("the current-thread stall was reported while it lasted");
    assert_latency(began, at);
    assert_eq!(report.worker, Some(0));
}

#[test]
fn current_thread_block_in_the_main_future_is_flagged() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = current_thread();
    let began = rt.block_on(async {
        // As in `#[tokio::main(flavor = "current_thread")]`: watched from inside,
        // then blocked at once, before the heartbeat ever ran.
        watchdog
            .watch_runtime("ct-main", &tokio::runtime::Handle::current())
            .unwrap();
        let began = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        began
    });
    let (at, _) = reports
        .wait_first("ct-main", Duration::from_millis(100))
        .expect("reported");
    assert_latency(began, at);
}

#[test]
fn only_the_blocked_runtime_is_reported() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let blocked = multi_thread(2);
    let healthy = multi_thread(2);
    watchdog.watch_runtime("blocked", blocked.handle()).unwrap();
    watchdog.watch_runtime("healthy", healthy.handle()).unwrap();
    // Keep the healthy runtime busy with short work meanwhile.
    let busy = healthy.spawn(async {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let task = blocked.spawn(async { std::thread::sleep(Duration::from_millis(2000)) });
    assert!(reports
        .wait_first("blocked", Duration::from_secs(4))
        .is_some());
    blocked.block_on(task).unwrap();
    healthy.block_on(busy).unwrap();
    std::thread::sleep(CHECK * 2);
    let runtimes: Vec<String> = reports.all().into_iter().map(|(_, r)| r.runtime).collect();
    assert!(runtimes.iter().all(|r| r == "blocked"), "{runtimes:?}");
    let health = watchdog.health();
    let healthy_rt = health
        .runtimes
        .iter()
        .find(|r| r.name == "healthy")
        .unwrap();
    assert_eq!(healthy_rt.stalls_total, 0);
}

#[test]
fn every_blocked_worker_is_reported() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("both", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            rt.spawn(async move {
                barrier.wait();
                std::thread::sleep(Duration::from_millis(2000));
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(4), || reports
        .first_reports()
        .len()
        >= 2));
    let mut workers: Vec<_> = reports
        .first_reports()
        .iter()
        .map(|(_, r)| r.worker)
        .collect();
    workers.sort();
    assert_eq!(workers, vec![Some(0), Some(1)]);
    assert_eq!(watchdog.health().runtimes[0].stalled_workers.len(), 2);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
}

#[test]
fn long_stall_escalates_at_twice_and_four_times_the_threshold() {
    let _serial = serial();
    let (watchdog, reports) = start(Duration::from_millis(500), Duration::from_millis(25));
    let rt = multi_thread(1);
    watchdog.watch_runtime("long", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let task = rt.spawn(async { std::thread::sleep(Duration::from_millis(2600)) });
    rt.block_on(task).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let got: Vec<(u32, Duration)> = reports
        .all()
        .into_iter()
        .map(|(_, r)| (r.escalation, r.stalled_for))
        .collect();
    let escalations: Vec<u32> = got.iter().map(|g| g.0).collect();
    assert_eq!(escalations, vec![0, 1, 2], "{got:?}");
    for (level, stalled_for) in &got {
        let expected = Duration::from_millis(500) * 2u32.pow(*level);
        assert!(
            *stalled_for >= expected && *stalled_for < expected + Duration::from_millis(600),
            "escalation {level} at {stalled_for:?}"
        );
    }
}

#[test]
fn uninstrumented_20ms_polls_are_never_a_stall() {
    let _serial = serial();
    let (watchdog, reports) = start(Duration::from_secs(2), CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("busy", rt.handle()).unwrap();
    // Eight tasks, each a chain of 20 ms blocking polls: workers never park for 4 s.
    run_slow_polls(&rt, 8, 100, Duration::from_millis(20), None);
    reports.assert_none();
    assert_eq!(watchdog.health().runtimes[0].stalls_total, 0);
}

#[test]
fn instrumented_300ms_polls_are_never_a_stall() {
    let _serial = serial();
    let (watchdog, reports) = start(Duration::from_secs(2), CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("slow", rt.handle()).unwrap();
    // 300 ms polls back to back: tokio publishes only every 61 polls (18 s),
    // but every poll completes.
    run_slow_polls(&rt, 4, 15, Duration::from_millis(300), Some("slow-polls"));
    reports.assert_none();
}

#[test]
fn spin_polls_on_a_current_thread_runtime_are_never_a_stall() {
    let _serial = serial();
    let (watchdog, reports) = start(Duration::from_secs(2), CHECK);
    let rt = current_thread();
    watchdog.watch_runtime("ct-busy", rt.handle()).unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(async {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(3) {
                        spin(Duration::from_millis(20));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    reports.assert_none();
}

#[test]
fn idle_runtimes_are_healthy() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let mt = multi_thread(2);
    watchdog.watch_runtime("idle-mt", mt.handle()).unwrap();
    let ct = current_thread();
    watchdog.watch_runtime("idle-ct", ct.handle()).unwrap();
    ct.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    // Nobody drives the current-thread runtime from here on.
    std::thread::sleep(STALL * 3);
    reports.assert_none();
    let health = watchdog.health();
    assert_eq!(health.status, Status::Healthy, "{health:?}");
    let mt_health = health
        .runtimes
        .iter()
        .find(|r| r.name == "idle-mt")
        .unwrap();
    assert!(mt_health.heartbeat_age_seconds < 0.5, "{mt_health:?}");
    assert_eq!(mt_health.flavor, "multi_thread");
    assert_eq!(mt_health.workers, 2);
}

#[test]
fn a_current_thread_runtime_never_driven_is_not_a_stall() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    // Watched, never driven: its heartbeat never runs and its metrics
    // never move, but no thread is inside its `block_on`.
    let ct = current_thread();
    watchdog.watch_runtime("never-driven", ct.handle()).unwrap();
    std::thread::sleep(STALL * 3);
    reports.assert_none();
    let health = watchdog.health();
    assert_eq!(health.status, Status::Healthy, "{health:?}");
    drop(ct);
}

#[test]
fn a_runtime_that_shuts_down_leaves_the_watch_list_without_a_stall() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("short-lived", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(watchdog.health().runtimes.len(), 1);
    let handle = rt.handle().clone();
    drop(rt);
    assert!(wait_until(Duration::from_secs(1), || watchdog
        .health()
        .runtimes
        .is_empty()));
    std::thread::sleep(STALL * 2);
    assert!(reports.all().is_empty(), "{:?}", reports.all());
    // The name is free again; a shut-down runtime is refused.
    let err = watchdog.watch_runtime("short-lived", &handle).unwrap_err();
    assert!(
        matches!(err, loopwatch::Error::RuntimeShutDown { .. }),
        "{err}"
    );
}

fn hooked_multi_thread(workers: usize, thread_name: &str) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(workers)
        .thread_name(thread_name)
        .enable_all();
    loopwatch::install_runtime_hooks(&mut builder);
    builder.build().unwrap()
}

#[test]
fn hooked_runtime_names_the_thread_of_an_uninstrumented_stall() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = hooked_multi_thread(2, "hooked-worker");
    watchdog.watch_runtime("hooked", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (task, began) = spawn_block(&rt, Duration::from_millis(2000), None);
    let (at, report) = reports
        .wait_first("hooked", Duration::from_secs(5))
        .expect("reported");
    assert_latency(began, at);
    assert_eq!(
        report.thread.as_deref(),
        Some("hooked-worker"),
        "{report:?}"
    );
    rt.block_on(task).unwrap();
    assert_eq!(reports.first_reports().len(), 1);
}

/// Three workers: one stuck in an uninstrumented poll, one completing slow
/// instrumented polls (its tokio metrics stand still too), one idle. Exactly
/// one stall.
fn mixed_workers_report_only_the_stuck_one(rt: tokio::runtime::Runtime, name: &str) {
    let (watchdog, reports) = start(Duration::from_millis(1500), CHECK);
    watchdog.watch_runtime(name, rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let slow = rt.spawn(
        async {
            for _ in 0..14 {
                std::thread::sleep(Duration::from_millis(300));
                tokio::task::yield_now().await;
            }
        }
        .watched("slow"),
    );
    std::thread::sleep(Duration::from_millis(100));
    let stuck = rt.spawn(async { std::thread::sleep(Duration::from_millis(3500)) });
    rt.block_on(stuck).unwrap();
    rt.block_on(slow).unwrap();
    let firsts = reports.first_reports();
    assert_eq!(firsts.len(), 1, "{firsts:?}");
    assert_eq!(
        firsts[0].1.task, None,
        "the slow instrumented task is not the stall"
    );
    drop(watchdog);
}

#[test]
fn mixed_workers_on_a_hooked_runtime_report_only_the_stuck_one() {
    let _serial = serial();
    mixed_workers_report_only_the_stuck_one(hooked_multi_thread(3, "mixed"), "mixed-hooked");
}

#[test]
fn mixed_workers_on_a_handle_only_runtime_report_only_the_stuck_one() {
    let _serial = serial();
    mixed_workers_report_only_the_stuck_one(multi_thread(3), "mixed-handle");
}

#[test]
fn block_in_place_is_not_a_stall_nor_a_slow_poll() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("bip", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The documented way to block: the worker hands its queue to another
    // thread, and the runtime goes on. Instrumented, so the slot sees a long poll.
    let task = rt.spawn(
        async {
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(2500)));
        }
        .watched("bip"),
    );
    let ticks = rt.spawn(async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let slow_before = watchdog.health().tasks.slow_polls;
    // Beside it, a poll that does hold its worker 300 ms: a slow poll.
    let held =
        rt.spawn(async { std::thread::sleep(Duration::from_millis(300)) }.watched("bip.held"));
    rt.block_on(task).unwrap();
    rt.block_on(ticks).unwrap();
    rt.block_on(held).unwrap();
    reports.assert_none();
    // The block_in_place poll held no worker: not a slow poll. The other is.
    std::thread::sleep(CHECK * 4);
    assert_eq!(watchdog.health().tasks.slow_polls - slow_before, 1);
}

#[test]
fn a_watched_future_on_a_spawn_blocking_thread_is_not_a_slow_poll() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("sb", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let ticks = rt.spawn(async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let slow_before = watchdog.health().tasks.slow_polls;
    // A `block_on` on a blocking-pool thread: its 500 ms poll holds no
    // worker, and the runtime's workers go on meanwhile.
    let handle = rt.handle().clone();
    rt.block_on(rt.spawn_blocking(move || {
        handle.block_on(
            async { std::thread::sleep(Duration::from_millis(500)) }.watched("sb.blocking"),
        )
    }))
    .unwrap();
    rt.block_on(ticks).unwrap();
    reports.assert_none();
    std::thread::sleep(CHECK * 4);
    assert_eq!(watchdog.health().tasks.slow_polls - slow_before, 0);
}

/// Under `--cfg tokio_unstable`, loopwatch's task poll hooks record every
/// task poll: an uninstrumented stall is named by its spawn location, and
/// uninstrumented slow polls are progress, exactly.
#[cfg(tokio_unstable)]
mod unstable {
    use super::*;

    #[test]
    fn unstable_hooks_name_an_uninstrumented_stall_by_spawn_location() {
        let _serial = serial();
        let (watchdog, reports) = start(STALL, CHECK);
        let rt = hooked_multi_thread(2, "unstable-worker");
        watchdog.watch_runtime("unstable", rt.handle()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let line = line!() + 1;
        let task = rt.spawn(async { std::thread::sleep(Duration::from_millis(2000)) });
        let (_, report) = reports
            .wait_first("unstable", Duration::from_secs(5))
            .expect("reported");
        let task_name = report.task.clone().unwrap_or_default();
        assert!(
            task_name.ends_with(&format!("detection.rs:{line}")),
            "{report:?}"
        );
        rt.block_on(task).unwrap();
    }

    #[test]
    fn unstable_hooks_make_uninstrumented_300ms_polls_progress() {
        let _serial = serial();
        let (watchdog, reports) = start(Duration::from_secs(2), CHECK);
        let rt = hooked_multi_thread(2, "unstable-slow");
        watchdog
            .watch_runtime("unstable-slow", rt.handle())
            .unwrap();
        run_slow_polls(&rt, 4, 15, Duration::from_millis(300), None);
        reports.assert_none();
    }
}

/// Instrumented stalls are matched to the worker they hold whatever the
/// phase of their start against the watchdog's checks and the coarse
/// clock's ticks: every one of many is reported, named.
#[test]
fn every_one_of_many_instrumented_stalls_is_reported() {
    let _serial = serial();
    let (watchdog, reports) = start(Duration::from_millis(200), Duration::from_millis(20));
    let rt = multi_thread(2);
    watchdog.watch_runtime("many", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    const STALLS: usize = 15;
    for i in 0..STALLS {
        // Start at a different phase of the check interval each time.
        std::thread::sleep(Duration::from_millis(60 + 7 * i as u64));
        rt.block_on(async {
            loopwatch::spawn_named("many.stall", async {
                std::thread::sleep(Duration::from_millis(450));
            })
            .await
        })
        .unwrap();
    }
    // A report goes out once its stack is symbolized, which in a debug
    // build on a loaded machine can outlast the stall: wait for them (the
    // count is what is tested, not how soon).
    let named = || {
        reports
            .first_reports()
            .iter()
            .filter(|(_, r)| r.runtime == "many" && r.task.as_deref() == Some("many.stall"))
            .count()
    };
    wait_until(Duration::from_secs(10), || named() >= STALLS);
    // None reported twice either.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(named(), STALLS, "{:#?}", reports.first_reports());
    watchdog.shutdown();
}
