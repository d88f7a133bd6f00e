//! Instrumented futures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::board::names::{self, NameEntry};
use crate::board::settings::SETTINGS;
use crate::instrument::poll::{account_task_poll, instrument_poll};

/// A future whose polls are recorded in the poll slot of the thread that runs
/// them, so that the watchdog knows exactly which task a worker is stuck in
/// and never mistakes a worker that completes slow polls for a stalled one.
///
/// Made by [`WatchExt::watched`]. It behaves exactly like the future it wraps.
#[pin_project::pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct Watched<F> {
    #[pin]
    inner: F,
    name: &'static NameEntry,
}

impl<F> Watched<F> {
    /// The name this future was given.
    pub fn name(&self) -> &'static str {
        self.name.name
    }

    /// Returns the wrapped future.
    pub fn into_inner(self) -> F {
        self.inner
    }
}

impl<F> std::fmt::Debug for Watched<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("name", &self.name.name)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let name = *this.name;
        let polled = instrument_poll(name, None, SETTINGS.blocking_ns(), || this.inner.poll(cx));
        account_task_poll(name, &polled);
        polled.out
    }
}

/// Instruments any future without spawning it.
///
/// ```
/// use loopwatch::WatchExt as _;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let answer = async { 6 * 7 }.watched("compute").await;
/// assert_eq!(answer, 42);
/// # }
/// ```
pub trait WatchExt: Future + Sized {
    /// Wraps the future so that its polls are watched under `name`.
    ///
    /// The name is interned once, here; polling allocates nothing.
    fn watched(self, name: &'static str) -> Watched<Self> {
        Watched {
            inner: self,
            name: names::intern(name),
        }
    }
}

impl<F: Future> WatchExt for F {}
