//! The status page (`GET /`) during a stall, checked in a real browser.
//!
//! A service with hung tasks (a channel nobody sends on, a semaphore permit
//! held forever, a task named `<script>…`), instrumented calls, and a worker
//! blocked for 10 s. While it is stuck, headless Chromium loads the page;
//! the example checks the DOM the browser built: the status is stalled, the
//! stalled worker shows its cause, culprit and spans, with its stack under a
//! disclosure; the hung tasks are listed with their spans; the task named
//! `<script>` shows as text and the page has no script at all.
//!
//! ```text
//! cargo run --example status_page                      # needs chromium on PATH
//! cargo run --example status_page -- --screenshot docs/status-page.png
//! cargo run --example status_page -- --serve 60        # no browser: look at it yourself
//! ```
//!
//! Options: `--browser PATH` (default `chromium`), `--screenshot PATH`,
//! `--serve SECONDS` (print the address and serve that long instead).
//! Exits non-zero when a check fails or the browser cannot run.

use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// A request handler that calls a blocking function on the async worker.
#[tracing::instrument]
async fn handle_order(id: u64) {
    load_order(id);
}

/// The culprit: a sync call on an async worker, its last act (in a release
/// build, a jump: the function's frame is gone while it blocks, and the
/// page still names it, as a tail call).
#[inline(never)]
fn load_order(_id: u64) {
    std::thread::sleep(Duration::from_secs(10))
}

#[tracing::instrument(skip(permits))]
async fn acquire_permit(pool: &'static str, permits: Arc<tokio::sync::Semaphore>) {
    let _permit = permits.acquire().await;
}

#[tracing::instrument(skip(rx))]
async fn wait_for_reply(queue: &'static str, mut rx: tokio::sync::mpsc::Receiver<u32>) {
    let _ = rx.recv().await;
}

#[tracing::instrument(skip(permits, rx))]
async fn process_job(
    id: u32,
    permits: Option<Arc<tokio::sync::Semaphore>>,
    rx: Option<tokio::sync::mpsc::Receiver<u32>>,
) {
    if let Some(permits) = permits {
        acquire_permit("db", permits).await;
    }
    if let Some(rx) = rx {
        wait_for_reply("billing", rx).await;
    }
}

struct Args {
    browser: String,
    screenshot: Option<String>,
    serve: Option<u64>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        browser: "chromium".into(),
        screenshot: None,
        serve: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--browser" => args.browser = value()?,
            "--screenshot" => args.screenshot = Some(value()?),
            "--serve" => {
                args.serve = Some(value()?.parse().map_err(|e| format!("--serve: {e}"))?);
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => {
            println!("PASS");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = args()?;
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(loopwatch::spans::layer()),
    )
    .map_err(|e| e.to_string())?;
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(Duration::from_secs(1))
        .hung_task_threshold(Duration::from_secs(1))
        .check_interval(Duration::from_millis(50))
        .start()
        .map_err(|e| e.to_string())?;
    let exporter = loopwatch::Exporter::builder()
        .bind("127.0.0.1:0".parse().expect("an address"))
        .start(&watchdog)
        .map_err(|e| e.to_string())?;
    let url = format!("http://{}/", exporter.local_addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    watchdog
        .watch_runtime("main", rt.handle())
        .map_err(|e| e.to_string())?;

    // Tasks that wait forever, and one with a hostile name.
    let (reply_tx, reply_rx) = tokio::sync::mpsc::channel::<u32>(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let _enter = rt.enter();
    let _jobs = [
        loopwatch::spawn_named("billing.job", process_job(42, None, Some(reply_rx))),
        loopwatch::spawn_named("db.job", process_job(43, Some(permits.clone()), None)),
        loopwatch::spawn_named(
            "<script>alert(\"loopwatch\")</script>",
            std::future::pending::<()>().instrument(tracing::info_span!("x", html = "<b>bold</b>")),
        ),
        loopwatch::spawn_named("ticker", async {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
            }
        }),
    ];
    for i in 0..4u32 {
        let _ = loopwatch::blocking("db.query", || std::hint::black_box(i));
    }
    let _ = loopwatch::blocking_fallible("cache.get", || Err::<(), _>("miss"));

    // A worker stuck in a request for 10 s.
    std::thread::sleep(Duration::from_millis(200));
    let stuck = loopwatch::spawn_named("orders", handle_order(7));
    let began = Instant::now();
    let ready = wait(Duration::from_secs(8), || {
        let h = watchdog.health();
        h.status == loopwatch::Status::Stalled
            && h.recent_stalls
                .iter()
                .any(|s| !s.ended && s.backtrace.is_some())
            && h.tasks.hung >= 3
    });
    if !ready {
        return Err(format!(
            "no stall with its stack and hung tasks after 8 s: {:?}",
            watchdog.health()
        ));
    }
    println!(
        "stalled and reported {:.1} s into the block; the page: {url}",
        began.elapsed().as_secs_f64()
    );

    if let Some(seconds) = args.serve {
        println!("serving for {seconds} s");
        std::thread::sleep(Duration::from_secs(seconds));
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("loopwatch-page-{}", std::process::id()));
    let dom = browser(&args.browser, &dir, &["--dump-dom", &url])?;
    let checked = check(&dom);
    if let Some(path) = &args.screenshot {
        let path = std::path::absolute(path).map_err(|e| e.to_string())?;
        browser(
            &args.browser,
            &dir,
            &[
                "--hide-scrollbars",
                "--window-size=1280,1400",
                &format!("--screenshot={}", path.display()),
                &url,
            ],
        )?;
        println!("screenshot: {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    checked?;
    println!(
        "the browser's DOM ({} bytes) shows the stall, its stack, the hung tasks and escaped names",
        dom.len()
    );
    drop(reply_tx);
    drop(stuck);
    drop(_enter);
    rt.shutdown_background();
    exporter.shutdown();
    watchdog.shutdown();
    Ok(())
}

fn wait(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs headless Chromium with `extra` arguments; its standard output.
fn browser(program: &str, profile: &std::path::Path, extra: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program} (install Debian's chromium): {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let out = reader.join().expect("reader").map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("{program} exited with {status}"));
            }
            return Ok(out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("{program} took more than 60 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The checks on the DOM the browser built.
fn check(dom: &str) -> Result<(), String> {
    let mut failed = Vec::new();
    let mut expect = |what: &str, ok: bool| {
        if !ok {
            failed.push(what.to_owned());
        }
    };
    expect(
        "the status badge says stalled",
        dom.contains("<span id=\"status\" class=\"status stalled\">stalled</span>"),
    );
    expect(
        "the issue line names the stuck runtime",
        dom.contains("runtime main: worker"),
    );
    let stalled = section(dom, "<table id=\"stalled\">");
    expect(
        "the stalled worker's task",
        stalled.contains("<td>orders</td>"),
    );
    expect(
        "its cause",
        stalled.contains("<span class=\"cause\">blocked</span>"),
    );
    expect("its culprit", stalled.contains("status_page::load_order"));
    expect("its spans", stalled.contains("handle_order{id=7}"));
    expect(
        "its stack, under a disclosure",
        stalled.contains("<details><summary>stack of the stuck thread")
            && stalled.contains("std::thread::functions::sleep"),
    );
    let tasks = section(dom, "<table id=\"tasks\">");
    expect(
        "a task waiting on a channel, with where it waits",
        tasks.contains("billing.job")
            && tasks.contains("process_job{id=42} &gt; wait_for_reply{queue=\"billing\"}"),
    );
    expect(
        "a task waiting for a permit, with where it waits",
        tasks.contains("db.job")
            && tasks.contains("process_job{id=43} &gt; acquire_permit{pool=\"db\"}"),
    );
    expect(
        "hung tasks marked hung",
        tasks.contains("<td class=\"hung\">hung</td>"),
    );
    expect(
        "the task named <script> shown as text",
        tasks.contains("&lt;script&gt;alert(\"loopwatch\")&lt;/script&gt;"),
    );
    expect(
        "a span field with markup shown as text",
        tasks.contains("&lt;b&gt;bold&lt;/b&gt;"),
    );
    expect("no script element at all", !dom.contains("<script"));
    expect(
        "no bold element from a span field",
        !dom.contains("<b>bold</b>"),
    );
    let calls = section(dom, "<table id=\"calls\">");
    expect(
        "the calls table",
        calls.contains("db.query") && calls.contains("cache.get"),
    );
    expect(
        "the process figures",
        dom.contains("<div class=\"grid\" id=\"process\">") && dom.contains("resident memory"),
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the page lacks: {}\n--- DOM ---\n{dom}",
            failed.join("; ")
        ))
    }
}

/// The part of `dom` from `start` to the end of its table.
fn section<'a>(dom: &'a str, start: &str) -> &'a str {
    let Some(at) = dom.find(start) else {
        return "";
    };
    let rest = &dom[at..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}
