#[loopwatch::instrument_blocking(slow = "0s")]
fn f() {}

fn main() {}
