//! Instrumented spawns: every task's outcome, per name, and hung tasks.

use std::collections::HashMap;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::clock::now_ns;
use crate::instrument::names::{self, NameEntry};
use crate::instrument::outcome::{Ending, Progress};
use crate::instrument::poll::{account_task_poll, instrument_poll};

/// Spawns `future` on the current tokio runtime, like [`tokio::spawn`], as a
/// task named by the caller's `file:line`, whose polls and outcome loopwatch
/// records.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let answer = loopwatch::spawn(async { 6 * 7 }).await.unwrap();
/// assert_eq!(answer, 42);
/// # }
/// ```
///
/// # Panics
///
/// Outside a tokio runtime, as [`tokio::spawn`] does.
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let entry = names::of_location(Location::caller());
    tokio::spawn(Task::new(entry, future, never_failed::<F::Output>))
}

/// Spawns `future` as a task named `name` (see [`spawn`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = loopwatch::spawn_named("ingest", async { /* ... */ });
/// handle.await.unwrap();
/// # }
/// ```
///
/// # Panics
///
/// Outside a tokio runtime, as [`tokio::spawn`] does.
#[track_caller]
pub fn spawn_named<F>(name: &'static str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(Task::new(
        names::intern_cached(name),
        future,
        never_failed::<F::Output>,
    ))
}

/// Spawns a task named `name` whose output is a `Result`: an `Err` counts as
/// failed (`loopwatch_tasks_failed_total{reason="error"}`), an `Ok` as completed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = loopwatch::spawn_fallible("fetch", async { Err::<(), _>("timed out") });
/// assert_eq!(handle.await.unwrap(), Err("timed out"));
/// # }
/// ```
///
/// # Panics
///
/// Outside a tokio runtime, as [`tokio::spawn`] does.
#[track_caller]
pub fn spawn_fallible<F, T, E>(name: &'static str, future: F) -> JoinHandle<Result<T, E>>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::spawn(Task::new(
        names::intern_cached(name),
        future,
        Result::is_err,
    ))
}

fn never_failed<T>(_: &T) -> bool {
    false
}

/// The future of a task spawned through loopwatch.
#[pin_project::pin_project(PinnedDrop)]
pub(crate) struct Task<F: Future> {
    #[pin]
    inner: F,
    entry: &'static NameEntry,
    failed: fn(&F::Output) -> bool,
    progress: Progress,
    live: Registration,
}

impl<F: Future> Task<F> {
    fn new(entry: &'static NameEntry, inner: F, failed: fn(&F::Output) -> bool) -> Self {
        entry.tasks.spawned.fetch_add(1, Relaxed);
        Task {
            inner,
            entry,
            failed,
            progress: Progress::Idle,
            live: Registration::new(entry),
        }
    }
}

impl<F: Future> Future for Task<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let entry = *this.entry;
        let (inner, last_poll) = (this.inner, &this.live.record.last_poll);
        let polled = this
            .progress
            .step(|| instrument_poll(entry, Some(last_poll), || inner.poll(cx)));
        account_task_poll(entry, polled.took);
        let out = polled.out;
        match &out {
            Poll::Pending => {}
            Poll::Ready(output) => {
                this.progress.finish();
                let counter = if (this.failed)(output) {
                    &this.entry.tasks.failed
                } else {
                    &this.entry.tasks.completed
                };
                counter.fetch_add(1, Relaxed);
            }
        }
        out
    }
}

#[pin_project::pinned_drop]
impl<F: Future> PinnedDrop for Task<F> {
    fn drop(self: Pin<&mut Self>) {
        let tasks = &self.entry.tasks;
        match self.progress.dropped() {
            None => {}
            Some(Ending::Panicked) => {
                tasks.panicked.fetch_add(1, Relaxed);
            }
            Some(Ending::Cancelled) => {
                tasks.cancelled.fetch_add(1, Relaxed);
            }
        }
    }
}

/// What the watchdog knows of one live task.
#[derive(Debug)]
pub(crate) struct TaskRecord {
    pub(crate) entry: &'static NameEntry,
    /// Start of the task's last poll, or its spawn time before the first (ns).
    pub(crate) last_poll: AtomicU64,
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<u64, Arc<TaskRecord>>>;

/// Live tasks, sharded so that spawns on different threads rarely meet.
/// Taken at spawn and at the end of a task, never per poll.
static LIVE: LazyLock<[Shard; SHARDS]> =
    LazyLock::new(|| std::array::from_fn(|_| Mutex::new(HashMap::new())));

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A live task's entry in [`LIVE`]; removes it when dropped.
#[derive(Debug)]
struct Registration {
    id: u64,
    record: Arc<TaskRecord>,
}

impl Registration {
    fn new(entry: &'static NameEntry) -> Self {
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let record = Arc::new(TaskRecord {
            entry,
            last_poll: AtomicU64::new(now_ns()),
        });
        LIVE[shard(id)].lock().insert(id, record.clone());
        Registration { id, record }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut shard = LIVE[shard(self.id)].lock();
        shard.remove(&self.id);
        // Give memory back after a burst of tasks.
        if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
            let len = shard.len();
            shard.shrink_to(len * 2);
        }
    }
}

fn shard(id: u64) -> usize {
    (id % SHARDS as u64) as usize
}

/// Calls `visit` with every live task's record (watchdog thread). Each shard
/// is locked in turn, briefly.
pub(crate) fn for_each_live(mut visit: impl FnMut(&TaskRecord)) {
    for shard in LIVE.iter() {
        for record in shard.lock().values() {
            visit(record);
        }
    }
}
