//! Stacks of other threads, taken by a signal (Linux).
//!
//! The watchdog sends a real-time signal to one thread with `tgkill`; the
//! handler, running on that thread, walks the thread's stack into a static
//! buffer (no allocation, no lock, `errno` saved) and returns. The frames are
//! classified afterwards, on the watchdog thread, against the executable's
//! symbol table.
//!
//! Used to tell whether a current-thread runtime that looks stuck is being
//! driven at all (its driver thread is inside tokio's current-thread
//! scheduler) or has simply been left alone since its last `block_on`.
//!
//! Stack walking in a signal handler is not formally async-signal-safe (the
//! unwinder may consult the loader's tables); it is the technique profilers
//! use, and the watchdog only signals a thread that tokio shows as running,
//! never a parked one. `Builder::sample_stacks(false)` turns it off.

#[cfg(all(target_os = "linux", feature = "stacks"))]
mod imp {
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    const MAX_FRAMES: usize = 128;
    const IDLE: u8 = 0;
    const PENDING: u8 = 1;
    const WRITING: u8 = 2;
    const DONE: u8 = 3;

    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicUsize = AtomicUsize::new(0);
    static FRAMES: [AtomicUsize; MAX_FRAMES] = [ZERO; MAX_FRAMES];
    static LEN: AtomicUsize = AtomicUsize::new(0);
    static STATE: AtomicU8 = AtomicU8::new(IDLE);
    static TARGET: AtomicI32 = AtomicI32::new(0);
    /// Set when a handler did not finish in time: the buffer may still be in
    /// use, so no further capture is attempted.
    static BROKEN: AtomicBool = AtomicBool::new(false);
    static INSTALLED: OnceLock<Option<libc::c_int>> = OnceLock::new();
    static REQUEST: Mutex<()> = Mutex::new(());

    /// The signal asked for with `Builder::stack_signal` (0 = the default).
    static CHOSEN: AtomicI32 = AtomicI32::new(0);

    /// Chooses the signal before the handler is installed (the first choice
    /// in the process holds).
    pub(crate) fn choose_signal(signal: libc::c_int) {
        let _ = CHOSEN.compare_exchange(0, signal, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The signal loopwatch uses: `SIGRTMIN + 6` unless another was chosen.
    pub(crate) fn signal_number() -> libc::c_int {
        match CHOSEN.load(Ordering::Relaxed) {
            0 => libc::SIGRTMIN() + 6,
            chosen => chosen,
        }
    }

    extern "C" fn handler(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: errno is thread-local; saving and restoring it keeps the
        // interrupted code's view intact.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        if me == TARGET.load(Ordering::Acquire)
            && STATE
                .compare_exchange(PENDING, WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let mut n = 0;
            // SAFETY: only this handler writes the buffer while STATE is
            // WRITING; the closure neither allocates nor locks.
            unsafe {
                backtrace::trace_unsynchronized(|frame| {
                    FRAMES[n].store(frame.ip() as usize, Ordering::Relaxed);
                    n += 1;
                    n < MAX_FRAMES
                });
            }
            LEN.store(n, Ordering::Relaxed);
            STATE.store(DONE, Ordering::Release);
        }
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
    }

    fn install() -> Option<libc::c_int> {
        let sig = signal_number();
        // SAFETY: plain sigaction calls with zero-initialised structs.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return None;
            }
            if old.sa_sigaction != libc::SIG_DFL {
                tracing::warn!(target: "loopwatch", signal = sig, "signal already has a handler; loopwatch will not sample thread stacks");
                return None;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return None;
            }
        }
        Some(sig)
    }

    /// Why a capture gave nothing.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum CaptureError {
        /// The thread no longer exists.
        NoSuchThread,
        /// Sampling is unavailable (signal taken, earlier failure, timeout).
        Unavailable,
    }

    /// Takes the stack of thread `tid` (a kernel thread id of this process):
    /// the instruction pointers, innermost first.
    pub(crate) fn capture(tid: i64, timeout: Duration) -> Result<Vec<usize>, CaptureError> {
        let tid = libc::pid_t::try_from(tid).map_err(|_| CaptureError::NoSuchThread)?;
        if BROKEN.load(Ordering::Relaxed) {
            return Err(CaptureError::Unavailable);
        }
        let sig = (*INSTALLED.get_or_init(install)).ok_or(CaptureError::Unavailable)?;
        let _request = REQUEST.lock();
        TARGET.store(tid, Ordering::Release);
        LEN.store(0, Ordering::Relaxed);
        STATE.store(PENDING, Ordering::Release);
        // SAFETY: tgkill to a thread of our own process, with a signal whose
        // handler is installed.
        let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
        if rc != 0 {
            STATE.store(IDLE, Ordering::Release);
            return Err(CaptureError::NoSuchThread);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match STATE.load(Ordering::Acquire) {
                DONE => break,
                PENDING if Instant::now() >= deadline => {
                    if STATE
                        .compare_exchange(PENDING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Err(CaptureError::Unavailable);
                    }
                }
                WRITING if Instant::now() >= deadline + Duration::from_secs(1) => {
                    BROKEN.store(true, Ordering::Relaxed);
                    tracing::error!(target: "loopwatch", "a stack capture did not finish; stack sampling is now off");
                    return Err(CaptureError::Unavailable);
                }
                _ => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        let len = LEN.load(Ordering::Relaxed).min(MAX_FRAMES);
        let frames = FRAMES[..len]
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .collect();
        STATE.store(IDLE, Ordering::Release);
        Ok(frames)
    }

    /// Address ranges (at run time) of the functions of tokio's
    /// current-thread scheduler in this executable, read once from its ELF
    /// symbol table; `None` when there is no symbol table to read.
    static SCHEDULER: OnceLock<Option<Vec<(usize, usize)>>> = OnceLock::new();

    fn load_scheduler_ranges() -> Option<Vec<(usize, usize)>> {
        use object::{Object, ObjectSymbol, SymbolKind};
        let data = std::fs::read("/proc/self/exe").ok()?;
        let file = object::File::parse(&*data).ok()?;
        let bias = main_program_bias()?;
        let mut ranges: Vec<(usize, usize)> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter(|s| {
                // Mangled names (legacy and v0) keep the path segments as text.
                s.name_bytes()
                    .is_ok_and(|n| contains(n, b"tokio") && contains(n, b"current_thread"))
            })
            .filter_map(|s| {
                let start = usize::try_from(s.address()).ok()?.checked_add(bias)?;
                let len = usize::try_from(s.size()).ok()?.max(1);
                Some((start, start.checked_add(len)?))
            })
            .collect();
        ranges.sort_unstable();
        (!ranges.is_empty()).then_some(ranges)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The load bias of the main executable (0 unless it is position independent).
    fn main_program_bias() -> Option<usize> {
        unsafe extern "C" fn first(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: the loader hands a valid info; data is our `usize`.
            unsafe { *data.cast::<usize>() = (*info).dlpi_addr as usize };
            1 // the first object is the main program; stop there
        }
        let mut bias: usize = usize::MAX;
        // SAFETY: the callback only writes through `data`, which outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(first), std::ptr::from_mut(&mut bias).cast()) };
        (bias != usize::MAX).then_some(bias)
    }

    /// Reads the symbol table now (a few tens of milliseconds once), so that
    /// the first check of a stall does not pay for it.
    pub(crate) fn warm_up() {
        SCHEDULER.get_or_init(load_scheduler_ranges);
    }

    /// Whether any frame lies in tokio's current-thread scheduler: the
    /// thread is inside that scheduler's `block_on`. `None` when it cannot be
    /// told (no symbol table, or the scheduler's functions were all inlined).
    pub(crate) fn in_current_thread_scheduler(frames: &[usize]) -> Option<bool> {
        let ranges = SCHEDULER.get_or_init(load_scheduler_ranges).as_ref()?;
        Some(frames.iter().enumerate().any(|(i, &ip)| {
            // Return addresses point after the call; look up the call itself.
            let addr = if i == 0 { ip } else { ip.saturating_sub(1) };
            let idx = ranges.partition_point(|&(start, _)| start <= addr);
            idx > 0 && addr < ranges[idx - 1].1
        }))
    }
}

#[cfg(all(target_os = "linux", feature = "stacks"))]
pub(crate) use imp::*;

#[cfg(not(all(target_os = "linux", feature = "stacks")))]
mod imp_none {
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

    pub(crate) fn in_current_thread_scheduler(_frames: &[usize]) -> Option<bool> {
        None
    }

    pub(crate) fn warm_up() {}

    pub(crate) fn choose_signal(_signal: i32) {}
}

#[cfg(not(all(target_os = "linux", feature = "stacks")))]
pub(crate) use imp_none::*;

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
