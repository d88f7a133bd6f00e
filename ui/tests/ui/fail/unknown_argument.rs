#[loopwatch::instrument_blocking(level = "info")]
fn f() {}

fn main() {}
