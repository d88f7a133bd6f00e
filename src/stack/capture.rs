//! Taking another thread's stack with a real-time signal (Linux).
//!
//! The watchdog sends the signal to one thread with `tgkill`; the handler,
//! running on that thread, walks the thread's stack into a static buffer (no
//! allocation, no lock, `errno` saved) and returns. The frames are classified
//! and symbolized afterwards, on the watchdog thread
//! ([`super::classify`], [`super::symbols`]).
//!
//! Stack walking in a signal handler is not formally async-signal-safe (the
//! unwinder may consult the loader's tables); it is the technique profilers
//! use. `WatchdogBuilder::sample_stacks(false)` turns it off.

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

/// The signal asked for with `WatchdogBuilder::stack_signal` (0 = the default).
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

/// Where the signal handler's code starts, for [`super::classify`] to
/// recognise (by address) the frames of the capture itself.
pub(crate) fn handler_address() -> usize {
    handler as *const () as usize
}
