//! What loopwatch's tests, its evidence matrix and its measuring programs
//! share, in one crate instead of files included by path:
//!
//! - [`seccomp`]: a seccomp filter that refuses chosen system calls (Linux
//!   on x86_64), for hardened processes;
//! - [`flood`]: idle and slowloris connections, and timed scrapes, against
//!   an exporter;
//! - [`measure`]: resident memory, its peak, and a thread's CPU time;
//! - [`harness`]: what the integration tests share (one watchdog at a time,
//!   reports collected from the callback, runtimes, blocking, HTTP
//!   requests, child processes).

pub mod flood;
pub mod harness;
pub mod measure;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod seccomp;
