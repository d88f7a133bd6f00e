//! Compile-time behaviour of `#[instrument_blocking]`: what compiles, and the
//! errors for bad arguments, spanned at the offending token.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
