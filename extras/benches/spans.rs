//! What `loopwatch::spans::layer()` adds to `tracing`, against baselines in
//! the same run:
//!
//! - `span_enter_exit/*`: entering and exiting a span that exists already,
//!   with the registry alone, with loopwatch's layer, and with the `fmt`
//!   layer (writing to a sink) for comparison;
//! - `span_new/*`: creating and closing a span with three fields, with the
//!   registry alone, with loopwatch's layer (which formats its description)
//!   and with the `fmt` layer (which formats its fields too).
//!
//! ```text
//! cargo bench -p loopwatch-extras --bench spans
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt as _;

fn subscribers() -> [(&'static str, Dispatch); 3] {
    let fmt = || tracing_subscriber::fmt::layer().with_writer(std::io::sink);
    [
        ("registry", Dispatch::new(tracing_subscriber::registry())),
        (
            "registry_loopwatch",
            Dispatch::new(tracing_subscriber::registry().with(loopwatch::spans::layer())),
        ),
        (
            "registry_fmt",
            Dispatch::new(tracing_subscriber::registry().with(fmt())),
        ),
    ]
}

fn enter_exit(c: &mut Criterion) {
    let mut group = c.benchmark_group("span_enter_exit");
    for (name, dispatch) in subscribers() {
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request", uri = "/orders/42");
            group.bench_function(name, |b| {
                b.iter(|| {
                    let _entered = std::hint::black_box(&span).enter();
                })
            });
        });
    }
    group.finish();
}

fn create(c: &mut Criterion) {
    let mut group = c.benchmark_group("span_new");
    for (name, dispatch) in subscribers() {
        tracing::dispatcher::with_default(&dispatch, || {
            group.bench_function(name, |b| {
                b.iter(|| {
                    let id = std::hint::black_box(42u64);
                    tracing::info_span!("request", method = %"GET", uri = %"/orders/42", id)
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, enter_exit, create);
criterion_main!(benches);
