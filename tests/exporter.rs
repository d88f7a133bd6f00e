//! The exporter: `/metrics` and `/health` over HTTP, from its own thread.

mod common;
use loopwatch_test_support::flood;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{get, http, multi_thread, serial, wait_until};
use loopwatch::{Error, Exporter, Watchdog};

/// The value of one series (name and labels exactly) in an exposition.
fn series_value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from\n{body}"))
        .parse()
        .unwrap()
}

fn start(stall: Duration) -> (Watchdog, Exporter) {
    let watchdog = Watchdog::builder()
        .stall_threshold(stall)
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .request_timeout(Duration::from_millis(800))
        .start(&watchdog)
        .unwrap();
    (watchdog, exporter)
}

#[test]
fn metrics_and_health_answer_while_every_worker_is_blocked() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(1));
    let addr = exporter.local_addr();
    let rt = multi_thread(2);
    watchdog.watch_runtime("blocked", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(addr, "/health").status, 200);

    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let b = barrier.clone();
            rt.spawn(async move {
                b.wait();
                std::thread::sleep(Duration::from_millis(2500));
            })
        })
        .collect();
    // Both workers are flagged, each at the first check that sees it stuck
    // for the threshold (the two may be a check apart).
    let both_stalled = || {
        let health = get(addr, "/health");
        health.status == 503
            && serde_json::from_str::<serde_json::Value>(&health.body).is_ok_and(|j| {
                j["runtimes"][0]["stalled_workers"]
                    .as_array()
                    .is_some_and(|w| w.len() == 2)
            })
    };
    assert!(wait_until(Duration::from_secs(3), both_stalled));
    let health = get(addr, "/health");
    assert!(
        health.took < Duration::from_millis(500),
        "{:?}",
        health.took
    );
    assert!(
        health.head.contains("Content-Type: application/json"),
        "{}",
        health.head
    );
    let json: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(json["status"], "stalled");
    assert_eq!(
        json["runtimes"][0]["stalled_workers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.took < Duration::from_millis(500),
        "{:?}",
        metrics.took
    );
    assert!(
        metrics.head.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    for line in [
        "loopwatch_stalled_workers{runtime=\"blocked\"} 2",
        "loopwatch_runtime_workers{runtime=\"blocked\"} 2",
        "# TYPE loopwatch_runtime_busy_seconds_total counter",
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line} missing from\n{}",
            metrics.body
        );
    }
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    // Healthy again once the stall is over (a check or two; seconds on a
    // loaded machine).
    assert!(wait_until(Duration::from_secs(5), || get(addr, "/health")
        .status
        == 200));
    exporter.shutdown();
    watchdog.shutdown();
}

#[test]
fn routes_methods_and_head_requests() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let addr = exporter.local_addr();
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(get(addr, "/metrics?name[]=x").status, 200);
    let post = http(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    assert!(post.head.contains("Allow: GET, HEAD"), "{}", post.head);
    assert_eq!(
        http(addr, b"DELETE /elsewhere HTTP/1.1\r\n\r\n")
            .unwrap()
            .status,
        404
    );
    let head = http(addr, b"HEAD /health HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    assert!(head.head.contains("Content-Length: "), "{}", head.head);
    assert!(!head.head.contains("Content-Length: 0\r"), "{}", head.head);
    exporter.shutdown();
    watchdog.shutdown();
}

#[test]
fn hostile_clients_never_stop_scraping() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let addr = exporter.local_addr();
    let prompt = |what: &str| {
        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200, "after {what}");
        assert!(
            r.took < Duration::from_millis(500),
            "after {what}: {:?}",
            r.took
        );
    };

    // Junk bytes.
    let junk = http(addr, b"\x00\x01\x02\xff\xfe garbage\r\n\r\n").unwrap();
    assert_eq!(junk.status, 400);
    prompt("junk");

    // A half-sent request, left open.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    prompt("a half-sent request");

    // A 100 kB path.
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000));
    assert_eq!(http(addr, long.as_bytes()).unwrap().status, 431);
    prompt("a 100 kB path");

    // A huge Content-Length: the body is never read.
    let huge = http(
        addr,
        b"GET /health HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
    )
    .unwrap();
    assert_eq!(huge.status, 200);
    prompt("a huge Content-Length");

    // Many idle connections, in a burst: each is taken at once (the
    // kernel's queue of connections not yet accepted holds them all; a
    // dropped SYN would be sent again only a second later).
    let mut slowest = Duration::ZERO;
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let began = std::time::Instant::now();
            let stream = TcpStream::connect(addr).unwrap();
            slowest = slowest.max(began.elapsed());
            stream
        })
        .collect();
    assert!(
        slowest < Duration::from_millis(900),
        "a connection of the burst waited {slowest:?}"
    );
    prompt("200 idle connections");
    // They are closed after the request timeout (800 ms here).
    std::thread::sleep(Duration::from_millis(1200));
    let mut first = &idle[0];
    let mut buf = [0u8; 1];
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        std::io::Read::read(&mut first, &mut buf).unwrap_or(0),
        0,
        "closed by the server"
    );
    drop(half);
    // The absolute form of a request target (RFC 9112) names the same path.
    let absolute = http(
        addr,
        format!("GET http://{addr}/metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(absolute.status, 200);
    assert!(absolute.body.contains("loopwatch_"), "{}", absolute.body);
    exporter.shutdown();
    watchdog.shutdown();
}

#[test]
fn scrapes_get_through_a_flood_of_idle_and_slowloris_connections() {
    let _serial = serial();
    let watchdog = Watchdog::builder().start().unwrap();
    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .max_connections(32)
        .start(&watchdog)
        .unwrap();
    let addr = exporter.local_addr();
    // More connections than the exporter takes, reopened at once when closed.
    let idle = flood::Flood::start(addr, flood::Kind::Idle, 40);
    let slow = flood::Flood::start(addr, flood::Kind::Slowloris, 40);
    std::thread::sleep(Duration::from_millis(500));
    let results = flood::scrapes(addr, 20, Duration::from_millis(50));
    drop((idle, slow));
    let (answered, _, p99) = flood::summary(&results);
    assert_eq!(answered, 1.0, "{results:?}");
    // The target is 100 ms; the margin is for a loaded 2-core machine.
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    let metrics = get(addr, "/metrics").body;
    let evicted = series_value(
        &metrics,
        "loopwatch_exporter_connections_dropped_total{reason=\"evicted\"}",
    );
    assert!(evicted >= 1.0, "{metrics}");
    exporter.shutdown();
    watchdog.shutdown();
}

#[test]
fn bind_failures_name_the_address_and_shutdown_frees_the_port() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let taken = exporter.local_addr();
    let err = Exporter::builder()
        .bind(taken)
        .start(&watchdog)
        .unwrap_err();
    assert!(
        matches!(err, Error::Bind { addr, .. } if addr == taken),
        "{err:?}"
    );
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
    // An address of no local interface (TEST-NET-1).
    let err = Exporter::builder()
        .bind("192.0.2.1:9377".parse().unwrap())
        .start(&watchdog)
        .unwrap_err();
    assert!(matches!(err, Error::Bind { .. }), "{err:?}");
    let err = Exporter::builder()
        .max_connections(0)
        .start(&watchdog)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidSetting {
                setting: "max_connections",
                ..
            }
        ),
        "{err:?}"
    );

    exporter.shutdown();
    let again = Exporter::builder()
        .bind(taken)
        .start(&watchdog)
        .expect("the port is free again");
    assert_eq!(again.local_addr(), taken);
    assert_eq!(get(taken, "/health").status, 200);
    drop(again);
    assert!(
        TcpStream::connect(taken).is_err(),
        "dropped: nothing listens"
    );
    watchdog.shutdown();
}

/// Under `--cfg tokio_unstable`, more runtime figures are exported.
#[cfg(tokio_unstable)]
#[test]
fn unstable_runtime_metrics_are_exported() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let rt = multi_thread(2);
    watchdog.watch_runtime("unstable", rt.handle()).unwrap();
    rt.block_on(async {
        for _ in 0..10 {
            tokio::spawn(async {}).await.unwrap();
        }
    });
    let body = get(exporter.local_addr(), "/metrics").body;
    for family in [
        "loopwatch_runtime_polls_total{runtime=\"unstable\"}",
        "loopwatch_runtime_steals_total{runtime=\"unstable\"}",
        "loopwatch_runtime_spawned_tasks_total{runtime=\"unstable\"}",
        "loopwatch_runtime_blocking_threads{runtime=\"unstable\"}",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    exporter.shutdown();
    watchdog.shutdown();
}

/// Stall lengths and heartbeat lags are histograms aggregated where they are
/// recorded: exact count and sum, whether or not anyone scraped meanwhile.
#[test]
fn stall_lengths_and_heartbeat_lags_are_exact_histograms() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_millis(500));
    let rt = multi_thread(2);
    watchdog.watch_runtime("hist", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for ms in [1500, 900] {
        let t = rt.spawn(async move { std::thread::sleep(Duration::from_millis(ms)) });
        rt.block_on(t).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = get(exporter.local_addr(), "/metrics").body;
    let value = |series: &str| series_value(&body, series);
    let stalls = "loopwatch_stall_duration_seconds";
    assert_eq!(value(&format!("{stalls}_count{{runtime=\"hist\"}}")), 2.0);
    let sum = value(&format!("{stalls}_sum{{runtime=\"hist\"}}"));
    // Stalls of 1.5 s and 0.9 s, each seen from the threshold's crossing on.
    assert!((1.8..=3.0).contains(&sum), "{sum}");
    assert_eq!(
        value(&format!("{stalls}_bucket{{runtime=\"hist\",le=\"1\"}}")),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(&format!("{stalls}_bucket{{runtime=\"hist\",le=\"2\"}}")),
        2.0
    );
    let lags = value("loopwatch_heartbeat_lag_seconds_count{runtime=\"hist\"}");
    assert!(lags > 10.0, "a lag at each beat: {lags}");
    assert_eq!(
        value("loopwatch_heartbeat_lag_seconds_bucket{runtime=\"hist\",le=\"+Inf\"}"),
        lags
    );
    exporter.shutdown();
    watchdog.shutdown();
}

/// Short polls are counted exactly, though only a sample of them is timed
/// with the fine clock and bucketed: the buckets add up to the count, all of
/// them below the long durations, most in the shortest buckets.
#[test]
fn short_polls_are_counted_exactly_and_bucketed_from_a_sample() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let rt = multi_thread(2);
    const TASKS: u64 = 4;
    const YIELDS: u64 = 20_000;
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                loopwatch::spawn_named("histogram.short", async {
                    for _ in 0..YIELDS {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let body = get(exporter.local_addr(), "/metrics").body;
    let value = |series: &str| series_value(&body, series);
    let poll = "loopwatch_poll_duration_seconds";
    let label = "task=\"histogram.short\"";
    // Each task is polled once per yield, and once more to finish.
    let polls = (TASKS * (YIELDS + 1)) as f64;
    assert_eq!(value(&format!("{poll}_count{{{label}}}")), polls);
    assert_eq!(
        value(&format!("{poll}_bucket{{{label},le=\"+Inf\"}}")),
        polls
    );
    assert_eq!(
        value(&format!("{poll}_bucket{{{label},le=\"0.067108864\"}}")),
        polls,
        "no poll of a yield lasts 67 ms"
    );
    let under_1ms = value(&format!("{poll}_bucket{{{label},le=\"0.001048576\"}}"));
    assert!(
        under_1ms >= 0.9 * polls,
        "{under_1ms} of {polls} polls under 1 ms"
    );
    let sum = value(&format!("{poll}_sum{{{label}}}"));
    assert!(sum < 1.0, "{polls} polls of a yield summed to {sum} s");
    exporter.shutdown();
    watchdog.shutdown();
}

/// The sample is taken at random intervals: two futures polled in turn on
/// one thread are both sampled, so each name's short buckets come from its
/// own polls (a fixed interval of an even length would sample only one).
#[test]
fn futures_polled_in_turn_are_both_sampled() {
    use loopwatch::WatchExt as _;
    use std::future::Future;
    use std::task::{Context, Waker};

    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let mut a = Box::pin(std::future::pending::<()>().watched("turns.a"));
    let mut b = Box::pin(std::future::pending::<()>().watched("turns.b"));
    let mut cx = Context::from_waker(Waker::noop());
    const POLLS: u64 = 50_000;
    for _ in 0..POLLS {
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
    }
    let body = get(exporter.local_addr(), "/metrics").body;
    let value = |series: &str| series_value(&body, series);
    for name in ["turns.a", "turns.b"] {
        let poll = "loopwatch_poll_duration_seconds";
        let label = format!("task=\"{name}\"");
        assert_eq!(value(&format!("{poll}_count{{{label}}}")), POLLS as f64);
        // An empty poll takes well under 16 us; had the name no sample, its
        // polls would all sit in the bucket below 67 ms.
        let short = value(&format!("{poll}_bucket{{{label},le=\"0.000016384\"}}"));
        assert!(
            short >= 0.9 * POLLS as f64,
            "{name}: {short} of {POLLS} polls under 16 us"
        );
    }
    exporter.shutdown();
    watchdog.shutdown();
}

/// Poll and call durations come out with their exact count and sum, in
/// cumulative buckets.
#[test]
fn duration_histograms_have_the_exact_count_and_sum() {
    let _serial = serial();
    let (watchdog, exporter) = start(Duration::from_secs(5));
    let rt = multi_thread(2);
    rt.block_on(async {
        loopwatch::spawn_named("histogram.task", async {
            std::thread::sleep(Duration::from_millis(120));
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(120));
        })
        .await
    })
    .unwrap();
    for _ in 0..2 {
        loopwatch::blocking("histogram.call", || {
            std::thread::sleep(Duration::from_millis(120))
        });
    }
    let body = get(exporter.local_addr(), "/metrics").body;
    let value = |series: &str| series_value(&body, series);
    let call = "loopwatch_call_duration_seconds";
    assert_eq!(
        value(&format!("{call}_count{{call=\"histogram.call\"}}")),
        2.0
    );
    let sum = value(&format!("{call}_sum{{call=\"histogram.call\"}}"));
    // Each duration is measured to within a tick of the coarse clock, under
    // 5 ms at these thresholds.
    assert!(
        (0.23..1.5).contains(&sum),
        "two 120 ms calls summed to {sum}"
    );
    assert_eq!(
        value(&format!(
            "{call}_bucket{{call=\"histogram.call\",le=\"0.067108864\"}}"
        )),
        0.0
    );
    assert_eq!(
        value(&format!(
            "{call}_bucket{{call=\"histogram.call\",le=\"+Inf\"}}"
        )),
        2.0
    );
    // The task was polled twice, each poll 120 ms or more.
    let poll = "loopwatch_poll_duration_seconds";
    assert_eq!(
        value(&format!("{poll}_count{{task=\"histogram.task\"}}")),
        2.0
    );
    let sum = value(&format!("{poll}_sum{{task=\"histogram.task\"}}"));
    assert!(
        (0.23..1.5).contains(&sum),
        "two 120 ms polls summed to {sum}"
    );
    exporter.shutdown();
    watchdog.shutdown();
}
