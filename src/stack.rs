//! Stacks of other threads, for stall reports (Linux on x86_64, feature
//! `stacks`), taken without disturbing the thread whenever it can be.
//!
//! - [`proc`]: what the kernel says about a thread (on a CPU or waiting, the
//!   registers of a waiting thread, its blocked signals) and copies of
//!   memory that cannot fault;
//! - [`modules`]: the loaded objects and their unwind tables, and the walk
//!   of a copied stack (with `framehop`);
//! - [`capture`]: the real-time signal, for a stuck thread on a CPU only;
//! - [`classify`]: the one classifier of frames, by address (tokio's
//!   scheduler, task harness and park code);
//! - [`symbols`]: names, `file:line` and the culprit, resolved on demand.
//!
//! A thread waiting in the kernel (a sleep, a lock, blocking I/O: most
//! stalls) is never signalled: its stack pointer and program counter come
//! from `/proc/self/task/TID/syscall`, its stack bytes are copied with
//! `process_vm_readv`, and the walk happens on the watchdog thread. A thread
//! on a CPU (a spin loop) is signalled, and the handler only copies its
//! registers and stack bytes. Elsewhere, or without the feature, every
//! function here answers "not available" and reports carry no stack.

use std::fmt;

mod proc;
pub(crate) use proc::{on_cpu, voluntary_switches};

/// Why a report has no stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub(crate) enum NoStack {
    /// The thread no longer exists.
    Gone,
    /// Not available on this platform or build, or turned off.
    Unsupported,
    /// The signal handler could not be installed.
    NoSignal,
    /// The application handles loopwatch's signal.
    SignalTaken,
    /// The thread is on a CPU and blocks loopwatch's signal.
    SignalBlocked,
    /// The thread is on a CPU and not known to be stuck, so not signalled.
    OnCpu,
    /// The thread kept moving while its stack was copied.
    KeptMoving,
    /// The thread did not answer the signal in time.
    Timeout,
    /// No thread of the runtime could be told to be the stuck one.
    NotFound,
}

impl fmt::Display for NoStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoStack::Gone => "the thread exited",
            NoStack::Unsupported => "stacks are not available on this platform or build",
            NoStack::NoSignal => "the stack signal handler could not be installed",
            NoStack::SignalTaken => {
                "the application handles loopwatch's stack signal, and the thread is on a CPU"
            }
            NoStack::SignalBlocked => "the thread is on a CPU and blocks loopwatch's stack signal",
            NoStack::OnCpu => "the thread is on a CPU and not known to be stuck",
            NoStack::KeptMoving => "the thread kept moving while its stack was read",
            NoStack::Timeout => "the thread did not answer the stack signal in time",
            NoStack::NotFound => "the stuck worker thread could not be told from the others",
        })
    }
}

/// A stack taken from a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Addresses to look up, innermost first.
    pub(crate) frames: Vec<usize>,
    /// Whether the walk reached the thread's first frame.
    pub(crate) complete: bool,
    /// Whether the thread was signalled (it was on a CPU).
    pub(crate) signalled: bool,
}

/// A stack in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Symbolized {
    /// One numbered frame per line, with `file:line` where known.
    pub(crate) text: String,
    /// The first frame of application code, `function (file:line)`.
    pub(crate) culprit: Option<String>,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod capture;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod classify;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod modules;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod symbols;

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) use classify::{in_current_thread_scheduler, in_task_poll};
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) use symbols::Symbolizer;

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod linux {
    use std::sync::OnceLock;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::modules::Modules;
    use super::proc::{self, Syscall};
    use super::{capture, NoStack, Sample};

    /// How long a signalled thread has to answer.
    const SIGNAL_TIMEOUT: Duration = Duration::from_millis(100);

    static MODULES: OnceLock<Mutex<Modules>> = OnceLock::new();

    pub(crate) fn modules() -> &'static Mutex<Modules> {
        MODULES.get_or_init(|| Mutex::new(Modules::load()))
    }

    /// Installs the stack signal's handler (the default signal unless
    /// `signal` names another); called when the watchdog starts.
    pub(crate) fn install(signal: Option<i32>) -> Result<(), NoStack> {
        capture::install(signal.unwrap_or_else(capture::default_signal))
    }

    /// Takes thread `tid`'s stack. A thread waiting in the kernel is read
    /// from outside; a thread on a CPU is signalled only if `may_signal`.
    pub(crate) fn sample(tid: i64, may_signal: bool) -> Result<Sample, NoStack> {
        // A signalled walk that stopped after a few frames (the thread was
        // caught where the unwind tables do not reach) is taken again, up
        // to three signals in all; the longest walk is kept.
        let mut partial: Option<Sample> = None;
        for _ in 0..3 {
            match proc::syscall(tid).ok_or(NoStack::Gone)? {
                Syscall::Blocked { line, sp, pc } => {
                    let mut stack = vec![0u8; capture::WINDOW];
                    let len = proc::copy_memory(sp, &mut stack);
                    // The same registers after the copy: the thread did not
                    // move, so the bytes are the stack those registers index.
                    match proc::syscall(tid) {
                        Some(Syscall::Blocked { line: again, .. }) if again == line => {}
                        Some(_) => continue,
                        None => return Err(NoStack::Gone),
                    }
                    let walk = modules().lock().walk(pc, sp, None, sp, &stack[..len]);
                    return Ok(Sample {
                        frames: walk.frames,
                        complete: walk.complete,
                        signalled: false,
                    });
                }
                Syscall::Running if !may_signal => return Err(NoStack::OnCpu),
                Syscall::Running => {
                    let i = match capture::interrupt(tid, SIGNAL_TIMEOUT) {
                        Ok(i) => i,
                        Err(why) => return partial.ok_or(why),
                    };
                    let walk = modules()
                        .lock()
                        .walk(i.ip, i.sp, Some(i.bp), i.sp, &i.stack);
                    let sample = Sample {
                        frames: walk.frames,
                        complete: walk.complete,
                        signalled: true,
                    };
                    // A deep stack that ran past the window is kept as it is.
                    if sample.complete || sample.frames.len() >= 8 {
                        return Ok(sample);
                    }
                    if partial
                        .as_ref()
                        .is_none_or(|p| p.frames.len() < sample.frames.len())
                    {
                        partial = Some(sample);
                    }
                }
            }
        }
        partial.ok_or(NoStack::KeptMoving)
    }

    /// Loads the unwind tables and the frame classifier's table (once per
    /// process), so that the first stall does not wait for them.
    pub(crate) fn warm_up() {
        let _ = modules();
        super::classify::warm_up();
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
use linux::modules as linux_modules;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) use linux::{install, sample, warm_up};

#[cfg(not(all(target_os = "linux", target_arch = "x86_64", feature = "stacks")))]
mod unsupported {
    use super::{NoStack, Sample, Symbolized};

    pub(crate) fn install(_signal: Option<i32>) -> Result<(), NoStack> {
        Err(NoStack::Unsupported)
    }

    pub(crate) fn sample(_tid: i64, _may_signal: bool) -> Result<Sample, NoStack> {
        Err(NoStack::Unsupported)
    }

    pub(crate) fn warm_up() {}

    pub(crate) fn in_current_thread_scheduler(_frames: &[usize]) -> Option<bool> {
        None
    }

    pub(crate) fn in_task_poll(_frames: &[usize]) -> Option<bool> {
        None
    }

    /// Resolves nothing here.
    #[derive(Debug, Default)]
    pub(crate) struct Symbolizer;

    impl Symbolizer {
        pub(crate) fn symbolize(&mut self, _frames: &[usize], _full: bool) -> Option<Symbolized> {
            None
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64", feature = "stacks")))]
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
