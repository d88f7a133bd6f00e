//! The one classifier of stack frames, by address.
//!
//! Once per process, the executable's ELF symbol table is read and the
//! address range of every function that matters is given a [`FrameKind`]:
//! tokio's current-thread scheduler, tokio's task harness (a task being
//! polled), tokio's park code, and the rest of tokio's runtime. A
//! sampled frame is then classified by looking its address up in those
//! ranges. Frames inlined into one address have no address of their own;
//! [`kind_of_name`], the same rule that built the table, classifies them by
//! name (the symbolizer uses it for the one frame where user code may be
//! inlined into tokio's).

use std::ops::Range;
use std::sync::OnceLock;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// tokio's current-thread scheduler (its `block_on` loop and park).
    CurrentThreadScheduler,
    /// tokio's task harness: a task is being polled below this frame.
    TaskPoll,
    /// tokio's park code: a worker with nothing to do.
    Park,
    /// The rest of tokio's runtime (scheduler, context, blocking pool).
    Runtime,
    /// Everything else: the application, std, other libraries.
    Other,
}

impl FrameKind {
    /// Whether the frame is tokio's runtime machinery, below the user's code.
    pub(crate) fn is_runtime(self) -> bool {
        matches!(
            self,
            FrameKind::CurrentThreadScheduler
                | FrameKind::TaskPoll
                | FrameKind::Park
                | FrameKind::Runtime
        )
    }
}

/// The kind of a function from its demangled name (without hash).
pub(crate) fn kind_of_name(name: &str) -> FrameKind {
    // `<tokio::... as Trait>::f` and `<tokio::...>::f` belong to their type's path.
    let path = name.trim_start_matches('<');
    let Some(rest) = path.strip_prefix("tokio::runtime::") else {
        return FrameKind::Other;
    };
    if rest.starts_with("scheduler::current_thread") {
        FrameKind::CurrentThreadScheduler
    } else if rest.starts_with("task::") {
        FrameKind::TaskPoll
    } else if rest.starts_with("park")
        || rest.contains("::park")
        || rest.contains("Parker")
        || rest.contains("::Park")
    {
        FrameKind::Park
    } else {
        FrameKind::Runtime
    }
}

/// The classified address ranges of the executable's functions.
#[derive(Debug, Default)]
struct Table {
    /// Sorted by start; non-`Other` kinds only.
    ranges: Vec<(usize, usize, FrameKind)>,
    has_current_thread: bool,
}

static TABLE: OnceLock<Option<Table>> = OnceLock::new();

fn table() -> Option<&'static Table> {
    TABLE.get_or_init(load).as_ref()
}

/// Reads the table now (a few milliseconds in a release build, once), so
/// that the first stall does not pay for it.
pub(crate) fn warm_up() {
    let _ = table();
}

fn load() -> Option<Table> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let data = super::symbols::Mapped::open("/proc/self/exe")?;
    let file = object::File::parse(data.bytes()).ok()?;
    let bias = main_program_bias()?;
    let mut ranges = Vec::new();
    for symbol in file.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.address() == 0 {
            continue;
        }
        let Some(start) = usize::try_from(symbol.address())
            .ok()
            .and_then(|a| a.checked_add(bias))
        else {
            continue;
        };
        let len = usize::try_from(symbol.size()).unwrap_or(0).max(1);
        let Some(end) = start.checked_add(len) else {
            continue;
        };
        // Only names that mention tokio can be tokio's; demangle just those.
        let Ok(mangled) = symbol.name() else { continue };
        if !mangled.contains("tokio") {
            continue;
        }
        let kind = kind_of_name(&format!("{:#}", rustc_demangle::demangle(mangled)));
        if kind != FrameKind::Other {
            ranges.push((start, end, kind));
        }
    }
    ranges.sort_unstable_by_key(|r| r.0);
    let has_current_thread = ranges
        .iter()
        .any(|r| r.2 == FrameKind::CurrentThreadScheduler);
    (!ranges.is_empty()).then_some(Table {
        ranges,
        has_current_thread,
    })
}

/// The load bias of the main executable (0 unless it is position independent).
fn main_program_bias() -> Option<usize> {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid info; data is our `usize`.
        unsafe { *data.cast::<usize>() = (*info).dlpi_addr as usize };
        1 // the first object is the main program; stop there
    }
    let mut bias: usize = usize::MAX;
    // SAFETY: the callback only writes through `data`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first), std::ptr::from_mut(&mut bias).cast()) };
    (bias != usize::MAX).then_some(bias)
}

impl Table {
    fn kind(&self, addr: usize) -> FrameKind {
        let idx = self.ranges.partition_point(|r| r.0 <= addr);
        match idx.checked_sub(1).map(|i| self.ranges[i]) {
            Some((_, end, kind)) if addr < end => kind,
            _ => FrameKind::Other,
        }
    }

    fn kinds<'a>(&'a self, frames: &'a [usize]) -> impl Iterator<Item = FrameKind> + 'a {
        frames.iter().map(|&addr| self.kind(addr))
    }
}

/// The kind of the frame at `addr` (an address to look up, as a walk gives).
pub(crate) fn kind_at(addr: usize) -> FrameKind {
    table().map_or(FrameKind::Other, |t| t.kind(addr))
}

/// Whether the thread is inside tokio's current-thread scheduler (its
/// runtime is being driven). `None` when it cannot be told: no symbol table,
/// or the scheduler's functions were all inlined away.
pub(crate) fn in_current_thread_scheduler(frames: &[usize]) -> Option<bool> {
    let table = table().filter(|t| t.has_current_thread)?;
    Some(
        table
            .kinds(frames)
            .any(|k| k == FrameKind::CurrentThreadScheduler),
    )
}

/// Whether a worker thread is inside a task's poll and not in tokio's park
/// code: stuck in a task rather than idle. `None` without a symbol table.
pub(crate) fn in_task_poll(frames: &[usize]) -> Option<bool> {
    let table = table()?;
    let (mut task, mut park) = (false, false);
    for kind in table.kinds(frames) {
        task |= kind == FrameKind::TaskPoll;
        park |= kind == FrameKind::Park;
    }
    Some(task && !park)
}

/// The frames a person needs: from the innermost down to, not including,
/// the first frame of tokio's runtime under it. The frame at `end` (if any)
/// is that runtime frame: user code inlined into it shows as inline frames
/// of that one address.
pub(crate) fn trimmed(frames: &[usize]) -> Range<usize> {
    let end = frames
        .iter()
        .position(|&addr| kind_at(addr).is_runtime())
        .unwrap_or(frames.len());
    0..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_by_their_path_in_tokio_runtime() {
        let cases = [
            (
                "tokio::runtime::scheduler::current_thread::CoreGuard::block_on",
                FrameKind::CurrentThreadScheduler,
            ),
            (
                "<tokio::runtime::scheduler::current_thread::CoreGuard as core::ops::drop::Drop>::drop",
                FrameKind::CurrentThreadScheduler,
            ),
            (
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                FrameKind::TaskPoll,
            ),
            ("tokio::runtime::task::raw::poll", FrameKind::TaskPoll),
            (
                "tokio::runtime::scheduler::multi_thread::worker::Context::park_internal",
                FrameKind::Park,
            ),
            (
                "tokio::runtime::scheduler::multi_thread::park::Parker::park",
                FrameKind::Park,
            ),
            (
                "tokio::runtime::park::CachedParkThread::block_on",
                FrameKind::Park,
            ),
            (
                "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
                FrameKind::Runtime,
            ),
            ("tokio::sync::mpsc::chan::Rx<T,S>::recv", FrameKind::Other),
            ("my_app::handler::{{closure}}", FrameKind::Other),
            ("std::thread::sleep", FrameKind::Other),
        ];
        for (name, kind) in cases {
            assert_eq!(kind_of_name(name), kind, "{name}");
        }
    }

    /// The stack of a thread parked in `std::thread::sleep` inside `f`'s
    /// context, taken from outside.
    fn stack_of_a_thread_sleeping(in_task: bool) -> Vec<usize> {
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let sleep = move || {
                tx.send(crate::stack::current_tid()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
            };
            if in_task {
                rt.block_on(async { tokio::spawn(async move { sleep() }).await.unwrap() });
            } else {
                sleep();
            }
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sample =
            crate::stack::sample(tid, false).expect("a sleeping thread is read from outside");
        sleeper.join().unwrap();
        sample.frames
    }

    #[test]
    fn a_stack_inside_a_task_poll_is_classified_by_address() {
        let frames = stack_of_a_thread_sleeping(true);
        assert_eq!(in_task_poll(&frames), Some(true));
        assert_eq!(
            in_task_poll(&stack_of_a_thread_sleeping(false)),
            Some(false)
        );
        let range = trimmed(&frames);
        assert!(range.end < frames.len(), "tokio's frames are cut");
        assert!(frames[range.end..]
            .iter()
            .any(|&addr| kind_at(addr) == FrameKind::TaskPoll));
    }

    #[test]
    fn a_current_thread_block_on_is_inside_the_scheduler() {
        assert_eq!(
            in_current_thread_scheduler(&stack_of_a_thread_sleeping(true)),
            Some(true)
        );
        assert_eq!(
            in_current_thread_scheduler(&stack_of_a_thread_sleeping(false)),
            Some(false)
        );
    }
}
