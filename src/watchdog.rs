//! The watchdog thread's side: everything that runs on `loopwatch-watchdog`,
//! outside every watched runtime, and the handle the application keeps. It
//! reads what the application threads write in [`crate::board`], and the
//! threads themselves through `loopwatch-stack`.
//!
//! Its rooms, by concern; [`check`] orders them once per check interval:
//!
//! - [`api`]: [`WatchdogBuilder`] (the settings and their checks) and
//!   [`Watchdog`] (the handle, and the state it shares with the thread);
//! - [`detection`]: the watched runtimes, their heartbeat, stall detection
//!   for each ([`detect`], a pure decision over what tokio publishes and the
//!   poll slots), the stall state machine ([`stall`]), and what stuck
//!   threads do with their time and pauses of the process ([`cause`]);
//! - [`evidence`]: finding the stuck thread ([`threads`], decisions over a
//!   `ThreadSource`), its state, stack and spans for a report
//!   ([`evidence::EvidenceCollector`]), and hung tasks' await traces
//!   ([`traces`]);
//! - [`figures`]: task, call and process figures read on their own schedule
//!   ([`activity`], [`process`]);
//! - [`sinks`]: where what was found goes: the log, the metrics facade and
//!   the callback ([`report`], [`publish`], [`callback`]), the last stalls
//!   ([`recent`]), the health snapshot ([`snapshot`]), the histograms
//!   ([`histograms`]), systemd ([`systemd`]) and `abort_after` ([`abort`]).
//!
//! The cgroup readers are `loopwatch_stack::os::cgroup`. The exporter reads
//! what it needs through [`export`] and the public API only.

pub(crate) mod api;
mod check;
pub(crate) mod detection;
pub(crate) mod evidence;
pub(crate) mod figures;
pub(crate) mod sinks;

// Every module by its own name, for the rooms to use one another.
use api::{builder, handle};
use detection::{cause, detect, heartbeat, runtimes, stall};
use evidence::{threads, traces};
use figures::{activity, process};
use loopwatch_stack::os::cgroup;
#[cfg(unix)]
use sinks::systemd;
use sinks::{abort, callback, histograms, publish, recent, report, snapshot};

pub use builder::WatchdogBuilder;
pub use cause::{CpuAccount, StallCause, Throttling};
pub use handle::Watchdog;
pub use report::StallReport;

/// What the exporter reads of the watchdog beyond its public API, and
/// nothing else: the figures it renders itself (runtime samples, process
/// figures, the fixed histograms), the descriptions of the facade's series,
/// and the count of connections it drops.
#[cfg(feature = "exporter")]
pub(crate) mod export {
    pub(crate) use super::histograms::{snapshot as runtime_histograms, Fixed, RuntimeHistograms};
    pub(crate) use super::process::ProcessStats;
    pub(crate) use super::publish::{connection_dropped, describe_all};
    pub(crate) use super::runtimes::RuntimeSample;
}
