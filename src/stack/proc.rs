//! What the kernel says about a thread of this process (`/proc/self/task`),
//! and copies of its memory, all without touching the thread.

/// Whether the thread is running or runnable (`R` in
/// `/proc/self/task/TID/stat`), rather than waiting in the kernel (a sleep,
/// a lock, blocking I/O). `None` when it cannot be read (not Linux, or the
/// thread is gone).
#[cfg(target_os = "linux")]
pub(crate) fn on_cpu(tid: i64) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    Some(state == 'R')
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn on_cpu(_tid: i64) -> Option<bool> {
    None
}

/// Where a thread waiting in the kernel stopped, from
/// `/proc/self/task/TID/syscall`.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Syscall {
    /// Waiting in the kernel: the whole line (to compare two readings), and
    /// the user stack pointer and program counter.
    Blocked { line: String, sp: u64, pc: u64 },
    /// On a CPU: its registers cannot be read from outside.
    Running,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn syscall(tid: i64) -> Option<Syscall> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    parse_syscall(&text)
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
fn parse_syscall(text: &str) -> Option<Syscall> {
    let line = text.trim();
    if line == "running" {
        return Some(Syscall::Running);
    }
    // `NR ARG1 .. ARG6 SP PC`, or `-1 SP PC` when blocked outside a syscall.
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let sp = hex(fields[fields.len() - 2])?;
    let pc = hex(fields[fields.len() - 1])?;
    Some(Syscall::Blocked {
        line: line.to_owned(),
        sp,
        pc,
    })
}

/// How many times the thread has been put on a CPU
/// (`/proc/self/task/TID/schedstat`, third field): unchanged across two
/// reads only if it did not run in between.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn timeslices(tid: i64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().nth(2)?.parse().ok()
}

/// How many times the thread gave up its CPU by itself (to wait in the
/// kernel): a thread stuck in one blocking call does not add to it.
#[cfg(target_os = "linux")]
pub(crate) fn voluntary_switches(tid: i64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn voluntary_switches(_tid: i64) -> Option<u64> {
    None
}

/// Why a thread's `/proc` entry could not be read: it exited, or it lives
/// and `/proc` does not show it (`tgkill` with signal 0 sends nothing: it
/// only asks whether the thread exists).
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn missing(tid: i64) -> super::NoStack {
    // SAFETY: tgkill with signal 0 delivers no signal.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::c_long::from(libc::getpid()),
            tid as libc::c_long,
            0 as libc::c_long,
        )
    };
    if rc == 0 {
        super::NoStack::ProcUnreadable
    } else {
        super::NoStack::Gone
    }
}

/// How memory is copied: 0 not tried yet, 1 `process_vm_readv`, 2
/// `/proc/self/mem` (the first was refused), 3 neither works.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
static MEMORY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
/// The errno with which `process_vm_readv` was refused.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
static REFUSED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Copies the stack above `sp` into `out`; `Err` only when the kernel
/// refuses every way of reading memory.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn read_stack(sp: u64, out: &mut [u8]) -> Result<usize, super::NoStack> {
    let n = copy_memory(sp, out);
    if n == 0 && MEMORY.load(std::sync::atomic::Ordering::Relaxed) == 3 {
        return Err(super::NoStack::MemoryRefused(
            REFUSED.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    Ok(n)
}

/// Copies up to `out.len()` bytes of this process's memory from `addr`,
/// stopping at the first unreadable page; returns how many were copied.
/// Never faults: the kernel does the reading, with `process_vm_readv`, or
/// where a seccomp filter refuses that call, with `pread` of
/// `/proc/self/mem`.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn copy_memory(addr: u64, out: &mut [u8]) -> usize {
    use std::sync::atomic::Ordering;
    loop {
        match MEMORY.load(Ordering::Relaxed) {
            0 | 1 => match copy_vm(addr, out) {
                Ok(n) => {
                    MEMORY.store(1, Ordering::Relaxed);
                    return n;
                }
                Err(errno) => {
                    REFUSED.store(errno, Ordering::Relaxed);
                    MEMORY.store(2, Ordering::Relaxed);
                    tracing::debug!(target: "loopwatch", errno, "process_vm_readv refused; stacks are read from /proc/self/mem");
                }
            },
            2 => match copy_mem_file(addr, out) {
                Ok(n) => return n,
                Err(errno) => {
                    MEMORY.store(3, Ordering::Relaxed);
                    tracing::warn!(target: "loopwatch", errno, process_vm_readv_errno = REFUSED.load(Ordering::Relaxed), "the kernel refuses to copy this process's memory (process_vm_readv and /proc/self/mem): stall reports carry no stack");
                }
            },
            _ => return 0,
        }
    }
}

/// `process_vm_readv` on this process; `Err(errno)` when the call itself is
/// refused (not for an unreadable address, which ends the copy).
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
fn copy_vm(addr: u64, out: &mut [u8]) -> Result<usize, i32> {
    let mut done = 0;
    while done < out.len() {
        let local = libc::iovec {
            iov_base: out[done..].as_mut_ptr().cast(),
            iov_len: out.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: out.len() - done,
        };
        // SAFETY: `local` is our own writable buffer; the kernel checks
        // `remote` and reports a fault as an error or a short count.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if done == 0 && !matches!(errno, libc::EFAULT | libc::ESRCH | libc::ENOMEM) {
                return Err(errno);
            }
            break;
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// `pread` of `/proc/self/mem`, a page at a time up to the first unreadable
/// one; `Err(errno)` when the file cannot be opened or read at all.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
fn copy_mem_file(addr: u64, out: &mut [u8]) -> Result<usize, i32> {
    use std::os::unix::fs::FileExt;
    static FILE: std::sync::OnceLock<Result<std::fs::File, i32>> = std::sync::OnceLock::new();
    let file = FILE
        .get_or_init(|| {
            std::fs::File::open("/proc/self/mem").map_err(|e| e.raw_os_error().unwrap_or(0))
        })
        .as_ref()
        .map_err(|e| *e)?;
    const PAGE: u64 = 4096;
    let mut done = 0usize;
    while done < out.len() {
        let at = addr + done as u64;
        let chunk = ((PAGE - at % PAGE) as usize).min(out.len() - done);
        match file.read_at(&mut out[done..done + chunk], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            // An unmapped page reads as EIO: the copy ends there.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EFAULT)) => break,
            Err(e) if done == 0 => return Err(e.raw_os_error().unwrap_or(0)),
            Err(_) => break,
        }
    }
    Ok(done)
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_are_parsed() {
        assert_eq!(parse_syscall("running\n"), Some(Syscall::Running));
        let line =
            "230 0x1 0x1 0x7fa445f76ab0 0x0 0x0 0x7fa446d4e6e8 0x7fa445f76a70 0x7fa4466ed545";
        assert_eq!(
            parse_syscall(line),
            Some(Syscall::Blocked {
                line: line.to_owned(),
                sp: 0x7fa445f76a70,
                pc: 0x7fa4466ed545
            })
        );
        assert!(matches!(
            parse_syscall("-1 0x7ffd1000 0x401000"),
            Some(Syscall::Blocked {
                sp: 0x7ffd1000,
                pc: 0x401000,
                ..
            })
        ));
        assert_eq!(parse_syscall(""), None);
        assert_eq!(parse_syscall("230 zz"), None);
    }

    #[test]
    fn proc_self_mem_copies_like_process_vm_readv() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut out = vec![0u8; data.len()];
        assert_eq!(
            copy_mem_file(data.as_ptr() as u64, &mut out),
            Ok(data.len())
        );
        assert_eq!(out, data);
        let mut small = [0u8; 64];
        assert_eq!(
            copy_mem_file(8, &mut small),
            Ok(0),
            "page zero is never mapped"
        );
    }

    #[test]
    fn a_live_thread_missing_from_proc_is_not_called_gone() {
        assert_eq!(
            missing(crate::stack::current_tid()),
            super::super::NoStack::ProcUnreadable
        );
        assert_eq!(missing(i64::from(i32::MAX)), super::super::NoStack::Gone);
    }

    #[test]
    fn memory_copies_stop_at_an_unreadable_page() {
        let data = [7u8; 64];
        let mut out = [0u8; 64];
        assert_eq!(copy_memory(data.as_ptr() as u64, &mut out), 64);
        assert_eq!(out, data);
        assert_eq!(copy_memory(8, &mut out), 0, "page zero is never mapped");
    }
}
