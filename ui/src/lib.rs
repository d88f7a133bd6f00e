//! Nothing here: this package holds the compile-time tests of
//! `#[loopwatch::instrument_blocking]` and `#[loopwatch::main]`
//! (`tests/ui.rs`), apart so that trybuild builds only what they use.
