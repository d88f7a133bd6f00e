//! `abort_after`: a stall that lasts that long ends the process, so that its
//! supervisor (systemd, Kubernetes, a container runtime) restarts it.
//!
//! The report goes straight to file descriptor 2, not only through `tracing`,
//! so that it reaches the journal or the pod's log with no subscriber
//! installed. It is written by a thread of its own: a stuck application
//! thread may hold the standard library's stderr lock, or stderr may be a
//! pipe nobody reads, and neither may keep the process from aborting. The
//! watchdog waits for that write at most [`WRITE_WAIT`], then aborts.

use std::sync::mpsc;
use std::time::Duration;

use crate::StallReport;

/// How long the report's write to stderr may take before the process
/// aborts without it.
pub(crate) const WRITE_WAIT: Duration = Duration::from_secs(2);

/// Writes `report` to stderr (and to the log), then aborts the process.
pub(crate) fn abort_with(report: &StallReport, abort_after: Duration) -> ! {
    let text = format!(
        "loopwatch: aborting the process: a stall lasted {:.1} s, at least abort_after ({:.1} s), so that its supervisor restarts it\nloopwatch: {report}{}\n",
        report.stalled_for.as_secs_f64(),
        abort_after.as_secs_f64(),
        report.stack_text(),
    );
    let (done, wait) = mpsc::channel::<()>();
    let writer = std::thread::Builder::new()
        .name("loopwatch-abort".into())
        .spawn(move || {
            write_stderr(text.as_bytes());
            tracing::error!(target: "loopwatch", "{}", text.trim_end());
            let _ = done.send(());
        });
    if writer.is_ok() {
        // Disconnected (the writer panicked) or timed out: abort all the same.
        let _ = wait.recv_timeout(WRITE_WAIT);
    }
    std::process::abort()
}

/// The whole of `bytes` to file descriptor 2, past the standard library's
/// lock (a stuck thread may hold it).
#[cfg(unix)]
fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid buffer of the given length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(n) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n.min(bytes.len())..],
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => return,
        }
    }
}

#[cfg(not(unix))]
fn write_stderr(bytes: &[u8]) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(bytes);
}
