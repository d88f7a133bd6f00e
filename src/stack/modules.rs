//! The code loaded in this process (the executable and its shared objects),
//! with the unwind tables (`.eh_frame_hdr`, `.eh_frame`) that let a stack be
//! walked from outside the thread that owns it.
//!
//! The list is read once with `dl_iterate_phdr`, from memory (not from the
//! files, which a deployment may have replaced), and the unwind tables are
//! copied, so that an object unloaded later cannot be read after it is gone.
//! Objects loaded later are added when a frame falls outside every known one.

use std::ops::Range;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

/// The most frames kept of one stack.
pub(crate) const MAX_FRAMES: usize = 128;

/// One loaded object.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    /// Its file ("" for the main program).
    pub(crate) path: String,
    /// Where its code is mapped.
    pub(crate) text: Range<u64>,
    /// Its load bias: run-time address minus the file's address.
    pub(crate) bias: u64,
}

/// What a walk of a stack gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Walk {
    /// Addresses to look up, innermost first: the interrupted instruction,
    /// then each return address minus one (inside the call).
    pub(crate) frames: Vec<usize>,
    /// Whether the walk reached the thread's first frame (otherwise it
    /// stopped early: unwind tables missing, stack window too small).
    pub(crate) complete: bool,
}

/// The loaded objects and an unwinder over their tables.
pub(crate) struct Modules {
    objects: Vec<Object>,
    unwinder: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    /// Bytes of unwind tables copied.
    pub(crate) table_bytes: usize,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules")
            .field("objects", &self.objects)
            .field("table_bytes", &self.table_bytes)
            .finish_non_exhaustive()
    }
}

impl Modules {
    /// Reads the objects loaded now.
    pub(crate) fn load() -> Self {
        let mut modules = Modules {
            objects: Vec::new(),
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            table_bytes: 0,
        };
        modules.refresh();
        modules
    }

    /// Adds the objects loaded since the last look.
    pub(crate) fn refresh(&mut self) {
        for (object, tables) in enumerate() {
            if self.objects.iter().any(|o| o.text == object.text) {
                continue;
            }
            if let Some(tables) = tables {
                self.table_bytes += tables.eh_frame_hdr.len() + tables.eh_frame.len();
                let info = ExplicitModuleSectionInfo {
                    base_svma: 0,
                    text_svma: Some(object.text.start - object.bias..object.text.end - object.bias),
                    eh_frame_hdr_svma: Some(tables.hdr_svma.clone()),
                    eh_frame_hdr: Some(tables.eh_frame_hdr),
                    eh_frame_svma: Some(tables.eh_frame_svma.clone()),
                    eh_frame: Some(tables.eh_frame),
                    ..Default::default()
                };
                self.unwinder.add_module(Module::new(
                    object.path.clone(),
                    object.text.clone(),
                    object.bias,
                    info,
                ));
            }
            self.objects.push(object);
        }
    }

    /// The object whose code holds `addr`.
    pub(crate) fn object_of(&self, addr: u64) -> Option<&Object> {
        self.objects.iter().find(|o| o.text.contains(&addr))
    }

    /// The objects known.
    pub(crate) fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// Walks a stack from registers `ip`, `sp` and `bp` (`None` when
    /// unknown), reading the stack only from `stack`, a copy of the memory
    /// at `stack_base..`. Never reads the live stack.
    ///
    /// The frame pointer of a thread waiting in the kernel is not readable
    /// from outside; code built with frame pointers (the standard library
    /// is) needs it. It is then looked for in the stack copy: each of the
    /// first slots above `sp` that hold a frame record (a saved frame
    /// pointer followed by a return address just after a call instruction)
    /// is tried, and the longest walk is kept (a stale record left by an
    /// earlier call ends its walk early).
    pub(crate) fn walk(
        &mut self,
        ip: u64,
        sp: u64,
        bp: Option<u64>,
        stack_base: u64,
        stack: &[u8],
    ) -> Walk {
        if self.object_of(ip).is_none() {
            self.refresh();
        }
        let Some(bp) = bp else {
            let mut best = self.walk_from(ip, sp, 0, stack_base, stack);
            for bp in self.frame_records(sp, stack_base, stack) {
                let walk = self.walk_from(ip, sp, bp, stack_base, stack);
                if walk.frames.len() > best.frames.len() {
                    best = walk;
                }
            }
            return best;
        };
        self.walk_from(ip, sp, bp, stack_base, stack)
    }

    fn walk_from(&mut self, ip: u64, sp: u64, bp: u64, stack_base: u64, stack: &[u8]) -> Walk {
        let mut read = |addr: u64| -> Result<u64, ()> { word(stack_base, stack, addr).ok_or(()) };
        let regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frames = Vec::new();
        let mut iter = self
            .unwinder
            .iter_frames(ip, regs, &mut self.cache, &mut read);
        let complete = loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    let addr = match frame {
                        FrameAddress::InstructionPointer(ip) => ip,
                        FrameAddress::ReturnAddress(ra) => u64::from(ra).saturating_sub(1),
                    };
                    frames.push(addr as usize);
                    if frames.len() == MAX_FRAMES {
                        break false;
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        Walk { frames, complete }
    }

    /// Whether `ra` can be a return address: inside known code, just after
    /// a call instruction.
    fn is_return_address(&self, ra: u64) -> bool {
        if self.object_of(ra).is_none() || ra < 7 {
            return false;
        }
        let mut code = [0u8; 7];
        if super::proc::copy_memory(ra - 7, &mut code) != 7 {
            return false;
        }
        // `call rel32` (E8), or `call r/m` (FF /2) of 2, 3, 6 or 7 bytes.
        let indirect = |at: usize| code[at] == 0xff && (code[at + 1] >> 3) & 7 == 2;
        code[2] == 0xe8 || indirect(5) || indirect(4) || indirect(1) || indirect(0)
    }

    /// The addresses of the first few frame records above `sp` in the copy.
    fn frame_records(&self, sp: u64, base: u64, stack: &[u8]) -> Vec<u64> {
        const TRIED: usize = 8;
        let end = base + stack.len() as u64;
        let mut found = Vec::new();
        let mut at = (sp + 7) & !7;
        while at + 16 <= end && found.len() < TRIED {
            if let (Some(next), Some(ra)) = (word(base, stack, at), word(base, stack, at + 8)) {
                let chained = next == 0
                    || next >= end
                    || (next > at
                        && word(base, stack, next + 8).is_some_and(|r| self.is_return_address(r)));
                if chained && self.is_return_address(ra) {
                    found.push(at);
                }
            }
            at += 8;
        }
        found
    }
}

/// The 8 bytes at `addr` of a stack copy starting at `base`.
fn word(base: u64, stack: &[u8], addr: u64) -> Option<u64> {
    let offset = usize::try_from(addr.checked_sub(base)?).ok()?;
    let bytes = stack.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// An object's unwind tables, copied.
struct Tables {
    hdr_svma: Range<u64>,
    eh_frame_hdr: Vec<u8>,
    eh_frame_svma: Range<u64>,
    eh_frame: Vec<u8>,
}

/// Every loaded object, with its unwind tables where it has them.
fn enumerate() -> Vec<(Object, Option<Tables>)> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid `info` for the duration of the
        // call; `data` is the `Vec` below.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<(Object, Option<Tables>)>>()) };
        // SAFETY: as above; the program headers live as long as the object.
        if let Some(found) = unsafe { read_object(info) } {
            out.push(found);
        }
        0
    }
    let mut out: Vec<(Object, Option<Tables>)> = Vec::new();
    // SAFETY: the callback only reads what the loader hands it and writes
    // through `data`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), std::ptr::from_mut(&mut out).cast()) };
    out
}

/// # Safety
/// `info` comes from `dl_iterate_phdr`, inside its callback.
unsafe fn read_object(info: &libc::dl_phdr_info) -> Option<(Object, Option<Tables>)> {
    if info.dlpi_phdr.is_null() {
        return None;
    }
    let bias = info.dlpi_addr;
    // SAFETY: the loader's program headers for this object.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let path = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated name owned by the loader.
        unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    let mut text: Option<Range<u64>> = None;
    for p in phdrs {
        if p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0 {
            let start = bias.wrapping_add(p.p_vaddr);
            let end = start.wrapping_add(p.p_memsz);
            text = Some(match text {
                Some(t) => t.start.min(start)..t.end.max(end),
                None => start..end,
            });
        }
    }
    let text = text?;
    let object = Object { path, text, bias };
    // SAFETY: the headers and the memory they describe belong to this
    // loaded object.
    let tables = unsafe { read_tables(phdrs, bias) };
    Some((object, tables))
}

/// Copies `.eh_frame_hdr` and `.eh_frame` from memory: the first is the
/// `PT_GNU_EH_FRAME` segment; the second starts where its header points and
/// runs to the end of the loaded segment that holds it.
///
/// # Safety
/// `phdrs` are the program headers of an object loaded at `bias`.
unsafe fn read_tables(phdrs: &[libc::Elf64_Phdr], bias: u64) -> Option<Tables> {
    const DW_EH_PE_PCREL_SDATA4: u8 = 0x1b;
    const DW_EH_PE_UDATA8: u8 = 0x04;
    const DW_EH_PE_ABSPTR: u8 = 0x00;
    let hdr = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME)?;
    let hdr_avma = bias.wrapping_add(hdr.p_vaddr);
    let hdr_len = usize::try_from(hdr.p_memsz).ok()?;
    if hdr_len < 8 {
        return None;
    }
    // SAFETY: the segment is mapped, readable, and `hdr_len` long.
    let hdr_bytes = unsafe { std::slice::from_raw_parts(hdr_avma as *const u8, hdr_len) };
    let encoding = hdr_bytes[1];
    let eh_frame_avma = match encoding {
        DW_EH_PE_PCREL_SDATA4 => {
            let rel = i32::from_le_bytes(hdr_bytes[4..8].try_into().ok()?);
            (hdr_avma + 4).wrapping_add_signed(i64::from(rel))
        }
        DW_EH_PE_UDATA8 | DW_EH_PE_ABSPTR if hdr_len >= 12 => {
            u64::from_le_bytes(hdr_bytes[4..12].try_into().ok()?)
        }
        _ => return None,
    };
    let segment = phdrs.iter().find(|p| {
        let start = bias.wrapping_add(p.p_vaddr);
        p.p_type == libc::PT_LOAD
            && (start..start.wrapping_add(p.p_filesz)).contains(&eh_frame_avma)
    })?;
    let end = bias
        .wrapping_add(segment.p_vaddr)
        .wrapping_add(segment.p_filesz);
    let eh_frame_len = usize::try_from(end - eh_frame_avma).ok()?;
    // SAFETY: inside a loaded segment's file-backed part.
    let eh_frame = unsafe { std::slice::from_raw_parts(eh_frame_avma as *const u8, eh_frame_len) };
    Some(Tables {
        hdr_svma: hdr_avma - bias..hdr_avma - bias + hdr_len as u64,
        eh_frame_hdr: hdr_bytes.to_vec(),
        eh_frame_svma: eh_frame_avma - bias..end - bias,
        eh_frame: eh_frame.to_vec(),
    })
}
