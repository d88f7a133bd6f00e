//! Cost added to each poll by `.watched(...)`, against the same future bare,
//! measured in the same run.
//!
//! ```text
//! cargo bench --bench poll_overhead
//! ```

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use loopwatch::WatchExt as _;

/// A future that is never ready: each poll is the empty poll being measured.
struct Pending;

impl Future for Pending {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

fn poll_many<F: Future>(fut: F, iters: u64) -> Duration {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    for _ in 0..iters {
        let _ = std::hint::black_box(fut.as_mut().poll(&mut cx));
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll");
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| poll_many(std::hint::black_box(Pending), iters))
    });
    group.bench_function("watched", |b| {
        b.iter_custom(|iters| poll_many(std::hint::black_box(Pending).watched("bench"), iters))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
