//! 50 concurrent scrapes of `/metrics` and `/health` while every worker of
//! the application's runtime is blocked, against the same scrapes while it is
//! idle (the baseline, same run). Prints p50 / p99 / max latency; exits
//! non-zero if any scrape failed. Then the time of one `/metrics` scrape with
//! about 1,000 series more (125 task names), against the same before them.
//!
//! ```text
//! cargo run --release -p loopwatch-extras --bin scrape_load
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CONCURRENT: usize = 50;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(Duration::from_secs(1))
        .start()?;
    let exporter = loopwatch::Exporter::builder()
        .bind("127.0.0.1:0".parse()?)
        .start(&watchdog)?;
    let addr = exporter.local_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    watchdog.watch_runtime("app", rt.handle())?;
    std::thread::sleep(Duration::from_millis(300));

    let idle = round(addr)?;

    let barrier = Arc::new(Barrier::new(3));
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            let b = barrier.clone();
            rt.spawn(async move {
                b.wait();
                std::thread::sleep(Duration::from_secs(4));
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(Duration::from_millis(1500)); // stalled by now
    let stalled_status = request(addr, "/health")?.0;
    let blocked = round(addr)?;
    for b in blockers {
        rt.block_on(b)?;
    }

    println!(
        "{CONCURRENT} concurrent scrapes (/metrics and /health, each a new connection), latency:"
    );
    report("runtime idle (baseline)", &idle);
    report("every worker blocked", &blocked);
    println!("/health answered {stalled_status} during the stall");

    let small = scrape_time(addr)?;
    let series_before = series(addr)?;
    rt.block_on(async {
        for i in 0..125 {
            let name: &'static str = Box::leak(format!("load.task{i}").into_boxed_str());
            loopwatch::spawn_named(name, async {}).await.expect("task");
        }
    });
    std::thread::sleep(Duration::from_millis(1500)); // published every second
    let large = scrape_time(addr)?;
    let series_after = series(addr)?;
    println!(
        "one /metrics scrape (median of 21): {series_before} series {:.2} ms; {series_after} series {:.2} ms (x{:.1})",
        small.as_secs_f64() * 1e3,
        large.as_secs_f64() * 1e3,
        large.as_secs_f64() / small.as_secs_f64()
    );
    exporter.shutdown();
    watchdog.shutdown();
    if stalled_status != 503 {
        return Err("/health did not say 503 during the stall".into());
    }
    Ok(())
}

/// Median time of 21 sequential `/metrics` scrapes.
fn scrape_time(addr: SocketAddr) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut times = Vec::new();
    for _ in 0..21 {
        times.push(request(addr, "/metrics")?.1);
    }
    times.sort();
    Ok(times[10])
}

/// Number of samples (lines that are not comments) in the exposition.
fn series(addr: SocketAddr) -> Result<usize, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: load\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count())
}

/// One round: `CONCURRENT` threads, each scraping `/metrics` then `/health`.
fn round(addr: SocketAddr) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let start = Arc::new(Barrier::new(CONCURRENT));
    let threads: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                start.wait();
                let mut took = Vec::new();
                for path in ["/metrics", "/health"] {
                    let (status, t) = request(addr, path).map_err(|e| e.to_string())?;
                    if status != 200 && status != 503 {
                        return Err(format!("{path}: HTTP {status}"));
                    }
                    took.push(t);
                }
                Ok(took)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| "scrape thread panicked")??);
    }
    all.sort();
    Ok(all)
}

fn request(addr: SocketAddr, path: &str) -> Result<(u16, Duration), Box<dyn std::error::Error>> {
    let began = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let status = std::str::from_utf8(&response[..response.len().min(12)])?
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    Ok((status, began.elapsed()))
}

fn report(what: &str, sorted: &[Duration]) {
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {what:28} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} requests)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3,
        sorted.len()
    );
}
