//! Figures read on their own schedule: task and call counts and the
//! hung-task scan ([`activity`]), and the process's resources
//! ([`process`]).

pub(crate) mod activity;
pub(crate) mod process;
