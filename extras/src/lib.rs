//! Nothing here: this package holds loopwatch's benchmarks (`benches/`), its
//! axum example (`examples/axum.rs`) and the tests that need heavy
//! dependencies (`tests/`), so that the main crate's examples build without
//! them.
