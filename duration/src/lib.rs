//! The one parser of the durations loopwatch takes as text: a number and a
//! unit, one of `ns`, `us` (or `µs`), `ms`, `s`, `m` (`"150ms"`, `"1.5s"`).
//! loopwatch's attributes (at compile time) and its environment settings
//! both read durations with [`parse_ns`], each then applying its own limits.
//!
//! ```
//! assert_eq!(loopwatch_duration::parse_ns("1.5s"), Ok(1.5e9));
//! assert_eq!(
//!     loopwatch_duration::parse_ns("5 sec"),
//!     Err(loopwatch_duration::BadDuration::Unit)
//! );
//! ```

use std::fmt;

/// Why a text is not a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadDuration {
    /// The unit is missing or not one of `ns`, `us`, `µs`, `ms`, `s`, `m`.
    Unit,
    /// The number is not a plain decimal number.
    Number,
}

impl fmt::Display for BadDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadDuration::Unit => f.write_str(
                "write a number and a unit, one of ns, us, ms, s, m (for example \"150ms\")",
            ),
            BadDuration::Number => f.write_str("write a number and a unit (for example \"150ms\")"),
        }
    }
}

impl std::error::Error for BadDuration {}

/// The duration `text` says, in nanoseconds (surrounding spaces allowed;
/// never negative, never NaN; infinity for a number too large to be
/// finite). Limits (zero, too large) are left to the caller, which names
/// the setting they apply to.
pub fn parse_ns(text: &str) -> Result<f64, BadDuration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: f64 = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        _ => return Err(BadDuration::Unit),
    };
    let value: f64 = number.parse().map_err(|_| BadDuration::Number)?;
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_number_and_a_unit() {
        for (text, ns) in [
            ("5s", 5e9),
            (" 250ms ", 250e6),
            ("1.5s", 1.5e9),
            ("500us", 500e3),
            ("500µs", 500e3),
            ("7ns", 7.0),
            ("2m", 120e9),
            ("0s", 0.0),
            ("5 s", 5e9),
        ] {
            assert_eq!(parse_ns(text), Ok(ns), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in ["5", "5 sec", "5x", "1e3s", "", "fast", "-1s"] {
            assert_eq!(parse_ns(bad), Err(BadDuration::Unit), "{bad:?}");
        }
        for bad in ["s", "1..2s", ".s", "1.2.3ms"] {
            assert_eq!(parse_ns(bad), Err(BadDuration::Number), "{bad:?}");
        }
    }
}
