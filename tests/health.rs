//! `Watchdog::health()` serializes to the JSON shape of the contract.

mod common;

use std::time::Duration;

use common::{multi_thread, serial, start, wait_until};
use loopwatch::WatchExt as _;
use serde_json::Value;

#[test]
fn health_json_has_the_contract_shape_during_and_after_a_stall() {
    let _serial = serial();
    let (watchdog, _reports) = start(Duration::from_secs(1), Duration::from_millis(50));
    let rt = multi_thread(2);
    watchdog.watch_runtime("main", rt.handle()).unwrap();

    let json = serde_json::to_value(watchdog.health()).unwrap();
    assert_eq!(json["status"], "healthy", "{json:#}");

    std::thread::sleep(Duration::from_millis(200));
    let task =
        rt.spawn(async { std::thread::sleep(Duration::from_millis(2000)) }.watched("ingest"));
    assert!(wait_until(Duration::from_secs(3), || {
        watchdog.health().status == loopwatch::Status::Stalled
    }));
    let json = serde_json::to_value(watchdog.health()).unwrap();
    assert_eq!(json["status"], "stalled", "{json:#}");
    let issue = json["issues"][0].as_str().unwrap();
    assert!(
        issue.starts_with("runtime main: worker ")
            && issue.contains("stalled for")
            && issue.contains("in task 'ingest'"),
        "{issue}"
    );
    let runtime = &json["runtimes"][0];
    assert_eq!(runtime["name"], "main");
    assert_eq!(runtime["flavor"], "multi_thread");
    assert_eq!(runtime["workers"], 2);
    assert!(runtime["heartbeat_age_seconds"].as_f64().unwrap() >= 0.0);
    let stalled = &runtime["stalled_workers"][0];
    assert!(stalled["worker"].as_u64().unwrap() < 2, "{stalled}");
    assert!(
        stalled["stalled_for_seconds"].as_f64().unwrap() >= 1.0,
        "{stalled}"
    );
    assert_eq!(stalled["task"], "ingest");
    for key in [
        "spawned",
        "completed",
        "failed",
        "panicked",
        "cancelled",
        "alive",
        "hung",
        "slow_polls",
    ] {
        assert_eq!(json["tasks"][key], 0, "tasks.{key} in {json:#}");
    }
    assert!(json["calls"].as_object().unwrap().is_empty());
    for key in [
        "resident_memory_bytes",
        "cpu_seconds",
        "open_fds",
        "threads",
    ] {
        assert!(
            json["process"][key].is_number(),
            "process.{key} in {json:#}"
        );
    }

    rt.block_on(task).unwrap();
    assert!(wait_until(Duration::from_secs(2), || {
        watchdog.health().status != loopwatch::Status::Stalled
    }));
    let json = serde_json::to_value(watchdog.health()).unwrap();
    // Not stalled any more; the recent stall is worth a look for a minute.
    assert_eq!(json["status"], "degraded", "{json:#}");
    // Among the issues (a heartbeat that ran late behind the stall may be
    // listed too, and first).
    assert!(
        json["issues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().contains("a stall of")),
        "{json:#}"
    );
    assert_eq!(json["runtimes"][0]["stalled_workers"], Value::Array(vec![]));
    assert!(json["runtimes"][0]["last_stall_seconds"].as_f64().unwrap() >= 1.8);
}

#[test]
fn resident_memory_above_the_limit_is_degraded_with_an_issue() {
    let _serial = serial();
    let watchdog = loopwatch::Watchdog::builder()
        .check_interval(Duration::from_millis(25))
        .hung_task_threshold(Duration::from_millis(500)) // resources are read every 50 ms then
        .resident_memory_limit(1 << 20) // 1 MiB: any process is above it
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(2), || {
        watchdog.health().status == loopwatch::Status::Degraded
    }));
    let health = watchdog.health();
    assert!(
        health.process.resident_memory_bytes > 1 << 20,
        "{:?}",
        health.process
    );
    assert!(
        health
            .issues
            .iter()
            .any(|i| i.contains("resident memory") && i.contains("above the limit")),
        "{:?}",
        health.issues
    );
    watchdog.shutdown();
    let err = loopwatch::Watchdog::builder()
        .resident_memory_limit(0)
        .start()
        .unwrap_err();
    assert!(
        matches!(
            err,
            loopwatch::Error::InvalidSetting {
                setting: "resident_memory_limit",
                ..
            }
        ),
        "{err:?}"
    );
}
