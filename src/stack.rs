//! Stacks of other threads, for stall reports (Linux, feature `stacks`).
//!
//! - [`capture`]: takes a thread's stack with a real-time signal;
//! - [`classify`]: the one classifier of frames, by address (the capture's
//!   own frames, tokio's scheduler, task harness and park code);
//! - [`symbols`]: names and `file:line` of frames, on the watchdog thread;
//! - [`proc`]: the thread's scheduler state from `/proc` (on a CPU or not).
//!
//! Elsewhere, or without the feature, every function here answers "not
//! available" and reports carry no stack.

mod proc;
pub(crate) use proc::on_cpu;

#[cfg(all(target_os = "linux", feature = "stacks"))]
mod capture;
#[cfg(all(target_os = "linux", feature = "stacks"))]
mod classify;
#[cfg(all(target_os = "linux", feature = "stacks"))]
mod symbols;

#[cfg(all(target_os = "linux", feature = "stacks"))]
pub(crate) use capture::{capture, choose_signal, CaptureError};
#[cfg(all(target_os = "linux", feature = "stacks"))]
pub(crate) use classify::{in_current_thread_scheduler, in_task_poll, interrupted_from};
#[cfg(all(target_os = "linux", feature = "stacks"))]
pub(crate) use symbols::symbolize;

/// Loads the frame classifier's table and the symbolizer's caches (once per
/// process), so that the first stall does not wait for them.
pub(crate) fn warm_up() {
    #[cfg(all(target_os = "linux", feature = "stacks"))]
    {
        classify::warm_up();
        symbols::warm_up();
    }
}

#[cfg(not(all(target_os = "linux", feature = "stacks")))]
mod unsupported {
    /// Why a capture gave nothing.
    #[derive(Debug, PartialEq, Eq)]
    #[allow(dead_code)]
    pub(crate) enum CaptureError {
        /// The thread no longer exists (never returned here).
        NoSuchThread,
        /// Sampling is unavailable on this platform or build.
        Unavailable,
    }

    pub(crate) fn capture(
        _tid: i64,
        _timeout: std::time::Duration,
    ) -> Result<Vec<usize>, CaptureError> {
        Err(CaptureError::Unavailable)
    }

    pub(crate) fn choose_signal(_signal: i32) {}

    pub(crate) fn in_current_thread_scheduler(_frames: &[usize]) -> Option<bool> {
        None
    }

    pub(crate) fn in_task_poll(_frames: &[usize]) -> Option<bool> {
        None
    }

    pub(crate) fn interrupted_from(_frames: &[usize]) -> usize {
        0
    }

    pub(crate) fn symbolize(_frames: &[usize], _full: bool) -> Option<String> {
        None
    }
}

#[cfg(not(all(target_os = "linux", feature = "stacks")))]
pub(crate) use unsupported::*;

#[cfg(target_os = "linux")]
thread_local! {
    // SAFETY: gettid has no preconditions.
    static TID: i64 = i64::from(unsafe { libc::gettid() });
}

/// The calling thread's kernel id (0 while the thread is torn down, and
/// where there is no such id).
pub(crate) fn current_tid() -> i64 {
    #[cfg(target_os = "linux")]
    {
        TID.try_with(|t| *t).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}
