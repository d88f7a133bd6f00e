//! Helpers shared by the integration tests: those of the support crate.
#![allow(unused_imports)]

pub(crate) use loopwatch_test_support::harness::*;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) use loopwatch_test_support::seccomp::deny as deny_syscalls;
