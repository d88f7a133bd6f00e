//! loopwatch sends no signal and installs no signal handler (Linux on
//! x86_64): an application's handler for any real-time signal is never
//! called, whether installed before or after the watchdog started, and the
//! stack of a worker stuck on a CPU is still taken (by the kernel, with
//! `perf_event_open`, where it is allowed). A process of its own, since it
//! changes signal dispositions.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{multi_thread, perf_available, serial, start};
use loopwatch::WatchExt as _;

static RECEIVED: AtomicU64 = AtomicU64::new(0);

extern "C" fn application_handler(_sig: libc::c_int) {
    RECEIVED.fetch_add(1, Ordering::Relaxed);
}

fn handler_of(sig: libc::c_int) -> usize {
    // SAFETY: a query-only sigaction call.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut current), 0);
        current.sa_sigaction
    }
}

fn install(sig: libc::c_int) {
    // SAFETY: installing a handler that only bumps an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = application_handler as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
}

/// Spins here (not in a helper), so that this function is the culprit.
#[inline(never)]
fn spins_on_a_worker() {
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_millis(2500) {
        std::hint::spin_loop();
    }
}

#[test]
fn no_signal_is_installed_or_sent_and_a_spinning_worker_still_has_its_stack() {
    let _serial = serial();
    // The application owns one real-time signal before the watchdog starts
    // and one after; every other keeps its default disposition.
    let before = libc::SIGRTMIN() + 6;
    let after = libc::SIGRTMIN() + 7;
    install(before);
    let dispositions: Vec<usize> = (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .map(handler_of)
        .collect();
    let (watchdog, reports) = start(Duration::from_secs(1), Duration::from_millis(50));
    install(after);
    let rt = multi_thread(2);
    watchdog.watch_runtime("owned", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(async { spins_on_a_worker() }.watched("owned.spin"));
    let (_, report) = reports
        .wait_first("owned", Duration::from_secs(4))
        .expect("the stall is reported");
    rt.block_on(task).unwrap();
    watchdog.shutdown();
    assert_eq!(
        RECEIVED.load(Ordering::Relaxed),
        0,
        "loopwatch sent a signal"
    );
    let now: Vec<usize> = (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .map(|s| {
            if s == after {
                dispositions[(s - libc::SIGRTMIN()) as usize]
            } else {
                handler_of(s)
            }
        })
        .collect();
    assert_eq!(now, dispositions, "a signal's disposition changed");
    assert_eq!(report.cpu_bound, Some(true), "{report}");
    if perf_available() {
        assert_eq!(report.stack_method, Some("perf"), "{report:?}");
        let culprit = report.culprit.clone().unwrap_or_default();
        assert!(
            culprit.starts_with("signal_ownership::spins_on_a_worker"),
            "{report}"
        );
    } else {
        let why = report.stack_missing.clone().unwrap_or_default();
        assert!(why.contains("perf_event_open"), "{why:?}");
    }
}
