//! Cost added to each poll by loopwatch, measured in the same run against
//! baselines:
//!
//! - `poll/*`: one empty poll of a future, bare and `.watched(...)`, and
//!   (Linux) two reads of `CLOCK_MONOTONIC_COARSE` through libc, the floor of
//!   what a poll timed with the coarse clock can cost on this machine;
//! - `task/*`: a task on a 2-worker runtime that yields 1,000 times (one poll
//!   per yield), spawned with `tokio::spawn`, with `loopwatch::spawn_named`,
//!   and with tokio-metrics' `TaskMonitor::instrument`; per poll;
//! - `task_current_thread/*`: the same task on a current-thread runtime,
//!   where no cross-thread wake-up hides the per-poll path; per poll;
//! - `call/*`: one sync call that does not block, plain, marked
//!   `#[instrument_blocking]`, and through `loopwatch::blocking`;
//! - `spawn/*`: spawning and awaiting 100 empty tasks, with `tokio::spawn`
//!   and with `loopwatch::spawn_named`, on a 2-worker runtime; per task;
//! - `spawn_current_thread/*`: the same on a current-thread runtime, where
//!   no cross-thread wake-up hides the cost of a spawn and a task's end.
//!
//! ```text
//! cargo bench -p loopwatch-extras --bench poll_overhead
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
    #[cfg(target_os = "linux")]
    group.bench_function("two_coarse_clock_reads", |b| {
        b.iter(|| {
            let read = || {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: a valid clock id and timespec.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
                std::hint::black_box(ts.tv_nsec)
            };
            (read(), read())
        })
    });
    group.finish();

    const YIELDS: u64 = 1_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let monitor = tokio_metrics::TaskMonitor::new();
    let mut group = c.benchmark_group("task");
    group.throughput(criterion::Throughput::Elements(YIELDS));
    let yielder = || async {
        for _ in 0..YIELDS {
            tokio::task::yield_now().await;
        }
    };
    group.bench_function("tokio_spawn", |b| {
        b.iter(|| rt.block_on(tokio_spawn_in(&rt, yielder())));
    });
    group.bench_function("loopwatch_spawn_named", |b| {
        b.iter(|| {
            rt.block_on(async {
                loopwatch::spawn_named("bench", yielder()).await.unwrap();
            })
        });
    });
    group.bench_function("task_monitor_instrument", |b| {
        b.iter(|| rt.block_on(tokio_spawn_in(&rt, monitor.instrument(yielder()))));
    });
    group.finish();

    // The same task on a current-thread runtime: no wake-up crosses
    // threads, so what differs is the per-poll path alone.
    let ct = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("task_current_thread");
    group.throughput(criterion::Throughput::Elements(YIELDS));
    group.bench_function("tokio_spawn", |b| {
        b.iter(|| ct.block_on(tokio_spawn_in(&ct, yielder())));
    });
    group.bench_function("loopwatch_spawn_named", |b| {
        b.iter(|| {
            ct.block_on(async {
                loopwatch::spawn_named("bench", yielder()).await.unwrap();
            })
        });
    });
    group.finish();
}

#[inline(never)]
fn plain(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(3)
}

#[loopwatch::instrument_blocking(name = "bench.call")]
#[inline(never)]
fn marked(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(3)
}

fn calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("call");
    group.bench_function("plain", |b| b.iter(|| plain(std::hint::black_box(7))));
    group.bench_function("instrument_blocking", |b| {
        b.iter(|| marked(std::hint::black_box(7)))
    });
    group.bench_function("blocking_fn", |b| {
        b.iter(|| loopwatch::blocking("bench.blocking", || plain(std::hint::black_box(7))))
    });
    group.finish();

    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    spawn_group(c, "spawn", &multi);
    // The same on a current-thread runtime: no cross-thread wake-ups, so
    // what is left is the cost of a spawn and a task's end.
    let ct = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    spawn_group(c, "spawn_current_thread", &ct);
}

/// Spawning and awaiting 100 empty tasks on `rt`, with `tokio::spawn` and
/// with `loopwatch::spawn_named`.
fn spawn_group(c: &mut Criterion, group: &str, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group(group);
    group.throughput(criterion::Throughput::Elements(100));
    group.bench_function("tokio_spawn", |b| {
        b.iter(|| rt.block_on(spawn_and_await(|| tokio::spawn(async {}))))
    });
    group.bench_function("loopwatch_spawn_named", |b| {
        b.iter(|| {
            rt.block_on(spawn_and_await(|| {
                loopwatch::spawn_named("bench.spawn", async {})
            }))
        })
    });
    group.finish();
}

async fn spawn_and_await(spawn: impl Fn() -> tokio::task::JoinHandle<()>) {
    let handles: Vec<_> = (0..100).map(|_| spawn()).collect();
    for h in handles {
        h.await.unwrap();
    }
}

async fn tokio_spawn_in<F>(rt: &tokio::runtime::Runtime, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    rt.spawn(fut).await.unwrap();
}

criterion_group!(benches, bench, calls);
criterion_main!(benches);
