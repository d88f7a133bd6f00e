//! Stacks of other threads, for stall reports (Linux on x86_64, feature
//! `stacks`), taken without disturbing the thread whenever it can be.
//!
//! - [`proc`]: what the kernel says about a thread (on a CPU or waiting, the
//!   registers of a waiting thread, its blocked signals) and copies of
//!   memory that cannot fault;
//! - [`modules`]: the loaded objects and their unwind tables;
//! - [`unwind`]: the walk of a copied stack, right without the frame
//!   pointer (its doc says why);
//! - [`capture`]: the real-time signal, for a stuck thread on a CPU only;
//! - [`classify`]: the one classifier of frames, by name, inlined ones
//!   included (tokio's scheduler, task harness and park code);
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
    /// The stack pointer in each frame.
    pub(crate) sps: Vec<u64>,
    /// Whether the walk reached the thread's first frame.
    pub(crate) complete: bool,
    /// Where the walk stopped, when it did not.
    pub(crate) stopped: Option<&'static str>,
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
mod unwind;

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) use classify::role;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) use symbols::Symbolizer;

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod linux {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::modules::Modules;
    use super::proc::{self, Syscall};
    use super::{capture, NoStack, Sample};

    /// How long a signalled thread has to answer.
    const SIGNAL_TIMEOUT: Duration = Duration::from_millis(100);

    /// The loaded objects, replaced whole when new ones are found: the lock
    /// is held only to take or swap the `Arc`, never during a walk or a
    /// lookup, so that a `fork()` while the watchdog reads a stack leaves
    /// the child a lock nobody holds.
    static MODULES: Mutex<Option<Arc<Modules>>> = Mutex::new(None);

    pub(crate) fn modules() -> Arc<Modules> {
        let current = MODULES.lock().clone();
        match current {
            Some(modules) => modules,
            None => {
                let loaded = Arc::new(Modules::load());
                MODULES.lock().get_or_insert(loaded).clone()
            }
        }
    }

    /// Reads the objects loaded since the last look (a library opened
    /// later), when an address is in none of the known ones.
    pub(crate) fn refresh_modules() -> Arc<Modules> {
        let refreshed = Arc::new(modules().refreshed());
        *MODULES.lock() = Some(refreshed.clone());
        refreshed
    }

    /// Walks a stack with the loaded objects, reading them again once if
    /// the walk meets code in none of them.
    fn walk(ip: u64, sp: u64, bp: Option<u64>, base: u64, stack: &[u8]) -> super::modules::Walk {
        let walk = modules().walk(ip, sp, bp, base, stack);
        if walk.stop == Some(super::modules::Stop::NoCode) {
            return refresh_modules().walk(ip, sp, bp, base, stack);
        }
        walk
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
                    let walk = walk(pc, sp, None, sp, &stack[..len]);
                    return Ok(Sample {
                        complete: walk.complete(),
                        stopped: walk.stop.map(|s| s.describe()),
                        frames: walk.frames,
                        sps: walk.sps,
                        signalled: false,
                    });
                }
                Syscall::Running if !may_signal => return Err(NoStack::OnCpu),
                Syscall::Running => {
                    let i = match capture::interrupt(tid, SIGNAL_TIMEOUT) {
                        Ok(i) => i,
                        Err(why) => return partial.ok_or(why),
                    };
                    let walk = walk(i.ip, i.sp, Some(i.bp), i.sp, &i.stack);
                    let sample = Sample {
                        complete: walk.complete(),
                        stopped: walk.stop.map(|s| s.describe()),
                        frames: walk.frames,
                        sps: walk.sps,
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

    /// Loads the unwind tables (once per process), so that the first stall
    /// does not wait for them.
    pub(crate) fn warm_up() {
        let _ = modules();
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

    /// What a thread's stack says it is doing (nothing known here).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub(crate) struct Role {
        pub(crate) worker: bool,
        pub(crate) polling: Option<usize>,
        pub(crate) current_thread: bool,
    }

    pub(crate) fn role(_symbolizer: &mut Symbolizer, _frames: &[usize]) -> Option<Role> {
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
