//! Settings are checked at `start()`, and runtime names at `watch_runtime()`.

mod common;

use std::time::Duration;

use common::serial;
use loopwatch::{Error, Watchdog};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn start_err(builder: loopwatch::WatchdogBuilder) -> Error {
    match builder.start() {
        Ok(w) => {
            w.shutdown();
            panic!("start() accepted settings it should refuse")
        }
        Err(e) => e,
    }
}

#[test]
fn zero_durations_are_refused_naming_the_setting() {
    let _serial = serial();
    let cases: [(&str, loopwatch::WatchdogBuilder); 5] = [
        (
            "stall_threshold",
            Watchdog::builder().stall_threshold(Duration::ZERO),
        ),
        (
            "blocking_threshold",
            Watchdog::builder().blocking_threshold(Duration::ZERO),
        ),
        (
            "slow_call_threshold",
            Watchdog::builder().slow_call_threshold(Duration::ZERO),
        ),
        (
            "hung_task_threshold",
            Watchdog::builder().hung_task_threshold(Duration::ZERO),
        ),
        (
            "check_interval",
            Watchdog::builder().check_interval(Duration::ZERO),
        ),
    ];
    for (name, builder) in cases {
        let err = start_err(builder);
        assert!(
            matches!(err, Error::ZeroDuration { setting, .. } if setting == name),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains("greater than zero"),
            "{text}"
        );
    }
}

#[test]
fn huge_durations_are_refused() {
    let _serial = serial();
    let err = start_err(Watchdog::builder().hung_task_threshold(Duration::MAX));
    assert!(
        matches!(
            err,
            Error::DurationTooLarge {
                setting: "hung_task_threshold",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn check_interval_must_be_shorter_than_stall_threshold() {
    let _serial = serial();
    for check in [ms(5000), ms(6000)] {
        let err = start_err(Watchdog::builder().check_interval(check));
        assert!(
            matches!(
                err,
                Error::Inconsistent {
                    smaller: "check_interval",
                    larger: "stall_threshold",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("lower check_interval"), "{err}");
    }
}

#[test]
fn blocking_threshold_must_be_shorter_than_stall_threshold() {
    let _serial = serial();
    let err = start_err(
        Watchdog::builder()
            .stall_threshold(ms(1000))
            .blocking_threshold(ms(1000)),
    );
    assert!(
        matches!(
            err,
            Error::Inconsistent {
                smaller: "blocking_threshold",
                larger: "stall_threshold",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn check_interval_must_be_shorter_than_hung_task_threshold() {
    let _serial = serial();
    let err = start_err(
        Watchdog::builder()
            .stall_threshold(ms(10_000))
            .check_interval(ms(500))
            .hung_task_threshold(ms(400)),
    );
    assert!(
        matches!(
            err,
            Error::Inconsistent {
                smaller: "check_interval",
                larger: "hung_task_threshold",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn sub_millisecond_check_interval_is_refused() {
    let _serial = serial();
    let err = start_err(Watchdog::builder().check_interval(Duration::from_micros(500)));
    assert!(
        matches!(err, Error::CheckIntervalTooShort { .. }),
        "{err:?}"
    );
}

#[test]
fn zero_report_rate_is_refused() {
    let _serial = serial();
    let err = start_err(Watchdog::builder().max_reports_per_minute(0));
    assert!(matches!(err, Error::ZeroReportRate), "{err:?}");
}

#[test]
fn defaults_are_the_documented_ones() {
    let _serial = serial();
    let w = Watchdog::builder().start().unwrap();
    assert_eq!(w.stall_threshold(), Duration::from_secs(5));
    assert_eq!(w.blocking_threshold(), ms(100));
    assert_eq!(w.slow_call_threshold(), Duration::from_secs(2));
    assert_eq!(w.hung_task_threshold(), Duration::from_secs(60));
    assert_eq!(w.check_interval(), ms(100));
    assert_eq!(Watchdog::DEFAULT_STALL_THRESHOLD, Duration::from_secs(5));
    w.shutdown();
}

#[test]
fn a_second_watchdog_is_refused_until_the_first_stops() {
    let _serial = serial();
    let first = Watchdog::builder().start().unwrap();
    let clone = first.clone();
    let err = start_err(Watchdog::builder());
    assert!(matches!(err, Error::AlreadyRunning), "{err:?}");
    assert!(err.to_string().contains("shutdown()"), "{err}");
    drop(first);
    // A clone keeps it running.
    assert!(clone.is_running());
    assert!(matches!(
        start_err(Watchdog::builder()),
        Error::AlreadyRunning
    ));
    drop(clone);
    // The last handle dropped: a new one may start.
    let second = Watchdog::builder().start().unwrap();
    second.shutdown();
    let third = Watchdog::builder().start().unwrap();
    third.shutdown();
}

#[test]
fn bad_runtime_names_are_refused() {
    let _serial = serial();
    let w = Watchdog::builder().start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for name in ["", "   ", "tab\there", &"x".repeat(129)] {
        let err = w.watch_runtime(name, rt.handle()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { .. }),
            "{name:?}: {err:?}"
        );
    }
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    w.watch_runtime(&"x".repeat(128), other.handle()).unwrap();
    w.watch_runtime("main", rt.handle()).unwrap();
    let third = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = w.watch_runtime("main", third.handle()).unwrap_err();
    assert!(
        matches!(err, Error::DuplicateRuntime { ref name } if name == "main"),
        "{err:?}"
    );
    // The same runtime under a second name would count its stalls twice.
    let err = w.watch_runtime("again", rt.handle()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RuntimeAlreadyWatched { ref name, ref watched_as }
                if name == "again" && watched_as == "main"
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("already watched as \"main\""),
        "{err}"
    );
    w.shutdown();
    let err = w.watch_runtime("other", rt.handle()).unwrap_err();
    assert!(matches!(err, Error::ShutDown), "{err:?}");
}

#[test]
fn abort_after_shorter_than_the_stall_threshold_is_refused() {
    let _serial = serial();
    let err = start_err(
        Watchdog::builder()
            .stall_threshold(Duration::from_secs(5))
            .abort_after(Duration::from_secs(3)),
    );
    assert!(
        matches!(
            err,
            Error::Inconsistent {
                smaller: "stall_threshold",
                larger: "abort_after",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("raise abort_after"), "{err}");
    let err = start_err(Watchdog::builder().abort_after(Duration::ZERO));
    assert!(
        matches!(
            err,
            Error::ZeroDuration {
                setting: "abort_after",
                ..
            }
        ),
        "{err:?}"
    );
    let err = start_err(Watchdog::builder().abort_after(Duration::MAX));
    assert!(
        matches!(
            err,
            Error::DurationTooLarge {
                setting: "abort_after",
                ..
            }
        ),
        "{err:?}"
    );
    // As long as the threshold is allowed, and so is notify_systemd without systemd.
    let w = Watchdog::builder()
        .stall_threshold(Duration::from_secs(5))
        .abort_after(Duration::from_secs(5))
        .notify_systemd(true)
        .start()
        .expect("abort_after equal to the stall threshold starts");
    w.shutdown();
}
