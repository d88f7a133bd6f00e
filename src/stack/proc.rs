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

/// Whether the thread blocks signal `sig` (`SigBlk` in its status).
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn blocks_signal(tid: i64, sig: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())?;
    let bit = u32::try_from(sig).ok()?.checked_sub(1)?;
    Some(bit < 64 && mask & (1 << bit) != 0)
}

/// Copies up to `out.len()` bytes of this process's memory from `addr`,
/// stopping at the first unreadable page; returns how many were copied.
/// Never faults: the kernel does the reading (`process_vm_readv`).
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "stacks"))]
pub(crate) fn copy_memory(addr: u64, out: &mut [u8]) -> usize {
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
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
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
    fn memory_copies_stop_at_an_unreadable_page() {
        let data = [7u8; 64];
        let mut out = [0u8; 64];
        assert_eq!(copy_memory(data.as_ptr() as u64, &mut out), 64);
        assert_eq!(out, data);
        assert_eq!(copy_memory(8, &mut out), 0, "page zero is never mapped");
    }
}
