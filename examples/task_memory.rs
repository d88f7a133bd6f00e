//! Memory per live task, and memory after 1,000,000 tasks have come and gone.
//!
//! ```text
//! cargo run --release --example task_memory
//! ```
//!
//! Measures resident memory (Linux `/proc/self/statm`, after giving freed
//! memory back to the OS with `malloc_trim`) around: 100,000 live tasks spawned
//! with `tokio::spawn` (the baseline) and with `loopwatch::spawn_named`; then
//! 1,000,000 loopwatch tasks spawned and finished in batches. Exits non-zero if
//! memory after the million is more than 1 MiB above where it started.

use std::future::pending;
use std::time::Duration;

#[path = "support/measure.rs"]
mod measure;
use measure::resident;

const LIVE: usize = 100_000;
const TOTAL: usize = 1_000_000;
const BATCH: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let watchdog = loopwatch::Watchdog::builder().start()?;
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
    watchdog.shutdown();
    if end > start + 1024 * 1024 {
        return Err("memory did not return to its level before the million tasks".into());
    }
    Ok(())
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
