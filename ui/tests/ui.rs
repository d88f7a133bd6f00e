//! Compile-time behaviour of `#[instrument_blocking]` and `#[loopwatch::main]`: what compiles (and, for `main`, runs), and the
//! errors for bad arguments, spanned at the offending token.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
