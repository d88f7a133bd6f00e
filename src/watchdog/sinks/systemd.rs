//! systemd's watchdog protocol: `WATCHDOG=1` while no watched runtime is
//! stalled, none while one is, so that `WatchdogSec=` restarts a stalled
//! service; `STATUS=` with the health status and first issue line.
//!
//! The protocol is one datagram per message to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). It is
//! written here in a few lines on `std` rather than with a crate: the
//! socket is non-blocking (a full socket buffer drops a ping, it never
//! blocks the watchdog thread), and send errors are logged once, which a
//! one-shot `sd_notify` call would leave to every caller.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::clock::nanos;
use crate::model::health::{Health, Status};

/// Longest `STATUS=` text sent (systemd shows one line).
const MAX_STATUS_LEN: usize = 400;

/// How often `STATUS=` may change while its text keeps changing (a stall's
/// line says how long it has lasted).
const STATUS_EVERY_NS: u64 = 1_000_000_000;

/// What the environment asks for, read once when the watchdog starts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Setup {
    /// `NOTIFY_SOCKET` or `WATCHDOG_USEC` is not set: nothing to do.
    Absent,
    /// `WATCHDOG_PID` names another process: its watchdog, not ours.
    OtherProcess(u32),
    /// The variables cannot be used; said once in the log.
    Invalid(String),
    /// Ping `socket` at least every `interval`.
    Notify { socket: String, interval: Duration },
}

impl Setup {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub(crate) fn from_env() -> Setup {
        let var = |name| std::env::var(name).ok();
        Setup::parse(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    fn parse(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>, me: u32) -> Setup {
        let (Some(socket), Some(usec)) = (socket, usec) else {
            return Setup::Absent;
        };
        if let Some(pid) = pid {
            match pid.trim().parse::<u32>() {
                Ok(pid) if pid == me => {}
                Ok(pid) => return Setup::OtherProcess(pid),
                Err(_) => {
                    return Setup::Invalid(format!("WATCHDOG_PID={pid:?} is not a process id"))
                }
            }
        }
        let usec = match usec.trim().parse::<u64>() {
            Ok(usec) if usec > 0 => usec,
            _ => {
                return Setup::Invalid(format!(
                    "WATCHDOG_USEC={usec:?} is not a positive number of microseconds"
                ))
            }
        };
        if !(socket.starts_with('/') || socket.starts_with('@')) || socket.len() < 2 {
            return Setup::Invalid(format!(
                "NOTIFY_SOCKET={socket:?} is neither a socket path nor an abstract name (@name)"
            ));
        }
        Setup::Notify {
            socket: socket.to_owned(),
            // Half of systemd's timeout, as sd_watchdog_enabled(3) advises;
            // pings go out at the first check past a quarter of it, so the
            // gap stays under half while checks are shorter than a quarter.
            interval: Duration::from_micros(usec) / 2,
        }
    }
}

/// Sends systemd its pings and status lines, from the watchdog thread.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// Pings go out at the first check this long after the last one (ns).
    ping_every_ns: u64,
    last_ping: Option<u64>,
    /// The status line last sent, and when.
    last_status: Option<(Status, String)>,
    last_status_at: u64,
    /// Whether a send error was logged already.
    error_logged: bool,
}

impl Notifier {
    /// The notifier the environment asks for, if any; says in the log why
    /// there is none when the variables are set but cannot be used.
    pub(crate) fn from_env(check_interval: Duration) -> Option<Notifier> {
        match Setup::from_env() {
            Setup::Absent => {
                tracing::debug!(target: "loopwatch", "notify_systemd: NOTIFY_SOCKET or WATCHDOG_USEC is not set; not under systemd's watchdog");
                None
            }
            Setup::OtherProcess(pid) => {
                tracing::debug!(target: "loopwatch", "notify_systemd: WATCHDOG_PID is {pid}, not this process; not pinging");
                None
            }
            Setup::Invalid(why) => {
                tracing::warn!(target: "loopwatch", "notify_systemd: {why}; systemd will not be pinged");
                None
            }
            Setup::Notify { socket, interval } => match Notifier::connect(&socket, interval) {
                Ok(notifier) => {
                    if check_interval.saturating_mul(2) > interval {
                        tracing::warn!(
                            target: "loopwatch",
                            "notify_systemd: check_interval ({check_interval:?}) is too long for WatchdogSec ({:?}): pings may come late; use a check interval under a quarter of WatchdogSec",
                            interval * 2
                        );
                    }
                    Some(notifier)
                }
                Err(e) => {
                    tracing::warn!(target: "loopwatch", "notify_systemd: cannot use NOTIFY_SOCKET={socket:?}: {e}; systemd will not be pinged");
                    None
                }
            },
        }
    }

    fn connect(socket: &str, interval: Duration) -> std::io::Result<Notifier> {
        let address = match socket.strip_prefix('@') {
            Some(name) => abstract_address(name)?,
            None => SocketAddr::from_pathname(socket)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            address,
            ping_every_ns: nanos(interval / 2),
            last_ping: None,
            last_status: None,
            last_status_at: 0,
            error_logged: false,
        })
    }

    /// After each check: a ping when due and nothing is stalled, and the
    /// status line when it changed.
    pub(crate) fn update(&mut self, now: u64, stalled: bool, health: &Health) {
        let mut message = String::new();
        if !stalled
            && self
                .last_ping
                .is_none_or(|last| now.saturating_sub(last) >= self.ping_every_ns)
        {
            self.last_ping = Some(now);
            message.push_str("WATCHDOG=1\n");
        }
        let first = health.issues.first().map_or("", String::as_str);
        let changed = self
            .last_status
            .as_ref()
            .is_none_or(|(status, line)| *status != health.status || line != first);
        let status_changed = self
            .last_status
            .as_ref()
            .is_none_or(|(status, _)| *status != health.status);
        if changed && (status_changed || now.saturating_sub(self.last_status_at) >= STATUS_EVERY_NS)
        {
            message.push_str(&status_line(health.status, first));
            message.push('\n');
            self.last_status = Some((health.status, first.to_owned()));
            self.last_status_at = now;
        }
        if !message.is_empty() {
            self.send(&message);
        }
    }

    fn send(&mut self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            if !self.error_logged {
                self.error_logged = true;
                tracing::warn!(target: "loopwatch", "notify_systemd: cannot send to NOTIFY_SOCKET: {e}; will keep trying, without logging it again");
            }
        }
    }
}

/// `STATUS=` text: the status, and the first issue line if there is one.
fn status_line(status: Status, issue: &str) -> String {
    let mut line = format!("STATUS={}", status.as_str());
    if !issue.is_empty() {
        line.push_str(": ");
        line.extend(issue.chars().map(|c| if c.is_control() { ' ' } else { c }));
    }
    if line.len() > MAX_STATUS_LEN {
        let mut end = MAX_STATUS_LEN;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &str) -> std::io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &str) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_without_both_variables() {
        assert_eq!(Setup::parse(None, Some("100"), None, 1), Setup::Absent);
        assert_eq!(Setup::parse(Some("/run/x"), None, None, 1), Setup::Absent);
    }

    #[test]
    fn half_of_watchdog_usec_for_this_process_only() {
        assert_eq!(
            Setup::parse(Some("@sd"), Some("4000000"), Some("7"), 7),
            Setup::Notify {
                socket: "@sd".into(),
                interval: Duration::from_secs(2)
            }
        );
        assert_eq!(
            Setup::parse(Some("@sd"), Some("4000000"), Some("8"), 7),
            Setup::OtherProcess(8)
        );
    }

    #[test]
    fn bad_values_are_invalid_not_panics() {
        for (socket, usec, pid) in [
            ("/run/x", "0", None),
            ("/run/x", "-5", None),
            ("/run/x", "soon", None),
            ("relative", "100", None),
            ("@", "100", None),
            ("/run/x", "100", Some("me")),
        ] {
            assert!(
                matches!(
                    Setup::parse(Some(socket), Some(usec), pid, 1),
                    Setup::Invalid(_)
                ),
                "{socket} {usec} {pid:?}"
            );
        }
    }

    #[test]
    fn status_line_is_one_bounded_line() {
        assert_eq!(status_line(Status::Healthy, ""), "STATUS=healthy");
        assert_eq!(
            status_line(Status::Stalled, "runtime main: worker 0\nstalled"),
            "STATUS=stalled: runtime main: worker 0 stalled"
        );
        let long = "é".repeat(1000);
        let line = status_line(Status::Degraded, &long);
        assert!(line.len() <= MAX_STATUS_LEN && !line.contains('\n'));
    }
}
