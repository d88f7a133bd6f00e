//! The decisions of the search for a stuck thread, over scripted answers:
//! no thread is read, nothing sleeps. Each row says what the kernel and the
//! stack reader answer for each thread, at the first and the second look,
//! and which thread the search must give (or why none).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::board::slot::ThreadInfo;
use loopwatch_stack::Method;

/// First frames that say what the scripted role of a stack is.
const POLLING: usize = 0x100;
const PARKED: usize = 0x200;
const OTHER: usize = 0x300;
const PARTIAL: usize = 0x400;
const DRIVER: usize = 0x500;

/// A stack whose role is told by its first frame; `sp` moves the frames
/// from the harness outwards (a worker that moved on has another).
fn stack(kind: usize, sp: u64, complete: bool) -> Sample {
    Sample {
        frames: vec![kind, 0x1_000, 0x2_000],
        sps: vec![sp - 64, sp, sp + 64],
        tail_calls: Vec::new(),
        complete,
        stopped: None,
        method: Method::Proc,
    }
}

fn polling(sp: u64) -> Result<Sample, NoStack> {
    Ok(stack(POLLING, sp, true))
}

fn sampled(sp: u64) -> Result<Sample, NoStack> {
    let mut s = stack(POLLING, sp, true);
    s.method = Method::Perf;
    Ok(s)
}

/// What the kernel and the stack reader say, thread by thread. A list of
/// answers is given in order, its last one again and again.
#[derive(Default)]
struct Script {
    threads: Vec<ProcessThread>,
    main: i64,
    /// Reads from outside (`may_sample` false).
    read: HashMap<i64, VecDeque<Result<Sample, NoStack>>>,
    /// Kernel samples of threads on a CPU (`may_sample` true).
    perf: HashMap<i64, VecDeque<Result<Sample, NoStack>>>,
    switches: HashMap<i64, VecDeque<Option<u64>>>,
    on_cpu: HashMap<i64, bool>,
    /// Threads that completed a poll during the settle, and when.
    progressed: Vec<(i64, u64)>,
    /// No names in the executable.
    no_names: bool,
    settles: usize,
}

fn next<T: Clone>(list: Option<&mut VecDeque<T>>, none: T) -> T {
    match list {
        Some(l) if l.len() > 1 => l.pop_front().unwrap(),
        Some(l) => l.front().cloned().unwrap_or(none),
        None => none,
    }
}

impl Script {
    fn thread(mut self, tid: i64, name: &str) -> Self {
        self.threads.push(ProcessThread {
            tid,
            name: name.to_owned(),
        });
        self
    }

    fn reads(mut self, tid: i64, answers: Vec<Result<Sample, NoStack>>) -> Self {
        self.read.insert(tid, answers.into());
        self
    }

    fn samples(mut self, tid: i64, answers: Vec<Result<Sample, NoStack>>) -> Self {
        self.perf.insert(tid, answers.into());
        self
    }

    /// Voluntary switches at the first and the second look.
    fn switched(mut self, tid: i64, first: u64, second: u64) -> Self {
        self.switches
            .insert(tid, vec![Some(first), Some(second)].into());
        self
    }

    fn busy(mut self, tid: i64) -> Self {
        self.on_cpu.insert(tid, true);
        self
    }

    fn progressed(mut self, tid: i64, at: u64) -> Self {
        self.progressed.push((tid, at));
        self
    }
}

impl ThreadSource for Script {
    fn threads(&mut self) -> Vec<ProcessThread> {
        self.threads.clone()
    }

    fn main_thread(&self) -> i64 {
        self.main
    }

    fn sample(&mut self, tid: i64, may_sample: bool) -> Result<Sample, NoStack> {
        let list = if may_sample {
            self.perf.get_mut(&tid)
        } else {
            self.read.get_mut(&tid)
        };
        next(list, Err(NoStack::Gone))
    }

    fn role(&mut self, sample: &Sample) -> Option<Role> {
        if self.no_names {
            return None;
        }
        let role = Role::default();
        Some(match sample.frames[0] {
            POLLING => Role {
                worker: true,
                polling: Some(1),
                ..role
            },
            PARKED => Role {
                worker: true,
                parked: true,
                ..role
            },
            DRIVER => Role {
                current_thread: true,
                ..role
            },
            _ => role,
        })
    }

    fn voluntary_switches(&mut self, tid: i64) -> Option<u64> {
        next(self.switches.get_mut(&tid), Some(7))
    }

    fn on_cpu(&mut self, tid: i64) -> Option<bool> {
        Some(self.on_cpu.get(&tid).copied().unwrap_or(false))
    }

    fn settle(&mut self, wanted: &[(Id, &dyn Fn())]) -> Vec<(i64, u64)> {
        self.settles += 1;
        for (_, poke) in wanted {
            poke();
        }
        self.progressed.clone()
    }

    fn pause(&mut self, _d: Duration) {}
}

/// Two runtime ids (building a current-thread runtime starts no thread).
fn ids() -> (Id, Id) {
    let a = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let b = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (a.handle().id(), b.handle().id())
}

/// A slot of a thread known to be runtime `runtime`'s (its heartbeat or
/// hooks ran on it), idle, whose last poll ended at `completed`.
fn known(tid: i64, runtime: Id, completed: u64) -> SlotView {
    SlotView {
        id: tid as usize,
        poll_start: 0,
        last_completed: completed,
        task: None,
        park: 0,
        park_since: 0,
        is_worker: true,
        info: ThreadInfo {
            runtime: Some(runtime),
            name: Some(Arc::from("tokio-runtime-worker")),
            os_tid: tid,
        },
    }
}

/// Runs one search for one stall of `id`; the tid found, or why none.
fn search(script: &mut Script, slots: &[SlotView], id: Id) -> Result<i64, String> {
    let pokes = AtomicUsize::new(0);
    let poke = || {
        pokes.fetch_add(1, Ordering::Relaxed);
    };
    let wanted: [(Id, &dyn Fn()); 1] = [(id, &poke)];
    let mut found = find_stuck_workers(script, slots, &[], &wanted);
    assert_eq!(found.len(), 1);
    if script.settles > 0 {
        assert_eq!(pokes.load(Ordering::Relaxed), 1, "the heartbeat is woken");
    }
    found
        .pop()
        .unwrap()
        .map(|(tid, _, _)| tid)
        .map_err(|why| why.to_string())
}

#[test]
fn which_thread_is_the_stuck_worker() {
    let (a, b) = ids();
    struct Row {
        what: &'static str,
        script: Script,
        slots: Vec<SlotView>,
        expect: Result<i64, &'static str>,
    }
    // As `/proc` shows tokio's default name: 15 bytes.
    let worker = "tokio-runtime-w";
    let rows = vec![
        Row {
            what: "a known worker in the same poll twice, quiet, beside a parked one",
            script: Script::default()
                .reads(11, vec![polling(0x9000)])
                .reads(12, vec![Ok(stack(PARKED, 0x8000, true))]),
            slots: vec![known(11, a, 5), known(12, a, 5)],
            expect: Ok(11),
        },
        Row {
            what: "a known worker that completed a poll while it settled is not stuck",
            script: Script::default()
                .reads(11, vec![polling(0x9000)])
                .progressed(11, 6),
            slots: vec![known(11, a, 5)],
            expect: Err("could not be told"),
        },
        Row {
            what: "a worker whose stack moved between the reads is not stuck",
            script: Script::default().reads(11, vec![polling(0x9000), polling(0x7000)]),
            slots: vec![known(11, a, 5)],
            expect: Err("could not be told"),
        },
        Row {
            what: "quiet beats a worker that gave up its CPU in between",
            script: Script::default()
                .reads(11, vec![polling(0x9000)])
                .switched(11, 3, 9)
                .reads(12, vec![polling(0x8000)])
                .switched(12, 4, 4),
            slots: vec![known(11, a, 5), known(12, a, 5)],
            expect: Ok(12),
        },
        Row {
            what: "another runtime's known worker is never this runtime's",
            script: Script::default().reads(21, vec![polling(0x9000)]),
            slots: vec![known(21, b, 5)],
            expect: Err("could not be told"),
        },
        Row {
            what: "one unknown thread named as workers are, stuck, is taken",
            script: Script::default()
                .thread(31, worker)
                .reads(31, vec![polling(0x9000)]),
            slots: vec![],
            expect: Ok(31),
        },
        Row {
            what: "two unknown threads stuck alike: which is this runtime's cannot be told",
            script: Script::default()
                .thread(31, worker)
                .thread(32, worker)
                .reads(31, vec![polling(0x9000)])
                .reads(32, vec![polling(0x8000)]),
            slots: vec![],
            expect: Err("several threads are stuck"),
        },
        Row {
            what: "a known worker ranks before an unknown thread of the same rank",
            script: Script::default()
                .thread(31, worker)
                .reads(31, vec![polling(0x9000)])
                .reads(11, vec![polling(0x8000)]),
            slots: vec![known(11, a, 5)],
            expect: Ok(11),
        },
        Row {
            what: "a complete walk in a poll ranks before a walk that stopped early",
            script: Script::default()
                .reads(11, vec![Ok(stack(PARTIAL, 0x9000, false))])
                .reads(12, vec![polling(0x8000)]),
            slots: vec![known(11, a, 5), known(12, a, 5)],
            expect: Ok(12),
        },
        Row {
            what: "a walk that stopped early, the same twice, is still the stuck worker",
            script: Script::default().reads(11, vec![Ok(stack(PARTIAL, 0x9000, false))]),
            slots: vec![known(11, a, 5)],
            expect: Ok(11),
        },
        Row {
            what: "a partial walk of a thread that cannot be a worker is no candidate",
            script: Script::default()
                .thread(41, "db-pool")
                .reads(41, vec![Ok(stack(PARTIAL, 0x9000, false))]),
            slots: vec![],
            expect: Err("could not be told"),
        },
        Row {
            what: "a waiting thread ranks before one sampled on a CPU in the same poll",
            script: Script::default()
                .reads(11, vec![Err(NoStack::OnCpu)])
                .samples(11, vec![sampled(0x9000)])
                .reads(12, vec![polling(0x8000)]),
            slots: vec![known(11, a, 5), known(12, a, 5)],
            expect: Ok(12),
        },
        Row {
            what: "a known worker on a CPU, sampled in the same poll twice, is taken",
            script: Script::default()
                .reads(11, vec![Err(NoStack::OnCpu)])
                .samples(11, vec![sampled(0x9000)]),
            slots: vec![known(11, a, 5)],
            expect: Ok(11),
        },
        Row {
            what: "a known worker on a CPU that cannot be sampled, quiet, is taken last",
            script: Script::default()
                .reads(11, vec![Err(NoStack::OnCpu)])
                .samples(11, vec![Err(NoStack::PerfRefused(13))])
                .busy(11),
            slots: vec![known(11, a, 5)],
            expect: Ok(11),
        },
        Row {
            what: "no thread's registers can be read: that is the reason",
            script: Script::default()
                .thread(31, worker)
                .reads(31, vec![Err(NoStack::ProcUnreadable)]),
            slots: vec![],
            expect: Err("/proc/self/task cannot be read"),
        },
        Row {
            what: "an unsampled worker-named thread on a CPU is the reason when none is found",
            script: Script::default()
                .thread(31, worker)
                .reads(31, vec![Err(NoStack::OnCpu)])
                .samples(31, vec![Err(NoStack::PerfRefused(13))]),
            slots: vec![],
            expect: Err("perf_event_open"),
        },
        Row {
            what: "without names no stack can be told",
            script: Script {
                no_names: true,
                ..Script::default()
            }
            .reads(11, vec![polling(0x9000)]),
            slots: vec![known(11, a, 5)],
            expect: Err("no symbol table"),
        },
    ];
    for mut row in rows {
        let got = search(&mut row.script, &row.slots, a);
        match (&got, row.expect) {
            (Ok(tid), Ok(want)) => assert_eq!(*tid, want, "{}", row.what),
            (Err(why), Err(want)) => assert!(why.contains(want), "{}: {why}", row.what),
            _ => panic!("{}: got {got:?}, expected {:?}", row.what, row.expect),
        }
    }
}

#[test]
fn a_search_that_finds_no_candidate_waits_for_nothing() {
    let (a, _) = ids();
    let mut script = Script::default().reads(12, vec![Ok(stack(PARKED, 0x8000, true))]);
    let found = search(&mut script, &[known(12, a, 5)], a);
    assert!(found.is_err());
    assert_eq!(
        script.settles, 0,
        "no second look without a first candidate"
    );
}

#[test]
fn two_stalls_of_one_runtime_get_two_threads() {
    let (a, _) = ids();
    let mut script = Script::default()
        .reads(11, vec![polling(0x9000)])
        .reads(12, vec![polling(0x8000)]);
    let poke = || {};
    let wanted: [(Id, &dyn Fn()); 2] = [(a, &poke), (a, &poke)];
    let found = find_stuck_workers(
        &mut script,
        &[known(11, a, 5), known(12, a, 5)],
        &[],
        &wanted,
    );
    let mut tids: Vec<i64> = found.into_iter().map(|f| f.unwrap().0).collect();
    tids.sort();
    assert_eq!(tids, [11, 12]);
}

#[test]
fn which_thread_drives_a_current_thread_runtime() {
    let driver = || Ok(stack(DRIVER, 0x9000, true));
    let other = || Ok(stack(OTHER, 0x8000, true));
    type Rows = Vec<(&'static str, Script, Result<Option<i64>, &'static str>)>;
    let rows: Rows = vec![
        (
            "the main thread inside block_on",
            Script {
                main: 1,
                ..Script::default()
            }
            .reads(1, vec![driver()]),
            Ok(Some(1)),
        ),
        (
            "no thread inside the scheduler: not driven",
            Script {
                main: 1,
                ..Script::default()
            }
            .thread(2, "app")
            .reads(1, vec![other()])
            .reads(2, vec![other()]),
            Ok(None),
        ),
        (
            "a thread on a CPU is sampled when no waiting one drives it",
            Script {
                main: 1,
                ..Script::default()
            }
            .thread(2, "app")
            .reads(1, vec![other()])
            .reads(2, vec![Err(NoStack::OnCpu)])
            .samples(2, vec![driver()]),
            Ok(Some(2)),
        ),
        (
            "two drivers: which one drives this runtime cannot be told",
            Script {
                main: 1,
                ..Script::default()
            }
            .thread(2, "app")
            .reads(1, vec![driver()])
            .reads(2, vec![driver()]),
            Err("several threads drive"),
        ),
        (
            "a walk that stopped early cannot say it does not drive it",
            Script {
                main: 1,
                ..Script::default()
            }
            .reads(1, vec![Ok(stack(OTHER, 0x9000, false))]),
            Err("stopped before"),
        ),
        (
            "a thread on a CPU that cannot be sampled leaves it unknown",
            Script {
                main: 1,
                ..Script::default()
            }
            .reads(1, vec![Err(NoStack::OnCpu)])
            .samples(1, vec![Err(NoStack::OnCpu)]),
            Err("on a CPU"),
        ),
    ];
    for (what, mut script, expect) in rows {
        let got = find_current_thread_driver(&mut script, &[]).map_err(|why| why.to_string());
        match (&got, expect) {
            (Ok(tid), Ok(want)) => assert_eq!(*tid, want, "{what}"),
            (Err(why), Err(want)) => assert!(why.contains(want), "{what}: {why}"),
            _ => panic!("{what}: got {got:?}, expected {expect:?}"),
        }
    }
    // A thread known to drive another runtime is not looked at.
    let mut script = Script {
        main: 1,
        ..Script::default()
    }
    .reads(1, vec![driver()]);
    assert_eq!(find_current_thread_driver(&mut script, &[1]), Ok(None));
}
