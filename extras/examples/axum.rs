//! loopwatch in a real HTTP service: an axum server with one handler that
//! calls a blocking function on the async worker (the classic mistake) and one
//! that does it right, behind tower-http's `TraceLayer`. The example drives it
//! with its own requests, shows what loopwatch reports (the stall names the
//! request's span: `request{method=GET uri=/report version=HTTP/1.1}`), then
//! exits by itself.
//!
//! It is set up the way a service adopts loopwatch: `#[loopwatch::main]`,
//! the spans layer, and the exporter from `LOOPWATCH_ADDR`.
//!
//! ```text
//! cargo run --release -p loopwatch-extras --example axum
//! ```
//!
//! Leave out the self-test with `--serve` to keep it running:
//! `LOOPWATCH_ADDR=127.0.0.1:9377 cargo run -p loopwatch-extras --example axum -- --serve`, then
//! `curl localhost:3000/report` (blocks a worker for 6 s, past the 5 s threshold),
//! `curl localhost:3000/report-offloaded`, and `curl localhost:9377/health`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use loopwatch::WatchExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// A sync function that takes a while: a report built with blocking I/O.
#[loopwatch::instrument_blocking(name = "report.build")]
fn build_report() -> Result<String, std::io::Error> {
    std::thread::sleep(Duration::from_secs(6)); // stands for sync file or database I/O
    Ok("report ready\n".into())
}

/// The mistake: the sync call runs on the async worker and blocks it.
async fn report() -> String {
    build_report().unwrap_or_else(|e| e.to_string())
}

/// The fix: the same call in `spawn_blocking` (not counted as blocking).
async fn report_offloaded() -> String {
    tokio::task::spawn_blocking(build_report)
        .await
        .map(|r| r.unwrap_or_else(|e| e.to_string()))
        .unwrap_or_else(|e| e.to_string())
}

#[loopwatch::main(worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs of loopwatch only, and every span for loopwatch's layer, which
    // puts the stuck request's spans (tower-http's `request` span is at
    // DEBUG) in stall reports.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_filter(tracing_subscriber::EnvFilter::new("loopwatch=info")),
        )
        .with(loopwatch::spans::layer())
        .init();
    let serve = std::env::args().any(|a| a == "--serve");

    // #[loopwatch::main] started the watchdog and watches this runtime as
    // "main"; with LOOPWATCH_ADDR it serves /metrics and /health too.
    let watchdog = loopwatch::Watchdog::current().ok_or("loopwatch is off (LOOPWATCH=off)")?;
    if serve {
        return serve_forever().await;
    }
    // The self-test asks an exporter of its own, on a port the OS picks.
    let exporter = loopwatch::Exporter::builder()
        .bind("127.0.0.1:0".parse()?)
        .start(&watchdog)?;

    let app = app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!(
        "serving http://{addr}; metrics and health on http://{}",
        exporter.local_addr()
    );
    let server = loopwatch::spawn_named(
        "http.server",
        async move { axum::serve(listener, app).await },
    );
    // Self-test from plain threads, as clients would.
    let metrics_at = exporter.local_addr();
    let client = std::thread::spawn(move || -> Result<(), String> {
        println!(
            "GET /report-offloaded: {}",
            fetch(addr, "/report-offloaded")?.trim()
        );
        let blocked = std::thread::spawn(move || fetch(addr, "/report"));
        std::thread::sleep(Duration::from_millis(5600));
        let health = fetch(metrics_at, "/health")?;
        println!(
            "/health while /report blocks a worker: {}",
            health.lines().next().unwrap_or("")
        );
        println!(
            "GET /report: {}",
            blocked.join().map_err(|_| "client panicked")??.trim()
        );
        Ok(())
    });
    tokio::task::spawn_blocking(move || client.join())
        .watched("self-test")
        .await?
        .map_err(|_| "client thread panicked")??;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = watchdog.health().calls;
    let c = calls.get("report.build").copied().unwrap_or_default();
    println!(
        "report.build: {} calls, {} blocking (the one on the worker), {} slow",
        c.calls, c.blocking, c.slow
    );
    let spans = watchdog
        .health()
        .recent_stalls
        .first()
        .map(|s| s.spans.clone())
        .unwrap_or_default();
    println!("the stall's spans: {}", spans.join(" > "));
    exporter.shutdown();
    server.abort();
    if c.calls != 2 || c.blocking != 1 {
        return Err("expected 2 calls, 1 of them blocking".into());
    }
    if !spans
        .first()
        .is_some_and(|s| s.starts_with("request{method=GET uri=/report "))
    {
        return Err(
            format!("expected the stall in the /report request's span, got {spans:?}").into(),
        );
    }
    Ok(())
}

/// The same service on port 3000 until it is stopped.
async fn serve_forever() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("serving http://127.0.0.1:3000; metrics and health on LOOPWATCH_ADDR");
    axum::serve(listener, app()).await?;
    Ok(())
}

fn app() -> Router {
    Router::new()
        .route("/report", get(report))
        .route("/report-offloaded", get(report_offloaded))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// A plain HTTP/1.1 GET: returns the status line and the body.
fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.lines().next().unwrap_or("").to_owned();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(format!("{status}\n{body}"))
}
