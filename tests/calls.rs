//! Instrumented sync calls: blocking only on an async worker, slow, failed.

mod common;

use std::time::Duration;

use common::{
    call_counts as counts, call_watchdog as watchdog, current_thread, multi_thread, serial,
};
use loopwatch::Watchdog;

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn a_long_sync_call_inside_a_task_on_a_worker_is_blocking() {
    let _serial = serial();
    let w = watchdog();
    let rt = multi_thread(2);
    rt.block_on(rt.spawn(async {
        loopwatch::blocking("calls.worker", || sleep_ms(150));
    }))
    .unwrap();
    let c = counts(&w, "calls.worker", 1);
    assert_eq!(
        (c.calls, c.blocking, c.slow, c.failed),
        (1, 1, 0, 0),
        "{c:?}"
    );
    w.shutdown();
}

#[test]
fn a_long_sync_call_in_a_current_thread_block_on_is_blocking() {
    let _serial = serial();
    let w = watchdog();
    let rt = current_thread();
    rt.block_on(async {
        loopwatch::blocking("calls.block_on", || sleep_ms(150));
    });
    let c = counts(&w, "calls.block_on", 1);
    assert_eq!((c.calls, c.blocking), (1, 1), "{c:?}");
    w.shutdown();
}

#[test]
fn spawn_blocking_block_in_place_and_plain_threads_are_not_blocking() {
    let _serial = serial();
    let w = watchdog();
    let rt = multi_thread(2);
    rt.block_on(async {
        tokio::task::spawn_blocking(|| {
            loopwatch::blocking("calls.spawn_blocking", || sleep_ms(150))
        })
        .await
        .unwrap();
        tokio::spawn(async {
            tokio::task::block_in_place(|| {
                loopwatch::blocking("calls.block_in_place", || sleep_ms(150))
            });
        })
        .await
        .unwrap();
        // Not instrumented the tokio way: a task that opted out of the budget
        // is not told apart (documented).
    });
    std::thread::spawn(|| loopwatch::blocking("calls.plain_thread", || sleep_ms(150)))
        .join()
        .unwrap();
    // Also a plain thread that entered the runtime's context.
    let handle = rt.handle().clone();
    std::thread::spawn(move || {
        let _enter = handle.enter();
        loopwatch::blocking("calls.entered_thread", || sleep_ms(150));
    })
    .join()
    .unwrap();
    for name in [
        "calls.spawn_blocking",
        "calls.block_in_place",
        "calls.plain_thread",
        "calls.entered_thread",
    ] {
        let c = counts(&w, name, 1);
        assert_eq!((c.calls, c.blocking), (1, 0), "{name}: {c:?}");
    }
    w.shutdown();
}

#[test]
fn short_calls_are_counted_but_not_blocking_and_slow_calls_are_slow_anywhere() {
    let _serial = serial();
    let w = watchdog();
    let rt = multi_thread(2);
    rt.block_on(rt.spawn(async {
        for _ in 0..10 {
            loopwatch::blocking("calls.short", || sleep_ms(1));
        }
    }))
    .unwrap();
    rt.block_on(rt.spawn_blocking(|| {
        loopwatch::blocking("calls.slow", || sleep_ms(350));
    }))
    .unwrap();
    let c = counts(&w, "calls.short", 10);
    assert_eq!((c.calls, c.blocking, c.slow), (10, 0, 0), "{c:?}");
    let c = counts(&w, "calls.slow", 1);
    assert_eq!((c.calls, c.blocking, c.slow), (1, 0, 1), "{c:?}");
    w.shutdown();
}

#[test]
fn errors_and_panics_are_failed_and_the_panic_goes_on() {
    let _serial = serial();
    let w = watchdog();
    let r: Result<(), &str> = loopwatch::blocking_fallible("calls.fallible", || Err("no"));
    assert_eq!(r, Err("no"));
    let ok: Result<u8, &str> = loopwatch::blocking_fallible("calls.fallible", || Ok(1));
    assert_eq!(ok, Ok(1));
    let caught =
        std::panic::catch_unwind(|| loopwatch::blocking("calls.panics", || panic!("boom")));
    assert!(caught.is_err(), "the panic reaches the caller");
    let c = counts(&w, "calls.fallible", 2);
    assert_eq!((c.calls, c.failed), (2, 1), "{c:?}");
    let c = counts(&w, "calls.panics", 1);
    assert_eq!((c.calls, c.failed), (1, 1), "{c:?}");
    w.shutdown();
}

#[test]
fn the_budget_probe_leaves_the_task_budget_as_it_was() {
    let _serial = serial();
    let w = Watchdog::builder()
        .stall_threshold(Duration::from_secs(5))
        .blocking_threshold(Duration::from_millis(1))
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let rt = current_thread();
    rt.block_on(async {
        // 200 probed calls in one poll: had the probe consumed budget, the
        // budget (128) would run out and has_budget_remaining turn false.
        for _ in 0..200 {
            loopwatch::blocking("calls.probe", || sleep_ms(2));
            assert!(tokio::task::coop::has_budget_remaining());
        }
    });
    let c = counts(&w, "calls.probe", 200);
    assert_eq!((c.calls, c.blocking), (200, 200), "{c:?}");
    w.shutdown();
}

/// The thresholds the instrumented code reads go back to the documented
/// defaults (blocking at 100 ms) when the watchdog stops.
#[test]
fn thresholds_return_to_the_defaults_when_the_watchdog_stops() {
    let _serial = serial();
    let rt = multi_thread(2);
    let call = || {
        rt.block_on(rt.spawn(async {
            loopwatch::blocking("calls.reset", || sleep_ms(30));
        }))
        .unwrap()
    };
    let w = Watchdog::builder()
        .blocking_threshold(Duration::from_millis(10))
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    call(); // 30 ms >= 10 ms: blocking
    assert_eq!(counts(&w, "calls.reset", 1).blocking, 1);
    w.shutdown();
    call(); // 30 ms < the default 100 ms: not blocking
    let w = Watchdog::builder()
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let c = counts(&w, "calls.reset", 2);
    assert_eq!((c.calls, c.blocking), (2, 1), "{c:?}");
    w.shutdown();
}

/// Counts are kept per thread and summed: those of threads that have exited
/// still count, and calls from many threads at once are all counted.
#[test]
fn calls_from_many_threads_are_all_counted_after_the_threads_exit() {
    let _serial = serial();
    let w = watchdog();
    for round in 0..3 {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    for i in 0..1_000u32 {
                        let _ = loopwatch::blocking_fallible("calls.threads", || {
                            if i % 10 == 0 {
                                Err(i)
                            } else {
                                Ok(i)
                            }
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = counts(&w, "calls.threads", 8_000 * (round + 1));
        assert_eq!(
            (c.calls, c.failed, c.blocking, c.slow),
            (8_000 * (round + 1), 800 * (round + 1), 0, 0),
            "{c:?}"
        );
    }
    w.shutdown();
}
