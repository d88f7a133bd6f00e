//! A watchdog started as a statement would stop at once: `#[must_use]` says so.
#![deny(unused_must_use)]

fn main() -> Result<(), loopwatch::Error> {
    loopwatch::Watchdog::builder().start()?;
    Ok(())
}
