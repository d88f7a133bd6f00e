//! Measures the CPU time of the watchdog thread per second of wall time, at
//! the default check interval: with one and with eight watched runtimes
//! running instrumented work, with one runtime holding 10,000 live
//! instrumented tasks (scanned for hung tasks every second), and with one
//! runtime whose two workers run polls of 150 ms back to back (longer than
//! a check interval, shorter than the stall threshold: its threads are
//! timed at every check, as threads that may be stuck are).
//!
//! ```text
//! cargo run --release -p loopwatch-extras --bin watchdog_cost -- --seconds 10
//! ```
//!
//! Linux only (it reads the thread's CPU clock); prints a note elsewhere.

use std::time::{Duration, Instant};

use loopwatch::{WatchExt as _, Watchdog};

use loopwatch_test_support::measure;
use measure::thread_cpu_clock;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 10.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &f64| *v > 0.0)
                    .ok_or("--seconds takes a positive number")?;
            }
            other => return Err(format!("unknown argument {other:?}; use --seconds N").into()),
        }
    }
    let wall = Duration::from_secs_f64(seconds);
    baseline(wall)?;
    for runtimes in [1, 8] {
        measure(runtimes, wall, 0, false)?;
    }
    measure(1, wall, 10_000, false)?;
    measure(1, wall, 0, true)?;
    Ok(())
}

/// A thread that only wakes every 100 ms and does nothing: the floor set by
/// the wake-ups themselves on this machine.
fn baseline(wall: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let (stop, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("idle-baseline".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_millis(100))
            {}
        })?;
    std::thread::sleep(Duration::from_millis(300));
    let Some(cpu) = thread_cpu_clock("idle-baseline") else {
        return Ok(());
    };
    let (c0, t0) = (cpu()?, Instant::now());
    std::thread::sleep(wall);
    let (c1, t1) = (cpu()?, Instant::now());
    report(
        "baseline: a thread that only wakes every 100ms",
        c1.saturating_sub(c0),
        t1 - t0,
        Duration::from_millis(100),
    );
    drop(stop);
    let _ = thread.join();
    Ok(())
}

fn report(what: &str, used: Duration, elapsed: Duration, interval: Duration) {
    let checks = elapsed.as_secs_f64() / interval.as_secs_f64();
    println!(
        "{what}: {:.3} ms CPU in {:.1} s = {:.4} % of one core ({:.1} us per wake-up)",
        used.as_secs_f64() * 1e3,
        elapsed.as_secs_f64(),
        100.0 * used.as_secs_f64() / elapsed.as_secs_f64(),
        used.as_secs_f64() * 1e6 / checks
    );
}

fn measure(
    runtimes: usize,
    wall: Duration,
    live: usize,
    long_polls: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let watchdog = Watchdog::builder().start()?;
    let rts: Vec<tokio::runtime::Runtime> = (0..runtimes)
        .map(|_| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })
        .collect::<Result<_, _>>()?;
    for (i, rt) in rts.iter().enumerate() {
        watchdog.watch_runtime(&format!("rt{i}"), rt.handle())?;
        // Some instrumented work on every runtime, so that slots are in use.
        for _ in 0..4 {
            rt.spawn(
                async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                .watched("work"),
            );
        }
    }
    // Uninstrumented polls of 150 ms on both workers of the first runtime:
    // its metrics stand still from check to check.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let long: Vec<_> = (0..if long_polls { 2 } else { 0 })
        .map(|_| {
            let stop = stop.clone();
            rts[0].spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let until = Instant::now() + Duration::from_millis(150);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let parked: Vec<_> = {
        let _enter = rts[0].enter();
        (0..live)
            .map(|_| loopwatch::spawn_named("parked", std::future::pending::<()>()))
            .collect()
    };
    std::thread::sleep(Duration::from_millis(300));
    let Some(cpu) = thread_cpu_clock("loopwatch-watch") else {
        println!("watchdog_cost: the thread CPU clock is only read on Linux; nothing measured");
        return Ok(());
    };
    let (c0, t0) = (cpu()?, Instant::now());
    std::thread::sleep(wall);
    let (c1, t1) = (cpu()?, Instant::now());
    report(
        &format!(
            "watchdog thread, {runtimes} runtime(s) x 2 workers, {live} live tasks{}, check every {:?}",
            if long_polls { ", polls of 150 ms on both workers" } else { "" },
            watchdog.check_interval()
        ),
        c1.saturating_sub(c0),
        t1 - t0,
        watchdog.check_interval(),
    );
    for task in parked {
        task.abort();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in long {
        rts[0].block_on(task)?;
    }
    watchdog.shutdown();
    Ok(())
}
