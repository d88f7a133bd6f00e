#[loopwatch::instrument_blocking]
struct S;

fn main() {}
