#[loopwatch::main]
fn main() {}
