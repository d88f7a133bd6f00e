//! What a stall report says ([`StallReport`]); the watchdog's `report.rs`
//! sends reports where they go.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::cause::{CpuAccount, StallCause};

/// What loopwatch knows about a stall, handed to the
/// [`on_stall`](crate::WatchdogBuilder::on_stall) callback when the stall is first
/// flagged and again at each escalation (2x, 4x, ... the stall threshold).
///
/// Its `Display` form is the one-line summary used in logs and in
/// [`Health::issues`](crate::Health::issues); the alternate form
/// (`{report:#}`) adds the stack, one frame a line, or why there is none. It serializes (serde) with
/// `stalled_for` as `stalled_for_seconds`, a number of seconds.
///
/// ```
/// # fn main() -> Result<(), loopwatch::Error> {
/// let watchdog = loopwatch::Watchdog::builder()
///     .on_stall(|report: &loopwatch::StallReport| {
///         let json = serde_json::to_string(report).unwrap_or_default();
///         eprintln!("stall: {report}\n{json}");
///     })
///     .start()?;
/// # watchdog.shutdown();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StallReport {
    /// The name the runtime was watched under.
    pub runtime: String,
    /// The stuck worker's index, when known.
    pub worker: Option<usize>,
    /// How long the worker has been stuck in one poll so far.
    #[serde(rename = "stalled_for_seconds", serialize_with = "as_seconds")]
    pub stalled_for: Duration,
    /// The task it is stuck in, when that task is instrumented
    /// ([`WatchExt::watched`](crate::WatchExt::watched)).
    pub task: Option<String>,
    /// The stuck thread's name, when known.
    pub thread: Option<String>,
    /// The stuck thread's stack, innermost first, one numbered function per
    /// line (inlined ones too, with `file:line` where debug info has it),
    /// cut at tokio's scheduler (Linux on x86_64, with
    /// [`sample_stacks`](crate::WatchdogBuilder::sample_stacks), when the
    /// stuck thread can be found: an instrumented task, a runtime built with
    /// [`install_runtime_hooks`](crate::install_runtime_hooks), a
    /// current-thread runtime, or a runtime known only by its handle, whose
    /// stuck worker is found among the process's threads). Every frame is
    /// one the thread is in; a partial stack
    /// ([`stack_complete`](Self::stack_complete) `Some(false)`) ends with a
    /// line saying where and why the walk stopped.
    pub backtrace: Option<String>,
    /// The first frame of application code in the stack, as
    /// `function (file:line)` where debug info has the place: the first
    /// frame that is not the standard library, tokio, loopwatch, other
    /// runtime plumbing (parking_lot, lock_api, futures, tracing), a registry
    /// or git dependency, or a shared library such as libc, and has a name.
    /// A closure run for the function that defines it (with only plumbing in
    /// between, as `#[instrument_blocking]` does) is named as that function.
    /// Without debug info (`debug = false`), inlined functions are not seen,
    /// and the culprit is the function the blocking code was inlined into.
    pub culprit: Option<String>,
    /// The `tracing` spans the stuck thread is in, outermost first, each as
    /// `name{field=value ...}`: with [`spans::layer()`](crate::spans::layer)
    /// in the subscriber, where the stuck thread is known (as for
    /// `backtrace`, or an instrumented task, a hooked runtime or a
    /// current-thread runtime without stacks). Empty otherwise, or outside
    /// any span.
    pub spans: Vec<String>,
    /// Why there is no stack, when stack sampling is on and none was taken:
    /// the real reason, for example `perf_event_open` refused (a thread on a
    /// CPU cannot be sampled), the thread stayed inside a long system call,
    /// the kernel refused to copy memory, `/proc` does not show the thread,
    /// or the stuck worker of a runtime known only by its handle could not
    /// be told apart.
    pub stack_missing: Option<String>,
    /// How [`backtrace`](Self::backtrace) was taken, when there is one:
    /// `"proc"`, the thread was waiting in the kernel and was read from
    /// outside (its registers from `/proc/self/task/TID/syscall`, its stack
    /// copied); `"perf"`, it was running its own code on a CPU and the
    /// kernel sampled it (`perf_event_open`). No thread is ever signalled.
    pub stack_method: Option<&'static str>,
    /// Whether [`backtrace`](Self::backtrace) goes down to the thread's
    /// first frame (`Some(true)`), or is partial (`Some(false)`): the walk
    /// stopped where it could not verify the next frame, and the text's
    /// last line says why. Every frame shown, partial or not, is one the
    /// thread is in, and the culprit is taken from them. `None` without a
    /// stack.
    pub stack_complete: Option<bool>,
    /// Set when loopwatch could not confirm that this is a stall, with the
    /// reason: for a current-thread runtime, whether its thread is still
    /// inside `block_on` (stuck) or has left it (nobody drives the runtime:
    /// idle, not stuck) could not be told, even from the stack read for
    /// this report. Reported rather than dropped, so that a real stall is
    /// never missed.
    pub unconfirmed: Option<String>,
    /// Whether the stuck thread was running on a CPU (a CPU hog) rather than
    /// waiting in the kernel (a blocking call, a lock, a sleep), when known.
    pub cpu_bound: Option<bool>,
    /// What the stuck thread did with its time during the stall so far: on
    /// a CPU, waiting for one, waiting in the kernel; the cgroup's CPU
    /// throttling and the machine's steal time over the same span (Linux,
    /// where the stuck thread is known).
    pub cpu: Option<CpuAccount>,
    /// Why the worker is stuck, from [`cpu`](Self::cpu): blocked in the
    /// kernel, busy on a CPU, or starved of one (see [`StallCause`]).
    pub cause: StallCause,
    /// At an escalation: whether the stack changed since the last report
    /// (`false`: stuck at the same place).
    pub stack_moved: Option<bool>,
    /// 0 for the first report of this stall, 1 at twice the threshold, 2 at
    /// four times, and so on.
    pub escalation: u32,
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runtime {}: ", self.runtime)?;
        match self.worker {
            Some(w) => write!(f, "worker {w}")?,
            None => f.write_str("a worker")?,
        }
        write!(f, " stalled for {:.1} s", self.stalled_for.as_secs_f64())?;
        if let Some(task) = &self.task {
            write!(f, " in task '{task}'")?;
        }
        if let Some(thread) = &self.thread {
            write!(f, " on thread '{thread}'")?;
        }
        if !self.spans.is_empty() {
            write!(f, " in span {}", self.spans.join(" > "))?;
        }
        match (&self.cpu, self.cpu_bound) {
            (Some(cpu), _) if self.cause != StallCause::Unknown => {
                write!(f, " ({}: {cpu})", self.cause)?
            }
            (_, Some(true)) => f.write_str(" (on CPU)")?,
            (_, Some(false)) => f.write_str(" (waiting, off CPU)")?,
            (_, None) => {}
        }
        if let Some(culprit) = &self.culprit {
            write!(f, " at {culprit}")?;
        }
        if let Some(why) = &self.unconfirmed {
            write!(f, " (unconfirmed: {why})")?;
        }
        // `{report:#}`: the stack too, or why there is none.
        if f.alternate() {
            f.write_str(&self.stack_text())?;
        }
        Ok(())
    }
}

impl StallReport {
    /// What follows the summary line in a first report: the stack, or why
    /// there is none (empty when stacks are off).
    pub(crate) fn stack_text(&self) -> String {
        match (&self.backtrace, &self.stack_missing) {
            (Some(b), _) => format!("\nstack of the stuck thread:\n{b}"),
            (None, Some(why)) => format!("; no stack: {why}"),
            (None, None) => String::new(),
        }
    }
}

fn as_seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
