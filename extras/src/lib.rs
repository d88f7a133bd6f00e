//! Nothing here: this package holds loopwatch's benchmarks (`benches/`), its
//! measuring programs (`src/bin/`: memory per task, watchdog cost, stack
//! cost, detection latency, scrapes under load and through a flood), its
//! axum example (`examples/axum.rs`) and the tests that need heavy
//! dependencies (`tests/`), so that the main crate's examples build without
//! them.
