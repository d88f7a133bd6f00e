//! After `fork()`, the child's inherited watchdog and exporter are inert: they
//! do not report the parent's state as the child's, `shutdown()` and drop
//! return at once, and the child may start its own watchdog, which works.
//! A process of its own: forking a test harness with other tests running
//! would copy their threads' locks.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{multi_thread, start};
use loopwatch::{Error, Exporter, Status, Watchdog};

/// What the child checks; each failure exits with its own code.
fn child(watchdog: &Watchdog, exporter: &Exporter) -> i32 {
    let health = watchdog.health();
    if health.status == Status::Stalled || !health.runtimes.is_empty() {
        return 10; // the parent's state reported as the child's
    }
    if !health.issues.iter().any(|i| i.contains("forked child")) {
        return 11;
    }
    if watchdog.is_running() {
        return 12;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if !matches!(
        watchdog.watch_runtime("child", rt.handle()),
        Err(Error::ShutDown)
    ) {
        return 13;
    }
    // The child starts its own watchdog while the inherited handle lives.
    let (mine, reports) = start(Duration::from_millis(300), Duration::from_millis(20));
    if mine.watch_runtime("child", rt.handle()).is_err() {
        return 14;
    }
    rt.block_on(async {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(800));
    });
    if reports
        .wait_first("child", Duration::from_secs(2))
        .is_none()
    {
        return 15; // the child's own watchdog saw its stall
    }
    let began = Instant::now();
    watchdog.shutdown();
    exporter.shutdown();
    if began.elapsed() > Duration::from_millis(500) {
        return 16;
    }
    // The inherited handle's shutdown left the child's watchdog alone.
    if !mine.is_running() || mine.health().runtimes.len() != 1 {
        return 17;
    }
    mine.shutdown();
    0
}

#[test]
fn a_forked_child_gets_an_inert_watchdog_and_may_start_its_own() {
    let (watchdog, _reports) = start(Duration::from_millis(300), Duration::from_millis(20));
    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .start(&watchdog)
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("parent", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The parent is stalled when it forks.
    let task = rt.spawn(async { std::thread::sleep(Duration::from_millis(1500)) });
    assert!(common::wait_until(Duration::from_secs(2), || {
        watchdog.health().status == Status::Stalled
    }));
    // SAFETY: the child only runs Rust code that allocates (glibc's fork
    // keeps malloc usable) and exits with _exit; alarm ends it if it hangs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: alarm and _exit are async-signal-safe.
        unsafe {
            libc::alarm(20);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(&watchdog, &exporter)
            }))
            .unwrap_or(99);
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "the child did not exit (signal {}: a hang ended by alarm is 14)",
        libc::WTERMSIG(status)
    );
    assert_eq!(libc::WEXITSTATUS(status), 0, "the child's check failed");
    // The parent's watchdog and exporter go on.
    rt.block_on(task).unwrap();
    assert!(common::wait_until(Duration::from_secs(1), || {
        watchdog.health().status != Status::Stalled
    }));
    assert!(watchdog.is_running());
    assert_eq!(watchdog.health().runtimes[0].stalls_total, 1);
    assert_eq!(
        common::get(exporter.local_addr(), "/health").status,
        200,
        "the parent's exporter still answers"
    );
    exporter.shutdown();
    watchdog.shutdown();
}
