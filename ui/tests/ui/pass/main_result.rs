// `#[loopwatch::main]` on a `main` returning a `Result`, with `?` inside.
#[loopwatch::main]
async fn main() -> Result<(), std::num::ParseIntError> {
    let n: u32 = "42".parse()?;
    assert_eq!(n, 42);
    assert!(loopwatch::Watchdog::current().is_some());
    tokio::task::yield_now().await;
    Ok(())
}
