//! loopwatch's stack reader: stacks of other threads of this process, for
//! stall reports (Linux on x86_64, feature `stacks`), taken without
//! changing what the thread's code sees: no signal is ever sent. It knows
//! nothing of loopwatch, tokio's runtimes or watchdogs: it reads a thread,
//! walks what it read, and names frames.
//!
//! - [`os`]: what the kernel says about this process and its threads (on a
//!   CPU or waiting, the registers of a waiting thread, schedstat, cgroups),
//!   and copies of memory that cannot fault;
//! - `perf`: a `perf_event_open` sample of a thread on a CPU, copied by
//!   the kernel while the thread runs user code;
//! - `modules`: the loaded objects and their unwind tables;
//! - `unwind`: the walk of a copied stack, right without the frame
//!   pointer and through tail calls (its doc says why and how);
//! - `decode`: the calls, jumps and prologues the walk reads;
//! - `classify`: the one classifier of frames, by name, inlined ones
//!   included (tokio's scheduler, task harness and park code);
//! - `symbols`: names, `file:line` and the culprit, resolved on demand.
//!
//! A thread waiting in the kernel (a sleep, a lock, blocking I/O: most
//! stalls) is read from outside: its stack pointer and program counter come
//! from `/proc/self/task/TID/syscall`, its stack bytes are copied with
//! `process_vm_readv` (or read from `/proc/self/mem` where that call is
//! refused), and the walk happens on the watchdog thread. A thread on a CPU
//! is sampled by the kernel (`perf`), only when it is known to be stuck
//! (or to decide whether a current-thread runtime's thread is); where
//! `perf_event_open` is refused it has no stack, and the report says why. A
//! signal is never used: one that lands while the thread is in a system
//! call can end the call early (`EINTR`) or make it return short (a
//! `getrandom` or `read` cut at the signal), and no look from outside can
//! rule out that the thread enters one between the look and the signal.
//! Elsewhere, or without the feature, every function here answers "not
//! available" and reports carry no stack.

use std::fmt;

pub mod os;
pub use os::thread::{current_tid, on_cpu, voluntary_switches};

/// Why a report has no stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum NoStack {
    /// The thread no longer exists.
    Gone,
    /// Not available on this platform or build, or turned off.
    Unsupported,
    /// The thread is on a CPU and not known to be stuck, so not sampled.
    OnCpu,
    /// The thread kept moving while its stack was read.
    KeptMoving,
    /// No thread of the runtime could be told to be the stuck one.
    NotFound,
    /// `perf_event_open` was refused (its errno): a thread on a CPU cannot
    /// be sampled.
    PerfRefused(i32),
    /// The thread stayed inside the kernel on a CPU for the whole sampling
    /// window (a long system call): its user code was never seen running.
    InKernel,
    /// Sampled while on a CPU, but it did not run meanwhile (it went to
    /// wait in the kernel); read again from outside.
    NotRunning,
    /// The thread exists, but `/proc/self/task/TID` cannot be read (a
    /// `/proc` mounted without it, or hidden).
    ProcUnreadable,
    /// Memory of the process cannot be copied: `process_vm_readv` and
    /// `/proc/self/mem` both refused (the errno of the first).
    MemoryRefused(i32),
}

impl fmt::Display for NoStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoStack::Gone => f.write_str("the thread exited"),
            NoStack::Unsupported => {
                f.write_str("stacks are not available on this platform or build")
            }
            NoStack::OnCpu => f.write_str("the thread is on a CPU and not known to be stuck"),
            NoStack::KeptMoving => f.write_str("the thread kept moving while its stack was read"),
            NoStack::NotFound => {
                f.write_str("the stuck worker thread could not be told from the others")
            }
            NoStack::PerfRefused(errno) => {
                #[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
                {
                    f.write_str(&perf::refusal(*errno))
                }
                #[cfg(not(all(target_os = "linux", target_arch = "x86_64", feature = "stacks")))]
                {
                    write!(f, "perf_event_open was refused (errno {errno})")
                }
            }
            NoStack::InKernel => f.write_str(
                "the thread is on a CPU inside the kernel (a long system call) and was never \
                 seen in its own code while it was sampled; it is not signalled, since a signal \
                 would cut that call short",
            ),
            NoStack::NotRunning => f.write_str("the thread stopped running while it was sampled"),
            NoStack::ProcUnreadable => f.write_str(
                "/proc/self/task cannot be read for the thread (/proc is not mounted there, \
                 or is hidden), so its registers cannot be read",
            ),
            NoStack::MemoryRefused(errno) => write!(
                f,
                "the kernel refused to copy the thread's stack: process_vm_readv failed \
                 (errno {errno}) and /proc/self/mem could not be read (a seccomp filter, \
                 or a hardened /proc)"
            ),
        }
    }
}

/// How a stack was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Method {
    /// The thread waited in the kernel: registers from
    /// `/proc/self/task/TID/syscall`, the stack copied from outside.
    Proc,
    /// The thread ran user code: a `perf_event_open` sample.
    Perf,
}

impl Method {
    /// The name shown in reports (loopwatch's `StallReport::stack_method`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Proc => "proc",
            Method::Perf => "perf",
        }
    }
}

/// A stack taken from a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Addresses to look up, innermost first.
    pub frames: Vec<usize>,
    /// The stack pointer in each frame.
    pub sps: Vec<u64>,
    /// Which frames stand for functions that left by a tail call (indices
    /// into `frames`: the address of the function's jump, or 0 where
    /// functions may have been left out through a jump whose target is not
    /// known).
    pub tail_calls: Vec<usize>,
    /// Whether the walk reached the thread's first frame.
    pub complete: bool,
    /// Where the walk stopped, when it did not.
    pub stopped: Option<&'static str>,
    /// How it was taken (on a CPU: [`Method::Perf`]).
    pub method: Method,
}

/// A stack in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbolized {
    /// One numbered frame per line, with `file:line` where known.
    pub text: String,
    /// The first frame of application code, `function (file:line)`.
    pub culprit: Option<String>,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod classify;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod decode;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod modules;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod perf;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod symbols;
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod unwind;

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub use classify::{role, Role};
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub use symbols::Symbolizer;

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod linux {
    use std::sync::Arc;

    use std::sync::Mutex;

    use super::modules::Modules;
    use super::os::thread::Syscall;
    use super::os::{memory, thread};
    use super::{perf, Method, NoStack, Sample};

    /// Bytes of stack copied above the stack pointer of a waiting thread.
    const WINDOW: usize = 64 * 1024;

    /// The loaded objects, replaced whole when new ones are found: the lock
    /// is held only to take or swap the `Arc`, never during a walk or a
    /// lookup, so that a `fork()` while the watchdog reads a stack leaves
    /// the child a lock nobody holds.
    static MODULES: Mutex<Option<Arc<Modules>>> = Mutex::new(None);

    /// The lock on the loaded objects: nothing panics while it is held, and
    /// a poisoned one still holds a whole `Option<Arc>`.
    fn lock() -> std::sync::MutexGuard<'static, Option<Arc<Modules>>> {
        MODULES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The loaded objects, read at the first call.
    pub(crate) fn modules() -> Arc<Modules> {
        let current = lock().clone();
        match current {
            Some(modules) => modules,
            None => {
                let loaded = Arc::new(Modules::load());
                lock().get_or_insert(loaded).clone()
            }
        }
    }

    /// Reads the objects loaded since the last look (a library opened
    /// later), when an address is in none of the known ones.
    pub(crate) fn refresh_modules() -> Arc<Modules> {
        let refreshed = Arc::new(modules().refreshed());
        *lock() = Some(refreshed.clone());
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

    /// Why a thread's `/proc` entry could not be read: it exited, or it
    /// lives and `/proc` does not show it.
    fn missing(tid: i64) -> NoStack {
        if thread::exists(tid) {
            NoStack::ProcUnreadable
        } else {
            NoStack::Gone
        }
    }

    /// Copies the stack above `sp` into `out`; `Err` only when the kernel
    /// refuses every way of reading memory.
    fn read_stack(sp: u64, out: &mut [u8]) -> Result<usize, NoStack> {
        let n = memory::copy_memory(sp, out);
        match memory::refused() {
            Some(errno) if n == 0 => Err(NoStack::MemoryRefused(errno)),
            _ => Ok(n),
        }
    }

    /// Takes thread `tid`'s stack. A thread waiting in the kernel is read
    /// from outside; a thread on a CPU is sampled by the kernel only if
    /// `may_sample` (it is known stuck, or whether it is must be told), and
    /// never signalled.
    pub fn sample(tid: i64, may_sample: bool) -> Result<Sample, NoStack> {
        // A sampled walk that stopped after a few frames (the thread was
        // caught where the unwind tables do not reach) is taken again, up
        // to three samples in all; the longest walk is kept.
        let mut partial: Option<Sample> = None;
        let mut last_error = NoStack::KeptMoving;
        let mut samples = 0;
        // A thread that waits only a moment at a time (a loop of short
        // sleeps) may move during a read: up to eight reads, three samples.
        for _ in 0..8 {
            let before = thread::times(tid).map(|t| t.timeslices);
            let Some(state) = thread::syscall(tid) else {
                return partial.ok_or_else(|| missing(tid));
            };
            match state {
                Syscall::Blocked { line, sp, pc } => {
                    let mut stack = vec![0u8; WINDOW];
                    let len = read_stack(sp, &mut stack)?;
                    // The same registers after the copy, and the thread not
                    // put on a CPU in between (a loop re-entering the same
                    // call shows the same registers): the bytes are the
                    // stack those registers index.
                    match thread::syscall(tid) {
                        Some(Syscall::Blocked { line: again, .. })
                            if again == line
                                && thread::times(tid).map(|t| t.timeslices) == before => {}
                        Some(_) => continue,
                        None => return Err(missing(tid)),
                    }
                    let walk = walk(pc, sp, None, sp, &stack[..len]);
                    return Ok(Sample {
                        complete: walk.complete(),
                        stopped: walk.stop.map(|s| s.describe()),
                        frames: walk.frames,
                        sps: walk.sps,
                        tail_calls: walk.tail_calls,
                        method: Method::Proc,
                    });
                }
                Syscall::Running if !may_sample => return Err(NoStack::OnCpu),
                Syscall::Running if samples >= 3 => break,
                Syscall::Running => {
                    samples += 1;
                    let taken = match perf::sample(tid, perf::WAIT) {
                        Ok(taken) => taken,
                        // It went to wait meanwhile: read it from outside.
                        Err(NoStack::NotRunning) => {
                            last_error = NoStack::KeptMoving;
                            continue;
                        }
                        Err(why) => return partial.ok_or(why),
                    };
                    let walk = walk(taken.ip, taken.sp, Some(taken.bp), taken.sp, &taken.stack);
                    let sample = Sample {
                        complete: walk.complete(),
                        stopped: walk.stop.map(|s| s.describe()),
                        frames: walk.frames,
                        sps: walk.sps,
                        tail_calls: walk.tail_calls,
                        method: Method::Perf,
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
        partial.ok_or(last_error)
    }

    /// Loads the unwind tables (once per process), so that the first stall
    /// does not wait for them.
    pub fn warm_up() {
        let _ = modules();
    }

    /// `Err(why)` when the kernel refuses `perf_event_open`: threads on a
    /// CPU will have no stack.
    pub fn check_sampling() -> Result<(), NoStack> {
        perf::probe().map_err(NoStack::PerfRefused)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_live_thread_missing_from_proc_is_not_called_gone() {
            assert_eq!(
                super::missing(crate::current_tid()),
                super::NoStack::ProcUnreadable
            );
            assert_eq!(super::missing(i64::from(i32::MAX)), super::NoStack::Gone);
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub use linux::{check_sampling, sample, warm_up};

#[cfg(not(all(target_os = "linux", target_arch = "x86_64", feature = "stacks")))]
mod unsupported {
    use super::{NoStack, Sample, Symbolized};

    /// No stack is taken here.
    pub fn sample(_tid: i64, _may_sample: bool) -> Result<Sample, NoStack> {
        Err(NoStack::Unsupported)
    }

    /// Nothing to load here.
    pub fn warm_up() {}

    /// Nothing is sampled here.
    pub fn check_sampling() -> Result<(), NoStack> {
        Err(NoStack::Unsupported)
    }

    /// What a thread's stack says it is doing (nothing known here).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Role {
        /// A multi-thread runtime's worker.
        pub worker: bool,
        /// Inside a task's poll: the task harness's frame.
        pub polling: Option<usize>,
        /// Inside tokio's current-thread scheduler.
        pub current_thread: bool,
        /// In tokio's park code.
        pub parked: bool,
    }

    /// Nothing is known here.
    pub fn role(_symbolizer: &mut Symbolizer, _frames: &[usize]) -> Option<Role> {
        None
    }

    /// Resolves nothing here.
    #[derive(Debug, Default)]
    pub struct Symbolizer;

    impl Symbolizer {
        /// Names nothing here.
        pub fn symbolize(&mut self, _sample: &Sample, _full: bool) -> Option<Symbolized> {
            None
        }

        /// Holds no tables here.
        pub fn forget_tables(&mut self) {}
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64", feature = "stacks")))]
pub use unsupported::*;
