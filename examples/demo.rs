//! A service that stalls on purpose, to show what loopwatch reports while it
//! happens. Runs for about 9 seconds, then exits by itself.
//!
//! ```text
//! cargo run --example demo
//! LOOPWATCH_ADDR=127.0.0.1:9377 cargo run --example demo   # and: curl -i 127.0.0.1:9377/health
//! ```
//!
//! Its output is the one the README shows (`tests/readme_demo.rs` checks
//! that they agree).

use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// A request handler that calls a blocking function on the async worker.
#[tracing::instrument]
async fn handle_order(id: u64) {
    load_order(id);
}

/// Stands for a sync database call, a `std::fs` read, a `std::sync::Mutex`,
/// a CPU loop...
#[inline(never)]
fn load_order(id: u64) {
    std::thread::sleep(Duration::from_secs(7));
    std::hint::black_box(id);
}

#[loopwatch::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .with(loopwatch::spans::layer())
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let watchdog = loopwatch::Watchdog::current().ok_or("loopwatch is off (LOOPWATCH=off)")?;

    // Healthy background work, spawned through loopwatch.
    let ticker = loopwatch::spawn_named("ticker", async {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
        }
    });

    println!("1. The service runs normally for a second.");
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("   health: {}", watchdog.health().status.as_str());

    println!("2. A request handler calls a blocking function (7 s) on a worker thread.");
    println!("   loopwatch reports it after the 5 s stall threshold, while it is still stuck:");
    let stuck = loopwatch::spawn_named("orders", handle_order(42));

    // Health from a plain thread: it answers whatever the runtime does.
    let observer = {
        let watchdog = watchdog.clone();
        std::thread::spawn(move || {
            // Once the report has taken the stack (or the stall is over).
            let deadline = std::time::Instant::now() + Duration::from_secs(7);
            let mut health = watchdog.health();
            while std::time::Instant::now() < deadline
                && !health.runtimes[0]
                    .stalled_workers
                    .iter()
                    .any(|w| w.culprit.is_some())
            {
                std::thread::sleep(Duration::from_millis(100));
                health = watchdog.health();
            }
            let stalled = &health.runtimes[0].stalled_workers;
            println!("   /health during the stall: {}", health.status.as_str());
            for w in stalled {
                println!(
                    "     stalled worker: task {:?}, cause {}, culprit {:?}, spans {:?}",
                    w.task.as_deref().unwrap_or("-"),
                    w.cause,
                    w.culprit.as_deref().unwrap_or("-"),
                    w.spans
                );
            }
            println!(
                "     tasks: spawned {}, alive {}",
                health.tasks.spawned, health.tasks.alive
            );
        })
    };
    stuck.await?;
    observer
        .join()
        .map_err(|_| "the observer thread panicked")?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("3. The call returned; the stall is over.");
    let health = watchdog.health();
    println!("   health: {} {:?}", health.status.as_str(), health.issues);
    ticker.abort();
    Ok(())
}
