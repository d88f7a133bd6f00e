//! What stack sampling costs, each figure against `sample_stacks(false)`
//! measured the same way: the resident memory after the first stall report,
//! and that report's latency past the stall threshold, each in a fresh
//! process (this example runs itself as the child), for a stuck thread
//! waiting in the kernel (a sleep: read from outside) and one on a CPU (a
//! spin: sampled by the kernel with `perf_event_open`). With sampling on it also prints the time the watchdog
//! thread spent reading the stuck thread (state, stack copy, unwind) and
//! symbolizing its frames, from loopwatch's debug event, for that report and
//! for a second stall in the same process: a thread asleep at the same call
//! is named from the names the first report found (a spinning one is caught
//! at other addresses, read anew). The resident memory is taken after the
//! second report.
//!
//! ```text
//! cargo run -p loopwatch-extras --bin stack_cost            # a debug binary, with full debug info
//! cargo run --release -p loopwatch-extras --bin stack_cost  # limited debug info (the release profile)
//! ```
//!
//! Exits with an error if sampling adds more than 16 MiB of resident memory
//! or the report comes later than 1 s past the threshold.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loopwatch::{WatchExt as _, Watchdog};
use tracing_subscriber::layer::SubscriberExt as _;

use loopwatch_test_support::measure;

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
        "{:<8} {:>14} {:>14} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "stuck in",
        "RSS off (MiB)",
        "RSS on (MiB)",
        "added (MiB)",
        "latency off",
        "latency on",
        "read",
        "symbolize",
        "again"
    );
    let mut failed = Vec::new();
    for case in ["sleep", "spin"] {
        let off = run_child(&exe, "off", case)?;
        let on = run_child(&exe, "on", case)?;
        let added = on.resident.saturating_sub(off.resident);
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>12.1} {:>9.0} ms {:>9.0} ms {:>7.2} ms {:>7.1} ms {:>7.1} ms",
            case,
            off.resident as f64 / 1048576.0,
            on.resident as f64 / 1048576.0,
            added as f64 / 1048576.0,
            off.latency.as_secs_f64() * 1e3,
            on.latency.as_secs_f64() * 1e3,
            on.read_ms,
            on.total_ms - on.read_ms,
            on.again_ms,
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
        // A thread asleep at the same call has the same frames the second
        // time: they are named from what the first report found. (A
        // spinning one is caught at other addresses, which are read anew.)
        if case == "sleep" && on.again_ms > (on.total_ms - on.read_ms) / 2.0 {
            failed.push(format!(
                "{case}: the second report took {:.1} ms to symbolize, the first {:.1} ms",
                on.again_ms,
                on.total_ms - on.read_ms
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
    /// Reading the stuck thread: state, stack copy, unwind.
    read_ms: f64,
    /// All the evidence, symbolizing included.
    total_ms: f64,
    /// Symbolizing the second stall's stack.
    again_ms: f64,
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
    let [resident, latency_ms, stack, read_ms, total_ms, again_ms] = fields[..] else {
        return Err(format!("child printed {text:?}").into());
    };
    Ok(Outcome {
        resident: resident.parse()?,
        latency: Duration::from_secs_f64(latency_ms.parse::<f64>()? / 1e3),
        stack: stack == "stack",
        read_ms: read_ms.parse()?,
        total_ms: total_ms.parse()?,
        again_ms: again_ms.parse()?,
    })
}

/// The watchdog thread's time on the evidence, in f64 bits: reading the
/// thread, and everything.
static READ: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Keeps the timings of loopwatch's "took the stuck thread's stack" event.
struct Timings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Timings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields;
        impl tracing::field::Visit for Fields {
            fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
                match field.name() {
                    "read_seconds" => READ.store(value.to_bits(), Ordering::Relaxed),
                    "seconds" => TOTAL.store(value.to_bits(), Ordering::Relaxed),
                    _ => {}
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if event.metadata().target() == "loopwatch" {
            event.record(&mut Fields);
        }
    }
}

fn millis(bits: &AtomicU64) -> f64 {
    f64::from_bits(bits.load(Ordering::Relaxed)) * 1e3
}

/// Two stalls in a fresh process; prints
/// `resident latency_ms stack|none read_ms total_ms again_ms` (the
/// latency, stack and timings of the first, the symbolizing time of the
/// second).
fn child(sample: bool, spin: bool) -> Result<(), Box<dyn std::error::Error>> {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Timings))?;
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
    let stall = |rx: &mpsc::Receiver<(Instant, bool)>| -> Result<_, Box<dyn std::error::Error>> {
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
        // The check that reported has ended.
        std::thread::sleep(Duration::from_millis(200));
        Ok((at.duration_since(began).saturating_sub(THRESHOLD), stack))
    };
    let (latency, stack) = stall(&rx)?;
    let (read, total) = (millis(&READ), millis(&TOTAL));
    stall(&rx)?;
    let again = millis(&TOTAL) - millis(&READ);
    let resident = measure::resident()?;
    println!(
        "{resident} {:.1} {} {read:.3} {total:.3} {again:.3}",
        latency.as_secs_f64() * 1e3,
        if stack { "stack" } else { "none" },
    );
    watchdog.shutdown();
    Ok(())
}
