//! Where what the watchdog finds goes: reports to the log, the metrics and
//! the callback ([`report`], [`callback`], [`publish`]), the last stalls
//! ([`recent`]), the health snapshot ([`snapshot`]), the fixed histograms
//! ([`histograms`]), systemd ([`systemd`], Unix), and `abort_after`
//! ([`abort`]).

pub(crate) mod abort;
pub(crate) mod callback;
pub(crate) mod histograms;
pub(crate) mod publish;
pub(crate) mod recent;
pub(crate) mod report;
pub(crate) mod snapshot;
#[cfg(unix)]
pub(crate) mod systemd;
