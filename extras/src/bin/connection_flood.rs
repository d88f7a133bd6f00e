//! Scrapes through a connection flood: 300 idle and 300 slowloris
//! connections held open against the exporter (default settings: at most
//! 256 connections, 1 s for a request head), reopened whenever the exporter
//! closes them, while 100 scrapes of `/metrics` and `/health` are made 50 ms
//! apart. Prints the share answered and the p50 / p99 latency, against the
//! same scrapes without the flood (same run). Exits non-zero unless every
//! scrape during the flood was answered.
//!
//! ```text
//! cargo run --release -p loopwatch-extras --bin connection_flood
//! cargo run -p loopwatch-extras --bin connection_flood -- --idle 100 --slowloris 100 --scrapes 20
//! ```

use std::time::Duration;

use flood::{Flood, Kind};
use loopwatch_test_support::flood;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut idle = 300;
    let mut slowloris = 300;
    let mut scrapes = 100;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = |v: Option<String>| -> Result<usize, Box<dyn std::error::Error>> {
            Ok(v.ok_or("a number must follow")?.parse()?)
        };
        match arg.as_str() {
            "--idle" => idle = value(args.next())?,
            "--slowloris" => slowloris = value(args.next())?,
            "--scrapes" => scrapes = value(args.next())?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let watchdog = loopwatch::Watchdog::builder().start()?;
    let exporter = loopwatch::Exporter::builder()
        .bind("127.0.0.1:0".parse()?)
        .start(&watchdog)?;
    let addr = exporter.local_addr();
    let every = Duration::from_millis(50);

    let baseline = flood::scrapes(addr, scrapes, every);
    let (idle_flood, slow_flood) = (
        Flood::start(addr, Kind::Idle, idle),
        Flood::start(addr, Kind::Slowloris, slowloris),
    );
    std::thread::sleep(Duration::from_secs(1));
    let flooded = flood::scrapes(addr, scrapes, every);
    let opened = idle_flood.opened.load(std::sync::atomic::Ordering::Relaxed)
        + slow_flood.opened.load(std::sync::atomic::Ordering::Relaxed);
    drop((idle_flood, slow_flood));

    println!(
        "{scrapes} scrapes, {} ms apart; exporter defaults (256 connections, 1 s head timeout)",
        every.as_millis()
    );
    let row = |label: &str, results: &[Option<(u16, Duration)>]| {
        let (answered, p50, p99) = flood::summary(results);
        println!(
            "  {label:<44} answered {:>5.1} %  p50 {:>7.2} ms  p99 {:>7.2} ms",
            answered * 100.0,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        (answered, p99)
    };
    row("no flood", &baseline);
    let (answered, p99) = row(
        &format!("{idle} idle + {slowloris} slowloris connections"),
        &flooded,
    );
    println!("  the flood opened {opened} connections in all (reopening those closed)");
    exporter.shutdown();
    watchdog.shutdown();
    if answered < 1.0 {
        return Err("scrapes failed during the flood".into());
    }
    println!(
        "PASS: every scrape answered during the flood (p99 {:.1} ms; target 100 ms)",
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}
