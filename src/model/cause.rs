//! Why a worker is stuck: what its thread did with its time during the
//! stall ([`CpuAccount`]) and the verdict drawn from it ([`StallCause`]).
//! The watchdog's `cause.rs` takes the readings.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Why a worker is stuck, from what its thread did with its time during the
/// stall ([`StallReport::cpu`](crate::StallReport::cpu)): the largest of
/// its time waiting in the kernel, on a CPU, and runnable but waiting for a
/// CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StallCause {
    /// Waiting in the kernel most of the stall: a sleep, a lock, I/O, a
    /// child process. Look at the call the stack ends in.
    Blocked,
    /// On a CPU most of the stall: the code loops or computes, or a system
    /// call works on a CPU (a large read or copy). Look at the culprit.
    Busy,
    /// Runnable but waiting for a CPU most of the stall: held back by the
    /// cgroup's CPU limit, by other threads on the same CPUs, or by the host
    /// (steal). The code may be fine: look at the CPU limit and the load.
    Starved,
    /// Not known: the thread's times could not be read (not Linux, the
    /// thread not found, or too little of the stall seen).
    #[default]
    Unknown,
}

impl StallCause {
    /// The cause as it appears in JSON and in the metric's `cause` label:
    /// `"blocked"`, `"busy"`, `"starved"` or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StallCause::Blocked => "blocked",
            StallCause::Busy => "busy",
            StallCause::Starved => "starved",
            StallCause::Unknown => "unknown",
        }
    }

    /// Every cause, in the order above.
    pub const ALL: [StallCause; 4] = [
        StallCause::Blocked,
        StallCause::Busy,
        StallCause::Starved,
        StallCause::Unknown,
    ];
}

impl fmt::Display for StallCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU throttling of the process's cgroup by its CPU limit, over a span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[non_exhaustive]
pub struct Throttling {
    /// The cgroup's CPU limit in cores (quota / period), where one is set.
    pub cpu_limit_cores: Option<f64>,
    /// Enforcement periods (usually 100 ms) in the span.
    pub periods: u64,
    /// Periods in which the cgroup used up its quota and was held back.
    pub throttled_periods: u64,
    /// How long the cgroup's threads were held back in all.
    #[serde(rename = "throttled_seconds", serialize_with = "as_seconds")]
    pub throttled: Duration,
}

/// What the stuck thread did with its time during the stall so far
/// (Linux: `/proc/self/task/TID/schedstat`, the cgroup's `cpu.stat`,
/// `/proc/stat`).
///
/// `on_cpu + waiting_for_cpu + off_cpu = span`, and `span` is the stall so
/// far but for its start: the thread's first reading is taken at the first
/// check that sees it stuck (within a check interval or two of the stall's
/// start).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[non_exhaustive]
pub struct CpuAccount {
    /// The part of the stall the figures cover, up to the report.
    #[serde(rename = "span_seconds", serialize_with = "as_seconds")]
    pub span: Duration,
    /// Time running on a CPU, in user code or in the kernel.
    #[serde(rename = "on_cpu_seconds", serialize_with = "as_seconds")]
    pub on_cpu: Duration,
    /// Time runnable but waiting for a CPU (run-queue delay; throttling by
    /// the cgroup's CPU limit counts here).
    #[serde(rename = "waiting_for_cpu_seconds", serialize_with = "as_seconds")]
    pub waiting_for_cpu: Duration,
    /// Time off any CPU and not runnable: waiting in the kernel (a sleep,
    /// a lock, I/O). The rest of the span.
    #[serde(rename = "off_cpu_seconds", serialize_with = "as_seconds")]
    pub off_cpu: Duration,
    /// The cgroup's CPU throttling over the span, where the process is in a
    /// cgroup with the CPU controller.
    pub throttling: Option<Throttling>,
    /// The machine's steal time over the span, all CPUs together, where
    /// not zero: time the host ran something else on this VM's CPUs.
    #[serde(rename = "steal_seconds", serialize_with = "opt_seconds")]
    pub steal: Option<Duration>,
}

impl CpuAccount {
    /// The cause these figures show: the largest of `off_cpu` (blocked),
    /// `on_cpu` (busy) and `waiting_for_cpu` (starved); unknown for an
    /// empty span.
    pub fn cause(&self) -> StallCause {
        if self.span.is_zero() {
            return StallCause::Unknown;
        }
        let (on, wait, off) = (self.on_cpu, self.waiting_for_cpu, self.off_cpu);
        if wait >= on && wait >= off {
            StallCause::Starved
        } else if on >= off {
            StallCause::Busy
        } else {
            StallCause::Blocked
        }
    }
}

impl fmt::Display for CpuAccount {
    /// `on a CPU 0.3 s, waiting for one 2.9 s, waiting in the kernel 0.0 s
    /// of 3.2 s; the cgroup's CPU limit (0.10 cores) throttled 32 of 39
    /// periods, 2.8 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "on a CPU {:.1} s, waiting for one {:.1} s, waiting in the kernel {:.1} s of {:.1} s",
            self.on_cpu.as_secs_f64(),
            self.waiting_for_cpu.as_secs_f64(),
            self.off_cpu.as_secs_f64(),
            self.span.as_secs_f64()
        )?;
        if let Some(t) = &self.throttling {
            if t.throttled_periods > 0 {
                f.write_str("; the cgroup's CPU limit")?;
                if let Some(cores) = t.cpu_limit_cores {
                    write!(f, " ({cores:.2} cores)")?;
                }
                write!(
                    f,
                    " throttled {} of {} periods, {:.1} s",
                    t.throttled_periods,
                    t.periods,
                    t.throttled.as_secs_f64()
                )?;
            }
        }
        // Steal is the whole machine's: worth a word when it is a twentieth
        // of the span or more.
        if let Some(steal) = self.steal.filter(|s| *s * 20 >= self.span) {
            write!(
                f,
                "; the host stole {:.1} s of CPU time",
                steal.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

fn as_seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
