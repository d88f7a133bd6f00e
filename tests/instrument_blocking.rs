//! `#[instrument_blocking]` on every kind of function: behaviour unchanged,
//! calls counted under the right name.

mod common;

use std::time::Duration;

use common::{call_counts as counts, call_watchdog as watchdog, multi_thread, serial};
use loopwatch::instrument_blocking;

#[instrument_blocking]
fn default_name(x: u32) -> u32 {
    x + 1
}

#[instrument_blocking(name = "ib.fallible")]
fn fallible(fail: bool) -> Result<u8, String> {
    if fail {
        return Err("failed".into());
    }
    let parsed: u8 = "7".parse().map_err(|_| "parse".to_owned())?;
    Ok(parsed)
}

#[instrument_blocking(name = "ib.io", warn = "20ms", slow = "40ms")]
fn io_result(ms: u64) -> std::io::Result<()> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

#[instrument_blocking(name = "ib.generic")]
fn generic<T: std::fmt::Display>(value: T, also: impl AsRef<str>) -> String {
    format!("{value}{}", also.as_ref())
}

#[instrument_blocking(name = "ib.iter")]
fn returns_impl_trait(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

#[instrument_blocking(name = "ib.panics")]
fn panics() {
    panic!("boom");
}

struct Db {
    calls: u32,
}

impl Db {
    #[instrument_blocking(name = "ib.ref")]
    fn by_ref(&self) -> u32 {
        self.calls
    }

    #[instrument_blocking(name = "ib.mut")]
    fn by_mut(&mut self) -> u32 {
        self.calls += 1;
        self.calls
    }

    #[instrument_blocking(name = "ib.value")]
    fn by_value(self) -> u32 {
        self.calls
    }

    #[instrument_blocking(name = "ib.async_method")]
    async fn query(&self, sql: &str) -> Result<usize, String> {
        tokio::task::yield_now().await;
        if sql.is_empty() {
            return Err("empty".into());
        }
        Ok(sql.len())
    }
}

trait Store {
    async fn get(&self, key: u32) -> Option<u32>;
}

impl Store for Db {
    #[instrument_blocking(name = "ib.trait_async")]
    async fn get(&self, key: u32) -> Option<u32> {
        tokio::task::yield_now().await;
        (key == self.calls).then_some(key)
    }
}

#[instrument_blocking(name = "ib.async_blocking")]
async fn blocks_in_a_poll() {
    tokio::task::yield_now().await;
    std::thread::sleep(Duration::from_millis(150)); // one long poll: blocking
}

#[instrument_blocking(name = "ib.async_awaits")]
async fn awaits_long() {
    tokio::time::sleep(Duration::from_millis(150)).await; // awaiting: not blocking
}

#[test]
fn sync_functions_behave_as_before_and_are_counted() {
    let _serial = serial();
    let w = watchdog();
    assert_eq!(default_name(1), 2);
    assert_eq!(fallible(false), Ok(7));
    assert_eq!(fallible(true), Err("failed".into()));
    assert_eq!(generic(4, "2"), "42");
    assert_eq!(returns_impl_trait(3).sum::<u32>(), 3);
    let mut db = Db { calls: 0 };
    assert_eq!(db.by_mut(), 1);
    assert_eq!(db.by_ref(), 1);
    assert_eq!(db.by_value(), 1);
    assert!(std::panic::catch_unwind(panics).is_err());

    let name = concat!(module_path!(), "::default_name");
    assert_eq!(counts(&w, name, 1).calls, 1, "default name {name}");
    let c = counts(&w, "ib.fallible", 2);
    assert_eq!((c.calls, c.failed), (2, 1));
    for n in ["ib.generic", "ib.iter", "ib.ref", "ib.mut", "ib.value"] {
        assert_eq!(counts(&w, n, 1).calls, 1, "{n}");
    }
    let c = counts(&w, "ib.panics", 1);
    assert_eq!((c.calls, c.failed), (1, 1));
    w.shutdown();
}

#[test]
fn per_site_thresholds_apply() {
    let _serial = serial();
    let w = watchdog();
    let rt = multi_thread(2);
    rt.block_on(rt.spawn(async {
        io_result(30).unwrap(); // blocking at this site's 20 ms, not slow
        io_result(50).unwrap(); // blocking and slow at 40 ms
        io_result(1).unwrap(); // neither
    }))
    .unwrap();
    let c = counts(&w, "ib.io", 3);
    assert_eq!(
        (c.calls, c.blocking, c.slow, c.failed),
        (3, 2, 1, 0),
        "{c:?}"
    );
    w.shutdown();
}

#[test]
fn async_functions_count_long_polls_not_awaiting() {
    let _serial = serial();
    let w = watchdog();
    let rt = multi_thread(2);
    rt.block_on(async {
        let db = Db { calls: 5 };
        assert_eq!(db.query("select").await, Ok(6));
        assert_eq!(db.query("").await, Err("empty".into()));
        assert_eq!(db.get(5).await, Some(5));
        rt_spawned(blocks_in_a_poll()).await;
        rt_spawned(awaits_long()).await;
    });
    let c = counts(&w, "ib.async_method", 2);
    assert_eq!((c.calls, c.failed), (2, 1), "{c:?}");
    assert_eq!(counts(&w, "ib.trait_async", 1).calls, 1);
    let c = counts(&w, "ib.async_blocking", 1);
    assert_eq!((c.calls, c.blocking), (1, 1), "{c:?}");
    let c = counts(&w, "ib.async_awaits", 1);
    assert_eq!((c.calls, c.blocking), (1, 0), "{c:?}");
    w.shutdown();
}

#[instrument_blocking(name = "ib.async_stall")]
async fn stalls_in_a_poll() {
    tokio::task::yield_now().await;
    std::thread::sleep(Duration::from_millis(1500));
}

/// A stall inside an instrumented async function is named after the function,
/// even when the task running it is a plain `tokio::spawn`.
#[test]
fn a_stall_inside_an_async_function_is_named_after_it() {
    let _serial = serial();
    let (w, reports) = common::start(Duration::from_millis(500), Duration::from_millis(25));
    let rt = multi_thread(2);
    w.watch_runtime("ib", rt.handle()).unwrap();
    let task = rt.spawn(stalls_in_a_poll());
    let (_, report) = reports
        .wait_first("ib", Duration::from_secs(3))
        .expect("the stall is reported");
    assert_eq!(report.task.as_deref(), Some("ib.async_stall"), "{report}");
    rt.block_on(task).unwrap();
    w.shutdown();
}

async fn rt_spawned<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    tokio::spawn(f).await.unwrap();
}
