//! Stall evidence: the stuck thread's stack and CPU state in the report,
//! the callback and `Health::recent_stalls` (Linux).
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{current_thread, multi_thread, serial, spin, start, wait_until};
use loopwatch::WatchExt as _;

/// The stall threshold. A report is due while its stall lasts, so most
/// blocks here last 3 s: 2 s for the evidence on a loaded 2-core machine.
const STALL: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_millis(50);

#[inline(never)]
fn evidence_sleeps_in_this_function(d: Duration) {
    std::thread::sleep(d);
    std::hint::black_box(());
}

#[inline(never)]
fn evidence_spins_in_this_function(d: Duration) {
    spin(d);
    std::hint::black_box(());
}

#[test]
fn an_instrumented_stall_report_carries_the_stack_down_to_the_blocking_function() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(
        async { evidence_sleeps_in_this_function(Duration::from_millis(2600)) }.watched("ev.sleep"),
    );
    let (_, first) = reports
        .wait_first("ev", Duration::from_secs(4))
        .expect("reported");
    let stack = first
        .backtrace
        .clone()
        .expect("a stack in the first report");
    assert!(
        stack.contains("evidence_sleeps_in_this_function"),
        "{stack}"
    );
    assert!(
        !stack.contains("loopwatch::stack") && !stack.contains("loopwatch_stack::"),
        "the handler's frames are trimmed:\n{stack}"
    );
    assert!(
        !stack.contains("tokio::runtime::scheduler"),
        "the scheduler's frames are trimmed:\n{stack}"
    );
    assert_eq!(first.cpu_bound, Some(false), "a sleeping thread is off CPU");
    assert_eq!(first.cause, loopwatch::StallCause::Blocked, "{first}");
    assert!(
        first.to_string().contains(" (blocked: on a CPU "),
        "{first}"
    );
    assert_eq!(first.stack_complete, Some(true), "{stack}");
    assert_eq!(first.unconfirmed, None);

    let health = watchdog.health();
    let recent = &health.recent_stalls[0];
    assert_eq!(recent.task.as_deref(), Some("ev.sleep"));
    assert!(!recent.ended);
    assert!(recent
        .backtrace
        .as_deref()
        .unwrap_or("")
        .contains("evidence_sleeps_in_this_function"));

    rt.block_on(task).unwrap();
    // The callback gets it from a thread of its own: it may arrive a little
    // after the stall's end.
    let escalation = |r: &(std::time::Instant, loopwatch::StallReport)| r.1.escalation == 1;
    assert!(wait_until(Duration::from_secs(2), || reports
        .all()
        .iter()
        .any(escalation)));
    let escalation = reports
        .all()
        .into_iter()
        .find(escalation)
        .map(|(_, r)| r)
        .expect("an escalation at twice the threshold");
    assert_eq!(
        escalation.stack_moved,
        Some(false),
        "asleep at the same place"
    );
    assert!(wait_until(Duration::from_secs(1), || watchdog
        .health()
        .recent_stalls[0]
        .ended));
    let ended = &watchdog.health().recent_stalls[0];
    assert!(ended.stalled_for_seconds >= 2.0, "{ended:?}");
}

#[test]
fn a_spinning_worker_is_labelled_on_cpu() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev-spin", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(
        async { evidence_spins_in_this_function(Duration::from_millis(3000)) }.watched("ev.spin"),
    );
    let (_, first) = reports
        .wait_first("ev-spin", Duration::from_secs(4))
        .expect("reported");
    assert_eq!(first.cpu_bound, Some(true), "{first:?}");
    let stack = first.backtrace.clone().expect("a stack");
    assert!(stack.contains("evidence_spins_in_this_function"), "{stack}");
    rt.block_on(task).unwrap();
}

#[test]
fn an_uninstrumented_stall_on_a_hooked_runtime_has_its_stack() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    loopwatch::install_runtime_hooks(&mut builder);
    let rt = builder.build().unwrap();
    watchdog.watch_runtime("ev-hooked", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(async { evidence_sleeps_in_this_function(Duration::from_millis(3000)) });
    let (_, first) = reports
        .wait_first("ev-hooked", Duration::from_secs(4))
        .expect("reported");
    assert_eq!(first.task, None);
    let stack = first
        .backtrace
        .clone()
        .expect("a stack: the hooks name the stuck thread");
    assert!(
        stack.contains("evidence_sleeps_in_this_function"),
        "{stack}"
    );
    rt.block_on(task).unwrap();
}

#[test]
fn a_current_thread_stall_has_its_stack() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = current_thread();
    watchdog.watch_runtime("ev-ct", rt.handle()).unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::spawn(async { evidence_sleeps_in_this_function(Duration::from_millis(3000)) })
            .await
            .unwrap();
    });
    let (_, first) = reports
        .wait_first("ev-ct", Duration::from_millis(100))
        .expect("reported");
    let stack = first.backtrace.clone().expect("a stack");
    assert!(
        stack.contains("evidence_sleeps_in_this_function"),
        "{stack}"
    );
    assert_eq!(first.cpu_bound, Some(false));
}

#[test]
fn a_handle_only_runtime_finds_its_stuck_worker_from_the_start() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    // As #[tokio::main] makes it: no hooks, known only by its handle, and
    // blocked at once: the heartbeat has visited no worker yet.
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev-handle", rt.handle()).unwrap();
    let task = rt.spawn(async { evidence_sleeps_in_this_function(Duration::from_millis(3000)) });
    let (_, first) = reports
        .wait_first("ev-handle", Duration::from_secs(4))
        .expect("reported");
    let stack = first
        .backtrace
        .clone()
        .unwrap_or_else(|| panic!("a stack, found among the process's threads: {first:?}"));
    assert!(
        stack.contains("evidence_sleeps_in_this_function"),
        "{stack}"
    );
    assert_eq!(first.stack_complete, Some(true), "{stack}");
    assert!(first.thread.is_some(), "the stuck thread is named: {first}");
    let culprit = first.culprit.clone().unwrap_or_default();
    assert!(
        culprit.contains("evidence_sleeps_in_this_function") && culprit.contains("evidence.rs:"),
        "{culprit:?}"
    );
    assert!(first.to_string().contains(&culprit), "{first}");
    let health = watchdog.health();
    assert_eq!(
        health.runtimes[0].stalled_workers[0].culprit.as_deref(),
        Some(culprit.as_str()),
        "{health:?}"
    );
    assert!(health.issues[0].contains(&culprit), "{:?}", health.issues);
    assert_eq!(
        health.recent_stalls[0].culprit.as_deref(),
        Some(culprit.as_str())
    );
    assert_eq!(health.recent_stalls[0].stack_complete, Some(true));
    rt.block_on(task).unwrap();
}

/// Sleeps in steps of `step` for `total`, as a retry loop or SQLite's busy
/// handler does: stuck in one poll, but waking now and then.
#[inline(never)]
fn evidence_retries_in_this_function(step: Duration, total: Duration) {
    let began = std::time::Instant::now();
    while began.elapsed() < total {
        std::thread::sleep(step);
    }
    std::hint::black_box(());
}

#[test]
fn a_stuck_call_that_wakes_now_and_then_is_told_from_a_healthy_worker() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev-retry", rt.handle()).unwrap();
    // The other worker stays busy with short blocking polls of one task,
    // each the same stack as the last.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        rt.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                tokio::task::yield_now().await;
            }
        })
    };
    let stuck = rt.spawn(async {
        evidence_retries_in_this_function(Duration::from_millis(100), Duration::from_millis(2500))
    });
    let (_, first) = reports
        .wait_first("ev-retry", Duration::from_secs(4))
        .expect("reported");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(stuck).unwrap();
    rt.block_on(busy).unwrap();
    let culprit = first.culprit.clone().unwrap_or_default();
    assert!(
        culprit.contains("evidence_retries_in_this_function"),
        "the stuck worker, not the busy one: {first:?}"
    );
}
#[test]
fn a_current_thread_runtime_stuck_in_its_first_poll_is_reported_with_its_stack() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    // Watched from outside, then blocked in the `block_on` future's first
    // poll: its heartbeat never ran, so the thread that drives it is found
    // among the process's threads.
    let rt = current_thread();
    watchdog.watch_runtime("ev-ct-first", rt.handle()).unwrap();
    rt.block_on(async { evidence_sleeps_in_this_function(Duration::from_millis(3000)) });
    let (_, first) = reports
        .wait_first("ev-ct-first", Duration::from_millis(100))
        .expect("reported while it lasted");
    assert_eq!(first.unconfirmed, None, "{first}");
    let stack = first.backtrace.clone().expect("a stack");
    assert!(
        stack.contains("evidence_sleeps_in_this_function"),
        "{stack}"
    );
    assert_eq!(first.stack_complete, Some(true), "{stack}");
}

#[test]
fn full_stacks_keep_the_scheduler_frames() {
    let _serial = serial();
    let reports = common::Reports::default();
    let sink = reports.clone();
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(STALL)
        .check_interval(CHECK)
        .full_stacks(true)
        .on_stall(move |r| sink.push(r.clone()))
        .start()
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev-full", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(
        async { evidence_sleeps_in_this_function(Duration::from_millis(1500)) }.watched("ev.full"),
    );
    let (_, first) = reports
        .wait_first("ev-full", Duration::from_secs(4))
        .expect("reported");
    let stack = first.backtrace.clone().expect("a stack");
    assert!(
        stack.contains("evidence_sleeps_in_this_function"),
        "{stack}"
    );
    assert!(
        stack.contains("tokio::runtime::"),
        "the scheduler's frames are kept:\n{stack}"
    );
    rt.block_on(task).unwrap();
    watchdog.shutdown();
}

// Two shapes written in assembly, so that they are the same in every
// profile: a thin wrapper whose last act is a call to the standard
// library's `sleep`, compiled into a jump (what `fn load_order(d: Duration)
// { std::thread::sleep(d) }` is in a release build), and code no unwind
// table describes, which makes a `nanosleep` system call itself.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.loopwatch_evidence_shapes,\"ax\",@progbits",
    ".globl loopwatch_evidence_load_order",
    ".type loopwatch_evidence_load_order,@function",
    "loopwatch_evidence_load_order:",
    ".cfi_startproc",
    "jmp {sleep}",
    ".cfi_endproc",
    ".size loopwatch_evidence_load_order, .-loopwatch_evidence_load_order",
    ".globl loopwatch_evidence_sleeps_without_unwind_info",
    ".type loopwatch_evidence_sleeps_without_unwind_info,@function",
    "loopwatch_evidence_sleeps_without_unwind_info:",
    "xor %esi, %esi",
    "mov $35, %eax",
    "syscall",
    "ret",
    ".size loopwatch_evidence_sleeps_without_unwind_info, .-loopwatch_evidence_sleeps_without_unwind_info",
    ".popsection",
    sleep = sym std::thread::sleep,
    options(att_syntax),
);

#[cfg(target_arch = "x86_64")]
extern "Rust" {
    /// Jumps to `std::thread::sleep` with its argument: the same signature.
    fn loopwatch_evidence_load_order(d: Duration);
}

#[cfg(target_arch = "x86_64")]
extern "C" {
    /// `nanosleep(time, NULL)`, in code without unwind tables.
    fn loopwatch_evidence_sleeps_without_unwind_info(time: *const libc::timespec) -> libc::c_long;
}

/// The task of the tail-call test: calls the wrapper directly, and does
/// something after, so that it stays a frame of its own.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn evidence_calls_a_thin_wrapper(d: Duration) {
    // SAFETY: the wrapper jumps to `std::thread::sleep(d)`.
    unsafe { loopwatch_evidence_load_order(d) };
    std::hint::black_box(());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_thin_wrapper_that_jumps_to_the_blocking_call_is_the_culprit_on_a_handle_only_runtime() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev-tail", rt.handle()).unwrap();
    let task = rt.spawn(async { evidence_calls_a_thin_wrapper(Duration::from_millis(2000)) });
    let (_, first) = reports
        .wait_first("ev-tail", Duration::from_secs(4))
        .expect("reported");
    rt.block_on(task).unwrap();
    let stack = first
        .backtrace
        .clone()
        .unwrap_or_else(|| panic!("the stuck worker is found: {first:?}"));
    assert_eq!(first.stack_complete, Some(true), "{stack}");
    // The wrapper stands between `sleep` and its caller, marked.
    let names: Vec<&str> = stack
        .lines()
        .filter_map(|l| l.trim_start().split_once(": ").map(|(_, n)| n))
        .collect();
    let sleep = names
        .iter()
        .position(|n| n.starts_with("std::thread::functions::sleep"))
        .unwrap_or_else(|| panic!("{stack}"));
    assert_eq!(
        names.get(sleep + 1),
        Some(&"loopwatch_evidence_load_order (tail call)"),
        "{stack}"
    );
    assert!(
        names
            .get(sleep + 2)
            .is_some_and(|n| n.contains("evidence_calls_a_thin_wrapper")),
        "{stack}"
    );
    assert!(
        first
            .culprit
            .as_deref()
            .is_some_and(|c| c.starts_with("loopwatch_evidence_load_order")),
        "the wrapper is the culprit: {first:?}"
    );
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn evidence_calls_code_without_unwind_info(d: Duration) -> libc::c_long {
    let time = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    };
    // SAFETY: a valid timespec; the function only makes the system call.
    let rc = unsafe { loopwatch_evidence_sleeps_without_unwind_info(&time) };
    std::hint::black_box(rc)
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_handle_only_runtime_finds_a_worker_stuck_where_the_walk_stops() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("ev-partial", rt.handle()).unwrap();
    let task =
        rt.spawn(async { evidence_calls_code_without_unwind_info(Duration::from_millis(2000)) });
    let (_, first) = reports
        .wait_first("ev-partial", Duration::from_secs(4))
        .expect("reported");
    assert_eq!(rt.block_on(task).unwrap(), 0, "the sleep is not cut short");
    assert_eq!(first.stack_missing, None, "{first:?}");
    assert!(
        first.thread.is_some(),
        "the stuck worker is found: {first:?}"
    );
    assert_eq!(first.cause, loopwatch::StallCause::Blocked, "{first}");
    let stack = first.backtrace.clone().expect("what was walked");
    assert_eq!(first.stack_complete, Some(false), "{stack}");
    assert!(
        stack.contains("loopwatch_evidence_sleeps_without_unwind_info")
            && stack.contains(
                "(partial: the walk stopped here: the next function has no unwind information)"
            ),
        "{stack}"
    );
}
