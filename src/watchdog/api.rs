//! The watchdog's public API: [`WatchdogBuilder`](crate::WatchdogBuilder)
//! with its settings and their checks ([`builder`]), and
//! [`Watchdog`](crate::Watchdog), the handle, with the state it shares with
//! the watchdog thread ([`handle`]).

pub(crate) mod builder;
pub(crate) mod handle;
