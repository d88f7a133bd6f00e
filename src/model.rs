//! The public data types, in one room: what the watchdog and the task dump
//! produce and the application, the exporter and the callback read. Plain
//! data (serde, `Display`), with no behaviour that reaches into another
//! room.
//!
//! - `health`: [`Health`](crate::Health) and its parts, the snapshot of
//!   `/health`;
//! - `report`: [`StallReport`](crate::StallReport);
//! - `cause`: [`StallCause`](crate::StallCause),
//!   [`CpuAccount`](crate::CpuAccount), [`Throttling`](crate::Throttling).
//!
//! The task dump's types ([`TaskDump`](crate::TaskDump),
//! [`TaskInfo`](crate::TaskInfo)) live with the code that reads the live
//! records into them (`tasks.rs`).

pub(crate) mod cause;
pub(crate) mod health;
pub(crate) mod report;
