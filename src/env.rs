//! Configuration from the environment: the `LOOPWATCH_*` variables read by
//! [`WatchdogBuilder::from_env`](crate::WatchdogBuilder::from_env),
//! [`ExporterBuilder::from_env`](crate::ExporterBuilder::from_env) and
//! `#[loopwatch::main]`.
//!
//! | variable | setting | accepted |
//! |---|---|---|
//! | `LOOPWATCH` | all of loopwatch | `off` (also `0`, `false`, `no`) turns it off; `on`, `1`, `true`, `yes` or unset leave it on |
//! | `LOOPWATCH_STALL_THRESHOLD` | [`stall_threshold`](crate::WatchdogBuilder::stall_threshold) | a duration |
//! | `LOOPWATCH_BLOCKING_THRESHOLD` | [`blocking_threshold`](crate::WatchdogBuilder::blocking_threshold) | a duration |
//! | `LOOPWATCH_SLOW_CALL_THRESHOLD` | [`slow_call_threshold`](crate::WatchdogBuilder::slow_call_threshold) | a duration |
//! | `LOOPWATCH_HUNG_TASK_THRESHOLD` | [`hung_task_threshold`](crate::WatchdogBuilder::hung_task_threshold) | a duration |
//! | `LOOPWATCH_CHECK_INTERVAL` | [`check_interval`](crate::WatchdogBuilder::check_interval) | a duration |
//! | `LOOPWATCH_ABORT_AFTER` | [`abort_after`](crate::WatchdogBuilder::abort_after) | a duration, or `off` |
//! | `LOOPWATCH_NOTIFY_SYSTEMD` | [`notify_systemd`](crate::WatchdogBuilder::notify_systemd) | a boolean |
//! | `LOOPWATCH_SAMPLE_STACKS` | [`sample_stacks`](crate::WatchdogBuilder::sample_stacks) | a boolean |
//! | `LOOPWATCH_ADDR` | the exporter's address ([`bind`](crate::ExporterBuilder::bind)); unset or empty: no exporter | `host:port`, e.g. `0.0.0.0:9377`, `[::1]:9377` |
//!
//! A duration is a number and a unit among `ns`, `us`, `ms`, `s`, `m`
//! (`"5s"`, `"250ms"`, `"1.5s"`), as `#[instrument_blocking]` takes them. A
//! boolean is `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off`, in any
//! case. An empty variable counts as unset. A bad value is
//! [`Error::InvalidEnv`], naming the variable, its
//! value and what is accepted.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Error;

/// What a duration variable accepts.
const DURATION: &str =
    "a duration: a number and a unit among ns, us, ms, s, m (for example \"5s\" or \"250ms\")";
/// What a boolean variable accepts.
const BOOLEAN: &str = "a boolean: 1, true, yes, on, or 0, false, no, off";

/// A variable's value, `None` when unset or empty (or not Unicode: an error).
pub(crate) fn var(name: &'static str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(Error::InvalidEnv {
            variable: name,
            value: v.to_string_lossy().into_owned(),
            expected: "text in UTF-8".to_owned(),
        }),
    }
}

fn invalid(variable: &'static str, value: &str, expected: &str) -> Error {
    Error::InvalidEnv {
        variable,
        value: value.to_owned(),
        expected: format!("expected {expected}"),
    }
}

/// Parses `"150ms"`, `"2s"`, `"1.5s"`, `"500us"`, `"250ns"`, `"1m"`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    // The one parser, shared with the attributes. Out of range values are
    // left to the builder's checks (zero, too large), which name the setting
    // and its limits.
    let ns = loopwatch_duration::parse_ns(text).ok()?;
    ns.is_finite()
        .then(|| Duration::from_nanos(ns.min(u64::MAX as f64) as u64))
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A duration variable.
pub(crate) fn duration(name: &'static str) -> Result<Option<Duration>, Error> {
    var(name)?
        .map(|v| parse_duration(&v).ok_or_else(|| invalid(name, &v, DURATION)))
        .transpose()
}

/// A duration variable that may also say `off`.
pub(crate) fn duration_or_off(name: &'static str) -> Result<Option<Option<Duration>>, Error> {
    var(name)?
        .map(|v| match v.to_ascii_lowercase().as_str() {
            "off" | "none" | "never" => Ok(None),
            _ => parse_duration(&v)
                .map(Some)
                .ok_or_else(|| invalid(name, &v, "a duration (for example \"60s\"), or off")),
        })
        .transpose()
}

/// A boolean variable.
pub(crate) fn boolean(name: &'static str) -> Result<Option<bool>, Error> {
    var(name)?
        .map(|v| parse_bool(&v).ok_or_else(|| invalid(name, &v, BOOLEAN)))
        .transpose()
}

/// Whether `LOOPWATCH` turns loopwatch off.
pub(crate) fn turned_off() -> Result<bool, Error> {
    Ok(boolean("LOOPWATCH")
        .map_err(|_| {
            let value = var("LOOPWATCH").ok().flatten().unwrap_or_default();
            invalid("LOOPWATCH", &value, "off to turn loopwatch off, or on")
        })?
        .is_some_and(|on| !on))
}

/// The exporter's address, from `LOOPWATCH_ADDR`.
#[cfg_attr(not(feature = "exporter"), allow(dead_code))]
pub(crate) fn addr() -> Result<Option<SocketAddr>, Error> {
    var("LOOPWATCH_ADDR")?
        .map(|v| {
            v.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "LOOPWATCH_ADDR",
                    &v,
                    "an IP address and a port, e.g. 0.0.0.0:9377, 127.0.0.1:9377 or [::]:9377",
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_the_attribute_takes_them() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 250ms "), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["5", "s", "5 sec", "-1s", "5x", "1e3s", "", "1..2s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn booleans_in_any_case() {
        for t in ["1", "true", "YES", "On"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "False", "no", "OFF"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
    }
}
