//! Memory per live task, memory after 1,000,000 tasks have come and gone,
//! and memory after 10,000,000 instrumented polls, with the exporter
//! installed and never scraped (as in an application nobody scrapes for a
//! while).
//!
//! ```text
//! cargo run --release -p loopwatch-extras --bin task_memory
//! ```
//!
//! Measures resident memory (Linux `/proc/self/statm`, after giving freed
//! memory back to the OS with `malloc_trim`) around: 100,000 live tasks spawned
//! with `tokio::spawn` (the baseline) and with `loopwatch::spawn_named`; then
//! 1,000,000 loopwatch tasks spawned and finished in batches; then 10,000,000
//! polls of instrumented tasks, with the watchdog thread's CPU time over
//! them; then the task dump with 1,000,000 live tasks: the time and memory
//! of `Watchdog::tasks()` (every task), `Watchdog::task_dump(1000)`, and
//! `GET /tasks` (JSON and text) and `GET /` from the exporter. Exits
//! non-zero if memory after the million tasks or after the polls is more
//! than 1 MiB above where it started, or if `/tasks` or `task_dump` with a
//! million live tasks takes more than 16 MiB at its peak.

use std::future::pending;
use std::time::Duration;

use loopwatch_test_support::measure;
use measure::resident;

const LIVE: usize = 100_000;
const TOTAL: usize = 1_000_000;
const BATCH: usize = 10_000;
const POLLS: usize = 10_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let watchdog = loopwatch::Watchdog::builder().start()?;
    // Installed and never scraped: nothing may pile up waiting for a scrape.
    let exporter = loopwatch::Exporter::builder()
        .bind("127.0.0.1:0".parse()?)
        .start(&watchdog)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    watchdog.watch_runtime("main", rt.handle())?;
    // Warm up allocator, name registry and runtime.
    live_tasks(&rt, 1_000, true);
    live_tasks(&rt, 1_000, false);

    let tokio_bytes = live_tasks(&rt, LIVE, false);
    let loopwatch_bytes = live_tasks(&rt, LIVE, true);
    println!("resident bytes per live task, {LIVE} pending tasks:");
    println!("  tokio::spawn             {tokio_bytes:>8.0}");
    println!(
        "  loopwatch::spawn_named   {loopwatch_bytes:>8.0}  (+{:.0} bytes, x{:.2})",
        loopwatch_bytes - tokio_bytes,
        loopwatch_bytes / tokio_bytes
    );

    let start = resident()?;
    rt.block_on(async {
        for _ in 0..TOTAL / BATCH {
            let handles: Vec<_> = (0..BATCH)
                .map(|_| {
                    loopwatch::spawn_named("memory.batch", async { tokio::task::yield_now().await })
                })
                .collect();
            for h in handles {
                h.await.expect("task");
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let end = resident()?;
    let health = watchdog.health();
    println!(
        "{TOTAL} tasks spawned and finished: resident {} KiB before, {} KiB after ({:+} KiB); alive now {}",
        start / 1024,
        end / 1024,
        (end as i64 - start as i64) / 1024,
        health.tasks.alive
    );
    if end > start + 1024 * 1024 {
        return Err("memory did not return to its level before the million tasks".into());
    }

    let watchdog_cpu = measure::thread_cpu_clock("loopwatch-watch");
    let cpu_before = watchdog_cpu.as_ref().map(|c| c()).transpose()?;
    let before_polls = resident()?;
    let began = std::time::Instant::now();
    rt.block_on(async {
        // 1,000 tasks of 10,000 polls each, two at a time per worker.
        let per_task = 10_000;
        for _ in 0..POLLS / per_task / 100 {
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    loopwatch::spawn_named("memory.polls", async move {
                        for _ in 0..per_task - 1 {
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("task");
            }
        }
    });
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(1200)); // the once-a-second publication
    let after_polls = resident()?;
    let cpu = match (watchdog_cpu, cpu_before) {
        (Some(clock), Some(before)) => format!(
            "; watchdog thread CPU {:.0} ms over {:.1} s",
            (clock()? - before).as_secs_f64() * 1e3,
            took.as_secs_f64()
        ),
        _ => String::new(),
    };
    println!(
        "{POLLS} instrumented polls, exporter never scraped: resident {} KiB before, {} KiB after ({:+} KiB){cpu}",
        before_polls / 1024,
        after_polls / 1024,
        (after_polls as i64 - before_polls as i64) / 1024,
    );
    // Now one scrape: every poll is in the histogram's count.
    let counted = scrape_poll_count(exporter.local_addr(), "memory.polls")?;
    println!("  the first scrape afterwards counts {counted} polls of memory.polls");
    dump_at_scale(&rt, &watchdog, exporter.local_addr())?;
    exporter.shutdown();
    watchdog.shutdown();
    if counted != POLLS as u64 {
        return Err(format!("{counted} polls counted, {POLLS} made").into());
    }
    if after_polls > before_polls + 1024 * 1024 {
        return Err("memory grew with the number of polls".into());
    }
    Ok(())
}

/// Live tasks for the dump measurements.
const DUMPED: usize = 1_000_000;

/// The task dump's time and memory with [`DUMPED`] live tasks.
fn dump_at_scale(
    rt: &tokio::runtime::Runtime,
    watchdog: &loopwatch::Watchdog,
    addr: std::net::SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::time::Instant;
    let before = resident()?;
    let began = Instant::now();
    let handles: Vec<_> = {
        let _enter = rt.enter();
        (0..DUMPED)
            .map(|_| loopwatch::spawn_named("dump.live", pending::<()>()))
            .collect()
    };
    let spawned = began.elapsed();
    std::thread::sleep(Duration::from_millis(500)); // each polled once
    let live = resident()?;
    let task_bytes = (live - before) as f64 / DUMPED as f64;
    println!(
        "task dump with {DUMPED} live tasks ({task_bytes:.0} bytes each, spawned in {:.0} ns each):",
        spawned.as_nanos() as f64 / DUMPED as f64
    );
    let mut over = Vec::new();

    // Watchdog::tasks(): every task.
    measure::reset_peak();
    let began = Instant::now();
    let all = watchdog.tasks();
    let took = began.elapsed();
    let all_took = took;
    let held = resident()?.saturating_sub(live);
    let peak = measure::peak()?.saturating_sub(live);
    println!(
        "  Watchdog::tasks()          {:>7.1} ms ({:.0} ns a task, x{:.2} a spawn); holds {:.0} bytes a task (x{:.2} a live task), peak +{} MiB",
        took.as_secs_f64() * 1e3,
        took.as_nanos() as f64 / DUMPED as f64,
        took.as_nanos() as f64 / spawned.as_nanos() as f64,
        held as f64 / all.len().max(1) as f64,
        held as f64 / all.len().max(1) as f64 / task_bytes,
        peak / (1 << 20)
    );
    if all.len() != DUMPED {
        return Err(format!("tasks() listed {} of {DUMPED}", all.len()).into());
    }
    drop(all);

    // task_dump(1000): counts of all, a thousand described.
    let live = resident()?;
    measure::reset_peak();
    let began = Instant::now();
    let dump = watchdog.task_dump(1000);
    let took = began.elapsed();
    let peak = measure::peak()?.saturating_sub(live);
    println!(
        "  Watchdog::task_dump(1000)  {:>7.1} ms ({:.0} ns a task, x{:.2} tasks()); peak +{} KiB",
        took.as_secs_f64() * 1e3,
        took.as_nanos() as f64 / DUMPED as f64,
        took.as_secs_f64() / all_took.as_secs_f64(),
        peak / 1024
    );
    if dump.total != DUMPED as u64 || dump.tasks.len() != 1000 {
        return Err(format!(
            "task_dump counted {} and listed {}",
            dump.total,
            dump.tasks.len()
        )
        .into());
    }
    if peak > 16 << 20 {
        over.push(format!("task_dump(1000) peaked at +{} KiB", peak / 1024));
    }

    // The exporter.
    for path in ["/tasks", "/tasks?format=text", "/"] {
        let live = resident()?;
        measure::reset_peak();
        let began = Instant::now();
        let body = http_get(addr, path)?;
        let took = began.elapsed();
        let peak = measure::peak()?.saturating_sub(live);
        println!(
            "  GET {path:<19}    {:>7.1} ms, {} KiB, peak +{} KiB",
            took.as_secs_f64() * 1e3,
            body.len() / 1024,
            peak / 1024
        );
        if peak > 16 << 20 {
            over.push(format!("GET {path} peaked at +{} KiB", peak / 1024));
        }
    }
    for h in &handles {
        h.abort();
    }
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    if over.is_empty() {
        Ok(())
    } else {
        Err(over.join("; ").into())
    }
}

/// The body of `GET path`.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", text.lines().next().unwrap_or("")).into());
    }
    Ok(text)
}

/// Spawns `n` never-ending tasks, measures the resident memory they add per
/// task, aborts them and waits until they are gone.
fn live_tasks(rt: &tokio::runtime::Runtime, n: usize, instrumented: bool) -> f64 {
    let before = resident().unwrap_or(0);
    let handles: Vec<_> = {
        let _enter = rt.enter();
        (0..n)
            .map(|_| {
                if instrumented {
                    loopwatch::spawn_named("memory.live", pending::<()>())
                } else {
                    tokio::spawn(pending::<()>())
                }
            })
            .collect()
    };
    // Let the workers poll each task once.
    std::thread::sleep(Duration::from_millis(300));
    let during = resident().unwrap_or(0);
    for h in &handles {
        h.abort();
    }
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    // The handles vector itself is part of both measurements alike.
    (during as f64 - before as f64) / n as f64
}

/// `loopwatch_poll_duration_seconds_count` of `task`, from one scrape.
fn scrape_poll_count(
    addr: std::net::SocketAddr,
    task: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    let series = format!("loopwatch_poll_duration_seconds_count{{task=\"{task}\"}} ");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .ok_or("no poll count in the exposition")?
        .parse()?)
}
