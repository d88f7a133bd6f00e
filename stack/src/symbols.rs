//! Names, places (`file:line`) and the culprit of a walked stack, resolved
//! on the watchdog thread.
//!
//! Nothing is kept between checks: each object a check's stacks pass
//! through is mapped, its symbol table and line tables are read for the few
//! frames of those stacks, and everything is dropped when the check ends
//! ([`Symbolizer`] is dropped), so that symbolizing never keeps debug info
//! resident (a 27 MB debug binary's DWARF held 68 MiB when kept loaded).
//!
//! Objects are mapped here rather than through `addr2line::Loader`, which
//! owns its mappings: the vDSO has no file and is read from this process's
//! memory (a copy, by [`crate::os::memory`]), which `Loader` cannot take;
//! `Loader` needs addr2line's `loader` feature (memmap2, typed-arena and
//! split-DWARF lookups this reader does not use); and a resolver is one
//! value that owns its bytes and the tables that borrow them, so the two
//! `transmute`s to `'static` below are sound for as long as the resolver
//! lives (the owner is its last field, dropped after the borrowers).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash as _, Hasher as _};

use addr2line::gimli;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::classify::kind_of_name;
use super::modules::Object;
use super::{Sample, Symbolized};

/// A read-only private mapping of a file, unmapped when dropped.
pub(crate) struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps the file at `path`; `None` when it cannot be opened or is empty.
    pub(crate) fn open(path: &str) -> Option<Mapped> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a private read-only mapping of an open file; the file
        // descriptor may be closed once mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Mapped { ptr, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: mapped readable for `len` bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

// SAFETY: a read-only mapping owned by this value; nothing else unmaps it.
unsafe impl Send for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// One function at one address: name and `file:line` where known.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    place: Option<String>,
    /// Whether the function belongs to the runtime's plumbing (see [`is_plumbing`]).
    plumbing: bool,
    /// Whether the function left by a tail call: it called on with a jump,
    /// so that its frame is gone, and the walk found where it was.
    tail: bool,
}

/// The name shown where functions may have been left out by a tail call
/// through a jump whose target is not known (a function pointer, a trait
/// object): the walk cannot say which, nor whether any.
const UNKNOWN_TAIL_CALLS: &str = "?? (tail calls through a jump whose target is not known, if any)";

impl Line {
    /// The marker of functions left out by unknown tail calls.
    fn unknown_tail_calls() -> Line {
        Line {
            name: UNKNOWN_TAIL_CALLS.to_owned(),
            place: None,
            plumbing: true,
            tail: false,
        }
    }
}

/// Where an object's bytes come from (kept for the borrows into them).
enum Source {
    /// Its file, mapped.
    File(#[allow(dead_code)] Mapped),
    /// A copy of the vDSO's image (it has no file).
    Vdso(#[allow(dead_code)] Vec<u8>),
}

type Dwarf = addr2line::Context<gimli::EndianSlice<'static, gimli::RunTimeEndian>>;

/// Resolves addresses within one object.
struct Resolver {
    /// Function symbols: start, end (both file addresses), name (in the
    /// mapped file, which the resolver owns).
    symbols: Vec<(u64, u64, &'static str)>,
    /// The debug info, read the first time a name or place needs it.
    dwarf: std::cell::OnceCell<Option<Dwarf>>,
    /// The file, for the debug info.
    file: object::File<'static, &'static [u8]>,
    bias: u64,
    main: bool,
    file_name: String,
    /// Whether the object has a symbol table of its own (`.symtab`, not
    /// only the dynamic symbols a stripped file keeps) or debug info.
    named: bool,
    /// Where `symbols` and `dwarf` point: declared last, so dropped after
    /// them.
    _source: Source,
}

/// A copy of the vDSO's ELF image, from the auxiliary vector: its headers
/// say how long it is, and the copy (by `process_vm_readv`) stops at the
/// first unmapped page, so that a header that says more is never read past.
fn vdso_image() -> Option<Vec<u8>> {
    // SAFETY: `getauxval` has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return None;
    }
    let mut header = [0u8; std::mem::size_of::<libc::Elf64_Ehdr>()];
    if crate::os::memory::copy_memory(base, &mut header) != header.len()
        || header[..4] != *b"\x7fELF"
    {
        return None;
    }
    // SAFETY: `header` holds the bytes of an ELF header; the struct has no
    // invalid bit patterns.
    let header: libc::Elf64_Ehdr = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let sections_end =
        header.e_shoff as usize + usize::from(header.e_shnum) * usize::from(header.e_shentsize);
    let len = sections_end.min(1 << 20);
    let mut image = vec![0u8; len];
    let copied = crate::os::memory::copy_memory(base, &mut image);
    image.truncate(copied);
    Some(image)
}

impl Resolver {
    fn new(object: &Object, main: bool) -> Option<Resolver> {
        let vdso = object.path.starts_with("linux-vdso") || object.path.starts_with("linux-gate");
        let (source, bytes): (Source, &'static [u8]) = if vdso {
            let image = vdso_image()?;
            // SAFETY: the bytes live as long as `image`, which the resolver
            // owns (moving a `Vec` does not move its buffer) and drops
            // after the fields that borrow them (it is declared last).
            let bytes = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(image.as_slice()) };
            (Source::Vdso(image), bytes)
        } else {
            let path = if main {
                "/proc/self/exe"
            } else {
                object.path.as_str()
            };
            let map = Mapped::open(path)?;
            // SAFETY: the bytes live as long as `map`, which the resolver
            // owns and drops after the fields that borrow them (it is
            // declared last).
            let bytes = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(map.bytes()) };
            (Source::File(map), bytes)
        };
        let file = object::File::parse(bytes).ok()?;
        let mut symbols: Vec<(u64, u64, &'static str)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.address() + s.size(), s.name().ok()?)))
            .filter(|(_, _, name)| !name.is_empty())
            .collect();
        symbols.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        symbols.dedup_by_key(|s| s.0);
        let file_name = if main {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "the executable".to_owned())
        } else {
            object
                .path
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("an object")
                .to_owned()
        };
        let named = file.symbol_table().is_some() || file.section_by_name(".debug_info").is_some();
        Some(Resolver {
            named,
            symbols,
            dwarf: std::cell::OnceCell::new(),
            file,
            bias: object.bias,
            main,
            file_name,
            _source: source,
        })
    }

    /// The debug info, read now if it was not yet.
    fn dwarf(&self) -> Option<&Dwarf> {
        self.dwarf
            .get_or_init(|| {
                let file = &self.file;
                let endian = if file.is_little_endian() {
                    gimli::RunTimeEndian::Little
                } else {
                    gimli::RunTimeEndian::Big
                };
                let load = |id: gimli::SectionId| -> Result<_, gimli::Error> {
                    let data = file
                        .section_by_name(id.name())
                        .and_then(|s| s.data().ok())
                        .unwrap_or(&[]);
                    Ok(gimli::EndianSlice::new(data, endian))
                };
                gimli::Dwarf::load(load)
                    .ok()
                    .and_then(|d| addr2line::Context::from_dwarf(d).ok())
            })
            .as_ref()
    }

    /// The name of the function (not inlined) whose code holds `addr`, from
    /// the symbol table alone: cheap, no debug info read.
    fn outer_name(&self, addr: u64) -> Option<String> {
        self.symbol(addr.wrapping_sub(self.bias))
    }

    /// Every function at `addr`, innermost (inlined) first.
    fn resolve(&self, addr: u64) -> Vec<Line> {
        let probe = addr.wrapping_sub(self.bias);
        let mut lines = Vec::new();
        if let Some(dwarf) = self.dwarf() {
            if let Ok(mut frames) = dwarf.find_frames(probe).skip_all_loads() {
                while let Ok(Some(frame)) = frames.next() {
                    let name = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.raw_name().ok())
                        .map(|n| format!("{:#}", rustc_demangle::demangle(&n)));
                    let place = frame
                        .location
                        .as_ref()
                        .and_then(|l| Some(format!("{}:{}", l.file?, l.line?)));
                    lines.push((name, place));
                }
            }
        }
        // The outermost function at this address is a real symbol: its
        // full name comes from the symbol table (line-tables-only debug
        // info names functions without their path).
        let symbol = self.symbol(probe);
        if let Some(last) = lines.last_mut() {
            if symbol.is_some() {
                last.0 = symbol.clone();
            }
        }
        if lines.is_empty() {
            lines.push((symbol, None));
        }
        lines
            .into_iter()
            .map(|(name, place)| frame_line(name, place, self.main, &self.file_name, probe))
            .collect()
    }

    /// The function symbol that contains `probe`. A symbol of unknown size
    /// contains only its first address: the nearest symbol below an
    /// address is often an unrelated one (a shared library's local
    /// functions are not in its dynamic symbol table).
    fn symbol(&self, probe: u64) -> Option<String> {
        let i = self
            .symbols
            .partition_point(|s| s.0 <= probe)
            .checked_sub(1)?;
        let (start, end, name) = &self.symbols[i];
        if probe >= *end && probe != *start {
            return None;
        }
        let name = format!("{:#}", rustc_demangle::demangle(name));
        (!name.is_empty()).then_some(name)
    }
}

/// A function at an address of `module` (`offset` into it) as a line of a
/// stack: without a name (an empty one is none), `module+0xoffset`. A
/// function without a name cannot be told to be the application's: it is
/// never the culprit; nor is one outside the executable (`main`).
fn frame_line(
    name: Option<String>,
    place: Option<String>,
    main: bool,
    module: &str,
    offset: u64,
) -> Line {
    let name = name.filter(|n| !n.is_empty());
    let plumbing = name.is_none()
        || !main
        || name
            .as_deref()
            .is_some_and(|n| is_plumbing(n, place.as_deref()));
    Line {
        name: name.unwrap_or_else(|| format!("{module}+{offset:#x}")),
        place,
        plumbing,
        tail: false,
    }
}

/// Code that is not the application's: the standard library, tokio,
/// loopwatch and the other runtime plumbing named here, anything built from
/// a registry or git dependency, and (decided by the caller) every shared
/// object such as libc.
pub(crate) fn is_plumbing(name: &str, place: Option<&str>) -> bool {
    const CRATES: [&str; 17] = [
        "std::",
        "core::",
        "alloc::",
        "tokio::",
        "loopwatch::",
        "loopwatch_stack::",
        "parking_lot::",
        "parking_lot_core::",
        "lock_api::",
        "futures::",
        "futures_util::",
        "futures_core::",
        "futures_executor::",
        "tracing::",
        "tracing_core::",
        "pin_project_lite::",
        "hashbrown::",
    ];
    let path = name
        .trim_start_matches(['<', '&', '*'])
        .trim_start_matches("dyn ")
        .trim_start_matches("mut ");
    if CRATES.iter().any(|c| path.starts_with(c))
        || path.starts_with("__rust")
        || path.starts_with("rust_")
    {
        return true;
    }
    place.is_some_and(|p| {
        p.starts_with("/rustc/")
            || p.contains("/.cargo/registry/")
            || p.contains("/.cargo/git/")
            || p.contains("/library/std/src/")
            || p.contains("/library/core/src/")
    })
}

/// How many addresses' names a [`Symbolizer`] keeps once its tables are
/// dropped (a few hundred bytes each; all are forgotten when it is full).
const MAX_NAMED: usize = 2048;

/// An object, as where its code is mapped and a hash of its file's path:
/// an object unloaded and another loaded in its place is read anew.
type ObjectKey = (u64, u64, u64);

fn key_of(object: &Object) -> ObjectKey {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    object.path.hash(&mut hasher);
    (object.text.start, object.text.end, hasher.finish())
}

/// Resolves stacks, keeping what it read of each object until
/// [`forget_tables`](Self::forget_tables), and what it found at each address
/// after that too (bounded), so that a stall seen again at the same code, or
/// a stack looked at again, is named without reading the tables again.
#[derive(Default)]
pub struct Symbolizer {
    resolvers: BTreeMap<ObjectKey, Option<Resolver>>,
    /// Whether each object read has names at all.
    named: HashMap<ObjectKey, bool>,
    /// The functions at each address resolved.
    lines_at: HashMap<(ObjectKey, u64), Vec<Line>>,
    /// The outer function's name at each address looked up.
    outer_at: HashMap<(ObjectKey, u64), Option<String>>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("objects", &self.resolvers.len())
            .field("addresses", &self.lines_at.len())
            .finish()
    }
}

impl Symbolizer {
    /// Resolves a stack to text, one numbered frame per line, and finds its
    /// culprit: the first frame of application code. Unless `full`, the
    /// stack is cut at the first function of tokio's runtime (inlined or
    /// not), below the user's code. A function that left by a tail call is
    /// shown as `name (tail call)`, at the place of its jump.
    pub fn symbolize(&mut self, sample: &Sample, full: bool) -> Option<Symbolized> {
        self.symbolize_frames(&sample.frames, &sample.tail_calls, full)
    }

    /// [`symbolize`](Self::symbolize) of frames alone (`tail_calls`: which
    /// of them stand for functions that left by a tail call).
    pub fn symbolize_frames(
        &mut self,
        frames: &[usize],
        tail_calls: &[usize],
        full: bool,
    ) -> Option<Symbolized> {
        let mut lines: Vec<Line> = Vec::new();
        for (_, line) in self.lines(frames, tail_calls, !full) {
            lines.push(line);
        }
        if lines.is_empty() {
            return None;
        }
        let culprit = culprit(&lines);
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let tail = if line.tail { " (tail call)" } else { "" };
            let _ = writeln!(text, "{i:>4}: {}{tail}", line.name);
            if let Some(place) = &line.place {
                let _ = writeln!(text, "             at {place}");
            }
        }
        Some(Symbolized { text, culprit })
    }

    /// Every function at each frame, innermost (inlined) first, each with
    /// the index of its frame; `None` when the executable has no names at
    /// all (stripped), so that tokio's frames cannot be told.
    pub(crate) fn functions(&mut self, frames: &[usize]) -> Option<Vec<(usize, String)>> {
        if !self.main_has_names() {
            return None;
        }
        Some(
            self.lines(frames, &[], false)
                .into_iter()
                .map(|(i, l)| (i, l.name))
                .collect(),
        )
    }

    /// The name of the function (not inlined) at each frame, from the
    /// symbol tables alone (no debug info read); `None` when the executable
    /// has no names at all.
    pub(crate) fn outer_functions(&mut self, frames: &[usize]) -> Option<Vec<(usize, String)>> {
        if !self.main_has_names() {
            return None;
        }
        let objects = objects_of(frames);
        let mut out = Vec::new();
        for (i, &addr) in frames.iter().enumerate() {
            let name = match &objects[i] {
                Some((object, main)) => self.outer_name(object, *main, addr as u64),
                None => None,
            };
            if let Some(name) = name {
                out.push((i, name));
            }
        }
        Some(out)
    }

    /// Whether the executable has a symbol table or debug info.
    fn main_has_names(&mut self) -> bool {
        let main = { super::linux::modules().objects().first().cloned() };
        let Some(main) = main else { return false };
        let key = key_of(&main);
        if let Some(&named) = self.named.get(&key) {
            return named;
        }
        let named = self.resolver(&main, true).is_some_and(|r| r.named);
        self.named.insert(key, named);
        named
    }

    /// Drops the symbol and line tables read (the names found are kept).
    pub fn forget_tables(&mut self) {
        self.resolvers.clear();
    }

    fn resolver(&mut self, object: &Object, main: bool) -> Option<&Resolver> {
        self.resolvers
            .entry(key_of(object))
            .or_insert_with(|| Resolver::new(object, main))
            .as_ref()
    }

    /// Every function at `addr` in `object`, innermost first, as found
    /// before or read now; `None` when the object cannot be read.
    fn resolve(&mut self, object: &Object, main: bool, addr: u64) -> Option<Vec<Line>> {
        let key = (key_of(object), addr);
        if let Some(lines) = self.lines_at.get(&key) {
            return Some(lines.clone());
        }
        let lines = self.resolver(object, main)?.resolve(addr);
        if self.lines_at.len() >= MAX_NAMED {
            self.lines_at.clear();
        }
        self.lines_at.insert(key, lines.clone());
        Some(lines)
    }

    /// The name of the function (not inlined) at `addr` in `object`.
    fn outer_name(&mut self, object: &Object, main: bool, addr: u64) -> Option<String> {
        let key = (key_of(object), addr);
        if let Some(name) = self.outer_at.get(&key) {
            return name.clone();
        }
        let name = self.resolver(object, main)?.outer_name(addr);
        if self.outer_at.len() >= MAX_NAMED {
            self.outer_at.clear();
        }
        self.outer_at.insert(key, name.clone());
        name
    }

    /// The functions at each frame, innermost first; with `trim`, up to the
    /// first function of tokio's runtime (not included). The frames in
    /// `tail_calls` stand for functions that left by a tail call (the
    /// outermost function at each is marked so).
    fn lines(&mut self, frames: &[usize], tail_calls: &[usize], trim: bool) -> Vec<(usize, Line)> {
        let objects = objects_of(frames);
        let mut out = Vec::new();
        for (i, &addr) in frames.iter().enumerate() {
            let tail = tail_calls.contains(&i);
            if tail && addr == super::unwind::UNKNOWN_TAIL_CALLS {
                out.push((i, Line::unknown_tail_calls()));
                continue;
            }
            let addr = addr as u64;
            let resolved = match &objects[i] {
                Some((object, main)) => self.resolve(object, *main, addr),
                None => None,
            };
            let mut resolved = resolved.unwrap_or_else(|| {
                vec![Line {
                    name: format!("{addr:#x}"),
                    place: None,
                    plumbing: true,
                    tail: false,
                }]
            });
            if let Some(outer) = resolved.last_mut() {
                outer.tail = tail;
            }
            for line in resolved {
                if trim && kind_of_name(&line.name).is_runtime() {
                    return out;
                }
                out.push((i, line));
            }
        }
        out
    }
}

/// Which object each frame is in, and whether it is the executable.
fn objects_of(frames: &[usize]) -> Vec<Option<(Object, bool)>> {
    let guard = super::linux::modules();
    let main_text = guard.objects().first().map(|o| o.text.clone());
    frames
        .iter()
        .map(|&addr| {
            guard.object_of(addr as u64).map(|o| {
                let main = Some(o.text.clone()) == main_text;
                (o.clone(), main)
            })
        })
        .collect()
}

/// [`Symbolizer::symbolize_frames`] with a symbolizer of its own, for
/// frames without tail calls.
#[cfg(test)]
pub(crate) fn symbolize(frames: &[usize], full: bool) -> Option<Symbolized> {
    Symbolizer::default().symbolize_frames(frames, &[], full)
}

/// The first frame of application code, as `function (file:line)`. A
/// closure that runs for the function defining it, with nothing but
/// plumbing in between (the closure `#[instrument_blocking]` wraps a body
/// in, or one handed to the standard library), is named as that function:
/// its code is part of that function's body.
fn culprit(lines: &[Line]) -> Option<String> {
    let mut app = lines.iter().filter(|l| !l.plumbing);
    let first = app.next()?;
    let mut name = first.name.as_str();
    if let Some(next) = app.next() {
        while let Some(parent) = name.strip_suffix("::{{closure}}") {
            name = parent;
            if name == next.name {
                break;
            }
        }
        if name != next.name {
            name = &first.name;
        }
    }
    Some(match &first.place {
        Some(place) => format!("{name} ({place})"),
        None => name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::{culprit, frame_line, is_plumbing, symbolize, Line, Symbolizer};

    #[test]
    fn a_frame_without_a_name_is_shown_as_its_module_and_offset() {
        for name in [None, Some(String::new())] {
            let line = frame_line(name, None, true, "app", 0x1f2e3);
            assert_eq!(line.name, "app+0x1f2e3");
            assert!(line.plumbing, "never the culprit");
        }
        let line = frame_line(Some("app::run".to_owned()), None, true, "app", 0x10);
        assert_eq!(line.name, "app::run");
        assert!(!line.plumbing);
        let line = frame_line(Some("qsort".to_owned()), None, false, "libc.so.6", 0x10);
        assert!(line.plumbing, "a shared library's");
    }

    #[test]
    fn a_closure_run_for_its_own_function_is_named_as_that_function() {
        let line = |name: &str, plumbing: bool| Line {
            name: name.to_owned(),
            place: (!plumbing).then(|| "src/db.rs:12".to_owned()),
            plumbing,
            tail: false,
        };
        let lines = [
            line("std::thread::sleep", true),
            line("app::db::load::{{closure}}", false),
            line("loopwatch::instrument::call::call_sync", true),
            line("app::db::load", false),
            line("app::main", false),
        ];
        assert_eq!(
            culprit(&lines).as_deref(),
            Some("app::db::load (src/db.rs:12)")
        );
        // A closure run by another function keeps its own name.
        let lines = [
            line("app::db::load::{{closure}}", false),
            line("app::db::other", false),
        ];
        assert_eq!(
            culprit(&lines).as_deref(),
            Some("app::db::load::{{closure}} (src/db.rs:12)")
        );
        // Nested closures of the same function.
        let lines = [
            line("app::run::{{closure}}::{{closure}}", false),
            line("core::ops::function::FnOnce::call_once", true),
            line("app::run", false),
        ];
        assert_eq!(culprit(&lines).as_deref(), Some("app::run (src/db.rs:12)"));
    }

    #[inline(never)]
    fn culprit_sleeps_here(tid: std::sync::mpsc::Sender<i64>) {
        tid.send(crate::os::thread::current_tid()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::hint::black_box(());
    }

    /// The stack of a thread sleeping in [`culprit_sleeps_here`].
    fn sleeping_thread_stack() -> crate::Sample {
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || culprit_sleeps_here(tx));
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sample = crate::sample(tid, false).unwrap();
        sleeper.join().unwrap();
        sample
    }

    #[test]
    fn a_stack_read_from_outside_names_its_frames_and_places() {
        let sample = sleeping_thread_stack();
        assert_eq!(
            sample.method,
            crate::Method::Proc,
            "a sleeping thread is read from outside"
        );
        let symbolized = symbolize(&sample.frames, false).unwrap();
        assert!(
            symbolized.text.contains("std::thread::functions::sleep"),
            "{}",
            symbolized.text
        );
        assert!(
            symbolized
                .text
                .contains("culprit_sleeps_here\n             at ")
                && symbolized.text.contains("src/symbols.rs:"),
            "{}",
            symbolized.text
        );
        // Every frame here is loopwatch's own or the standard library's: no
        // culprit (tests/interference.rs checks the culprit of application code).
        assert_eq!(symbolized.culprit, None);
    }

    #[test]
    fn names_found_are_kept_when_the_tables_are_dropped() {
        let sample = sleeping_thread_stack();
        let mut symbolizer = Symbolizer::default();
        let first = symbolizer.symbolize(&sample, false).unwrap();
        assert!(!symbolizer.resolvers.is_empty(), "the tables were read");
        symbolizer.forget_tables();
        let again = symbolizer.symbolize(&sample, false).unwrap();
        assert!(
            symbolizer.resolvers.is_empty(),
            "named again without reading a table: {symbolizer:?}"
        );
        assert_eq!(again.text, first.text);
        assert_eq!(again.culprit, first.culprit);
        // An address not seen before reads the tables again.
        let other = [culprit_sleeps_here as *const () as usize + 1];
        assert!(symbolizer.symbolize_frames(&other, &[], true).is_some());
        assert!(!symbolizer.resolvers.is_empty());
    }

    #[test]
    fn a_frame_in_the_vdso_is_named() {
        let Some(addr) = crate::os::vdso::clock_gettime().map(|f| f as usize) else {
            return; // no vDSO here
        };
        // An address inside the function, as a return address minus one is.
        let text = symbolize(&[addr + 1], true).unwrap().text;
        assert!(text.contains("clock_gettime"), "{text}");
    }

    static COMPARED: std::sync::Mutex<Option<std::sync::mpsc::Sender<i64>>> =
        std::sync::Mutex::new(None);

    /// A `qsort` comparator that, the first time, says which thread it runs
    /// on and sleeps, so that its stack can be read from outside.
    extern "C" fn compares_slowly(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
        if let Some(tx) = COMPARED.lock().unwrap().take() {
            tx.send(crate::os::thread::current_tid()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        // SAFETY: qsort hands pointers to two elements of the u32 array.
        let (a, b) = unsafe { (*a.cast::<u32>(), *b.cast::<u32>()) };
        a.cmp(&b) as libc::c_int
    }

    #[test]
    fn a_frame_in_a_shared_library_is_named_by_the_symbol_that_holds_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        *COMPARED.lock().unwrap() = Some(tx);
        let sorter = std::thread::spawn(|| {
            let mut values = [3u32, 1, 2];
            // SAFETY: a u32 array, its length and size, a comparator of u32s.
            unsafe {
                libc::qsort(values.as_mut_ptr().cast(), 3, 4, Some(compares_slowly));
            }
            values
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sample = crate::sample(tid, false).unwrap();
        assert_eq!(sorter.join().unwrap(), [1, 2, 3]);
        assert!(sample.complete);
        let text = symbolize(&sample.frames, true).unwrap().text;
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().split_once(": ").map(|(_, n)| n))
            .collect();
        let comparator = names
            .iter()
            .position(|n| n.contains("compares_slowly"))
            .unwrap_or_else(|| panic!("{text}"));
        let qsort = names
            .iter()
            .position(|n| n.starts_with("qsort"))
            .unwrap_or_else(|| panic!("{text}"));
        // Between them, libc's local sorting functions: not in its dynamic
        // symbol table, so shown by offset, not named after a neighbour.
        assert!(qsort > comparator + 1, "{text}");
        for name in &names[comparator + 1..qsort] {
            assert!(
                name.starts_with("libc.so") && name.contains("+0x"),
                "{text}"
            );
        }
    }

    #[test]
    fn plumbing_is_told_by_crate_and_by_place() {
        for name in [
            "std::thread::sleep",
            "<tokio::runtime::task::Harness<T,S>>::poll",
            "<loopwatch::instrument::watched::Watched<F> as core::future::Future>::poll",
            "core::ops::function::FnOnce::call_once",
            "parking_lot::raw_mutex::RawMutex::lock_slow",
        ] {
            assert!(is_plumbing(name, None), "{name}");
        }
        assert!(is_plumbing(
            "sleep",
            Some("/rustc/abc/library/std/src/thread/functions.rs:289")
        ));
        assert!(is_plumbing(
            "recv",
            Some("../.cargo/registry/src/index/mio-1.0/src/net.rs:3")
        ));
        assert!(!is_plumbing("my_app::db::query", Some("src/db.rs:12")));
        assert!(!is_plumbing("{async_block#3}", Some("examples/demo.rs:48")));
    }
}
