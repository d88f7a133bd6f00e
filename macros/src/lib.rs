//! Procedural macros for [`loopwatch`](https://docs.rs/loopwatch).
//!
//! Use them through the `loopwatch` crate (default feature `macros`), not directly.
//! The `#[instrument_blocking]` attribute arrives in a later release; this crate
//! exists now so that the workspace layout and the feature flag are stable.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
