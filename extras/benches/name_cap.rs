//! What a spawn costs with a name past the cap on distinct names
//! ([`loopwatch::MAX_NAMES`]), against the same spawn with known names, in
//! the same run. Its own binary: the cap, once reached, stays reached.
//!
//! ```text
//! cargo bench -p loopwatch-extras --bench name_cap
//! ```
//!
//! Both cycle over 900 distinct names, more than the per-thread name cache
//! holds, so both go to the shared registry.

use criterion::{criterion_group, criterion_main, Criterion};

fn names(prefix: &str, n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("{prefix}{i}").into_boxed_str()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let spawn_all = |names: &[&'static str]| {
        rt.block_on(async {
            for name in names {
                loopwatch::spawn_named(name, async {}).await.expect("task");
            }
        })
    };
    let known = names("known-", 900);
    spawn_all(&known); // interned: under the cap
    let filler = names("filler-", loopwatch::MAX_NAMES);
    spawn_all(&filler); // the cap is reached
    let past = names("past-", 900);
    spawn_all(&past); // each counted as `other`

    let mut group = c.benchmark_group("spawn_named_and_await");
    for (label, set) in [("under_the_cap", &known), ("past_the_cap", &past)] {
        let mut i = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                i = (i + 1) % set.len();
                let name = set[i];
                rt.block_on(async { loopwatch::spawn_named(name, async {}).await })
                    .expect("task")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
