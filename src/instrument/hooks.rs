//! Thread hooks for runtimes you build yourself.
//!
//! [`install_runtime_hooks`] puts loopwatch's hooks on a
//! [`tokio::runtime::Builder`]. They are optional: any runtime can be watched
//! by its `Handle`. With them, loopwatch knows every worker thread from the
//! start (name and id, for stall evidence) and when each one parks, which
//! makes detection of uninstrumented stalls sharper on multi-thread runtimes.
//!
//! Under `--cfg tokio_unstable`, the task poll hooks are installed too: every
//! task poll is then recorded like an instrumented one, named by the task's
//! spawn location (`file:line`), which makes detection exact for every task
//! of the runtime.
//!
//! Tokio keeps one callback per hook, so `install_runtime_hooks` replaces
//! `on_thread_start`, `on_thread_park` and `on_thread_unpark` set before it.
//! To keep your own, call [`thread_started`], [`thread_parked`] and
//! [`thread_unparked`] from them instead:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_multi_thread()
//!     .worker_threads(2)
//!     .on_thread_start(|| {
//!         loopwatch::hooks::thread_started();
//!         // ... your own start hook ...
//!     })
//!     .on_thread_park(loopwatch::hooks::thread_parked)
//!     .on_thread_unpark(loopwatch::hooks::thread_unparked)
//!     .build()?;
//! # drop(runtime);
//! # Ok(()) }
//! ```

use crate::board::slot::{self, PARK_ACTIVE, PARK_PARKED};

/// Installs loopwatch's thread hooks on a runtime builder.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// builder.worker_threads(2).enable_all();
/// loopwatch::install_runtime_hooks(&mut builder);
/// let runtime = builder.build()?;
///
/// let watchdog = loopwatch::Watchdog::builder().start()?;
/// watchdog.watch_runtime("workers", runtime.handle())?;
/// # watchdog.shutdown();
/// # Ok(()) }
/// ```
pub fn install_runtime_hooks(
    builder: &mut tokio::runtime::Builder,
) -> &mut tokio::runtime::Builder {
    builder
        .on_thread_start(thread_started)
        .on_thread_park(thread_parked)
        .on_thread_unpark(thread_unparked);
    #[cfg(tokio_unstable)]
    builder
        .on_before_task_poll(|meta| slot::task_hooks::poll_started(meta.spawned_at()))
        .on_after_task_poll(|_| slot::task_hooks::poll_ended());
    builder
}

/// Registers the calling runtime thread with loopwatch. Call it from your own
/// `on_thread_start` hook.
pub fn thread_started() {
    slot::register_current_thread();
}

/// Records that the calling worker parks. Call it from your own `on_thread_park` hook.
pub fn thread_parked() {
    slot::set_park_state(PARK_PARKED);
}

/// Records that the calling worker unparked. Call it from your own `on_thread_unpark` hook.
pub fn thread_unparked() {
    slot::set_park_state(PARK_ACTIVE);
}
