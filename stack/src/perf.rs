//! The registers and stack bytes of a thread on a CPU, copied by the kernel
//! with a `perf_event_open` sample (Linux, x86_64): no signal is sent, so no
//! call of the thread is interrupted, shortened or made to fail.
//!
//! One software event, `task-clock`, is opened on that one thread with
//! `PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER` and `exclude_kernel`
//! (allowed for one's own threads while `perf_event_paranoid` is 2 or less,
//! the default of most distributions). The kernel's timer for the event fires
//! while the thread runs; when it fires in user code, the kernel copies the
//! thread's user registers and the stack above its stack pointer into a ring
//! buffer mapped here, and the thread goes on. A thread that stays inside the
//! kernel (a long `getrandom`, a `sendfile`) gives no sample: its user
//! registers are not where its code is, and sampling the kernel would need a
//! privilege loopwatch does not ask for. The event is closed after the first
//! sample.
//!
//! What it costs the thread: the kernel's timer interrupt every
//! [`PERIOD_NS`] of its CPU time while the event is open (at most
//! [`WAIT`]), and one copy of [`STACK_BYTES`] by the kernel.

use std::time::{Duration, Instant};

use super::NoStack;

/// Bytes of stack the kernel copies (the most a sample record can hold,
/// less its header and registers).
pub(crate) const STACK_BYTES: u32 = 65_000 & !7;
/// The event's period: one sample per this much CPU time of the thread.
pub(crate) const PERIOD_NS: u64 = 500_000;
/// How long a sample is waited for.
pub(crate) const WAIT: Duration = Duration::from_millis(100);

const PAGE: usize = 4096;
/// Pages of the ring buffer's data area (a power of two; room for two
/// records of the largest size).
const DATA_PAGES: usize = 32;

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
const PERF_SAMPLE_REGS_USER: u64 = 1 << 12;
const PERF_SAMPLE_STACK_USER: u64 = 1 << 13;
const PERF_RECORD_SAMPLE: u32 = 9;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
/// `attr.flags` bits: `disabled`, `exclude_kernel`, `exclude_hv`.
const FLAG_DISABLED: u64 = 1 << 0;
const FLAG_EXCLUDE_KERNEL: u64 = 1 << 5;
const FLAG_EXCLUDE_HV: u64 = 1 << 6;
/// `enum perf_event_x86_regs`: BP, SP, IP (the record lists them in this
/// order, lowest bit first).
const REG_BP: u64 = 6;
const REG_SP: u64 = 7;
const REG_IP: u64 = 8;

/// `struct perf_event_attr`, `PERF_ATTR_SIZE_VER7`.
#[repr(C)]
#[derive(Default)]
struct Attr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
    aux_sample_size: u32,
    reserved_3: u32,
    sig_data: u64,
}

/// Registers and stack bytes of a thread, as the kernel copied them.
#[derive(Debug)]
pub(crate) struct Sampled {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack: Vec<u8>,
}

/// Closes a file descriptor and unmaps the ring buffer when dropped.
struct Event {
    fd: libc::c_int,
    ring: *mut libc::c_void,
    len: usize,
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the mapping and descriptor were created by `sample` and
        // are released once, here.
        unsafe {
            if !self.ring.is_null() {
                libc::munmap(self.ring, self.len);
            }
            libc::close(self.fd);
        }
    }
}

/// Why `perf_event_open` was refused, in words an operator can act on.
pub(crate) fn refusal(errno: i32) -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unreadable".to_owned());
    let what = match errno {
        libc::EACCES | libc::EPERM => "refused",
        libc::ENOSYS => "not available (ENOSYS)",
        libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV => "not supported by this kernel",
        _ => "failed",
    };
    format!(
        "sampling a thread on a CPU needs perf_event_open, which was {what} (errno {errno}, \
         kernel.perf_event_paranoid = {paranoid}; a seccomp filter, as in most containers, \
         also refuses it)"
    )
}

/// Whether this process may sample its threads: opens (and closes) the
/// event on the calling thread. `Err(errno)` when the kernel refuses.
pub(crate) fn probe() -> Result<(), i32> {
    let attr = attr();
    // SAFETY: as in `sample`, on the calling thread (pid 0).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const Attr,
            0 as libc::c_long,
            -1 as libc::c_long,
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The event: the thread's CPU time, sampled in user code only.
fn attr() -> Attr {
    Attr {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<Attr>() as u32,
        config: PERF_COUNT_SW_TASK_CLOCK,
        sample_period: PERIOD_NS,
        sample_type: PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER,
        flags: FLAG_DISABLED | FLAG_EXCLUDE_KERNEL | FLAG_EXCLUDE_HV,
        wakeup_events: 1,
        sample_regs_user: (1 << REG_BP) | (1 << REG_SP) | (1 << REG_IP),
        sample_stack_user: STACK_BYTES,
        ..Attr::default()
    }
}

/// Takes one sample of thread `tid` while it runs user code, waiting at most
/// `wait`. `Err(InKernel)`: the thread ran, but never in user code meanwhile;
/// `Err(NotRunning)`: it did not run at all (it went to wait in the kernel).
pub(crate) fn sample(tid: i64, wait: Duration) -> Result<Sampled, NoStack> {
    let attr = attr();
    // SAFETY: a raw syscall with a valid attribute struct; every argument
    // passed as a full word (the call is variadic).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const Attr,
            tid as libc::c_long,
            -1 as libc::c_long,
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(match errno {
            libc::ESRCH => NoStack::Gone,
            _ => NoStack::PerfRefused(errno),
        });
    }
    let mut event = Event {
        fd: fd as libc::c_int,
        ring: std::ptr::null_mut(),
        len: (1 + DATA_PAGES) * PAGE,
    };
    // SAFETY: mapping the event's ring buffer, as perf_event_open(2) says.
    let ring = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            event.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            event.fd,
            0,
        )
    };
    if ring == libc::MAP_FAILED {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(NoStack::PerfRefused(errno));
    }
    event.ring = ring;
    // SAFETY: an ioctl on the event just opened.
    if unsafe { libc::ioctl(event.fd, PERF_EVENT_IOC_ENABLE, 0) } != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(NoStack::PerfRefused(errno));
    }
    let began = Instant::now();
    let cpu_before = crate::os::thread::times(tid).map(|t| t.on_cpu_ns);
    let record = loop {
        if let Some(record) = first_sample(&event) {
            break Some(record);
        }
        let left = wait.saturating_sub(began.elapsed());
        if left.is_zero() {
            break None;
        }
        let mut pfd = libc::pollfd {
            fd: event.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: poll on one descriptor of ours.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    };
    // SAFETY: an ioctl on our event; the kernel stops sampling.
    unsafe { libc::ioctl(event.fd, PERF_EVENT_IOC_DISABLE, 0) };
    match record {
        Some(sampled) => Ok(sampled),
        None => {
            // On a CPU for at least two periods without one sample in its
            // own code: inside the kernel. Less: it mostly waited (a call
            // that wakes now and then), and can be read from outside.
            let ran = match (
                cpu_before,
                crate::os::thread::times(tid).map(|t| t.on_cpu_ns),
            ) {
                (Some(a), Some(b)) => b.saturating_sub(a) >= 2 * PERIOD_NS,
                _ => true,
            };
            Err(if ran {
                NoStack::InKernel
            } else {
                NoStack::NotRunning
            })
        }
    }
}

/// The first sample record in the ring buffer, if one arrived.
fn first_sample(event: &Event) -> Option<Sampled> {
    let base = event.ring.cast::<u8>();
    // SAFETY: the control page is the first page of the mapping; the
    // kernel writes `data_head` (offset 1024), and a reader must load it
    // before reading the data it covers.
    let head = unsafe { std::ptr::read_volatile(base.add(1024).cast::<u64>()) };
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    let size = DATA_PAGES * PAGE;
    // SAFETY: the data area follows the control page.
    let data = unsafe { std::slice::from_raw_parts(base.add(PAGE), size) };
    let read = |at: u64, out: &mut [u8]| {
        for (i, b) in out.iter_mut().enumerate() {
            *b = data[(at as usize + i) % size];
        }
    };
    let u64_at = |at: u64| {
        let mut b = [0u8; 8];
        read(at, &mut b);
        u64::from_ne_bytes(b)
    };
    let mut at = 0u64;
    while at + 8 <= head {
        let mut h = [0u8; 8];
        read(at, &mut h);
        let kind = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
        let len = u64::from(u16::from_ne_bytes([h[6], h[7]]));
        if len < 8 || at + len > head {
            return None;
        }
        if kind == PERF_RECORD_SAMPLE {
            return parse_sample(at + 8, at + len, &u64_at, &read);
        }
        at += len;
    }
    None
}

/// A sample record's body: `abi`, the three registers, the stack.
fn parse_sample(
    mut at: u64,
    end: u64,
    u64_at: &dyn Fn(u64) -> u64,
    read: &dyn Fn(u64, &mut [u8]),
) -> Option<Sampled> {
    let abi = u64_at(at);
    at += 8;
    if abi == 0 || at + 24 > end {
        // No user registers: the thread was a kernel thread.
        return None;
    }
    let bp = u64_at(at);
    let sp = u64_at(at + 8);
    let ip = u64_at(at + 16);
    at += 24;
    let size = u64_at(at);
    at += 8;
    let mut stack = Vec::new();
    if size > 0 && at + size + 8 <= end {
        let dyn_size = u64_at(at + size).min(size);
        stack = vec![0u8; dyn_size as usize];
        read(at, &mut stack);
    }
    Some(Sampled { ip, sp, bp, stack })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_attribute_struct_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<Attr>(), 128);
    }

    #[test]
    fn a_spinning_thread_is_sampled_with_its_registers_and_stack() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tid_tx.send(crate::os::thread::current_tid()).unwrap();
                let mut local = [0u8; 256];
                let at = std::hint::black_box(local.as_mut_ptr()) as u64;
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(&mut local);
                }
                at
            })
        };
        let tid = tid_rx.recv().unwrap();
        let sampled = match sample(tid, Duration::from_secs(2)) {
            Err(NoStack::PerfRefused(errno)) => {
                stop.store(true, Ordering::Relaxed);
                spinner.join().unwrap();
                eprintln!("perf_event_open refused here ({errno}); nothing to check");
                return;
            }
            other => other.expect("a spinning thread gives a sample"),
        };
        stop.store(true, Ordering::Relaxed);
        let local = spinner.join().unwrap();
        assert!(sampled.ip != 0 && sampled.sp != 0);
        assert!(!sampled.stack.is_empty(), "no stack bytes");
        // The spinning frame's local array is inside the copied window.
        assert!(
            sampled.sp <= local && local < sampled.sp + sampled.stack.len() as u64,
            "sp {:#x}, {} bytes, local at {local:#x}",
            sampled.sp,
            sampled.stack.len()
        );
    }

    #[test]
    fn a_sleeping_thread_gives_no_sample_and_is_not_woken() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tid_tx.send(crate::os::thread::current_tid()).unwrap();
            let at = Instant::now();
            std::thread::sleep(Duration::from_millis(600));
            at.elapsed()
        });
        let tid = tid_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        match sample(tid, Duration::from_millis(200)) {
            Err(NoStack::NotRunning) | Err(NoStack::PerfRefused(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(sleeper.join().unwrap() >= Duration::from_millis(600));
    }
}
