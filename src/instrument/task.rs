//! Instrumented spawns: every task's outcome, per name, and hung tasks.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

use crate::board::live::{self, LiveRecord};
use crate::board::names::{self, NameEntry};
use crate::board::settings::SETTINGS;
use crate::board::slot::counts_here;
use crate::clock::coarse_ns;
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
    tokio::spawn(Task::<F, NeverFails>::new(entry, future))
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
    tokio::spawn(Task::<F, NeverFails>::new(
        names::intern_cached(name),
        future,
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
    tokio::spawn(Task::<F, ErrFails>::new(names::intern_cached(name), future))
}

/// Tells a failed task from a completed one by its output (a type, so that
/// a task carries no function pointer).
pub(crate) trait Judge<T> {
    fn failed(output: &T) -> bool;
}

/// Every output is a completion.
pub(crate) struct NeverFails;

impl<T> Judge<T> for NeverFails {
    #[inline]
    fn failed(_: &T) -> bool {
        false
    }
}

/// An `Err` is a failure.
pub(crate) struct ErrFails;

impl<T, E> Judge<Result<T, E>> for ErrFails {
    #[inline]
    fn failed(output: &Result<T, E>) -> bool {
        output.is_err()
    }
}

/// The future of a task spawned through loopwatch: the user's future, a
/// pointer to the task's live record (which holds its name) and where it
/// stands; 16 bytes more than the future.
#[pin_project::pin_project(PinnedDrop)]
pub(crate) struct Task<F: Future, J: Judge<F::Output>> {
    #[pin]
    inner: F,
    record: &'static LiveRecord,
    progress: Progress,
    judge: PhantomData<fn() -> J>,
}

impl<F: Future, J: Judge<F::Output>> Task<F, J> {
    /// A task named `entry`, spawned at the caller's location.
    #[inline]
    #[track_caller]
    fn new(entry: &'static NameEntry, inner: F) -> Self {
        let counts = counts_here(entry);
        counts.add(|s| &s.spawned, 1);
        #[cfg(feature = "spans")]
        let span = crate::spans::current_span_bits();
        #[cfg(not(feature = "spans"))]
        let span = 0;
        Task {
            inner,
            record: live::register(entry, Location::caller(), coarse_ns(), span),
            progress: Progress::Idle,
            judge: PhantomData,
        }
    }

    #[inline]
    fn entry(&self) -> &'static NameEntry {
        self.record.entry().expect("a live task's record names it")
    }
}

impl<F: Future, J: Judge<F::Output>> Future for Task<F, J> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let entry = self.entry();
        let this = self.project();
        let (inner, record) = (this.inner, *this.record);
        let polled = this.progress.step(|| {
            instrument_poll(entry, Some(record), SETTINGS.blocking_ns(), || {
                inner.poll(cx)
            })
        });
        account_task_poll(entry, &polled);
        if let Poll::Ready(output) = &polled.out {
            this.progress.finish();
            if J::failed(output) {
                polled.counts.add(|s| &s.failed, 1);
            } else {
                polled.counts.add(|s| &s.completed, 1);
            }
        }
        polled.out
    }
}

#[pin_project::pinned_drop]
impl<F: Future, J: Judge<F::Output>> PinnedDrop for Task<F, J> {
    fn drop(self: Pin<&mut Self>) {
        let entry = self.entry();
        live::release(self.record);
        match self.progress.dropped() {
            None => {}
            Some(Ending::Panicked) => counts_here(entry).add(|s| &s.panicked, 1),
            Some(Ending::Cancelled) => counts_here(entry).add(|s| &s.cancelled, 1),
        }
    }
}
