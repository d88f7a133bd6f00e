//! The one classifier of stack frames: which functions are tokio's runtime
//! machinery, by their names (`tokio::runtime::…`), and what a thread's
//! stack says it is doing ([`role`]).
//!
//! Names come from the symbolizer, inlined functions included (limited debug
//! info gives each its full path), so that the answer does not depend on
//! what the compiler inlined into what: the frame of tokio's current-thread
//! scheduler is often a generic standard library function
//! (`LocalKey::with`) with the scheduler inlined into it. Without debug
//! info, the names of the functions that were not inlined (the symbol
//! table) are what there is; a stripped executable has none, and nothing is
//! told.

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// tokio's current-thread scheduler (its `block_on` loop and park).
    CurrentThreadScheduler,
    /// tokio's task harness: a task is being polled below this frame.
    TaskPoll,
    /// tokio's park code: a worker with nothing to do.
    Park,
    /// tokio's multi-thread scheduler: a worker's run loop.
    Worker,
    /// The rest of tokio's runtime (scheduler, context, blocking pool).
    Runtime,
    /// Everything else: the application, std, other libraries.
    Other,
}

impl FrameKind {
    /// Whether the frame is tokio's runtime machinery, below the user's code.
    pub(crate) fn is_runtime(self) -> bool {
        !matches!(self, FrameKind::Other)
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
    } else if rest.starts_with("scheduler::multi_thread") {
        FrameKind::Worker
    } else {
        FrameKind::Runtime
    }
}

/// What a thread's stack says it is doing, as far as tokio is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Role {
    /// A multi-thread runtime's worker.
    pub worker: bool,
    /// A worker inside a task's poll, not parked: the index of the frame of
    /// tokio's task harness for that task (the innermost).
    pub polling: Option<usize>,
    /// Inside tokio's current-thread scheduler (driving a runtime).
    pub current_thread: bool,
    /// In tokio's park code (a worker or driver with nothing to do).
    pub parked: bool,
}

/// What the thread whose walk is `frames` is doing, from the names of its
/// functions. The names of the functions that were not inlined (the symbol
/// table, cheap) are looked at first; the inlined ones (debug info, read
/// when first needed) only when those do not show the thread inside a
/// scheduler: the frames of a scheduler whose code was all inlined into a
/// generic standard library function show only there. A worker is always
/// told by the first look: tokio polls a task through a function pointer,
/// so the task harness (`tokio::runtime::task::raw::poll`) is never inlined.
/// `None` when the executable has no names.
pub fn role(symbolizer: &mut super::Symbolizer, frames: &[usize]) -> Option<Role> {
    let outer = role_of(&symbolizer.outer_functions(frames)?);
    if outer.worker || outer.current_thread {
        return Some(outer);
    }
    Some(role_of(&symbolizer.functions(frames)?))
}

/// The role told by these functions (innermost first, each with its frame).
fn role_of(functions: &[(usize, String)]) -> Role {
    let kinds: Vec<(usize, FrameKind)> = functions
        .iter()
        .map(|(i, name)| (*i, kind_of_name(name)))
        .collect();
    // The worker's run loop; everything inside it is what the worker does
    // (outside it, the blocking-pool task that runs the worker itself).
    let run = kinds.iter().position(|&(_, k)| k == FrameKind::Worker);
    let polling = run.and_then(|run| {
        let inside = &kinds[..run];
        if inside.iter().any(|&(_, k)| k == FrameKind::Park) {
            return None;
        }
        inside
            .iter()
            .find(|&&(_, k)| k == FrameKind::TaskPoll)
            .map(|&(i, _)| i)
    });
    Role {
        worker: run.is_some(),
        polling,
        current_thread: kinds
            .iter()
            .any(|&(_, k)| k == FrameKind::CurrentThreadScheduler),
        parked: kinds.iter().any(|&(_, k)| k == FrameKind::Park),
    }
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
                FrameKind::Worker,
            ),
            ("tokio::runtime::blocking::pool::Inner::run", FrameKind::Runtime),
            ("tokio::sync::mpsc::chan::Rx<T,S>::recv", FrameKind::Other),
            ("my_app::handler::{{closure}}", FrameKind::Other),
            ("std::thread::sleep", FrameKind::Other),
        ];
        for (name, kind) in cases {
            assert_eq!(kind_of_name(name), kind, "{name}");
        }
    }

    /// The stack of a thread in `std::thread::sleep`, taken from outside:
    /// inside a task on a current-thread runtime, or on a plain thread.
    fn stack_of_a_thread_sleeping(in_task: bool) -> Vec<usize> {
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let sleep = move || {
                tx.send(crate::os::thread::current_tid()).unwrap();
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
        let sample = crate::sample(tid, false).expect("a sleeping thread is read from outside");
        sleeper.join().unwrap();
        assert!(sample.complete, "the walk reaches the thread's start");
        sample.frames
    }

    /// The stacks of a multi-thread runtime's two workers, one in a task
    /// that sleeps and one parked, and of a blocking-pool thread that
    /// sleeps in `spawn_blocking`, read from outside.
    #[test]
    fn roles_tell_a_polling_worker_from_a_parked_one_and_a_blocking_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (tx2, tx3) = (tx.clone(), tx.clone());
        rt.spawn(async move {
            tx.send(("polling", crate::os::thread::current_tid()))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(400));
        });
        rt.spawn_blocking(move || {
            tx2.send(("blocking", crate::os::thread::current_tid()))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(400));
        });
        drop(tx3);
        let mut tids = std::collections::HashMap::new();
        for _ in 0..2 {
            let (what, tid) = rx.recv().unwrap();
            tids.insert(what, tid);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut symbolizer = crate::Symbolizer::default();
        let mut role_of = |tid: i64| {
            let sample = crate::sample(tid, false).unwrap();
            assert!(sample.complete);
            role(&mut symbolizer, &sample.frames).unwrap()
        };
        let polling = role_of(tids["polling"]);
        assert!(polling.worker && polling.polling.is_some(), "{polling:?}");
        let blocking = role_of(tids["blocking"]);
        assert!(
            !blocking.worker && blocking.polling.is_none(),
            "{blocking:?}"
        );
        // The other worker, parked: every runtime thread but those two.
        let parked: Vec<Role> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
            .filter(|t| !tids.values().any(|x| x == t))
            .filter_map(|t| crate::sample(t, false).ok())
            .filter_map(|s| role(&mut crate::Symbolizer::default(), &s.frames))
            .filter(|r| r.worker)
            .collect();
        assert!(!parked.is_empty(), "the parked worker is found");
        assert!(parked.iter().all(|r| r.polling.is_none()), "{parked:?}");
        drop(rt);
    }

    #[test]
    fn a_stack_inside_a_task_poll_is_trimmed_at_tokio() {
        let frames = stack_of_a_thread_sleeping(true);
        let mut symbolizer = crate::Symbolizer::default();
        let text = symbolizer
            .symbolize_frames(&frames, &[], false)
            .unwrap()
            .text;
        assert!(text.contains("std::thread::functions::sleep"), "{text}");
        assert!(!text.contains("tokio::"), "tokio's frames are cut:\n{text}");
        let full = symbolizer
            .symbolize_frames(&frames, &[], true)
            .unwrap()
            .text;
        assert!(full.contains("tokio::runtime::task::"), "{full}");
    }

    #[test]
    fn a_current_thread_block_on_is_inside_the_scheduler() {
        let mut symbolizer = crate::Symbolizer::default();
        let inside = role(&mut symbolizer, &stack_of_a_thread_sleeping(true)).unwrap();
        assert!(inside.current_thread, "{inside:?}");
        let outside = role(&mut symbolizer, &stack_of_a_thread_sleeping(false)).unwrap();
        assert!(!outside.current_thread, "{outside:?}");
    }
}
