//! A missing permission never makes a wrong report (Linux on x86_64): each
//! test runs in a process of its own with the kernel refusing what a
//! hardened service refuses (a seccomp filter, a `/proc` that does not show
//! the process's threads), and checks that the stuck thread's report says the
//! real reason or still carries the right stack, and that the stuck call
//! returns what it returns unwatched. Plus the reason for a thread that stays
//! inside one long system call.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::time::Duration;

use common::{deny_syscalls, in_child_process, multi_thread, spin, start};
use loopwatch::{StallReport, WatchExt as _};

const STALL: Duration = Duration::from_secs(1);
const BLOCK: Duration = Duration::from_millis(2500);

/// Runs `block` in an instrumented task on a runtime of its own and returns
/// what it returned and the stall's first report.
fn stuck<T: Send + 'static>(
    name: &'static str,
    block: impl FnOnce() -> T + Send + 'static,
) -> (T, StallReport) {
    let (watchdog, reports) = start(STALL, Duration::from_millis(50));
    let rt = multi_thread(2);
    watchdog.watch_runtime(name, rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let task = rt.spawn(async move { block() }.watched(name));
    let first = reports.wait_first(name, BLOCK + Duration::from_secs(2));
    let out = rt.block_on(task).unwrap();
    watchdog.shutdown();
    let (_, report) = first.expect("the stall is reported");
    (out, report)
}

#[inline(never)]
fn hardened_sleep() -> &'static str {
    std::thread::sleep(BLOCK);
    std::hint::black_box("slept")
}

#[inline(never)]
fn hardened_spin() -> &'static str {
    spin(BLOCK);
    std::hint::black_box("spun")
}

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_thread_on_a_cpu_without_perf_event_open_has_no_stack_and_the_reason() {
    if !in_child_process("a_thread_on_a_cpu_without_perf_event_open_has_no_stack_and_the_reason") {
        return;
    }
    deny_syscalls(&[(libc::SYS_perf_event_open, libc::EACCES)]);
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();
    let (out, report) = stuck("no_perf", hardened_spin);
    // Said once, when the watchdog started.
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert_eq!(
        text.matches("threads stuck on a CPU will have no stack")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(out, "spun");
    assert!(report.backtrace.is_none(), "{report:?}");
    assert_eq!(report.culprit, None, "{report:?}");
    assert_eq!(report.cpu_bound, Some(true), "{report:?}");
    let why = report.stack_missing.clone().unwrap_or_default();
    assert!(
        why.contains("perf_event_open") && why.contains("refused"),
        "{why:?}"
    );
}

#[test]
fn a_waiting_thread_is_read_through_proc_self_mem_when_process_vm_readv_is_refused() {
    if !in_child_process(
        "a_waiting_thread_is_read_through_proc_self_mem_when_process_vm_readv_is_refused",
    ) {
        return;
    }
    deny_syscalls(&[(libc::SYS_process_vm_readv, libc::EPERM)]);
    let (out, report) = stuck("no_vm_readv", hardened_sleep);
    assert_eq!(out, "slept");
    assert_eq!(report.stack_method, Some("proc"), "{report:?}");
    assert_eq!(report.stack_complete, Some(true), "{report}");
    let culprit = report.culprit.clone().unwrap_or_default();
    assert!(culprit.starts_with("hardened::hardened_sleep"), "{report}");
}

#[test]
fn a_stack_the_kernel_refuses_to_copy_is_missing_with_the_reason() {
    if !in_child_process("a_stack_the_kernel_refuses_to_copy_is_missing_with_the_reason") {
        return;
    }
    deny_syscalls(&[
        (libc::SYS_process_vm_readv, libc::EPERM),
        (libc::SYS_pread64, libc::EPERM),
    ]);
    let (out, report) = stuck("no_memory", hardened_sleep);
    assert_eq!(out, "slept");
    assert!(report.backtrace.is_none(), "{report:?}");
    let why = report.stack_missing.clone().unwrap_or_default();
    assert!(why.contains("refused to copy"), "{why:?}");
}

#[test]
fn a_handle_only_runtime_blames_no_thread_when_stacks_cannot_be_copied() {
    if !in_child_process("a_handle_only_runtime_blames_no_thread_when_stacks_cannot_be_copied") {
        return;
    }
    deny_syscalls(&[
        (libc::SYS_process_vm_readv, libc::EPERM),
        (libc::SYS_pread64, libc::EPERM),
    ]);
    let (watchdog, reports) = start(STALL, Duration::from_millis(50));
    let rt = multi_thread(2);
    watchdog.watch_runtime("blind", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // One worker stuck in a sleep, the other busy with short CPU-bound polls.
    let busy = rt.spawn(async {
        let began = std::time::Instant::now();
        while began.elapsed() < BLOCK {
            spin(Duration::from_millis(30));
            tokio::task::yield_now().await;
        }
    });
    let task = rt.spawn(async { hardened_sleep() });
    let first = reports.wait_first("blind", BLOCK + Duration::from_secs(2));
    assert_eq!(rt.block_on(task).unwrap(), "slept");
    rt.block_on(busy).unwrap();
    watchdog.shutdown();
    let (_, report) = first.expect("the stall is reported");
    assert!(report.backtrace.is_none(), "{report}");
    assert_eq!(report.culprit, None, "{report}");
    assert_eq!(report.thread, None, "no thread is named: {report}");
    let why = report.stack_missing.clone().unwrap_or_default();
    assert!(why.contains("refused to copy"), "{why:?}");
}

#[test]
fn a_thread_hidden_from_proc_is_not_called_gone() {
    if !in_child_process("a_thread_hidden_from_proc_is_not_called_gone") {
        return;
    }
    // A /proc of its own that shows nothing: a mount namespace with an
    // empty tmpfs over /proc (root only: skipped otherwise).
    // SAFETY: unshare and mount with literal arguments, in this process only.
    let hidden = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
    };
    // Symbols are loaded before /proc goes: a service starts with /proc.
    let (watchdog, _) = start(STALL, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    watchdog.shutdown();
    // SAFETY: as above.
    let hidden = hidden
        && unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/proc".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ) == 0
        };
    if !hidden {
        eprintln!("no mount namespace here (not root?): nothing to check");
        return;
    }
    let (out, report) = stuck("no_proc", hardened_sleep);
    assert_eq!(out, "slept");
    let why = report.stack_missing.clone().unwrap_or_default();
    assert!(why.contains("/proc"), "{why:?}");
    assert!(!why.contains("exited"), "{why:?}");
}

/// One `getrandom` of 512 MiB: seconds on a CPU, all inside the kernel.
#[inline(never)]
fn one_long_getrandom() -> usize {
    let mut buf = vec![0u8; 512 << 20];
    // SAFETY: getrandom into our own buffer of that length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    std::hint::black_box(n as usize)
}

#[test]
fn a_thread_inside_one_long_system_call_is_not_interrupted_and_says_so() {
    let _serial = common::serial();
    let (out, report) = stuck("in_kernel", one_long_getrandom);
    assert_eq!(out, 512 << 20, "the call returned short");
    // Never seen in its own code: no stack, and the reason.
    assert!(report.backtrace.is_none(), "{report}");
    let why = report.stack_missing.clone().unwrap_or_default();
    assert!(
        why.contains("inside the kernel") || why.contains("perf_event_open"),
        "{why:?}"
    );
    assert_eq!(report.cpu_bound, Some(true), "{report:?}");
}
