#[loopwatch::instrument_blocking(name = "a", name = "b")]
fn f() {}

fn main() {}
