//! Names a user of the crate reaches: the hook functions in `hooks`, the
//! types of every public `Health` field, `StallReport` as a value to keep
//! and serialize, and the series names.

fn clone_and_serialize<T: Clone + serde::Serialize>() {}

fn main() {
    let _: fn() = loopwatch::hooks::thread_started;
    let _: fn() = loopwatch::hooks::thread_parked;
    let _: fn() = loopwatch::hooks::thread_unparked;
    let _ = loopwatch::install_runtime_hooks;
    clone_and_serialize::<loopwatch::StallReport>();
    clone_and_serialize::<loopwatch::Health>();
    clone_and_serialize::<loopwatch::HungTask>();
    clone_and_serialize::<loopwatch::RecentStall>();
    let _: loopwatch::WatchdogBuilder = loopwatch::Watchdog::builder();
    let _: loopwatch::ExporterBuilder = loopwatch::Exporter::builder();
    assert!(loopwatch::metric_names::ALL.contains(&loopwatch::metric_names::STALLS_TOTAL));
}
