#[loopwatch::instrument_blocking]
const fn f() -> u8 {
    1
}

fn main() {}
