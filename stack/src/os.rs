//! What the operating system says about this process and its threads, read
//! without touching them: the one place that reads `/proc`, cgroups and the
//! vDSO, for the stack reader above and for loopwatch.
//!
//! - [`thread`]: thread ids, and `/proc/self/task/TID` (`stat`, `status`,
//!   `syscall`, `schedstat`);
//! - [`memory`]: copies of this process's memory that cannot fault;
//! - [`process`]: the process's figures (memory, CPU time, descriptors,
//!   threads, start time);
//! - [`cgroup`]: the process's cgroup, its CPU limit and throttling, and
//!   the machine's steal time;
//! - [`vdso`]: the kernel's own `clock_gettime` (Linux on x86_64).
//!
//! Off Linux each reader answers `None`.

pub mod cgroup;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod memory;
pub mod process;
pub mod thread;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod vdso;
