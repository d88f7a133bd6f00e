//! The registers and stack bytes of a thread that is on a CPU, taken with a
//! real-time signal (Linux, x86_64).
//!
//! Only a thread known to be stuck and found on a CPU (state `R`) is ever
//! signalled: a thread waiting in the kernel is read from outside instead
//! ([`super::proc`]), because a signal would end its wait early (`poll`,
//! `epoll_wait`, `nanosleep` and socket reads with a timeout return EINTR
//! whatever `SA_RESTART` says).
//!
//! The handler is installed when the watchdog starts. On the target thread
//! it copies the interrupted registers from the `ucontext` and a window of
//! the stack above the stack pointer (with `process_vm_readv`, which cannot
//! fault) into static buffers, and returns: no unwinding, no lock, no
//! allocation, `errno` kept. Walking and naming the frames happen on the
//! watchdog thread.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::NoStack;

/// Bytes of stack copied above the stack pointer.
pub(crate) const WINDOW: usize = 64 * 1024;
const PAGE: usize = 4096;

const IDLE: u8 = 0;
const PENDING: u8 = 1;
const WRITING: u8 = 2;
const DONE: u8 = 3;

struct Buffer(UnsafeCell<[u8; WINDOW]>);
// SAFETY: written only by the handler while STATE is WRITING, read only by
// the requester after it saw DONE (and before it sets IDLE), under REQUEST.
unsafe impl Sync for Buffer {}

static STACK: Buffer = Buffer(UnsafeCell::new([0; WINDOW]));
static LEN: AtomicUsize = AtomicUsize::new(0);
static IP: AtomicU64 = AtomicU64::new(0);
static SP: AtomicU64 = AtomicU64::new(0);
static BP: AtomicU64 = AtomicU64::new(0);
static STATE: AtomicU8 = AtomicU8::new(IDLE);
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Set when a handler did not finish in time: the buffer may still be in
/// use, so no further capture is attempted.
static BROKEN: AtomicBool = AtomicBool::new(false);
/// The signal whose handler is installed (0 = none).
static INSTALLED: AtomicI32 = AtomicI32::new(0);
/// Whether the application's taking of the signal was already logged.
static WARNED_TAKEN: AtomicBool = AtomicBool::new(false);
static REQUEST: Mutex<()> = Mutex::new(());

/// The default signal: `SIGRTMIN + 6`.
pub(crate) fn default_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

extern "C" fn handler(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
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
        // SAFETY: the kernel hands a valid ucontext to an SA_SIGINFO handler.
        let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        let sp = gregs[libc::REG_RSP as usize] as u64;
        IP.store(gregs[libc::REG_RIP as usize] as u64, Ordering::Relaxed);
        SP.store(sp, Ordering::Relaxed);
        BP.store(gregs[libc::REG_RBP as usize] as u64, Ordering::Relaxed);
        // One iovec per page, so that a read running off the end of the
        // stack mapping still returns the pages before it.
        let base = STACK.0.get().cast::<u8>();
        let local: [libc::iovec; WINDOW / PAGE] = std::array::from_fn(|i| libc::iovec {
            // SAFETY: inside the static buffer.
            iov_base: unsafe { base.add(i * PAGE) }.cast(),
            iov_len: PAGE,
        });
        let remote: [libc::iovec; WINDOW / PAGE] = std::array::from_fn(|i| libc::iovec {
            iov_base: (sp as usize + i * PAGE) as *mut libc::c_void,
            iov_len: PAGE,
        });
        // SAFETY: a raw syscall (async-signal-safe); the kernel checks the
        // remote ranges, and the local ones are the static buffer, which
        // only this handler writes while STATE is WRITING. Every argument is
        // passed as a full 64-bit word: `syscall` is variadic, and a 32-bit
        // `0` for `flags` (an unsigned long) would leave its upper half to
        // whatever the register held, which the kernel refuses with EINVAL
        // (seen as an empty copy, and a stack of one frame).
        let n = unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                libc::c_long::from(libc::getpid()),
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        LEN.store(usize::try_from(n).unwrap_or(0), Ordering::Relaxed);
        STATE.store(DONE, Ordering::Release);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn handler_address() -> usize {
    handler as *const () as usize
}

/// Installs the handler for `sig` unless the application handles that
/// signal. Called when the watchdog starts; harmless to repeat.
pub(crate) fn install(sig: libc::c_int) -> Result<(), NoStack> {
    if INSTALLED.load(Ordering::Acquire) == sig && owns(sig) {
        return Ok(());
    }
    // SAFETY: plain sigaction calls with zero-initialised structs.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(NoStack::NoSignal);
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != handler_address() {
            return Err(NoStack::SignalTaken);
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler_address();
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(NoStack::NoSignal);
        }
    }
    INSTALLED.store(sig, Ordering::Release);
    Ok(())
}

/// Whether loopwatch's handler is still the disposition of `sig`.
fn owns(sig: libc::c_int) -> bool {
    // SAFETY: a query-only sigaction call.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == handler_address()
    }
}

/// Registers and stack bytes of a thread, as the handler copied them.
#[derive(Debug)]
pub(crate) struct Interrupted {
    pub(crate) ip: u64,
    pub(crate) sp: u64,
    pub(crate) bp: u64,
    pub(crate) stack: Vec<u8>,
}

/// Signals thread `tid` (on a CPU, known stuck) and returns what its handler
/// copied. Sends nothing when loopwatch does not own the signal any more or
/// the thread blocks it.
pub(crate) fn interrupt(tid: i64, timeout: Duration) -> Result<Interrupted, NoStack> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| NoStack::Gone)?;
    let sig = INSTALLED.load(Ordering::Acquire);
    if sig == 0 {
        return Err(NoStack::NoSignal);
    }
    if BROKEN.load(Ordering::Relaxed) {
        return Err(NoStack::Timeout);
    }
    if !owns(sig) {
        if !WARNED_TAKEN.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "loopwatch", signal = sig, "the application took over loopwatch's stack signal; stacks of threads on a CPU are no longer taken");
        }
        return Err(NoStack::SignalTaken);
    }
    if super::proc::blocks_signal(i64::from(tid), sig) != Some(false) {
        return Err(NoStack::SignalBlocked);
    }
    let _request = REQUEST.lock();
    TARGET.store(tid, Ordering::Release);
    LEN.store(0, Ordering::Relaxed);
    STATE.store(PENDING, Ordering::Release);
    // SAFETY: tgkill to a thread of our own process, with a signal whose
    // handler is installed and owned by loopwatch.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::c_long::from(libc::getpid()),
            libc::c_long::from(tid),
            libc::c_long::from(sig),
        )
    };
    if rc != 0 {
        STATE.store(IDLE, Ordering::Release);
        return Err(NoStack::Gone);
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
                    return Err(NoStack::Timeout);
                }
            }
            WRITING if Instant::now() >= deadline + Duration::from_secs(1) => {
                BROKEN.store(true, Ordering::Relaxed);
                tracing::error!(target: "loopwatch", "a stack capture did not finish; stacks of threads on a CPU are no longer taken");
                return Err(NoStack::Timeout);
            }
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    let len = LEN.load(Ordering::Relaxed).min(WINDOW);
    // SAFETY: the handler finished writing (DONE, acquired above) and no
    // other request can start while REQUEST is held.
    let stack = unsafe { (&*STACK.0.get())[..len].to_vec() };
    let out = Interrupted {
        ip: IP.load(Ordering::Relaxed),
        sp: SP.load(Ordering::Relaxed),
        bp: BP.load(Ordering::Relaxed),
        stack,
    };
    STATE.store(IDLE, Ordering::Release);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn every_capture_of_a_spinning_thread_copies_its_stack() {
        install(default_signal()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tid_tx.send(crate::stack::current_tid()).unwrap();
                // Clock reads and comparisons, as a CPU loop does.
                let at = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(at.elapsed() < Duration::from_secs(60));
                }
            })
        };
        let tid = tid_rx.recv().unwrap();
        let mut empty = 0;
        for _ in 0..200 {
            let i = interrupt(tid, Duration::from_secs(1)).expect("captured");
            assert!(i.sp != 0 && i.ip != 0);
            empty += usize::from(i.stack.is_empty());
        }
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        assert_eq!(empty, 0, "captures with no stack bytes, of 200");
    }
}
