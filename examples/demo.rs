//! An application that stalls on purpose, to show what loopwatch reports
//! while it happens. Runs for about 8 seconds, then exits by itself.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::time::Duration;

use loopwatch::{WatchExt as _, Watchdog};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "loopwatch=info".into()),
        )
        .init();

    let watchdog = Watchdog::builder()
        .stall_threshold(Duration::from_secs(2))
        .on_stall(|report| println!("  on_stall callback: {report}"))
        .start()?;
    watchdog.watch_runtime("main", &tokio::runtime::Handle::current())?;

    // Healthy background work: a ticker, instrumented.
    let ticker = tokio::spawn(
        async {
            let mut interval = tokio::time::interval(Duration::from_millis(50));
            loop {
                interval.tick().await;
            }
        }
        .watched("ticker"),
    );

    println!("1. The service runs normally for a second.");
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("   health: {}", watchdog.health().status.as_str());

    println!("2. A task calls a blocking function (std::thread::sleep, 5 s) on a worker thread.");
    println!("   loopwatch flags it after the 2 s stall threshold, while it is still stuck:");
    let stuck = tokio::spawn(
        async {
            // Stands for a sync database call, a std::fs read, a std Mutex, a CPU loop...
            std::thread::sleep(Duration::from_secs(5));
        }
        .watched("ingest"),
    );

    // Read the health from a plain thread: it answers whatever the runtime does.
    let observer = {
        let watchdog = watchdog.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(3000));
            let health = watchdog.health();
            println!(
                "   /health during the stall ({}):\n{}",
                health.status.as_str(),
                indent(&serde_json::to_string_pretty(&health).unwrap_or_default())
            );
        })
    };
    stuck.await?;
    observer.join().expect("observer thread");
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("3. The call returned; the stall is over.");
    let health = watchdog.health();
    println!("   health: {} {:?}", health.status.as_str(), health.issues);
    ticker.abort();
    watchdog.shutdown();
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}
