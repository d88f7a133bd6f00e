//! What stack sampling costs, each figure against `sample_stacks(false)`
//! measured the same way: the resident memory after the first stall report,
//! and that report's latency past the stall threshold, each in a fresh
//! process (this example runs itself as the child), for a stuck thread
//! waiting in the kernel (a sleep: read from outside) and one on a CPU (a
//! spin: signalled).
//!
//! ```text
//! cargo run --example stack_cost            # a debug binary, with full debug info
//! cargo run --release --example stack_cost  # line tables only
//! ```
//!
//! Exits with an error if sampling adds more than 16 MiB of resident memory
//! or the report comes later than 1 s past the threshold.

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loopwatch::{WatchExt as _, Watchdog};

#[path = "support/measure.rs"]
mod measure;

const THRESHOLD: Duration = Duration::from_secs(1);
const MEMORY_BOUND: u64 = 16 << 20;
const LATENCY_BOUND: Duration = Duration::from_secs(1);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let sample = args.get(1).map(String::as_str) == Some("on");
        let spin = args.get(2).map(String::as_str) == Some("spin");
        return child(sample, spin);
    }
    let exe = std::env::current_exe()?;
    let size = std::fs::metadata(&exe)?.len();
    println!(
        "stack sampling cost; binary {:.1} MB, threshold {:?}, each row a fresh process",
        size as f64 / 1e6,
        THRESHOLD
    );
    println!(
        "{:<8} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "stuck in", "RSS off (MiB)", "RSS on (MiB)", "added (MiB)", "latency off", "latency on"
    );
    let mut failed = Vec::new();
    for case in ["sleep", "spin"] {
        let off = run_child(&exe, "off", case)?;
        let on = run_child(&exe, "on", case)?;
        let added = on.resident.saturating_sub(off.resident);
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>12.1} {:>11.0} ms {:>11.0} ms",
            case,
            off.resident as f64 / 1048576.0,
            on.resident as f64 / 1048576.0,
            added as f64 / 1048576.0,
            off.latency.as_secs_f64() * 1e3,
            on.latency.as_secs_f64() * 1e3,
        );
        if !on.stack {
            failed.push(format!("{case}: the report with sampling on has no stack"));
        }
        if added > MEMORY_BOUND {
            failed.push(format!("{case}: sampling added {} MiB", added >> 20));
        }
        if on.latency > LATENCY_BOUND {
            failed.push(format!(
                "{case}: the report came {:?} past the threshold",
                on.latency
            ));
        }
    }
    if failed.is_empty() {
        println!(
            "PASS: at most {} MiB added, reports within {LATENCY_BOUND:?} of the threshold",
            MEMORY_BOUND >> 20
        );
        Ok(())
    } else {
        Err(failed.join("; ").into())
    }
}

struct Outcome {
    resident: u64,
    latency: Duration,
    stack: bool,
}

fn run_child(
    exe: &std::path::Path,
    sample: &str,
    case: &str,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let out = Command::new(exe).args(["--child", sample, case]).output()?;
    if !out.status.success() {
        return Err(format!(
            "child {sample} {case} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [resident, latency_ms, stack] = fields[..] else {
        return Err(format!("child printed {text:?}").into());
    };
    Ok(Outcome {
        resident: resident.parse()?,
        latency: Duration::from_secs_f64(latency_ms.parse::<f64>()? / 1e3),
        stack: stack == "stack",
    })
}

/// One stall in a fresh process; prints `resident latency_ms stack|none`.
fn child(sample: bool, spin: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let watchdog = Watchdog::builder()
        .stall_threshold(THRESHOLD)
        .check_interval(Duration::from_millis(50))
        .sample_stacks(sample)
        .on_stall(move |r| {
            if r.escalation == 0 {
                let _ = tx
                    .lock()
                    .map(|tx| tx.send((Instant::now(), r.backtrace.is_some())));
            }
        })
        .start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    watchdog.watch_runtime("cost", rt.handle())?;
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let task = rt.spawn(
        async move {
            let until = Instant::now() + THRESHOLD * 2;
            if spin {
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::sleep(THRESHOLD * 2);
            }
        }
        .watched("stuck"),
    );
    let (at, stack) = rx.recv_timeout(THRESHOLD * 3)?;
    rt.block_on(task)?;
    // The check that reported has ended and dropped what it read.
    std::thread::sleep(Duration::from_millis(200));
    let resident = measure::resident()?;
    let latency = at.duration_since(began).saturating_sub(THRESHOLD);
    println!(
        "{resident} {:.1} {}",
        latency.as_secs_f64() * 1e3,
        if stack { "stack" } else { "none" }
    );
    watchdog.shutdown();
    Ok(())
}
