//! Injects known faults into a service-shaped workload and checks that
//! loopwatch reported exactly those, nothing more: stalls per runtime (with
//! detection latency), task outcomes and call counts per name, hung tasks,
//! and real HTTP scrapes of `/metrics` and `/health`, including 50
//! concurrent scrapes while every worker is blocked. Prints a summary, writes
//! `--output FILE` (JSON: injected vs reported, latencies, scrape latencies),
//! serves `/metrics` on `--exporter ADDR` (for a Prometheus to scrape; a free
//! port on 127.0.0.1 by default), and exits non-zero on any mismatch.
//!
//! ```text
//! cargo run --release --example stress -- --duration 15 --stall-threshold 1s --output results.json
//! ```
//!
//! `--soak SECONDS` runs the same workload for that long (at least 30 s),
//! with a stall injected every 30 s after the schedule, `/metrics` scraped
//! every second and resident memory sampled every 10 s: it also checks that
//! every scrape was answered and that memory is flat after warm-up (under
//! 1 % growth over the second half of the run: the median of its last third
//! against that of its first), and writes the samples to the JSON output.
//!
//! ```text
//! cargo run --release --example stress -- --soak 600 --output soak.json
//! ```
//!
//! `--scale` runs the scale mode instead: 1,000,000 tasks through the system
//! while 10,000 stay alive; it reports peak resident memory, bytes per live
//! task, the watchdog thread's CPU share, and that memory returns to where it
//! was (Linux).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use loopwatch::{Exporter, StallCause, StallReport, Watchdog};

use loopwatch_test_support::measure;

const WORKERS: usize = 4;
const CHECK: Duration = Duration::from_millis(50);

struct Options {
    duration: Duration,
    stall: Duration,
    seed: u64,
    output: Option<String>,
    scale: bool,
    soak: bool,
    /// Where the exporter listens (a free port on 127.0.0.1 by default).
    exporter: SocketAddr,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(15),
        stall: Duration::from_secs(1),
        seed: 1,
        output: None,
        scale: false,
        soak: false,
        exporter: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--duration" => o.duration = Duration::from_secs(value()?.parse().map_err(|_| "--duration takes whole seconds")?),
            "--stall-threshold" => o.stall = parse_duration(&value()?)?,
            "--seed" => o.seed = value()?.parse().map_err(|_| "--seed takes a number")?,
            "--output" => o.output = Some(value()?),
            "--scale" => o.scale = true,
            "--exporter" => {
                o.exporter = value()?
                    .parse()
                    .map_err(|_| "--exporter takes an address such as 127.0.0.1:9377")?
            }
            "--soak" => {
                let seconds: u64 = value()?.parse().map_err(|_| "--soak takes whole seconds")?;
                if seconds < 30 {
                    return Err("--soak must be at least 30 s".into());
                }
                o.soak = true;
                o.duration = Duration::from_secs(seconds);
            }
            "--help" | "-h" => {
                return Err("usage: stress [--duration SECONDS | --soak SECONDS] [--stall-threshold 1s|500ms] [--seed N] [--output FILE] [--exporter ADDR] [--scale]".into())
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    if o.duration < Duration::from_secs(14) {
        return Err("--duration must be at least 14 s (the fault schedule takes 13)".into());
    }
    if o.stall < Duration::from_millis(300) || o.stall > Duration::from_secs(3) {
        return Err("--stall-threshold must be between 300ms and 3s".into());
    }
    Ok(o)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("bad duration {s:?}; write e.g. 1s or 500ms");
    if let Some(ms) = s.strip_suffix("ms") {
        return Ok(Duration::from_millis(ms.parse().map_err(|_| err())?));
    }
    let secs: f64 = s
        .strip_suffix('s')
        .ok_or_else(err)?
        .parse()
        .map_err(|_| err())?;
    Ok(Duration::from_secs_f64(secs))
}

/// A small deterministic generator for the background workload.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[loopwatch::instrument_blocking(name = "stress.io")]
fn io(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[loopwatch::instrument_blocking(name = "stress.io_fail")]
fn io_fail() -> Result<(), std::io::Error> {
    Err(std::io::Error::other("injected"))
}

/// When each injected stall began, by task name.
type Starts = Arc<Mutex<BTreeMap<String, Vec<Instant>>>>;

fn mark(starts: &Starts, name: &str) {
    starts
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default()
        .push(Instant::now());
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("stress: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let o = options()?;
    if o.scale {
        return scale(&o);
    }
    // The injected panics are expected: keep their messages out of the output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"injected panic") {
            default_hook(info);
        }
    }));
    let t = o.stall;
    let reports: Arc<Mutex<Vec<(Instant, StallReport)>>> = Arc::default();
    let sink = reports.clone();
    let watchdog = Watchdog::builder()
        .stall_threshold(t)
        .blocking_threshold(Duration::from_millis(100))
        .slow_call_threshold(Duration::from_millis(500))
        .hung_task_threshold(Duration::from_secs(2))
        .check_interval(CHECK)
        .max_reports_per_minute(1000)
        .on_stall(move |r| {
            // Kept for the comparison at the end, without the stack (a soak
            // would otherwise measure its own list of stacks growing).
            let mut kept = r.clone();
            kept.backtrace = None;
            sink.lock().unwrap().push((Instant::now(), kept));
        })
        .start()?;
    let exporter = Exporter::builder().bind(o.exporter).start(&watchdog)?;
    let addr = exporter.local_addr();
    let service = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    watchdog.watch_runtime("service", service.handle())?;
    // Spawns from this thread go to the service runtime.
    let _enter = service.enter();
    let ct = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    watchdog.watch_runtime("ct", ct.handle())?;
    let starts: Starts = Arc::default();
    let began = Instant::now();
    let end = began + o.duration;
    // Soak: a scrape every second and a memory sample every 10 s, until the end.
    let soak = o.soak.then(|| {
        std::thread::spawn(move || {
            let mut scrapes = 0u64;
            let mut failed = 0u64;
            let mut memory: Vec<(f64, u64)> = Vec::new();
            let mut next_sample = began;
            while Instant::now() < end {
                if Instant::now() >= next_sample {
                    if let Ok(bytes) = measure::resident() {
                        memory.push((began.elapsed().as_secs_f64(), bytes));
                    }
                    next_sample += Duration::from_secs(10);
                }
                scrapes += 1;
                if !matches!(request(addr, "/metrics"), Ok((200, _))) {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (scrapes, failed, memory)
        })
    });

    // Background: a steady mix of healthy work, on both runtimes.
    let background_spawned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bg = {
        let spawned = background_spawned.clone();
        let seed = o.seed;
        service.spawn(async move {
            let mut rng = Rng(seed | 1);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(64);
            let consumer = loopwatch::spawn_named("svc.consumer", async move {
                let mut n = 0u64;
                while let Some(v) = rx.recv().await {
                    n = n.wrapping_add(v);
                }
                n
            });
            while Instant::now() < end {
                for _ in 0..20 {
                    let tx = tx.clone();
                    let work = rng.next() % 200;
                    spawned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    loopwatch::spawn_named("svc.request", async move {
                        tokio::time::sleep(Duration::from_millis(work % 20)).await;
                        let _ = tx.send(work).await;
                        // A little CPU per request, well under a millisecond.
                        std::hint::black_box((0..work * 50).sum::<u64>());
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(tx);
            consumer.await.unwrap_or(0)
        })
    };
    let ct_thread = {
        let starts = starts.clone();
        let at = began + Duration::from_millis(6000);
        std::thread::Builder::new()
            .name("ct-driver".into())
            .spawn(move || {
                ct.block_on(async move {
                    let ticker = tokio::spawn(async move {
                        while Instant::now() < end {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                    tokio::time::sleep_until(at.into()).await;
                    let stall = loopwatch::spawn_named("fault.ct_sleep", async move {
                        mark(&starts, "fault.ct_sleep");
                        std::thread::sleep(t + t / 2);
                    });
                    stall.await.unwrap();
                    ticker.await.unwrap();
                });
            })?
    };

    let at = |ms: u64| {
        std::thread::sleep(
            (began + Duration::from_millis(ms)).saturating_duration_since(Instant::now()),
        )
    };

    // 1. A worker blocked past the threshold by a sleep.
    at(500);
    let s = starts.clone();
    let sleep_fault = loopwatch::spawn_named("fault.sleep", async move {
        mark(&s, "fault.sleep");
        std::thread::sleep(t + t / 2);
    });
    // 2. A worker spinning past it.
    at(2500);
    let s = starts.clone();
    let spin_fault = loopwatch::spawn_named("fault.spin", async move {
        mark(&s, "fault.spin");
        spin(t + t / 2);
    });
    service.block_on(sleep_fault)?;
    service.block_on(spin_fault)?;

    // 3.-10. Calls and task outcomes.
    at(4500);
    let hung: Vec<_> = service.block_on(async {
        for _ in 0..3 {
            tokio::spawn(async { io(150) }).await.unwrap(); // on a worker: blocking
            tokio::task::spawn_blocking(|| io(150)).await.unwrap(); // offloaded: not blocking
        }
        for _ in 0..2 {
            tokio::task::spawn_blocking(|| io(600)).await.unwrap(); // slow, not blocking
        }
        for _ in 0..4 {
            assert!(io_fail().is_err());
        }
        for i in 0..5 {
            let r =
                loopwatch::spawn_fallible(
                    "fault.err",
                    async move { Err::<(), _>(format!("job {i}")) },
                )
                .await;
            assert!(r.unwrap().is_err());
        }
        for _ in 0..3 {
            let r = loopwatch::spawn_named("fault.panic", async { panic!("injected panic") }).await;
            assert!(r.unwrap_err().is_panic());
        }
        let aborted: Vec<_> = (0..4)
            .map(|_| loopwatch::spawn_named("fault.abort", std::future::pending::<()>()))
            .collect();
        tokio::task::yield_now().await;
        for h in &aborted {
            h.abort();
        }
        for h in aborted {
            assert!(h.await.unwrap_err().is_cancelled());
        }
        (0..2)
            .map(|_| loopwatch::spawn_named("fault.hang", std::future::pending::<()>()))
            .collect()
    });

    // 11. (on the current-thread runtime, at 6 s, above)
    // 12. A total stall of the service runtime, with 50 concurrent scrapes during it.
    at(8500);
    let barrier = Arc::new(Barrier::new(WORKERS + 1));
    let total: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (b, s) = (barrier.clone(), starts.clone());
            loopwatch::spawn_named("fault.total", async move {
                b.wait();
                mark(&s, "fault.total");
                std::thread::sleep(t + t * 6 / 10);
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(t + CHECK * 4);
    let during = concurrent_scrapes(addr, 50);
    let health_during = request(addr, "/health").map(|r| r.0).unwrap_or(0);
    for h in total {
        service.block_on(h)?;
    }

    // Soak: one more stall every 30 s, while there is time for it to end.
    let mut soak_stalls = 0;
    let mut next = 20_000;
    while o.soak && next + 3 * t.as_millis() as u64 + 2_000 < o.duration.as_millis() as u64 {
        at(next);
        let s = starts.clone();
        let fault = loopwatch::spawn_named("fault.soak", async move {
            mark(&s, "fault.soak");
            std::thread::sleep(t + t / 2);
        });
        service.block_on(fault)?;
        soak_stalls += 1;
        next += 30_000;
    }

    // The rest of the run: background only.
    at(o.duration.as_millis() as u64);
    let background_sum = service.block_on(bg)?;
    ct_thread
        .join()
        .map_err(|_| "the current-thread driver panicked")?;
    std::thread::sleep(CHECK * 4 + Duration::from_millis(1000)); // last series published
    let metrics = request(addr, "/metrics")?.1;
    let health: serde_json::Value = serde_json::from_str(&request(addr, "/health")?.1)?;

    // ---- Compare.
    let mut checks: Vec<(String, String, String)> = Vec::new(); // (what, expected, reported)
    let mut check = |what: &str, expected: String, reported: String| {
        checks.push((what.into(), expected, reported))
    };
    let reports = reports.lock().unwrap().clone();
    let firsts: Vec<&(Instant, StallReport)> =
        reports.iter().filter(|(_, r)| r.escalation == 0).collect();
    let count = |runtime: &str| firsts.iter().filter(|(_, r)| r.runtime == runtime).count();
    check(
        "stalls on 'service'",
        (6 + soak_stalls).to_string(),
        count("service").to_string(),
    );
    check("stalls on 'ct'", "1".into(), count("ct").to_string());
    let unexpected: Vec<String> = firsts
        .iter()
        .filter(|(_, r)| {
            !matches!(
                r.task.as_deref(),
                Some(
                    "fault.sleep" | "fault.spin" | "fault.total" | "fault.ct_sleep" | "fault.soak"
                )
            )
        })
        .map(|(_, r)| r.to_string())
        .collect();
    check("false stalls", "[]".into(), format!("{unexpected:?}"));
    // Why each was stuck: the sleeps blocked, the spin on a CPU (busy, or
    // starved where the machine had no CPU free for it).
    let wrong_causes: Vec<String> = firsts
        .iter()
        .filter(|(_, r)| match r.task.as_deref() {
            Some("fault.spin") => !matches!(r.cause, StallCause::Busy | StallCause::Starved),
            _ => r.cause != StallCause::Blocked,
        })
        .map(|(_, r)| format!("{:?}: {}", r.task, r))
        .collect();
    check("wrong causes", "[]".into(), format!("{wrong_causes:?}"));
    // Detection latency: report time minus the stall's start, per injected stall.
    let starts = starts.lock().unwrap().clone();
    let mut latencies = Vec::new();
    for (at, r) in &firsts {
        let Some(name) = r.task.as_deref() else {
            continue;
        };
        if let Some(start) = starts
            .get(name)
            .and_then(|v| v.iter().filter(|s| *s <= at).max())
        {
            latencies.push(at.duration_since(*start).as_secs_f64());
        }
    }
    let bound = (t + CHECK).as_secs_f64() + 0.75;
    let late: Vec<String> = latencies
        .iter()
        .filter(|l| **l < t.as_secs_f64() - CHECK.as_secs_f64() || **l > bound)
        .map(|l| format!("{l:.3}"))
        .collect();
    check(
        &format!(
            "latencies outside [{:.2}, {bound:.2}] s",
            t.as_secs_f64() - CHECK.as_secs_f64()
        ),
        "[]".into(),
        format!("{late:?}"),
    );

    let series = |line: &str| -> String {
        metrics
            .lines()
            .find(|l| l.starts_with(line) && l[line.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("missing")
            .to_owned()
    };
    for (what, line, expected) in [
        (
            "tasks failed by Err",
            "loopwatch_tasks_failed_total{task=\"fault.err\",reason=\"error\"}",
            "5",
        ),
        (
            "tasks panicked",
            "loopwatch_tasks_failed_total{task=\"fault.panic\",reason=\"panic\"}",
            "3",
        ),
        (
            "tasks cancelled",
            "loopwatch_tasks_cancelled_total{task=\"fault.abort\"}",
            "4",
        ),
        (
            "tasks hung",
            "loopwatch_tasks_hung{task=\"fault.hang\"}",
            "2",
        ),
        (
            "stress.io calls",
            "loopwatch_calls_total{call=\"stress.io\",outcome=\"ok\"}",
            "8",
        ),
        (
            "stress.io blocking calls",
            "loopwatch_blocking_calls_total{call=\"stress.io\"}",
            "3",
        ),
        (
            "stress.io slow calls",
            "loopwatch_slow_calls_total{call=\"stress.io\"}",
            "2",
        ),
        (
            "stress.io_fail failed calls",
            "loopwatch_calls_total{call=\"stress.io_fail\",outcome=\"error\"}",
            "4",
        ),
        (
            "stalls counted on 'ct'",
            "loopwatch_stalls_total{runtime=\"ct\"}",
            "1",
        ),
        (
            "background requests failed",
            "loopwatch_tasks_failed_total{task=\"svc.request\",reason=\"error\"}",
            "0",
        ),
        (
            "background requests panicked",
            "loopwatch_tasks_failed_total{task=\"svc.request\",reason=\"panic\"}",
            "0",
        ),
    ] {
        check(what, expected.into(), series(line));
    }
    check(
        "stalls counted on 'service'",
        (6 + soak_stalls).to_string(),
        series("loopwatch_stalls_total{runtime=\"service\"}"),
    );
    check(
        "stalls by cause on 'ct' (blocked)",
        "1".into(),
        series("loopwatch_stalls_by_cause_total{runtime=\"ct\",cause=\"blocked\"}"),
    );
    let spawned = background_spawned.load(std::sync::atomic::Ordering::Relaxed);
    check(
        "background requests completed",
        spawned.to_string(),
        series("loopwatch_tasks_completed_total{task=\"svc.request\"}"),
    );
    check(
        "/health during the total stall",
        "503".into(),
        health_during.to_string(),
    );
    let failed_scrapes = during.iter().filter(|s| s.is_none()).count();
    check(
        "scrapes that failed during the total stall",
        "0".into(),
        failed_scrapes.to_string(),
    );
    check(
        "hung tasks in /health",
        "2".into(),
        health["tasks"]["hung"].to_string(),
    );
    drop(hung);

    let soak = match soak {
        Some(thread) => {
            let (scrapes, failed, memory) =
                thread.join().map_err(|_| "the soak scraper panicked")?;
            // Flat after warm-up: the second half of the run against its start.
            let half = o.duration.as_secs_f64() / 2.0;
            let second_half: Vec<u64> = memory
                .iter()
                .filter(|(at, _)| *at >= half)
                .map(|(_, b)| *b)
                .collect();
            // The median of its last third against that of its first third:
            // one sample's allocator noise does not decide.
            let median = |v: &[u64]| {
                let mut v = v.to_vec();
                v.sort_unstable();
                v.get(v.len() / 2).copied()
            };
            let k = (second_half.len() / 3).max(1);
            let growth = match (
                median(&second_half[..k.min(second_half.len())]),
                median(&second_half[second_half.len().saturating_sub(k)..]),
            ) {
                (Some(first), Some(last)) => (last as f64 - first as f64) / first as f64 * 100.0,
                _ => f64::NAN,
            };
            check("soak: scrapes that failed", "0".into(), failed.to_string());
            check(
                "soak: memory growth over the 2nd half under 1 %",
                "true".into(),
                (growth < 1.0).to_string(),
            );
            Some(serde_json::json!({
                "seconds": o.duration.as_secs(),
                "stalls_injected_after_the_schedule": soak_stalls,
                "scrapes": scrapes,
                "scrapes_failed": failed,
                "resident_bytes": memory.iter().map(|(at, b)| serde_json::json!({"at_seconds": at, "bytes": b})).collect::<Vec<_>>(),
                "growth_over_second_half_percent": growth,
            }))
        }
        None => None,
    };

    let mut scrape_ms: Vec<f64> = during
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    scrape_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        scrape_ms
            .get(((scrape_ms.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };

    // ---- Report.
    let mut ok = true;
    println!("loopwatch stress: threshold {t:?}, {WORKERS} workers + a current-thread runtime, {:?}, seed {}", o.duration, o.seed);
    println!("{:<52} {:>10} {:>10}", "check", "injected", "reported");
    for (what, expected, reported) in &checks {
        let pass = expected == reported;
        ok &= pass;
        println!(
            "{:<52} {:>10} {:>10} {}",
            what,
            expected,
            reported,
            if pass { "ok" } else { "MISMATCH" }
        );
    }
    latencies.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (latencies.first(), latencies.last()) {
        println!(
            "detection latency ({} stalls): min {:.3} s, median {:.3} s, max {:.3} s (threshold {:.3} s)",
            latencies.len(),
            min,
            latencies[latencies.len() / 2],
            max,
            t.as_secs_f64()
        );
    }
    println!(
        "50 concurrent scrapes during the total stall: p50 {:.1} ms, p99 {:.1} ms",
        pct(0.5),
        pct(0.99)
    );
    println!("background: {spawned} requests, checksum {background_sum}");
    if let Some(soak) = &soak {
        println!(
            "soak: {} s, {} scrapes ({} failed), resident memory {:.1} MiB at the start of the 2nd half, growth over it {:.2} % (medians of its first and last thirds)",
            soak["seconds"],
            soak["scrapes"],
            soak["scrapes_failed"],
            soak["resident_bytes"]
                .as_array()
                .and_then(|v| v.iter().find(|s| s["at_seconds"].as_f64().unwrap_or(0.0) >= o.duration.as_secs_f64() / 2.0))
                .and_then(|s| s["bytes"].as_u64())
                .map_or(0.0, |b| b as f64 / 1048576.0),
            soak["growth_over_second_half_percent"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!(
        "{}",
        if ok {
            "PASS: loopwatch reported exactly what was injected"
        } else {
            "FAIL"
        }
    );

    if let Some(path) = &o.output {
        let json = serde_json::json!({
            "pass": ok,
            "stall_threshold_seconds": t.as_secs_f64(),
            "checks": checks.iter().map(|(w, e, r)| serde_json::json!({"check": w, "injected": e, "reported": r, "ok": e == r})).collect::<Vec<_>>(),
            "detection_latency_seconds": latencies,
            "scrape_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "all": scrape_ms},
            "health_at_end": health,
            "soak": soak,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("wrote {path}");
    }
    exporter.shutdown();
    watchdog.shutdown();
    Ok(ok)
}

/// `n` threads scraping `/metrics` then `/health` at once; the latency of each, `None` if it failed.
fn concurrent_scrapes(addr: SocketAddr, n: usize) -> Vec<Option<Duration>> {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                ["/metrics", "/health"]
                    .iter()
                    .map(|p| {
                        let began = Instant::now();
                        request(addr, p)
                            .ok()
                            .filter(|r| r.0 == 200 || r.0 == 503)
                            .map(|_| began.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect()
}

fn request(addr: SocketAddr, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: stress\r\n\r\n").as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_owned()))
}

/// Scale mode: 1,000,000 tasks through a 4-worker runtime while 10,000 stay alive.
fn scale(o: &Options) -> Result<bool, Box<dyn std::error::Error>> {
    const LIVE: usize = 10_000;
    const TOTAL: usize = 1_000_000;
    const BATCH: usize = 10_000;
    let watchdog = Watchdog::builder().start()?;
    // Installed and never scraped, as in an application between scrapes.
    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse()?)
        .start(&watchdog)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    watchdog.watch_runtime("scale", rt.handle())?;
    let _enter = rt.enter();
    // Warm up, then the baseline.
    rt.block_on(async {
        for _ in 0..BATCH {
            loopwatch::spawn_named("scale.batch", async {})
                .await
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let baseline = measure::resident()?;
    let cpu = measure::thread_cpu_clock("loopwatch-watch").ok_or("no thread CPU clock here")?;
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = measure::resident() {
                    peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let live: Vec<_> = (0..LIVE)
        .map(|_| loopwatch::spawn_named("scale.live", std::future::pending::<()>()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let with_live = measure::resident()?;
    let (cpu0, t0) = (cpu()?, Instant::now());
    rt.block_on(async {
        for _ in 0..TOTAL / BATCH {
            let handles: Vec<_> = (0..BATCH)
                .map(|_| {
                    loopwatch::spawn_named("scale.batch", async { tokio::task::yield_now().await })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        }
    });
    let (cpu1, t1) = (cpu()?, Instant::now());
    let alive_during = watchdog.health().tasks.alive;
    for h in &live {
        h.abort();
    }
    rt.block_on(async {
        for h in live {
            let _ = h.await;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let end = measure::resident()?;
    let health = watchdog.health();
    let per_live = (with_live as f64 - baseline as f64) / LIVE as f64;
    let cpu_share = (cpu1 - cpu0).as_secs_f64() / (t1 - t0).as_secs_f64() * 100.0;
    let back = end <= baseline + (1 << 20);
    let ok = back && health.tasks.alive == 0 && alive_during >= LIVE as u64;
    println!("loopwatch scale mode ({WORKERS} workers, seed {}):", o.seed);
    println!(
        "  {TOTAL} tasks through the system in {:.1} s with {LIVE} alive throughout",
        (t1 - t0).as_secs_f64()
    );
    println!("  resident: baseline {} KiB, with {LIVE} live {} KiB ({per_live:.0} bytes per live task), peak {} KiB, at the end {} KiB ({:+} KiB)",
        baseline >> 10, with_live >> 10, peak.load(std::sync::atomic::Ordering::Relaxed) >> 10, end >> 10, (end as i64 - baseline as i64) >> 10);
    println!("  watchdog thread CPU while the tasks ran: {cpu_share:.3} % of one core");
    println!(
        "  {}",
        if ok {
            "PASS: memory back to its baseline, no task left alive"
        } else {
            "FAIL"
        }
    );
    if let Some(path) = &o.output {
        let json = serde_json::json!({
            "pass": ok,
            "tasks": TOTAL, "live": LIVE,
            "resident_bytes": {"baseline": baseline, "with_live": with_live, "peak": peak.load(std::sync::atomic::Ordering::Relaxed), "end": end},
            "bytes_per_live_task": per_live,
            "watchdog_cpu_percent_of_one_core": cpu_share,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    exporter.shutdown();
    watchdog.shutdown();
    Ok(ok)
}
