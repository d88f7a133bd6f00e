//! The code loaded in this process (the executable and its shared objects),
//! with the unwind tables (`.eh_frame_hdr`, `.eh_frame`) that let a stack be
//! walked from outside the thread that owns it.
//!
//! The list is read once with `dl_iterate_phdr`, from memory (not from the
//! files, which a deployment may have replaced), and the unwind tables are
//! copied, so that an object unloaded later cannot be read after it is gone.
//! Objects loaded later are added when a frame falls outside every known one.

use std::ops::Range;
use std::sync::Arc;

pub(crate) use super::unwind::{Stop, Walk};
use super::unwind::{Tables, Unwinder};

/// One loaded object.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    /// Its file ("" for the main program).
    pub path: String,
    /// Where its code is mapped.
    pub text: Range<u64>,
    /// Its load bias: run-time address minus the file's address.
    pub bias: u64,
}

/// The loaded objects and their unwind tables (shared between snapshots:
/// a refresh copies the list, not the tables).
#[derive(Debug)]
pub(crate) struct Modules {
    objects: Vec<Object>,
    tables: Vec<Arc<Tables>>,
    /// Bytes of unwind tables copied.
    pub table_bytes: usize,
}

impl Modules {
    /// Reads the objects loaded now.
    pub(crate) fn load() -> Self {
        let mut modules = Modules {
            objects: Vec::new(),
            tables: Vec::new(),
            table_bytes: 0,
        };
        modules.add_new();
        modules
    }

    /// These objects and the ones loaded since they were read.
    pub(crate) fn refreshed(&self) -> Self {
        let mut modules = Modules {
            objects: self.objects.clone(),
            tables: self.tables.clone(),
            table_bytes: self.table_bytes,
        };
        modules.add_new();
        modules
    }

    /// Adds the objects loaded and not yet known.
    fn add_new(&mut self) {
        for (object, tables) in enumerate() {
            if self.objects.iter().any(|o| o.text == object.text) {
                continue;
            }
            if let Some(t) = tables {
                self.table_bytes += t.eh_frame_hdr.len() + t.eh_frame.len();
                self.tables.push(Arc::new(Tables {
                    text: object.text.clone(),
                    hdr_avma: t.hdr_avma,
                    eh_frame_hdr: t.eh_frame_hdr,
                    eh_frame_avma: t.eh_frame_avma,
                    eh_frame: t.eh_frame,
                }));
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
    /// unknown: a thread read from outside), reading the stack only from
    /// `stack`, a copy of the memory at `stack_base..` (see
    /// [`super::unwind`] for how the walk stays right without `bp`). Never
    /// reads the live stack.
    pub(crate) fn walk(
        &self,
        ip: u64,
        sp: u64,
        bp: Option<u64>,
        stack_base: u64,
        stack: &[u8],
    ) -> Walk {
        let read = |addr: u64, out: &mut [u8]| crate::os::memory::copy_memory(addr, out);
        Unwinder::new(&self.tables, &read).walk(ip, sp, bp, stack_base, stack)
    }
}

/// An object's unwind tables, copied from memory.
struct Copied {
    hdr_avma: u64,
    eh_frame_hdr: Vec<u8>,
    eh_frame_avma: u64,
    eh_frame: Vec<u8>,
}

/// Every loaded object, with its unwind tables where it has them.
fn enumerate() -> Vec<(Object, Option<Copied>)> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid `info` for the duration of the
        // call; `data` is the `Vec` below.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<(Object, Option<Copied>)>>()) };
        // SAFETY: as above; the program headers live as long as the object.
        if let Some(found) = unsafe { read_object(info) } {
            out.push(found);
        }
        0
    }
    let mut out: Vec<(Object, Option<Copied>)> = Vec::new();
    // SAFETY: the callback only reads what the loader hands it and writes
    // through `data`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), std::ptr::from_mut(&mut out).cast()) };
    out
}

/// # Safety
/// `info` comes from `dl_iterate_phdr`, inside its callback.
unsafe fn read_object(info: &libc::dl_phdr_info) -> Option<(Object, Option<Copied>)> {
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
unsafe fn read_tables(phdrs: &[libc::Elf64_Phdr], bias: u64) -> Option<Copied> {
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
    Some(Copied {
        hdr_avma,
        eh_frame_hdr: hdr_bytes.to_vec(),
        eh_frame_avma,
        eh_frame: eh_frame.to_vec(),
    })
}
