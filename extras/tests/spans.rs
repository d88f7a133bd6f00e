//! The stuck thread's `tracing` spans in stall reports, the log line, and
//! `/health`, with `loopwatch::spans::layer()` in the global subscriber
//! (Linux: the stuck thread is found by its kernel id).
#![cfg(target_os = "linux")]

use loopwatch_test_support::harness as common;

use std::sync::Once;
use std::time::Duration;

use common::{current_thread, multi_thread, serial, start, Reports};
use loopwatch::{StallReport, WatchExt as _};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const STALL: Duration = Duration::from_millis(600);
const CHECK: Duration = Duration::from_millis(20);
const BLOCK: Duration = Duration::from_millis(1500);

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(loopwatch::spans::layer());
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

#[inline(never)]
fn stuck(d: Duration) {
    std::thread::sleep(d);
    std::hint::black_box(());
}

fn first(reports: &Reports, runtime: &str) -> StallReport {
    reports
        .wait_first(runtime, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("a stall of {runtime} reported"))
        .1
}

#[test]
fn an_uninstrumented_task_on_a_handle_only_runtime_names_its_spans() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("handle", rt.handle()).unwrap();
    // Let the heartbeat visit the workers, as in any running service.
    std::thread::sleep(Duration::from_millis(1500));
    let task = rt.spawn(async { stuck(BLOCK) }.instrument(tracing::info_span!(
        "job",
        id = 7u64,
        kind = "import"
    )));
    let report = first(&reports, "handle");
    assert_eq!(report.spans, ["job{id=7 kind=\"import\"}"], "{report}");
    assert!(
        report
            .to_string()
            .contains(" in span job{id=7 kind=\"import\"}"),
        "{report}"
    );
    rt.block_on(task).unwrap();
}

#[test]
fn an_instrumented_task_inside_an_instrument_chain_names_every_span() {
    #[tracing::instrument]
    async fn handle(order: u64) {
        load(order).await;
    }

    #[tracing::instrument(fields(table = "orders"))]
    async fn load(id: u64) {
        tokio::task::yield_now().await;
        stuck(BLOCK);
    }

    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("chain", rt.handle()).unwrap();
    let task = rt.spawn(handle(42).watched("orders"));
    let report = first(&reports, "chain");
    assert_eq!(
        report.spans,
        ["handle{order=42}", "load{id=42 table=\"orders\"}"],
        "{report}"
    );
    assert_eq!(report.task.as_deref(), Some("orders"));
    // The same spans in /health while the stall goes on, and in recent stalls.
    let health = watchdog.health();
    let worker = &health.runtimes[0].stalled_workers[0];
    assert_eq!(worker.spans, report.spans, "{health:?}");
    assert_eq!(health.recent_stalls[0].spans, report.spans);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(
        json["runtimes"][0]["stalled_workers"][0]["spans"][1],
        "load{id=42 table=\"orders\"}"
    );
    assert_eq!(json["recent_stalls"][0]["spans"][0], "handle{order=42}");
    assert!(
        health.issues[0].contains("in span handle{order=42} > load{id=42 table=\"orders\"}"),
        "{:?}",
        health.issues
    );
    rt.block_on(task).unwrap();
}

#[test]
fn a_guard_held_in_a_task_names_its_span_and_recorded_fields() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("guard", rt.handle()).unwrap();
    let task = rt.spawn(
        async {
            let span = tracing::info_span!("batch", size = 3u64, status = tracing::field::Empty);
            let _entered = span.enter();
            span.record("status", "loading");
            let _inner = tracing::info_span!("row").entered();
            stuck(BLOCK);
        }
        .watched("batch"),
    );
    let report = first(&reports, "guard");
    assert_eq!(
        report.spans,
        ["batch{size=3 status=\"loading\"}", "row"],
        "{report}"
    );
    rt.block_on(task).unwrap();
}

#[test]
fn a_task_that_moved_between_workers_is_named_on_the_worker_it_is_stuck_on() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("moves", rt.handle()).unwrap();
    let (moved_tx, moved_rx) = std::sync::mpsc::channel();
    let task = rt.spawn(
        async move {
            // Sleep until woken on another worker than the first poll's.
            let first = std::thread::current().id();
            let mut moved = false;
            for _ in 0..2000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if std::thread::current().id() != first {
                    moved = true;
                    break;
                }
            }
            moved_tx.send(moved).unwrap();
            stuck(BLOCK);
        }
        .instrument(tracing::info_span!("mover"))
        .watched("mover"),
    );
    assert!(
        moved_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "the task moved to the other worker"
    );
    let report = first(&reports, "moves");
    assert_eq!(report.spans, ["mover"], "{report}");
    // The other worker is out of the span: its stack is empty.
    let health = watchdog.health();
    assert_eq!(health.runtimes[0].stalled_workers.len(), 1);
    rt.block_on(task).unwrap();
}

#[test]
fn several_runtimes_each_name_their_own_spans() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let (a, b) = (multi_thread(1), multi_thread(1));
    watchdog.watch_runtime("a", a.handle()).unwrap();
    watchdog.watch_runtime("b", b.handle()).unwrap();
    let ta = a.spawn(
        async { stuck(BLOCK) }
            .instrument(tracing::info_span!("in_a"))
            .watched("a"),
    );
    let tb = b.spawn(
        async { stuck(BLOCK) }
            .instrument(tracing::info_span!("in_b"))
            .watched("b"),
    );
    assert_eq!(first(&reports, "a").spans, ["in_a"]);
    assert_eq!(first(&reports, "b").spans, ["in_b"]);
    a.block_on(ta).unwrap();
    b.block_on(tb).unwrap();
}

#[test]
fn a_current_thread_runtime_names_the_spans_of_its_block_on() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = current_thread();
    watchdog.watch_runtime("ct", rt.handle()).unwrap();
    rt.block_on(
        async {
            tokio::task::yield_now().await;
            stuck(BLOCK);
        }
        .instrument(tracing::info_span!("main_loop", tick = 1u64)),
    );
    let report = first(&reports, "ct");
    assert_eq!(report.spans, ["main_loop{tick=1}"], "{report}");
}

#[test]
fn outside_any_span_a_report_has_none() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("bare", rt.handle()).unwrap();
    // A span entered and left before the block is not named.
    let task = rt.spawn(
        async {
            tracing::info_span!("before").in_scope(|| ());
            stuck(BLOCK);
        }
        .watched("bare"),
    );
    let report = first(&reports, "bare");
    assert!(report.spans.is_empty(), "{report}");
    assert!(!report.to_string().contains("in span"), "{report}");
    rt.block_on(task).unwrap();
}

#[test]
fn descriptions_and_depth_are_capped() {
    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("deep", rt.handle()).unwrap();
    let task = rt.spawn(
        async {
            let wide = tracing::info_span!(
                "wide",
                f1 = 1,
                f2 = 2,
                f3 = 3,
                f4 = 4,
                f5 = 5,
                f6 = 6,
                f7 = 7,
                f8 = 8,
                f9 = 9,
                f10 = 10,
                f11 = 11,
                f12 = 12,
                f13 = 13,
                f14 = 14,
                f15 = 15,
                f16 = 16,
                f17 = 17
            );
            let _wide = wide.enter();
            let (a, b, c) = ("a".repeat(400), "b".repeat(400), "c".repeat(400));
            let long = tracing::info_span!("long", a = %a, b = %b, c = %c);
            let _long = long.enter();
            let spans: Vec<_> = (0..40).map(|i| tracing::info_span!("level", i)).collect();
            let _guards: Vec<_> = spans.iter().map(|s| s.enter()).collect();
            stuck(BLOCK);
        }
        .watched("deep"),
    );
    let report = first(&reports, "deep");
    // 32 named (wide, long and 30 levels), then a count of the other 10.
    assert_eq!(report.spans.len(), 33, "{:?}", report.spans);
    let wide = &report.spans[0];
    assert!(
        wide.contains("f16=16}") && !wide.contains("f17"),
        "16 fields: {wide}"
    );
    let long = &report.spans[1];
    assert_eq!(long.len(), 256, "256 bytes in all: {long}");
    assert!(
        long.starts_with(&format!("long{{a={}…", "a".repeat(93))),
        "values cut: {long}"
    );
    assert_eq!(report.spans[2], "level{i=0}");
    assert_eq!(report.spans[31], "level{i=29}");
    assert_eq!(report.spans[32], "... 10 more");
    rt.block_on(task).unwrap();
}

#[test]
fn an_axum_service_behind_trace_layer_names_the_stuck_request() {
    use axum::extract::Path;
    use axum::routing::get;
    use std::io::{Read as _, Write as _};
    use tower_http::trace::TraceLayer;

    #[tracing::instrument]
    fn load_order(id: u64) -> String {
        stuck(BLOCK); // a sync database call on the async worker
        format!("order {id}\n")
    }

    async fn order(Path(id): Path<u64>) -> String {
        load_order(id)
    }

    let _serial = serial();
    install();
    let (watchdog, reports) = start(STALL, CHECK);
    // The handler is not instrumented: a runtime built with loopwatch's hooks
    // knows its worker threads from their start, so the stuck one is found
    // at once (the handle-only case is the first test of this file).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    loopwatch::install_runtime_hooks(&mut builder);
    let rt = builder.build().unwrap();
    watchdog.watch_runtime("http", rt.handle()).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/orders/{id}", get(order))
        .layer(TraceLayer::new_for_http());
    let server = rt.spawn(async move { axum::serve(listener, app).await });
    let client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /orders/42 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    });
    let report = first(&reports, "http");
    assert_eq!(
        report.spans,
        [
            "request{method=GET uri=/orders/42 version=HTTP/1.1}",
            "load_order{id=42}"
        ],
        "{report}"
    );
    let answer = client.join().unwrap();
    assert!(answer.ends_with("order 42\n"), "{answer}");
    server.abort();
}
