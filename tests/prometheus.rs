//! The exposition against the real Prometheus tools: `promtool check metrics`
//! finds nothing, and a Prometheus server scrapes a stall and serves it back
//! through its query API. Needs `promtool` and `prometheus` on PATH (Debian
//! package `prometheus`; `.ci/run` installs it). Without them the tests say so
//! and pass, except under CI (`CI` set), where they fail.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{get, http, multi_thread, serial, wait_until};
use loopwatch::{Exporter, Watchdog};

fn tool(name: &str) -> Option<String> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(name.to_owned());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "`{name}` is not installed; CI must install Debian's `prometheus` package"
    );
    eprintln!("skipped: `{name}` is not installed (Debian package `prometheus`)");
    None
}

fn promtool_findings(promtool: &str, exposition: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A watchdog, an exporter and a runtime with every kind of series in use.
fn busy_service(stall: Duration) -> (Watchdog, Exporter, tokio::runtime::Runtime) {
    let watchdog = Watchdog::builder()
        .stall_threshold(stall)
        .hung_task_threshold(Duration::from_millis(500))
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .start(&watchdog)
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("prom", rt.handle()).unwrap();
    rt.block_on(async {
        let _ = loopwatch::spawn_fallible("prom.task", async { Err::<(), _>("x") }).await;
        let _ = loopwatch::spawn_named("prom.task", async {}).await;
        loopwatch::spawn_named("prom.hung", std::future::pending::<()>());
    });
    rt.block_on(rt.spawn(async {
        loopwatch::blocking("prom.call", || {
            std::thread::sleep(Duration::from_millis(120))
        });
    }))
    .unwrap();
    (watchdog, exporter, rt)
}

fn block_all_workers(
    rt: &tokio::runtime::Runtime,
    for_: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let barrier = Arc::new(Barrier::new(2));
    (0..2)
        .map(|_| {
            let b = barrier.clone();
            rt.spawn(async move {
                b.wait();
                std::thread::sleep(for_);
            })
        })
        .collect()
}

#[test]
fn the_exposition_passes_promtool_during_and_after_a_stall() {
    let _serial = serial();
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let (watchdog, exporter, rt) = busy_service(Duration::from_millis(800));
    let addr = exporter.local_addr();
    let tasks = block_all_workers(&rt, Duration::from_millis(2500));
    assert!(wait_until(Duration::from_secs(3), || get(addr, "/health")
        .status
        == 503));
    std::thread::sleep(Duration::from_millis(1100)); // task and call series published
    let during = get(addr, "/metrics").body;
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = get(addr, "/metrics").body;
    for (when, exposition) in [("during", &during), ("after", &after)] {
        for series in [
            "loopwatch_stalls_total{runtime=\"prom\"}",
            "loopwatch_tasks_failed_total{task=\"prom.task\",reason=\"error\"}",
            "loopwatch_blocking_calls_total{call=\"prom.call\"}",
            "loopwatch_tasks_hung{task=\"prom.hung\"}",
            "loopwatch_poll_duration_seconds_bucket",
            "process_resident_memory_bytes",
        ] {
            assert!(
                exposition.contains(series),
                "{when}: {series} missing:\n{exposition}"
            );
        }
        let (ok, findings) = promtool_findings(&promtool, exposition);
        assert!(
            ok && findings.trim().is_empty(),
            "{when} the stall, promtool says:\n{findings}\n--- exposition:\n{exposition}"
        );
    }
    exporter.shutdown();
    watchdog.shutdown();
}

#[test]
fn a_prometheus_server_scrapes_a_stall_and_serves_it_back() {
    let _serial = serial();
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let (watchdog, exporter, rt) = busy_service(Duration::from_secs(1));
    let target = exporter.local_addr();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("loopwatch-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: loopwatch\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let query = |q: &str| -> Option<f64> {
        let request = format!(
            "GET /api/v1/query?query={q} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
        );
        let body = http(web, request.as_bytes()).ok()?.body;
        let json = &body[body.find('{')?..=body.rfind('}')?];
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let ready = wait_until(Duration::from_secs(20), || {
        let request = format!("GET /-/ready HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
        http(web, request.as_bytes()).is_ok_and(|r| r.status == 200)
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(ready, "prometheus did not become ready");
        // Prometheus hands targets to its scrapers some seconds after it starts.
        assert!(
            wait_until(Duration::from_secs(30), || query("up") == Some(1.0)),
            "prometheus never scraped the exporter"
        );
        let began = Instant::now();
        let tasks = block_all_workers(&rt, Duration::from_millis(4000));
        // While the workers are blocked, Prometheus sees the stalled workers.
        let stalled = wait_until(Duration::from_secs(4), || {
            query("loopwatch_stalled_workers%7Bruntime%3D%22prom%22%7D") == Some(2.0)
        });
        assert!(
            stalled,
            "Prometheus did not see 2 stalled workers within {:?}; up = {:?}, stalled_workers = {:?}, raw: {:?}",
            began.elapsed(),
            query("up"),
            query("loopwatch_stalled_workers"),
            http(web, format!("GET /api/v1/query?query=loopwatch_stalled_workers HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n").as_bytes()).map(|r| r.body)
        );
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(10), || {
                query("loopwatch_stalls_total%7Bruntime%3D%22prom%22%7D").is_some_and(|v| v >= 2.0)
            }),
            "stall counter not served back"
        );
    }));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    exporter.shutdown();
    watchdog.shutdown();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
