//! The live-task dump: every task spawned through loopwatch that is alive,
//! with where it waits ([`Watchdog::tasks`](crate::Watchdog::tasks),
//! [`Watchdog::task_dump`](crate::Watchdog::task_dump), `GET /tasks`).
//!
//! Read from the tasks' live records (`board/live.rs`), which each
//! task's spawn and polls keep up to date, and, for their spans, from the
//! open spans of [`spans::layer()`](crate::spans::layer) (feature `spans`).
//! Nothing is asked of the runtime, so a dump is taken while every worker
//! is blocked.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use serde::Serialize;

use crate::board::live::{self, LiveTask};
use crate::clock::now_ns;

/// Where a live task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// In a poll on a thread now ([`TaskInfo::state_seconds`]: since the
    /// poll began; a long one is a stall, reported as such).
    Running,
    /// Waiting to be woken ([`TaskInfo::state_seconds`]: since its last
    /// poll ended, or since it was spawned if it was never polled).
    Idle,
    /// Idle for the hung-task threshold or longer.
    Hung,
}

impl TaskState {
    /// The state as it appears in JSON: `"running"`, `"idle"` or `"hung"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Idle => "idle",
            TaskState::Hung => "hung",
        }
    }
}

/// One live task spawned through loopwatch ([`spawn`](crate::spawn),
/// [`spawn_named`](crate::spawn_named), [`spawn_fallible`](crate::spawn_fallible)).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TaskInfo {
    /// Tokio's id of the task ([`tokio::task::Id`], as it prints), known
    /// from its first poll; `None` before.
    pub id: Option<u64>,
    /// The task's name (its spawn site for [`spawn`](crate::spawn)).
    pub name: String,
    /// Where it was spawned: `file:line`.
    pub spawned_at: String,
    /// How long ago it was spawned.
    pub age_seconds: f64,
    /// Running, idle or hung.
    pub state: TaskState,
    /// How long it has been in that state: in its current poll when
    /// running, since its last poll when idle or hung.
    pub state_seconds: f64,
    /// Polls it has had.
    pub polls: u64,
    /// Its `tracing` spans, outermost first (with
    /// [`spans::layer()`](crate::spans::layer)): the span it is
    /// instrumented with (the first span its last poll entered, e.g. an
    /// `#[instrument]`ed `async fn` or `.instrument(span)`) with that
    /// span's open parents before it and, after it, its open descendants
    /// down the deepest chain: where the task waits, e.g.
    /// `process_job{id=42} > fetch_upstream{host=…} > acquire_permit`.
    /// A task whose last poll entered no span has the span it was spawned
    /// in, with its parents, while that span is open. Empty otherwise.
    pub spans: Vec<String>,
    /// The other chains of open descendants of the task's span, each from
    /// the outermost span like [`spans`](TaskInfo::spans), deepest first
    /// (a task that waits in several places at once, as under `join!`; at
    /// most 7).
    pub other_spans: Vec<Vec<String>>,
    /// Where the task awaits, as tokio's task dump (`Handle::dump()`) traced
    /// it: for the 64 longest hung tasks, in a build with
    /// `--cfg tokio_unstable` and loopwatch's `taskdump` feature on Linux;
    /// `None` otherwise. A dump is asked of a multi-thread runtime only,
    /// while its heartbeat shows it responsive, when a hung task has no
    /// trace yet, at most once per hung-task threshold (10 s at least);
    /// the watchdog never waits for it (given up after 2 s). Tokio pauses
    /// the runtime's workers and polls each idle task once to trace it (and
    /// wakes it once after): those polls count in `polls` but do not end
    /// its idle time.
    pub await_trace: Option<String>,
}

/// Live tasks at one moment: exact counts, and the longest idle ones.
/// Made by [`Watchdog::task_dump`](crate::Watchdog::task_dump); served at
/// `GET /tasks`. Its `Display` is the text dump of `GET /tasks?format=text`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[non_exhaustive]
pub struct TaskDump {
    /// Live tasks spawned through loopwatch.
    pub total: u64,
    /// Of which in a poll now.
    pub running: u64,
    /// Of which idle, not hung.
    pub idle: u64,
    /// Of which hung.
    pub hung: u64,
    /// The hung-task threshold the states were judged by, in seconds.
    pub hung_threshold_seconds: f64,
    /// The tasks listed: idle ones first, the longest idle first, then the
    /// running ones, the longest running first; at most the number asked.
    pub tasks: Vec<TaskInfo>,
}

/// The order tasks are listed in: idle (hung included) before running,
/// longer before shorter.
fn order_key(task: &LiveTask, now: u64) -> (bool, u64) {
    (!task.running, now.saturating_sub(task.since))
}

/// Reads the live tasks: the counts of all, and the first `max` in listing
/// order, described.
pub(crate) fn dump(hung_ns: u64, max: usize) -> TaskDump {
    let now = now_ns();
    let mut out = TaskDump {
        hung_threshold_seconds: hung_ns as f64 / 1e9,
        ..TaskDump::default()
    };
    let mut firsts = Firsts::new(max, now);
    live::for_each_live(|task| {
        out.total += 1;
        match state(task, now, hung_ns) {
            TaskState::Running => out.running += 1,
            TaskState::Idle => out.idle += 1,
            TaskState::Hung => out.hung += 1,
        }
        firsts.offer(task);
    });
    out.tasks = describe(&firsts.into_sorted(), now, hung_ns);
    out
}

/// The first `max` tasks in listing order among those offered, in memory
/// for `max` only: a heap whose top is the last of them.
struct Firsts {
    max: usize,
    now: u64,
    seq: usize,
    heap: BinaryHeap<Reverse<Ranked>>,
}

impl Firsts {
    fn new(max: usize, now: u64) -> Firsts {
        Firsts {
            max,
            now,
            seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    fn offer(&mut self, task: &LiveTask) {
        if self.max == 0 {
            return;
        }
        self.seq += 1;
        let ranked = Ranked {
            key: order_key(task, self.now),
            seq: self.seq,
            task: *task,
        };
        if self.heap.len() < self.max {
            self.heap.push(Reverse(ranked));
        } else if self
            .heap
            .peek()
            .is_some_and(|Reverse(last)| ranked.key > last.key)
        {
            self.heap.pop();
            self.heap.push(Reverse(ranked));
        }
    }

    fn into_sorted(self) -> Vec<LiveTask> {
        let now = self.now;
        let mut tasks: Vec<LiveTask> = self.heap.into_iter().map(|Reverse(r)| r.task).collect();
        tasks.sort_by_key(|t| Reverse(order_key(t, now)));
        tasks
    }
}

/// A task with its place in the listing order (`seq` breaks ties).
struct Ranked {
    key: (bool, u64),
    seq: usize,
    task: LiveTask,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key, self.seq).cmp(&(other.key, other.seq))
    }
}

/// Every live task, described, in listing order.
pub(crate) fn all(hung_ns: u64) -> Vec<TaskInfo> {
    let now = now_ns();
    let mut tasks = Vec::new();
    live::for_each_live(|t| tasks.push(*t));
    tasks.sort_by_key(|t| Reverse(order_key(t, now)));
    describe(&tasks, now, hung_ns)
}

fn state(task: &LiveTask, now: u64, hung_ns: u64) -> TaskState {
    if task.running {
        TaskState::Running
    } else if task.idle_ns(now) >= hung_ns {
        TaskState::Hung
    } else {
        TaskState::Idle
    }
}

/// The tasks as [`TaskInfo`]s; the open spans are read once for them all.
pub(crate) fn describe(tasks: &[LiveTask], now: u64, hung_ns: u64) -> Vec<TaskInfo> {
    let spans = Spans::read_for(tasks);
    tasks
        .iter()
        .map(|t| {
            let (spans, other_spans) = spans.of(t);
            TaskInfo {
                id: t.id,
                name: t.entry.name.to_owned(),
                spawned_at: t
                    .site
                    .map_or_else(|| "?".to_owned(), |s| format!("{}:{}", s.file(), s.line())),
                age_seconds: now.saturating_sub(t.spawned) as f64 / 1e9,
                state: state(t, now, hung_ns),
                state_seconds: now.saturating_sub(t.since) as f64 / 1e9,
                polls: t.polls,
                spans,
                other_spans,
                await_trace: t.id.and_then(crate::board::traces::trace_of),
            }
        })
        .collect()
}

/// The open spans, read when some task has one.
struct Spans {
    #[cfg(feature = "spans")]
    open: Option<crate::spans::OpenSpans>,
}

impl Spans {
    fn read_for(tasks: &[LiveTask]) -> Spans {
        #[cfg(feature = "spans")]
        {
            let any = tasks.iter().any(|t| t.poll_span != 0 || t.spawn_span != 0);
            Spans {
                open: any.then(crate::spans::OpenSpans::read),
            }
        }
        #[cfg(not(feature = "spans"))]
        {
            let _ = tasks;
            Spans {}
        }
    }

    /// The task's chain of spans, and its other chains.
    fn of(&self, task: &LiveTask) -> (Vec<String>, Vec<Vec<String>>) {
        #[cfg(feature = "spans")]
        if let Some(open) = &self.open {
            if open.is_open(task.poll_span) {
                let context = open.context(task.poll_span);
                let mut chains = open.below(task.poll_span).into_iter().map(|below| {
                    let mut chain = context.clone();
                    chain.extend(below);
                    chain
                });
                let first = chains.next().unwrap_or_else(|| context.clone());
                return (first, chains.collect());
            }
            if open.is_open(task.spawn_span) {
                return (open.context(task.spawn_span), Vec::new());
            }
        }
        let _ = task;
        (Vec::new(), Vec::new())
    }
}

impl fmt::Display for TaskDump {
    /// The text dump, one block per task:
    ///
    /// ```text
    /// task 17 "ingest" [hung, idle 75.2 s]
    ///     spawned at src/jobs.rs:42, 75.4 s ago, 3 polls
    ///     in process_job{id=42}
    ///      > fetch_upstream{host="a"}
    ///      > acquire_permit
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} live task(s): {} running, {} idle, {} hung (idle for {} s or more); {} listed, the longest idle first",
            self.total,
            self.running,
            self.idle,
            self.hung,
            self.hung_threshold_seconds,
            self.tasks.len()
        )?;
        for task in &self.tasks {
            writeln!(f)?;
            write!(f, "{task}")?;
        }
        Ok(())
    }
}

impl fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id.map_or_else(|| "?".to_owned(), |id| id.to_string());
        let how = match self.state {
            TaskState::Running => format!("running, in a poll for {:.1} s", self.state_seconds),
            TaskState::Idle => format!("idle {:.1} s", self.state_seconds),
            TaskState::Hung => format!("hung, idle {:.1} s", self.state_seconds),
        };
        writeln!(f, "task {id} {:?} [{how}]", self.name)?;
        writeln!(
            f,
            "    spawned at {}, {:.1} s ago, {} poll(s)",
            self.spawned_at, self.age_seconds, self.polls
        )?;
        for (i, span) in self.spans.iter().enumerate() {
            if i == 0 {
                writeln!(f, "    in {span}")?;
            } else {
                writeln!(f, "     > {span}")?;
            }
        }
        for chain in &self.other_spans {
            writeln!(f, "    and {}", chain.join(" > "))?;
        }
        if let Some(trace) = &self.await_trace {
            writeln!(f, "    await trace (tokio's task dump):")?;
            for line in trace.lines() {
                writeln!(f, "        {line}")?;
            }
        }
        Ok(())
    }
}

/// What a scan for hung tasks found.
#[derive(Debug, Default)]
pub(crate) struct HungScan {
    /// Hung tasks per name.
    pub(crate) by_name: std::collections::HashMap<&'static str, u64>,
    /// The longest idle hung tasks, described, longest first.
    pub(crate) oldest: Vec<TaskInfo>,
    /// Tasks that became hung since the last scan, described (the first
    /// `keep_new` found), and how many became hung in all.
    pub(crate) newly: Vec<TaskInfo>,
    pub(crate) newly_total: u64,
    /// Tokio's ids of the longest hung tasks (at most `keep_ids`), longest first.
    pub(crate) ids: Vec<u64>,
}

/// Finds the live tasks idle for `hung_ns` or longer (reads every live
/// record): counts per name, the `keep_oldest` longest idle, and those that
/// were not hung yet at the scan at `last_scan` (0: none before), at most
/// `keep_new` of them described.
pub(crate) fn scan_hung(
    now: u64,
    hung_ns: u64,
    last_scan: u64,
    keep_oldest: usize,
    keep_new: usize,
    keep_ids: usize,
) -> HungScan {
    let mut scan = HungScan::default();
    let mut oldest = Firsts::new(keep_oldest, now);
    let mut with_ids = Firsts::new(keep_ids, now);
    let mut newly = Vec::new();
    live::for_each_live(|task| {
        if state(task, now, hung_ns) != TaskState::Hung {
            return;
        }
        *scan.by_name.entry(task.entry.name).or_default() += 1;
        if last_scan == 0 || task.since.saturating_add(hung_ns) > last_scan {
            scan.newly_total += 1;
            if newly.len() < keep_new {
                newly.push(*task);
            }
        }
        oldest.offer(task);
        if task.id.is_some() {
            with_ids.offer(task);
        }
    });
    scan.oldest = describe(&oldest.into_sorted(), now, hung_ns);
    scan.ids = with_ids.into_sorted().iter().filter_map(|t| t.id).collect();
    scan.newly = describe(&newly, now, hung_ns);
    scan
}

/// A task as tests need one.
#[cfg(test)]
pub(crate) fn test_task(id: u64) -> TaskInfo {
    TaskInfo {
        id: Some(id),
        name: format!("task-{id}"),
        spawned_at: "src/x.rs:1".into(),
        age_seconds: 1.0,
        state: TaskState::Hung,
        state_seconds: 1.0,
        polls: 1,
        spans: Vec::new(),
        other_spans: Vec::new(),
        await_trace: None,
    }
}

/// A hung task as `Health` lists it (a public `From`, kept beside the task
/// dump so that the model room imports nothing from it).
impl From<TaskInfo> for crate::model::health::HungTask {
    fn from(task: TaskInfo) -> Self {
        crate::model::health::HungTask {
            task: task.name,
            idle_seconds: task.state_seconds,
            id: task.id,
            spawned_at: task.spawned_at,
            spans: task.spans,
        }
    }
}
