//! The stuck thread and what it was doing: which thread it is
//! ([`threads`]), its state, stack, spans and CPU account for a report
//! ([`EvidenceCollector`]), and hung tasks' await traces ([`traces`]).

mod collector;
pub(crate) mod threads;

pub(crate) use collector::{DriverRead, EvidenceCollector};

#[cfg(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) mod traces;
/// Without tokio's task dumps: no await traces.
#[cfg(not(all(
    tokio_unstable,
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub(crate) mod traces {
    use std::sync::Arc;

    /// No hung task's id is kept for a trace.
    pub(crate) const MAX_TRACES: usize = 0;

    /// Takes no dump.
    #[derive(Debug, Default)]
    pub(crate) struct AwaitTraces {}

    impl AwaitTraces {
        pub(crate) fn collect(&mut self, _now: u64) {}

        pub(crate) fn tick(
            &mut self,
            _now: u64,
            _runtimes: &[Arc<crate::watchdog::runtimes::RuntimeEntry>],
            _hung: &[u64],
            _heartbeat_ns: u64,
            _every_ns: u64,
        ) {
        }
    }
}
