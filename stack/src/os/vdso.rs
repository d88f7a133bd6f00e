//! The kernel's own `clock_gettime` in the vDSO, called directly (Linux on
//! x86_64).
//!
//! glibc's `clock_gettime` calls the same function, after checks of its own
//! that cost about a nanosecond, which is a fifth of a coarse clock read and
//! a tenth of an instrumented poll. The vDSO is an ELF image the kernel maps
//! into every process (its address is in the auxiliary vector); its dynamic
//! symbol table names `__vdso_clock_gettime`, as the kernel's
//! `parse_vdso.c` and the Go runtime find it. Anything unexpected in the
//! image (no vDSO, another layout, no such symbol) gives `None`, and the
//! clock goes through libc.

use std::ffi::CStr;

/// The signature of `__vdso_clock_gettime`.
pub type Gettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

#[repr(C)]
struct Ehdr {
    ident: [u8; 16],
    kind: u16,
    machine: u16,
    version: u32,
    entry: u64,
    phoff: u64,
    shoff: u64,
    flags: u32,
    ehsize: u16,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

#[repr(C)]
struct Phdr {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: i64 = 0;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const STT_FUNC: u8 = 2;
const EM_X86_64: u16 = 62;

/// Finds `__vdso_clock_gettime` in this process's vDSO.
pub fn clock_gettime() -> Option<Gettime> {
    // SAFETY: `getauxval` has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if base == 0 {
        return None;
    }
    // SAFETY: the kernel maps the whole vDSO image at `base`, readable, for
    // the life of the process; every read below is checked to stay inside
    // its loaded segment, whose size the image gives.
    unsafe { find(base, c"__vdso_clock_gettime") }
}

unsafe fn find(base: usize, wanted: &CStr) -> Option<Gettime> {
    let eh = &*(base as *const Ehdr);
    if eh.ident[..4] != *b"\x7fELF"
        || eh.ident[4] != 2 // 64-bit
        || eh.machine != EM_X86_64
        || usize::from(eh.phentsize) != std::mem::size_of::<Phdr>()
    {
        return None;
    }
    let mut load: Option<(usize, usize)> = None; // (bias, end)
    let mut dynamic: Option<usize> = None;
    for i in 0..usize::from(eh.phnum) {
        let ph = &*((base + eh.phoff as usize + i * std::mem::size_of::<Phdr>()) as *const Phdr);
        match ph.kind {
            PT_LOAD if load.is_none() => {
                let bias = base
                    .checked_add(ph.offset as usize)?
                    .checked_sub(ph.vaddr as usize)?;
                let end = base
                    .checked_add(ph.offset as usize)?
                    .checked_add(ph.memsz as usize)?;
                load = Some((bias, end));
            }
            PT_DYNAMIC => dynamic = Some(base.checked_add(ph.offset as usize)?),
            _ => {}
        }
    }
    let ((bias, end), dynamic) = (load?, dynamic?);
    let inside = |addr: usize, len: usize| {
        (addr >= base && addr.checked_add(len).is_some_and(|e| e <= end)).then_some(addr)
    };
    let (mut symtab, mut strtab, mut hash) = (None, None, None);
    let mut d = dynamic;
    loop {
        let entry = &*(inside(d, std::mem::size_of::<Dyn>())? as *const Dyn);
        let at = bias.checked_add(entry.val as usize);
        match entry.tag {
            DT_NULL => break,
            DT_SYMTAB => symtab = at,
            DT_STRTAB => strtab = at,
            DT_HASH => hash = at,
            _ => {}
        }
        d += std::mem::size_of::<Dyn>();
    }
    let (symtab, strtab, hash) = (symtab?, strtab?, hash?);
    // DT_HASH: nbucket, nchain, ...; nchain is the number of symbols.
    let symbols = *(inside(hash, 8)? as *const u32).add(1) as usize;
    for i in 0..symbols {
        let at = symtab.checked_add(i.checked_mul(std::mem::size_of::<Sym>())?)?;
        let sym = &*(inside(at, std::mem::size_of::<Sym>())? as *const Sym);
        if sym.info & 0xf != STT_FUNC || sym.shndx == 0 {
            continue;
        }
        let name = inside(
            strtab.checked_add(sym.name as usize)?,
            wanted.count_bytes() + 1,
        )?;
        if CStr::from_ptr(name as *const libc::c_char) == wanted {
            let addr = inside(bias.checked_add(sym.value as usize)?, 1)?;
            return Some(std::mem::transmute::<usize, Gettime>(addr));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vdso_clock_agrees_with_libc() {
        // Every x86_64 Linux kernel this runs on maps a vDSO.
        let gettime = clock_gettime().expect("the vDSO's __vdso_clock_gettime");
        let read = |f: &dyn Fn(*mut libc::timespec)| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            f(&mut ts);
            ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
        };
        for clock in [libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC_COARSE] {
            // SAFETY: valid clock ids and timespec pointers.
            let a = read(&|ts| unsafe {
                libc::clock_gettime(clock, ts);
            });
            // SAFETY: as above.
            let b = read(&|ts| unsafe {
                assert_eq!(gettime(clock, ts), 0);
            });
            // SAFETY: as above.
            let c = read(&|ts| unsafe {
                libc::clock_gettime(clock, ts);
            });
            assert!(a <= b && b <= c, "clock {clock}: {a} {b} {c}");
        }
    }
}
