#[loopwatch::instrument_blocking(warn = "fast")]
fn f() {}

fn main() {}
