//! The live-task dump: every task waiting forever is listed with its id,
//! name, spawn site, age and the chain of spans where it waits, in
//! `Watchdog::tasks()`, `GET /tasks` (JSON and text), the status page
//! `GET /` and the hung-task warning.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{get, serial, wait_until};
use loopwatch::{TaskInfo, TaskState, Watchdog};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The `loopwatch` events logged, as `message field=value ...` lines.
fn events() -> &'static Mutex<Vec<String>> {
    static EVENTS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    EVENTS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Collect;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "loopwatch" {
            return;
        }
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                if field.name() == "message" {
                    let _ = write!(self.0, "{value:?}");
                } else {
                    let _ = write!(self.0, " {}={value:?}", field.name());
                }
            }
        }
        let mut line = Line(String::new());
        event.record(&mut line);
        events().lock().unwrap().push(line.0);
    }
}

/// The spans layer and the event collector, once for the process.
fn subscriber() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry()
                .with(loopwatch::spans::layer())
                .with(Collect),
        )
        .expect("the only subscriber");
    });
}

#[tracing::instrument(skip(permits))]
async fn acquire_permit(pool: &'static str, permits: Arc<tokio::sync::Semaphore>) {
    let _permit = permits.acquire().await;
}

#[tracing::instrument(skip(rx))]
async fn wait_for_message(queue: &'static str, mut rx: tokio::sync::mpsc::Receiver<u32>) {
    let _ = rx.recv().await;
}

#[tracing::instrument(skip(rx, permits))]
async fn fetch_upstream(
    host: &'static str,
    rx: tokio::sync::mpsc::Receiver<u32>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    if host == "db" {
        acquire_permit("db", permits).await;
    } else {
        wait_for_message("jobs", rx).await;
    }
}

#[tracing::instrument(skip(rx, permits))]
async fn process_job(
    id: u32,
    host: &'static str,
    rx: tokio::sync::mpsc::Receiver<u32>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    fetch_upstream(host, rx, permits).await;
}

/// `loopwatch::spawn_named`, and the line it was called from (the task's
/// spawn site: both functions take the caller's location).
#[track_caller]
fn spawn_at<F>(name: &'static str, future: F) -> (u32, tokio::task::JoinHandle<F::Output>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    (
        std::panic::Location::caller().line(),
        loopwatch::spawn_named(name, future),
    )
}

/// What a test expects of one listed task.
struct Expected {
    name: &'static str,
    line: u32,
    id: u64,
    spans: Vec<&'static str>,
}

fn find<'a>(tasks: &'a [TaskInfo], name: &str) -> &'a TaskInfo {
    tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("task {name} listed in {tasks:#?}"))
}

fn check(task: &TaskInfo, e: &Expected, min_age: f64) {
    assert_eq!(task.id, Some(e.id), "{task:?}");
    assert!(
        task.spawned_at
            .ends_with(&format!("tests/task_dump.rs:{}", e.line)),
        "{task:?}"
    );
    assert!(task.age_seconds >= min_age, "{task:?}");
    assert_eq!(task.state, TaskState::Hung, "{task:?}");
    assert!(task.state_seconds >= min_age - 0.1, "{task:?}");
    assert_eq!(task.spans, e.spans, "{task:?}");
}

/// A watchdog that calls a task hung after `threshold` idle, looking often.
fn watchdog_hung_after(threshold: Duration) -> Watchdog {
    Watchdog::builder()
        .hung_task_threshold(threshold)
        .check_interval(Duration::from_millis(20))
        .start()
        .unwrap()
}

#[test]
fn tasks_waiting_forever_are_listed_with_id_site_age_and_where_they_wait() {
    let _serial = serial();
    subscriber();
    events().lock().unwrap().clear();
    let watchdog = watchdog_hung_after(Duration::from_millis(600));
    let exporter = loopwatch::Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .start(&watchdog)
        .unwrap();
    let rt = common::multi_thread(2);
    let (tx, rx) = tokio::sync::mpsc::channel::<u32>(1);
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<u32>(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let lock = Arc::new(tokio::sync::Mutex::new(0u32));
    let mut expected = Vec::new();
    let _guard = rt.enter();

    // 1. An mpsc channel nobody sends on.
    let (line, channel) = spawn_at("job.channel", process_job(42, "queue", rx, permits.clone()));
    expected.push(Expected {
        name: "job.channel",
        line,
        id: channel.id().to_string().parse().unwrap(),
        spans: vec![
            "process_job{id=42 host=\"queue\"}",
            "fetch_upstream{host=\"queue\"}",
            "wait_for_message{queue=\"jobs\"}",
        ],
    });
    // 2. A semaphore permit held forever by another task.
    let held = permits.clone().try_acquire_owned().unwrap();
    std::mem::forget(held);
    let (line, permit) = spawn_at("job.permit", process_job(7, "db", rx2, permits.clone()));
    expected.push(Expected {
        name: "job.permit",
        line,
        id: permit.id().to_string().parse().unwrap(),
        spans: vec![
            "process_job{id=7 host=\"db\"}",
            "fetch_upstream{host=\"db\"}",
            "acquire_permit{pool=\"db\"}",
        ],
    });
    // 3. A tokio Mutex held by a hung task.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder_lock = lock.clone();
    let (line, holder) = spawn_at(
        "lock.holder",
        async move {
            let _held = holder_lock.lock().await;
            locked_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        }
        .instrument(tracing::info_span!("hold_lock", table = "orders")),
    );
    expected.push(Expected {
        name: "lock.holder",
        line,
        id: holder.id().to_string().parse().unwrap(),
        spans: vec!["hold_lock{table=\"orders\"}"],
    });
    locked_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let waiter_lock = lock.clone();
    let (line, waiter) = spawn_at(
        "lock.waiter",
        async move {
            let _ = waiter_lock.lock().await;
        }
        .instrument(tracing::info_span!("update_order", id = 9)),
    );
    expected.push(Expected {
        name: "lock.waiter",
        line,
        id: waiter.id().to_string().parse().unwrap(),
        spans: vec!["update_order{id=9}"],
    });
    // 4. A JoinHandle awaiting a hung task, spawned inside a request span
    // (not instrumented: that span is its context).
    let request = tracing::info_span!("request", uri = "/orders/9");
    let (line, joiner) = request.in_scope(|| {
        spawn_at("join.waiter", async move {
            let _ = holder.await;
        })
    });
    expected.push(Expected {
        name: "join.waiter",
        line,
        id: joiner.id().to_string().parse().unwrap(),
        spans: vec!["request{uri=\"/orders/9\"}"],
    });

    // All hung once 0.6 s have passed without a poll.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let tasks = watchdog.tasks();
            expected.iter().all(|e| {
                tasks
                    .iter()
                    .any(|t| t.name == e.name && t.state == TaskState::Hung)
            })
        }),
        "{:#?}",
        watchdog.tasks()
    );
    std::thread::sleep(Duration::from_millis(200));

    // Watchdog::tasks()
    let tasks = watchdog.tasks();
    for e in &expected {
        check(find(&tasks, e.name), e, 0.6);
    }
    assert!(tasks
        .windows(2)
        .all(|w| w[0].state_seconds >= w[1].state_seconds || w[1].state == TaskState::Running));

    // GET /tasks (JSON): the same, with exact counts.
    let r = get(exporter.local_addr(), "/tasks");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.head.contains("application/json"));
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        json["hung"].as_u64(),
        Some(expected.len() as u64),
        "{json:#}"
    );
    assert_eq!(json["total"].as_u64(), Some(expected.len() as u64));
    let listed: Vec<TaskInfo> = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TaskInfo::clone(find(&tasks, t["name"].as_str().unwrap())))
        .collect();
    for e in &expected {
        let t = json["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == e.name)
            .unwrap();
        assert_eq!(t["id"].as_u64(), Some(e.id));
        assert_eq!(t["state"], "hung");
        assert!(t["spawned_at"]
            .as_str()
            .unwrap()
            .ends_with(&format!("tests/task_dump.rs:{}", e.line)));
        assert!(t["age_seconds"].as_f64().unwrap() >= 0.6);
        let spans: Vec<&str> = t["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(spans, e.spans);
    }
    assert_eq!(listed.len(), expected.len());
    // A limit lists fewer, the counts stay whole.
    let r = get(exporter.local_addr(), "/tasks?limit=2");
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(json["total"].as_u64(), Some(expected.len() as u64));
    assert_eq!(get(exporter.local_addr(), "/tasks?format=xml").status, 400);

    // GET /tasks?format=text: one block per task, as Go prints goroutines.
    let r = get(exporter.local_addr(), "/tasks?format=text");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("text/plain"));
    for e in &expected {
        let block = r
            .body
            .split("\n\n")
            .find(|b| b.contains(&format!("\"{}\"", e.name)))
            .unwrap_or_else(|| panic!("a block for {} in\n{}", e.name, r.body));
        assert!(
            block.starts_with(&format!("task {} \"{}\" [hung, idle ", e.id, e.name)),
            "{block}"
        );
        assert!(
            block.contains("spawned at ")
                && block.contains(&format!("tests/task_dump.rs:{}", e.line)),
            "{block}"
        );
        assert!(block.contains(&format!("    in {}", e.spans[0])), "{block}");
        for span in &e.spans[1..] {
            assert!(block.contains(&format!("     > {span}")), "{block}");
        }
    }

    // The status page.
    let r = get(exporter.local_addr(), "/");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("text/html"));
    for e in &expected {
        assert!(r.body.contains(&format!(">{}<", e.name)), "{}", e.name);
        assert!(r.body.contains(&format!(">{}<", e.id)));
        let chain: Vec<String> = e.spans.iter().map(|s| s.replace('"', "&quot;")).collect();
        assert!(r.body.contains(&chain.join(" &gt; ")), "{chain:?}");
    }

    // Health names the hung tasks with their id, site and spans.
    let health = watchdog.health();
    assert_eq!(health.tasks.hung, expected.len() as u64);
    for h in &health.hung_tasks {
        let e = expected.iter().find(|e| e.name == h.task).unwrap();
        assert_eq!(h.id, Some(e.id));
        assert!(h
            .spawned_at
            .ends_with(&format!("tests/task_dump.rs:{}", e.line)));
        assert_eq!(h.spans, e.spans);
    }

    // One warning for each, when it became hung.
    assert!(wait_until(Duration::from_secs(3), || {
        let events = events().lock().unwrap();
        expected.iter().all(|e| {
            events
                .iter()
                .any(|l| l.starts_with(&format!("hung task: task {} '{}'", e.id, e.name)))
        })
    }));
    {
        let events = events().lock().unwrap();
        for e in &expected {
            let warnings: Vec<&String> = events
                .iter()
                .filter(|l| l.starts_with(&format!("hung task: task {} '{}'", e.id, e.name)))
                .collect();
            assert_eq!(warnings.len(), 1, "{warnings:#?}");
            let w = warnings[0];
            assert!(w.contains(&format!("tests/task_dump.rs:{}", e.line)), "{w}");
            assert!(w.contains("has not been polled for"), "{w}");
            assert!(
                w.contains(&format!("in span {}", e.spans.join(" > "))),
                "{w}"
            );
        }
    }

    drop(tx);
    drop(exporter);
    watchdog.shutdown();
    drop(_guard);
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn a_task_in_a_long_poll_is_running_and_a_fresh_one_idle() {
    let _serial = serial();
    subscriber();
    let watchdog = Watchdog::builder()
        .hung_task_threshold(Duration::from_secs(30))
        .start()
        .unwrap();
    let rt = common::multi_thread(2);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let busy = rt.spawn(async move {
        loopwatch::spawn_named("dump.busy", async move {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(800));
        })
        .await
        .unwrap()
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let idle = rt.spawn(async move {
        loopwatch::spawn_named("dump.idle", async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let tasks = watchdog.tasks();
    let b = find(&tasks, "dump.busy");
    assert_eq!(b.state, TaskState::Running, "{b:?}");
    assert!((0.25..5.0).contains(&b.state_seconds), "{b:?}");
    assert_eq!(b.polls, 0, "its first poll has not ended");
    assert!(b.id.is_some());
    let i = find(&tasks, "dump.idle");
    assert_eq!(i.state, TaskState::Idle, "{i:?}");
    assert_eq!(i.polls, 1, "{i:?}");
    assert!(i.spans.is_empty(), "no span: {i:?}");
    // Idle ones are listed before running ones.
    let pos = |n| tasks.iter().position(|t| t.name == n).unwrap();
    assert!(pos("dump.idle") < pos("dump.busy"));
    let dump = watchdog.task_dump(1);
    assert_eq!(dump.tasks.len(), 1);
    assert!(
        dump.total >= 2 && dump.running >= 1 && dump.idle >= 1,
        "{dump:?}"
    );
    assert_eq!(dump.tasks[0].name, "dump.idle");
    tx.send(()).unwrap();
    rt.block_on(async {
        busy.await.unwrap();
        idle.await.unwrap();
    });
    // Ended tasks leave the dump.
    assert!(!watchdog.tasks().iter().any(|t| t.name.starts_with("dump.")));
    watchdog.shutdown();
}

#[test]
fn a_current_thread_runtimes_tasks_are_listed_while_its_thread_is_blocked() {
    let _serial = serial();
    subscriber();
    let watchdog = watchdog_hung_after(Duration::from_millis(500));
    let rt = Arc::new(common::current_thread());
    let (_tx, rx) = tokio::sync::mpsc::channel::<u32>(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let block = Duration::from_secs(4);
    let guard = rt.enter();
    // Spawned first, so that it is polled (and waits) before the other one
    // blocks the runtime's only thread.
    let (line, waiting) = spawn_at("ct.channel", process_job(9, "queue", rx, permits));
    let (blocker_line, blocker) = spawn_at("ct.blocker", async move {
        started_tx.send(std::time::Instant::now()).unwrap();
        std::thread::sleep(block);
    });
    drop(guard);
    let waiting_id: u64 = waiting.id().to_string().parse().unwrap();
    let blocker_id: u64 = blocker.id().to_string().parse().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = stop_rx.await;
            })
        })
    };

    let blocked_at = started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The runtime's thread sleeps in the blocker's poll: nothing on it runs
    // until it returns, yet the dump answers from the tasks' own records.
    let mut tasks = Vec::new();
    let hung = wait_until(Duration::from_millis(2500), || {
        tasks = watchdog.tasks();
        tasks
            .iter()
            .any(|t| t.name == "ct.channel" && t.state == TaskState::Hung)
    });
    let read_after = blocked_at.elapsed();
    assert!(hung, "the waiting task became hung: {tasks:#?}");
    assert!(
        read_after < block,
        "read while the runtime was blocked ({read_after:?} of {block:?})"
    );
    check(
        find(&tasks, "ct.channel"),
        &Expected {
            name: "ct.channel",
            line,
            id: waiting_id,
            spans: vec![
                "process_job{id=9 host=\"queue\"}",
                "fetch_upstream{host=\"queue\"}",
                "wait_for_message{queue=\"jobs\"}",
            ],
        },
        0.5,
    );
    let b = find(&tasks, "ct.blocker");
    assert_eq!(b.id, Some(blocker_id), "{b:?}");
    assert_eq!(b.state, TaskState::Running, "{b:?}");
    assert_eq!(b.polls, 0, "its first poll has not ended: {b:?}");
    assert!(
        b.state_seconds >= 0.4 && b.state_seconds <= read_after.as_secs_f64() + 0.1,
        "in its poll since it blocked: {b:?} (read {read_after:?} after)"
    );
    assert!(
        b.spawned_at
            .ends_with(&format!("tests/task_dump.rs:{blocker_line}")),
        "{b:?}"
    );
    let text = watchdog.task_dump(10).to_string();
    assert!(
        text.contains(&format!("task {waiting_id} \"ct.channel\" [hung, idle ")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "task {blocker_id} \"ct.blocker\" [running, in a poll for "
        )),
        "{text}"
    );

    stop_tx.send(()).unwrap();
    driver.join().unwrap();
    drop(waiting);
    drop(blocker);
    watchdog.shutdown();
    Arc::try_unwrap(rt)
        .ok()
        .unwrap()
        .shutdown_timeout(Duration::from_secs(1));
}

/// Waits for a reply that never comes.
#[cfg(all(tokio_unstable, feature = "taskdump"))]
async fn waits_for_reply(rx: tokio::sync::oneshot::Receiver<()>) {
    let _ = rx.await;
}

#[cfg(all(tokio_unstable, feature = "taskdump"))]
#[test]
fn unstable_a_hung_task_has_its_await_trace_from_a_task_dump() {
    let _serial = serial();
    subscriber();
    let watchdog = watchdog_hung_after(Duration::from_millis(500));
    let rt = common::multi_thread(2);
    watchdog.watch_runtime("dumped", rt.handle()).unwrap();
    // A current-thread runtime is never dumped (tokio#8391).
    let ct = common::current_thread();
    watchdog.watch_runtime("not-dumped", ct.handle()).unwrap();
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    let hung = {
        let _enter = rt.enter();
        loopwatch::spawn_named("dump.traced", waits_for_reply(rx))
    };
    let traced = wait_until(Duration::from_secs(10), || {
        watchdog
            .tasks()
            .iter()
            .any(|t| t.name == "dump.traced" && t.await_trace.is_some())
    });
    let tasks = watchdog.tasks();
    let task = find(&tasks, "dump.traced");
    assert!(traced, "{task:?}");
    assert_eq!(task.state, TaskState::Hung);
    let trace = task.await_trace.as_deref().unwrap();
    assert!(trace.contains("waits_for_reply"), "{trace}");
    // The dump polled it to trace it: no sign of progress, its idle time
    // runs on from its first poll.
    assert!(
        task.state_seconds > task.age_seconds - 0.3,
        "the dump's polls ended its idle time: {task:?}"
    );
    println!("{}", watchdog.task_dump(10));
    assert!(format!("{}", watchdog.task_dump(10)).contains("await trace (tokio's task dump):"));
    // The runtime goes on: a task spawned now runs.
    assert_eq!(
        rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
        7
    );
    hung.abort();
    watchdog.shutdown();
}
