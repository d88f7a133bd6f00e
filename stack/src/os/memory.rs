//! Copies of this process's memory that never fault: the kernel does the
//! reading, with `process_vm_readv`, or where a seccomp filter refuses that
//! call, with `pread` of `/proc/self/mem`.

use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// How memory is copied: 0 not tried yet, 1 `process_vm_readv`, 2
/// `/proc/self/mem` (the first was refused), 3 neither works.
static MEMORY: AtomicU8 = AtomicU8::new(0);
/// The errno with which `process_vm_readv` was refused.
static REFUSED: AtomicI32 = AtomicI32::new(0);

/// Copies up to `out.len()` bytes of this process's memory from `addr`,
/// stopping at the first unreadable page; returns how many were copied.
/// Never faults: the kernel does the reading, with `process_vm_readv`, or
/// where a seccomp filter refuses that call, with `pread` of
/// `/proc/self/mem`.
pub fn copy_memory(addr: u64, out: &mut [u8]) -> usize {
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
                }
            },
            2 => match copy_mem_file(addr, out) {
                Ok(n) => return n,
                Err(_) => MEMORY.store(3, Ordering::Relaxed),
            },
            _ => return 0,
        }
    }
}

/// `process_vm_readv` on this process; `Err(errno)` when the call itself is
/// refused (not for an unreadable address, which ends the copy).
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

/// `Some(errno)` once `process_vm_readv` was refused with that errno (memory
/// is then copied from `/proc/self/mem`).
pub fn vm_readv_refused() -> Option<i32> {
    (MEMORY.load(Ordering::Relaxed) >= 2).then(|| REFUSED.load(Ordering::Relaxed))
}

/// `Some(errno of process_vm_readv)` once every way of copying memory was
/// refused: no stack can be read.
pub fn refused() -> Option<i32> {
    (MEMORY.load(Ordering::Relaxed) == 3).then(|| REFUSED.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn memory_copies_stop_at_an_unreadable_page() {
        let data = [7u8; 64];
        let mut out = [0u8; 64];
        assert_eq!(copy_memory(data.as_ptr() as u64, &mut out), 64);
        assert_eq!(out, data);
        assert_eq!(copy_memory(8, &mut out), 0, "page zero is never mapped");
    }
}
