//! What a stall leaves in the `metrics` facade and in `tracing` events.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{multi_thread, serial, wait_until};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// A metric's name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Observed {
    snapshotter: Snapshotter,
    logs: Logs,
    /// Histogram values seen so far (snapshots drain them).
    histograms: Vec<Sample>,
    /// Counter totals so far (snapshots return what was added since the last one).
    counters: Vec<Sample>,
}

impl Observed {
    fn install() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        Observed {
            snapshotter,
            logs,
            histograms: Vec::new(),
            counters: Vec::new(),
        }
    }

    /// (name, labels, value) of every counter (its total) and gauge (set since
    /// the last read); histogram values are kept in `histograms`.
    fn read(&mut self) -> Vec<Sample> {
        let mut out = Vec::new();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(v)) => {
                    match self
                        .counters
                        .iter_mut()
                        .find(|c| c.0 == name && c.1 == labels)
                    {
                        Some(c) => c.2 += v as f64,
                        None => self.counters.push((name, labels, v as f64)),
                    }
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    out.push((name, labels, v.into_inner()))
                }
                (MetricKind::Histogram, DebugValue::Histogram(vs)) => {
                    for v in vs {
                        self.histograms
                            .push((name.clone(), labels.clone(), v.into_inner()));
                    }
                }
                _ => {}
            }
        }
        out.extend(self.counters.iter().cloned());
        out
    }
}

fn value(metrics: &[Sample], name: &str, runtime: Option<&str>) -> Option<f64> {
    metrics
        .iter()
        .find(|(n, labels, _)| {
            n == name
                && match runtime {
                    Some(r) => labels.iter().any(|(k, v)| k == "runtime" && v == r),
                    None => labels.is_empty(),
                }
        })
        .map(|m| m.2)
}

#[test]
fn a_stall_is_logged_and_recorded_in_every_stall_metric() {
    let _serial = serial();
    let mut observed = Observed::install();
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(Duration::from_millis(600))
        .check_interval(Duration::from_millis(25))
        .max_reports_per_minute(1)
        .start()
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("m", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let task = rt.spawn(async { std::thread::sleep(Duration::from_millis(1500)) });
    assert!(wait_until(Duration::from_secs(3), || {
        watchdog.health().status == loopwatch::Status::Stalled
    }));
    std::thread::sleep(Duration::from_millis(60));
    let during = observed.read();
    assert_eq!(
        value(&during, "loopwatch_stalls_total", Some("m")),
        Some(1.0)
    );
    assert_eq!(
        value(&during, "loopwatch_stalled_workers", Some("m")),
        Some(1.0)
    );
    rt.block_on(task).unwrap();
    // Let the worker park, so that tokio publishes that the first stall ended.
    std::thread::sleep(Duration::from_millis(200));

    // A second stall goes over the one-report-per-minute cap.
    let task = rt.spawn(async { std::thread::sleep(Duration::from_millis(900)) });
    rt.block_on(task).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let after = observed.read();
    assert_eq!(
        value(&after, "loopwatch_stalls_total", Some("m")),
        Some(2.0)
    );
    assert_eq!(
        value(&after, "loopwatch_stalled_workers", Some("m")),
        Some(0.0)
    );
    // The second stall's report was held back (one first report a minute);
    // the first stall's 2x escalation has a budget of its own and went out.
    assert_eq!(
        value(&after, "loopwatch_reports_suppressed_total", None),
        Some(1.0),
        "{}",
        observed.logs.text()
    );
    assert_eq!(
        observed.logs.text().matches("stall continues:").count(),
        1,
        "{}",
        observed.logs.text()
    );
    // A report held back from the log keeps its evidence in health.
    let health = watchdog.health();
    let held = &health.recent_stalls[0];
    assert!(held.ended, "{held:?}");
    assert!(
        held.backtrace
            .as_deref()
            .is_some_and(|b| b.contains("std::thread::functions::sleep")),
        "the held-back report's stack: {held:?}"
    );
    assert_eq!(held.stack_complete, Some(true), "{held:?}");
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let stamp = value(&after, "loopwatch_heartbeat_timestamp_seconds", Some("m")).unwrap();
    assert!(
        (unix_now - stamp).abs() < 1.0,
        "heartbeat at {stamp}, now {unix_now}"
    );

    // Histograms are aggregated by loopwatch and rendered by its exporter
    // (tests/exporter.rs), never recorded one observation at a time through
    // the facade.
    assert!(observed.histograms.is_empty(), "{:?}", observed.histograms);

    // Tasks and calls, by name.
    rt.block_on(async {
        let _ = loopwatch::spawn_fallible("m.task", async { Err::<(), _>("no") }).await;
        let _ = loopwatch::spawn_named("m.task", async {}).await;
    });
    rt.block_on(rt.spawn(async {
        loopwatch::blocking("m.call", || std::thread::sleep(Duration::from_millis(150)));
    }))
    .unwrap();
    std::thread::sleep(Duration::from_millis(1300)); // published every second
    let usage = observed.read();
    let series = |name: &str, labels: &[(&str, &str)]| {
        usage
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|m| m.2)
    };
    assert_eq!(
        series("loopwatch_tasks_spawned_total", &[("task", "m.task")]),
        Some(2.0)
    );
    assert_eq!(
        series("loopwatch_tasks_completed_total", &[("task", "m.task")]),
        Some(1.0)
    );
    assert_eq!(
        series(
            "loopwatch_tasks_failed_total",
            &[("task", "m.task"), ("reason", "error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            "loopwatch_tasks_failed_total",
            &[("task", "m.task"), ("reason", "panic")]
        ),
        Some(0.0)
    );
    assert_eq!(
        series(
            "loopwatch_calls_total",
            &[("call", "m.call"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series("loopwatch_blocking_calls_total", &[("call", "m.call")]),
        Some(1.0)
    );
    // Poll and call durations are rendered exactly by loopwatch's exporter
    // (tests/exporter.rs); they are not re-recorded through the facade.
    assert!(observed.histograms.is_empty(), "{:?}", observed.histograms);

    let logs = observed.logs.text();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("stall"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "the first stall's report and its escalation let through: {logs}"
    );
    assert!(logs.contains("blocking call: 'm.call'"), "{logs}");
    assert!(warnings[0].contains("loopwatch"), "{logs}");
    assert!(warnings[0].contains("runtime m: worker"), "{logs}");
    let ends: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("stall ended after"))
        .collect();
    assert_eq!(ends.len(), 1, "the reported stall's end is logged: {logs}");
    watchdog.shutdown();
}
