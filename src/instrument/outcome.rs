//! How a piece of instrumented work ended, told by where it stood when it
//! was dropped. Shared by tasks, sync calls and async calls.
//!
//! No panic is caught: a poll or call that panics is dropped by the unwind
//! while it is still marked running, and that is how the panic is counted.
//! Tokio catches a task's panic inside the poll and drops the future after,
//! so the panic still reaches the `JoinHandle`.

/// Where a task or call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Progress {
    /// Not started, or between polls.
    #[default]
    Idle,
    /// Inside a poll or a call.
    Running,
    /// Finished; its outcome is counted.
    Done,
}

/// What dropping unfinished work means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Dropped while running: it panicked.
    Panicked,
    /// Dropped between polls (aborted, or its owner let go of it).
    Cancelled,
}

impl Progress {
    /// Runs one step (a poll, or a whole sync call) marked as running. If
    /// the step unwinds, the work stays marked running.
    #[inline]
    pub(crate) fn step<T>(&mut self, step: impl FnOnce() -> T) -> T {
        *self = Progress::Running;
        let out = step();
        *self = Progress::Idle;
        out
    }

    /// Marks the work finished.
    #[inline]
    pub(crate) fn finish(&mut self) {
        *self = Progress::Done;
    }

    /// What dropping the work now means; `None` when it finished.
    #[inline]
    pub(crate) fn dropped(self) -> Option<Ending> {
        match self {
            Progress::Done => None,
            Progress::Running => Some(Ending::Panicked),
            Progress::Idle => Some(Ending::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_unwinds_leaves_the_work_running() {
        let mut progress = Progress::default();
        assert_eq!(progress.dropped(), Some(Ending::Cancelled));
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            progress.step(|| panic!("inside the step"))
        }));
        assert!(unwound.is_err());
        assert_eq!(progress.dropped(), Some(Ending::Panicked));
        progress.step(|| ());
        assert_eq!(progress.dropped(), Some(Ending::Cancelled));
        progress.finish();
        assert_eq!(progress.dropped(), None);
    }
}
