//! The watchdog thread: callbacks that panic, shutdown, drop.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{multi_thread, serial, wait_until};
use loopwatch::Watchdog;

/// Names of this process's threads (Linux), as the kernel keeps them (15 bytes).
#[cfg(target_os = "linux")]
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

#[cfg(target_os = "linux")]
fn watchdog_threads() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.as_str() == "loopwatch-watch")
        .count()
}

#[test]
fn a_panicking_callback_is_caught_counted_and_the_watchdog_goes_on() {
    let _serial = serial();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let watchdog = Watchdog::builder()
        .stall_threshold(Duration::from_millis(500))
        .check_interval(Duration::from_millis(25))
        .on_stall(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            panic!("callback bug");
        })
        .start()
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("p", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Two separate stalls: the second is reported although the callback
    // panicked for the first and for its escalation. Each lasts 2 s: the
    // escalation is due 1 s in, which leaves a loaded machine 1 s to make it.
    for _ in 0..2 {
        let t = rt.spawn(async { std::thread::sleep(Duration::from_millis(2000)) });
        rt.block_on(t).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watchdog.is_running());
    // The callback runs on its own thread: give it the time to catch up.
    wait_until(Duration::from_secs(2), || calls.load(Ordering::SeqCst) >= 4);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "first report and 2x escalation, twice"
    );
    assert_eq!(watchdog.callback_panics(), 4);
    assert_eq!(watchdog.health().runtimes[0].stalls_total, 2);
    watchdog.shutdown();
}

#[test]
fn a_slow_callback_never_blinds_the_watchdog_nor_holds_up_shutdown() {
    let _serial = serial();
    let in_callback = Arc::new(AtomicUsize::new(0));
    let entered = in_callback.clone();
    let watchdog = Watchdog::builder()
        .stall_threshold(Duration::from_millis(500))
        .check_interval(Duration::from_millis(25))
        .on_stall(move |report| {
            if report.runtime == "first" && report.escalation == 0 {
                entered.fetch_add(1, Ordering::SeqCst);
                // An email sent, a slow disk: far longer than a stall.
                std::thread::sleep(Duration::from_secs(6));
            }
        })
        .start()
        .unwrap();
    let first = multi_thread(2);
    let second = multi_thread(2);
    watchdog.watch_runtime("first", first.handle()).unwrap();
    watchdog.watch_runtime("second", second.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let a = first.spawn(async { std::thread::sleep(Duration::from_millis(1500)) });
    assert!(
        wait_until(Duration::from_secs(2), || in_callback
            .load(Ordering::SeqCst)
            == 1),
        "the first stall reached the callback"
    );
    // The callback is busy for seconds; a second runtime stalls meanwhile.
    let b = second.spawn(async { std::thread::sleep(Duration::from_millis(1500)) });
    let flagged = wait_until(Duration::from_millis(1200), || {
        let health = watchdog.health();
        health.status == loopwatch::Status::Stalled
            && health
                .runtimes
                .iter()
                .any(|r| r.name == "second" && r.stalled_workers.len() == 1)
    });
    assert!(
        flagged,
        "health missed the second stall: {:?}",
        watchdog.health()
    );
    first.block_on(a).unwrap();
    second.block_on(b).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let health = watchdog.health();
    let stalls = |name: &str| {
        health
            .runtimes
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.stalls_total)
    };
    assert_eq!(stalls("first"), Some(1), "{health:?}");
    assert_eq!(stalls("second"), Some(1), "{health:?}");
    // The callback still sleeps; shutdown does not wait for it.
    let began = Instant::now();
    watchdog.shutdown();
    let took = began.elapsed();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

#[test]
fn reports_a_stuck_callback_cannot_take_are_dropped_and_counted() {
    let _serial = serial();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let delivered = Arc::new(AtomicUsize::new(0));
    let count = delivered.clone();
    let watchdog = Watchdog::builder()
        .stall_threshold(Duration::from_millis(150))
        .blocking_threshold(Duration::from_millis(50))
        .check_interval(Duration::from_millis(10))
        .max_reports_per_minute(10_000)
        // The queue is under test, not stacks: without them a check takes
        // microseconds, so every 220 ms stall is flagged in its 70 ms window
        // even on a loaded machine (symbolizing eight stacks in a debug build
        // can take longer than that).
        .sample_stacks(false)
        .on_stall(move |_| {
            // The first report holds the callback until the test lets go.
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = release_rx.lock().unwrap().recv();
            }
        })
        .start()
        .unwrap();
    let workers = 8;
    let rt = multi_thread(workers);
    watchdog.watch_runtime("many", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Every round stalls all eight workers at once: eight reports.
    for _ in 0..12 {
        let barrier = Arc::new(std::sync::Barrier::new(workers));
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let b = barrier.clone();
                rt.spawn(loopwatch::WatchExt::watched(
                    async move {
                        b.wait();
                        std::thread::sleep(Duration::from_millis(220));
                    },
                    "many.stall",
                ))
            })
            .collect();
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    std::thread::sleep(Duration::from_millis(100));
    let stalls = watchdog.health().runtimes[0].stalls_total;
    assert!(
        stalls >= 90,
        "stalls flagged while the callback hung: {stalls}"
    );
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        1,
        "the callback is still in its first report"
    );
    let dropped = watchdog.callback_reports_dropped();
    release_tx.send(()).unwrap();
    // The queued reports (64) reach the callback; the rest were dropped.
    assert!(wait_until(Duration::from_secs(2), || {
        delivered.load(Ordering::SeqCst) == 65
    }));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(delivered.load(Ordering::SeqCst), 65);
    assert_eq!(watchdog.callback_reports_dropped(), dropped);
    assert!(
        dropped as usize + 65 >= stalls as usize,
        "every report was delivered or counted: {dropped} dropped, {stalls} stalls"
    );
    watchdog.shutdown();
}

#[test]
fn shutdown_ends_the_heartbeat_task_on_every_watched_runtime() {
    let _serial = serial();
    let rt = multi_thread(2);
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let alive = |rt: &tokio::runtime::Runtime| rt.metrics().num_alive_tasks();
    for _ in 0..100 {
        let watchdog = Watchdog::builder().start().unwrap();
        watchdog.watch_runtime("cycled", rt.handle()).unwrap();
        watchdog
            .watch_runtime("cycled.current", current.handle())
            .unwrap();
        watchdog.shutdown();
    }
    // Each ends at its next poll: the multi-thread runtime runs it at once,
    // the current-thread one when it is next driven.
    current.block_on(async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    });
    assert!(
        wait_until(Duration::from_secs(2), || alive(&rt) == 0
            && alive(&current) == 0),
        "heartbeat tasks left: {} and {}",
        alive(&rt),
        alive(&current)
    );
}

#[test]
fn shutdown_joins_the_thread_within_one_interval() {
    let _serial = serial();
    let interval = Duration::from_millis(200);
    let watchdog = Watchdog::builder()
        .check_interval(interval)
        .start()
        .unwrap();
    // The thread names itself once it runs.
    #[cfg(target_os = "linux")]
    assert!(
        wait_until(Duration::from_secs(1), || watchdog_threads() == 1),
        "{:?}",
        thread_names()
    );
    std::thread::sleep(Duration::from_millis(50));
    let began = Instant::now();
    watchdog.shutdown();
    let took = began.elapsed();
    assert!(took < interval, "shutdown took {took:?}");
    assert!(!watchdog.is_running());
    // Joined; the kernel may show an exited thread in /proc for a moment
    // after its join returns.
    #[cfg(target_os = "linux")]
    assert!(
        wait_until(Duration::from_secs(1), || watchdog_threads() == 0),
        "{:?}",
        thread_names()
    );
    watchdog.shutdown(); // idempotent
}

#[test]
fn dropping_the_last_handle_stops_the_thread() {
    let _serial = serial();
    let watchdog = Watchdog::builder().start().unwrap();
    let clone = watchdog.clone();
    drop(watchdog);
    #[cfg(target_os = "linux")]
    assert!(wait_until(Duration::from_secs(1), || watchdog_threads() == 1));
    let began = Instant::now();
    drop(clone);
    assert!(began.elapsed() < Duration::from_millis(100));
    // Joined; the kernel may show an exited thread in /proc for a moment
    // after its join returns.
    #[cfg(target_os = "linux")]
    assert!(
        wait_until(Duration::from_secs(1), || watchdog_threads() == 0),
        "{:?}",
        thread_names()
    );
}

#[test]
fn the_watchdog_never_runs_on_a_watched_runtime_and_sees_a_total_stall() {
    let _serial = serial();
    let watchdog = Watchdog::builder()
        .stall_threshold(Duration::from_millis(500))
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("all", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let b = barrier.clone();
            rt.spawn(async move {
                b.wait();
                std::thread::sleep(Duration::from_millis(1500));
            })
        })
        .collect();
    // Every worker is blocked; health still answers and says so.
    assert!(wait_until(Duration::from_secs(2), || {
        watchdog.health().runtimes[0].stalled_workers.len() == 2
    }));
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    watchdog.shutdown();
}
