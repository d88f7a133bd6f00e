//! Names, places (`file:line`) and the culprit of a walked stack, resolved
//! on the watchdog thread.
//!
//! Nothing is kept between checks: each object a check's stacks pass
//! through is mapped, its symbol table and line tables are read for the few
//! frames of those stacks, and everything is dropped when the check ends
//! ([`Symbolizer`] is dropped), so that symbolizing never keeps debug info
//! resident (a 27 MB debug binary's DWARF held 68 MiB when kept loaded).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use addr2line::gimli;
use object::{Object as _, ObjectSection as _};

use super::classify::{self, kind_of_name, FrameKind};
use super::modules::Object;
use super::Symbolized;

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
}

/// Resolves addresses within one object.
struct Resolver {
    _map: Mapped,
    symbols: Vec<(u64, u64, String)>,
    dwarf: Option<addr2line::Context<gimli::EndianSlice<'static, gimli::RunTimeEndian>>>,
    bias: u64,
    main: bool,
    file_name: String,
}

impl Resolver {
    fn new(object: &Object, main: bool) -> Option<Resolver> {
        let path = if main {
            "/proc/self/exe"
        } else {
            object.path.as_str()
        };
        let map = Mapped::open(path)?;
        // SAFETY: the bytes live as long as `map`, which the resolver owns
        // and drops after the context that borrows them (field order).
        let bytes: &'static [u8] =
            unsafe { std::mem::transmute::<&[u8], &'static [u8]>(map.bytes()) };
        let file = object::File::parse(bytes).ok()?;
        let mut symbols: Vec<(u64, u64, String)> = file
            .symbol_map()
            .symbols()
            .iter()
            .map(|s| (s.address(), 0, s.name().to_owned()))
            .collect();
        symbols.sort_unstable_by_key(|s| s.0);
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
        let dwarf = gimli::Dwarf::load(load)
            .ok()
            .and_then(|d| addr2line::Context::from_dwarf(d).ok());
        let file_name = object
            .path
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("the executable")
            .to_owned();
        Some(Resolver {
            _map: map,
            symbols,
            dwarf,
            bias: object.bias,
            main,
            file_name,
        })
    }

    /// Every function at `addr`, innermost (inlined) first.
    fn resolve(&self, addr: u64) -> Vec<Line> {
        let probe = addr.wrapping_sub(self.bias);
        let mut lines = Vec::new();
        if let Some(dwarf) = &self.dwarf {
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
            .map(|(name, place)| {
                let name = name.unwrap_or_else(|| format!("{addr:#x} in {}", self.file_name));
                let plumbing = !self.main || is_plumbing(&name, place.as_deref());
                Line {
                    name,
                    place,
                    plumbing,
                }
            })
            .collect()
    }

    fn symbol(&self, probe: u64) -> Option<String> {
        let i = self
            .symbols
            .partition_point(|s| s.0 <= probe)
            .checked_sub(1)?;
        let name = &self.symbols[i].2;
        Some(format!("{:#}", rustc_demangle::demangle(name)))
    }
}

/// Code that is not the application's: the standard library, tokio,
/// loopwatch and the other runtime plumbing named here, anything built from
/// a registry or git dependency, and (decided by the caller) every shared
/// object such as libc.
pub(crate) fn is_plumbing(name: &str, place: Option<&str>) -> bool {
    const CRATES: [&str; 16] = [
        "std::",
        "core::",
        "alloc::",
        "tokio::",
        "loopwatch::",
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

/// Resolves stacks, keeping what it read of each object until it is dropped.
#[derive(Default)]
pub(crate) struct Symbolizer {
    resolvers: BTreeMap<u64, Option<Resolver>>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("objects", &self.resolvers.len())
            .finish()
    }
}

impl Symbolizer {
    /// Resolves a stack to text, one numbered frame per line, and finds its
    /// culprit: the first frame of application code. Unless `full`, the
    /// stack is cut at tokio's runtime ([`classify::trimmed`]), keeping user
    /// code inlined into the first runtime frame.
    pub(crate) fn symbolize(&mut self, frames: &[usize], full: bool) -> Option<Symbolized> {
        symbolize_with(&mut self.resolvers, frames, full)
    }
}

/// [`Symbolizer::symbolize`] with a symbolizer of its own.
#[cfg(test)]
pub(crate) fn symbolize(frames: &[usize], full: bool) -> Option<Symbolized> {
    Symbolizer::default().symbolize(frames, full)
}

fn symbolize_with(
    resolvers: &mut BTreeMap<u64, Option<Resolver>>,
    frames: &[usize],
    full: bool,
) -> Option<Symbolized> {
    if frames.is_empty() {
        return None;
    }
    let (range, keep_inlined) = if full {
        (0..frames.len(), false)
    } else {
        (classify::trimmed(frames), true)
    };
    let mut shown: Vec<usize> = range.clone().collect();
    if keep_inlined && range.end < frames.len() {
        shown.push(range.end);
    }
    // One resolver per object the stack passes through, dropped at the end.
    let modules = super::linux_modules();
    let objects: Vec<Option<(Object, bool)>> = {
        let guard = modules.lock();
        let main_text = guard.objects().first().map(|o| o.text.clone());
        shown
            .iter()
            .map(|&i| {
                guard.object_of(frames[i] as u64).map(|o| {
                    let main = Some(o.text.clone()) == main_text;
                    (o.clone(), main)
                })
            })
            .collect()
    };
    let mut lines: Vec<Line> = Vec::new();
    for (n, &i) in shown.iter().enumerate() {
        let addr = frames[i] as u64;
        let resolved = match &objects[n] {
            Some((object, main)) => resolvers
                .entry(object.text.start)
                .or_insert_with(|| Resolver::new(object, *main))
                .as_ref()
                .map(|r| r.resolve(addr)),
            None => None,
        };
        let mut resolved = resolved.unwrap_or_else(|| {
            vec![Line {
                name: format!("{addr:#x}"),
                place: None,
                plumbing: true,
            }]
        });
        if keep_inlined && i == range.end {
            // Only the user code inlined into the runtime frame.
            resolved.retain(|l| kind_of_name(&l.name) == FrameKind::Other);
            resolved.truncate(
                resolved
                    .iter()
                    .position(|l| l.plumbing)
                    .unwrap_or(resolved.len()),
            );
        }
        lines.extend(resolved);
    }
    if lines.is_empty() {
        return None;
    }
    let culprit = lines.iter().find(|l| !l.plumbing).map(|l| match &l.place {
        Some(place) => format!("{} ({place})", l.name),
        None => l.name.clone(),
    });
    let mut text = String::new();
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(text, "{i:>4}: {}", line.name);
        if let Some(place) = &line.place {
            let _ = writeln!(text, "             at {place}");
        }
    }
    Some(Symbolized { text, culprit })
}

#[cfg(test)]
mod tests {
    use super::{is_plumbing, symbolize};

    #[inline(never)]
    fn culprit_sleeps_here(tid: std::sync::mpsc::Sender<i64>) {
        tid.send(crate::stack::current_tid()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::hint::black_box(());
    }

    #[test]
    fn a_stack_read_from_outside_names_its_frames_and_places() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || culprit_sleeps_here(tx));
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sample = crate::stack::sample(tid, false).unwrap();
        sleeper.join().unwrap();
        assert!(!sample.signalled, "a sleeping thread is read from outside");
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
                && symbolized.text.contains("src/stack/symbols.rs:"),
            "{}",
            symbolized.text
        );
        // Every frame here is loopwatch's own or the standard library's: no
        // culprit (tests/interference.rs checks the culprit of application code).
        assert_eq!(symbolized.culprit, None);
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
