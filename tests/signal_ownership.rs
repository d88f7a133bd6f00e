//! The stack signal belongs to the application once it takes it over: an
//! application handler installed after the watchdog started is never called
//! by loopwatch, and the report of a thread on a CPU says why it has no
//! stack (Linux on x86_64). A process of its own, since it changes the
//! signal's disposition.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{multi_thread, serial, spin, start};
use loopwatch::WatchExt as _;

static RECEIVED: AtomicU64 = AtomicU64::new(0);

extern "C" fn application_handler(_sig: libc::c_int) {
    RECEIVED.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn a_signal_the_application_took_over_is_never_sent() {
    let _serial = serial();
    let (watchdog, reports) = start(Duration::from_secs(1), Duration::from_millis(50));
    // The application installs its own handler for loopwatch's signal after
    // the watchdog started (as `tokio::signal` or signal-hook would).
    let sig = libc::SIGRTMIN() + 6;
    // SAFETY: installing a handler that only bumps an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = application_handler as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
    let rt = multi_thread(2);
    watchdog.watch_runtime("owned", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(async { spin(Duration::from_millis(2500)) }.watched("owned.spin"));
    let (_, report) = reports
        .wait_first("owned", Duration::from_secs(4))
        .expect("the stall is still reported");
    rt.block_on(task).unwrap();
    assert_eq!(report.cpu_bound, Some(true), "{report}");
    assert!(report.backtrace.is_none(), "{report:?}");
    let why = report.stack_missing.clone().unwrap_or_default();
    assert!(why.contains("application handles"), "{why:?}");
    assert_eq!(
        RECEIVED.load(Ordering::Relaxed),
        0,
        "loopwatch signalled a thread through the application's handler"
    );

    // Reset to the default disposition, which would kill the process: the
    // next stall is still reported, and the process lives on.
    // SAFETY: restoring the default disposition of a real-time signal.
    unsafe {
        assert_ne!(libc::signal(sig, libc::SIG_DFL), libc::SIG_ERR);
    }
    let task = rt.spawn(async { spin(Duration::from_millis(2500)) }.watched("owned.spin_again"));
    let deadline = Instant::now() + Duration::from_secs(6);
    let second = loop {
        let found = reports
            .all()
            .into_iter()
            .find(|(_, r)| r.task.as_deref() == Some("owned.spin_again"));
        if let Some((_, report)) = found {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "the second stall was not reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    rt.block_on(task).unwrap();
    assert!(second.backtrace.is_none(), "{second:?}");
    assert!(second.stack_missing.is_some(), "{second:?}");
    watchdog.shutdown();
}
