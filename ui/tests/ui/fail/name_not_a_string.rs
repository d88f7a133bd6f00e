#[loopwatch::instrument_blocking(name = 42)]
fn f() {}

fn main() {}
