//! Measures how long after a stall begins loopwatch reports it, over several
//! runs, for the three kinds of stall: an uninstrumented task and an
//! instrumented one on a multi-thread runtime, and a task on a current-thread
//! runtime. Prints min / median / max of the latency past the threshold.
//!
//! ```text
//! cargo run --release -p loopwatch-extras --bin detection_latency -- --runs 5
//! ```

use std::sync::mpsc;
use std::time::{Duration, Instant};

use loopwatch::{WatchExt as _, Watchdog};

const THRESHOLD: Duration = Duration::from_secs(2);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &usize| *v > 0)
                    .ok_or("--runs takes a positive whole number")?;
            }
            other => return Err(format!("unknown argument {other:?}; use --runs N").into()),
        }
    }
    let (tx, rx) = mpsc::channel::<Instant>();
    let watchdog = Watchdog::builder()
        .stall_threshold(THRESHOLD)
        .max_reports_per_minute(1000)
        .on_stall(move |r| {
            if r.escalation == 0 {
                let _ = tx.send(Instant::now());
            }
        })
        .start()?;
    println!(
        "threshold {THRESHOLD:?}, check interval {:?}; latency = report time - stall start - threshold",
        watchdog.check_interval()
    );
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    watchdog.watch_runtime("mt", mt.handle())?;
    let ct = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    watchdog.watch_runtime("ct", ct.handle())?;

    let block = THRESHOLD + Duration::from_millis(500);
    let mut kinds: Vec<(&str, Vec<Duration>)> = Vec::new();

    let mut lat = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_millis(300));
        let began = Instant::now();
        mt.block_on(mt.spawn(async move { std::thread::sleep(block) }))?;
        lat.push(latency(&rx, began)?);
    }
    kinds.push(("multi-thread, uninstrumented", lat));

    let mut lat = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_millis(300));
        let began = Instant::now();
        mt.block_on(mt.spawn(async move { std::thread::sleep(block) }.watched("job")))?;
        lat.push(latency(&rx, began)?);
    }
    kinds.push(("multi-thread, instrumented", lat));

    let mut lat = Vec::new();
    for _ in 0..runs {
        let began = ct.block_on(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let began = Instant::now();
            tokio::spawn(async move { std::thread::sleep(block) })
                .await
                .ok();
            began
        });
        lat.push(latency(&rx, began)?);
    }
    kinds.push(("current-thread, uninstrumented", lat));

    for (kind, mut lat) in kinds {
        lat.sort();
        println!(
            "{kind:32} runs {runs}: min {:>6.1} ms  median {:>6.1} ms  max {:>6.1} ms",
            ms(lat[0]),
            ms(lat[lat.len() / 2]),
            ms(lat[lat.len() - 1])
        );
    }
    watchdog.shutdown();
    Ok(())
}

fn latency(rx: &mpsc::Receiver<Instant>, began: Instant) -> Result<Duration, String> {
    let at = rx
        .recv_timeout(Duration::from_millis(100))
        .map_err(|_| "a stall was not reported".to_owned())?;
    Ok(at
        .saturating_duration_since(began)
        .saturating_sub(THRESHOLD))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
