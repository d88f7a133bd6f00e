//! From detection to recovery: systemd's watchdog protocol against a real
//! unix datagram socket, and `abort_after` in a child process.
//!
//! Each scenario runs in a child process (this test binary run again with
//! `LOOPWATCH_RECOVERY_CHILD` set): the systemd variables are read from the
//! environment at start, and an abort must end a process of its own.
#![cfg(target_os = "linux")]

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loopwatch::Watchdog;

const CHILD: &str = "LOOPWATCH_RECOVERY_CHILD";
const STALL: Duration = Duration::from_millis(500);
const CHECK: Duration = Duration::from_millis(20);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Runs `test` of this binary again in a child process with `env` set.
fn run_child(test: &str, scenario: &str, env: &[(&str, String)]) -> Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("child starts");
    // A hang guard: the child's own scenarios end in well under this.
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: signals a process id we started (at worst, already reaped).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let output = child.wait_with_output().expect("child ends");
    drop(guard);
    output
}

/// The child's `KEY unix-seconds` lines.
fn marks(output: &Output, key: &str) -> Vec<f64> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        // The harness may print its own words before ours on a line.
        .filter_map(|l| l.split_once(key)?.1.trim().parse().ok())
        .collect()
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// In a child: no core file for the aborts this file causes on purpose.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: sets a resource limit of this process from a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

#[inline(never)]
fn stuck_in_a_sync_call(d: Duration) {
    std::thread::sleep(d);
    std::hint::black_box(());
}

/// In a child: healthy for `before`, a worker blocked for `stall`, healthy
/// for `after`, printing when the block began and ended.
fn child_stall(watchdog: &Watchdog, before: Duration, stall: Duration, after: Duration) {
    let rt = common::multi_thread(2);
    watchdog.watch_runtime("main", rt.handle()).unwrap();
    rt.block_on(async {
        tokio::time::sleep(before).await;
        tokio::spawn(async move {
            println!("STALL_BEGIN {}", unix_now());
            stuck_in_a_sync_call(stall);
            println!("STALL_END {}", unix_now());
        })
        .await
        .unwrap();
        tokio::time::sleep(after).await;
    });
    println!("DONE {}", unix_now());
}

fn child_watchdog(abort_after: Option<Duration>, reports: &Arc<Mutex<Vec<String>>>) -> Watchdog {
    let sink = reports.clone();
    let mut builder = Watchdog::builder()
        .stall_threshold(STALL)
        .check_interval(CHECK)
        .notify_systemd(true)
        .on_stall(move |r| {
            if r.escalation == 0 {
                sink.lock().unwrap().push(r.to_string());
            }
        });
    if let Some(after) = abort_after {
        builder = builder.abort_after(after);
    }
    builder.start().expect("watchdog starts")
}

/// Datagrams received on a socket, each with the unix time it arrived.
type Received = Arc<Mutex<Vec<(f64, String)>>>;

fn listen(socket: UnixDatagram) -> Received {
    let received = Received::default();
    let sink = received.clone();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(30) {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((unix_now(), text));
            }
        }
    });
    received
}

fn pings(received: &Received) -> Vec<f64> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

fn statuses(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, m)| m.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.starts_with("STATUS="))
        .collect()
}

/// The longest gap between pings inside `[from, to]`, with the window's edges.
fn longest_gap(pings: &[f64], from: f64, to: f64) -> f64 {
    let mut points = vec![from];
    points.extend(pings.iter().copied().filter(|&t| t > from && t < to));
    points.push(to);
    points.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[test]
fn systemd_is_pinged_while_healthy_not_during_a_stall_and_again_after() {
    if std::env::var(CHILD).is_ok() {
        let reports = Arc::default();
        let watchdog = child_watchdog(None, &reports);
        child_stall(
            &watchdog,
            Duration::from_millis(1500),
            Duration::from_millis(2500),
            Duration::from_millis(1500),
        );
        assert_eq!(reports.lock().unwrap().len(), 1, "one stall reported");
        return;
    }
    let name = format!("loopwatch-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let received = listen(UnixDatagram::bind_addr(&addr).unwrap());
    // WatchdogSec=1s: a ping at least every 0.5 s.
    let usec: u64 = 1_000_000;
    let output = run_child(
        "systemd_is_pinged_while_healthy_not_during_a_stall_and_again_after",
        "stall",
        &[
            ("NOTIFY_SOCKET", format!("@{name}")),
            ("WATCHDOG_USEC", usec.to_string()),
        ],
    );
    assert!(output.status.success(), "{}", show(&output));
    std::thread::sleep(Duration::from_millis(200));
    let (begin, end, done) = (
        marks(&output, "STALL_BEGIN")[0],
        marks(&output, "STALL_END")[0],
        marks(&output, "DONE")[0],
    );
    let pings = pings(&received);
    let first = pings.first().copied().expect("pings arrive");
    // Healthy before: pinged at least every half of WATCHDOG_USEC (a margin
    // for a loaded machine, still under systemd's timeout).
    let half = usec as f64 / 2e6;
    let gap_before = longest_gap(&pings, first, begin);
    assert!(
        gap_before < half + 0.3,
        "gap {gap_before:.3} s before the stall: {pings:?}"
    );
    assert!(
        pings.iter().filter(|&&t| t < begin).count() >= 3,
        "{pings:?}"
    );
    // None once the stall is flagged (threshold + checks + margin) until it ends.
    let flagged_by = begin + STALL.as_secs_f64() + 0.3;
    let during: Vec<f64> = pings
        .iter()
        .copied()
        .filter(|&t| t > flagged_by && t < end)
        .collect();
    assert!(
        during.is_empty(),
        "pinged during the stall ({flagged_by:.3}..{end:.3}): {during:?}"
    );
    // Again after it ended.
    let after: Vec<f64> = pings.iter().copied().filter(|&t| t > end).collect();
    assert!(after.len() >= 2, "{after:?}");
    let gap_after = longest_gap(&pings, end + 0.3, done);
    assert!(
        gap_after < half + 0.3,
        "gap {gap_after:.3} s after the stall: {pings:?}"
    );
    // STATUS= lines: healthy, then the stall's line, then degraded after it.
    let statuses = statuses(&received);
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("STATUS=healthy"),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("STATUS=stalled: runtime main: worker")
                && s.contains("stalled for")),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("STATUS=degraded: runtime main: a stall of")),
        "{statuses:?}"
    );
}

#[test]
fn systemd_path_sockets_work_and_another_process_watchdog_pid_gets_nothing() {
    if std::env::var(CHILD).is_ok() {
        let reports = Arc::default();
        let _watchdog = child_watchdog(None, &reports);
        std::thread::sleep(Duration::from_millis(800));
        println!("DONE {}", unix_now());
        return;
    }
    let dir = std::env::temp_dir().join(format!("loopwatch-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let received = listen(UnixDatagram::bind(&path).unwrap());
    let test = "systemd_path_sockets_work_and_another_process_watchdog_pid_gets_nothing";
    let env = |pid: Option<u32>| {
        let mut env = vec![
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ];
        if let Some(pid) = pid {
            env.push(("WATCHDOG_PID", pid.to_string()));
        }
        env
    };
    // WATCHDOG_PID names this (parent) process, not the child: nothing sent.
    let output = run_child(test, "other pid", &env(Some(std::process::id())));
    assert!(output.status.success(), "{}", show(&output));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        received.lock().unwrap().is_empty(),
        "{:?}",
        received.lock().unwrap()
    );
    // No WATCHDOG_PID: the child pings the path socket.
    let output = run_child(test, "path", &env(None));
    assert!(output.status.success(), "{}", show(&output));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pings(&received).len() >= 3,
        "{:?}",
        received.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_notify_socket_is_logged_once_and_detection_goes_on() {
    if std::env::var(CHILD).is_ok() {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let reports = Arc::default();
        let watchdog = child_watchdog(None, &reports);
        child_stall(
            &watchdog,
            Duration::from_millis(600),
            Duration::from_millis(1000),
            Duration::from_millis(600),
        );
        assert_eq!(
            reports.lock().unwrap().len(),
            1,
            "the stall is still reported"
        );
        return;
    }
    let missing = std::env::temp_dir().join(format!(
        "loopwatch-no-such-dir-{}/notify",
        std::process::id()
    ));
    let output = run_child(
        "an_unreachable_notify_socket_is_logged_once_and_detection_goes_on",
        "unreachable",
        &[
            ("NOTIFY_SOCKET", missing.display().to_string()),
            ("WATCHDOG_USEC", "200000".to_string()),
        ],
    );
    assert!(output.status.success(), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("cannot send to NOTIFY_SOCKET").count(),
        1,
        "{}",
        show(&output)
    );
}

#[test]
fn a_stall_that_reaches_abort_after_aborts_with_its_report_on_stderr() {
    const ABORT_AFTER: Duration = Duration::from_millis(1500);
    if std::env::var(CHILD).is_ok() {
        no_core_dumps();
        let reports = Arc::default();
        let watchdog = child_watchdog(Some(ABORT_AFTER), &reports);
        child_stall(
            &watchdog,
            Duration::from_millis(300),
            Duration::from_secs(20),
            Duration::ZERO,
        );
        unreachable!("the watchdog aborts the process during the stall");
    }
    let output = run_child(
        "a_stall_that_reaches_abort_after_aborts_with_its_report_on_stderr",
        "abort",
        &[],
    );
    let ended = unix_now();
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        show(&output)
    );
    let begin = marks(&output, "STALL_BEGIN")[0];
    let lasted = ended - begin;
    // No sooner than abort_after; later by a check, the stack and a margin.
    assert!(
        lasted >= ABORT_AFTER.as_secs_f64() && lasted < ABORT_AFTER.as_secs_f64() + 2.0,
        "aborted {lasted:.3} s into the stall\n{}",
        show(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loopwatch: aborting the process"),
        "{}",
        show(&output)
    );
    assert!(stderr.contains("runtime main: worker"), "{}", show(&output));
    assert!(
        stderr.contains("stack of the stuck thread"),
        "{}",
        show(&output)
    );
    assert!(stderr.contains("stuck_in_a_sync_call"), "{}", show(&output));
}

#[test]
fn a_stall_shorter_than_abort_after_does_not_abort() {
    if std::env::var(CHILD).is_ok() {
        no_core_dumps();
        let reports = Arc::default();
        let watchdog = child_watchdog(Some(Duration::from_secs(3)), &reports);
        child_stall(
            &watchdog,
            Duration::from_millis(300),
            Duration::from_millis(1500),
            Duration::from_millis(500),
        );
        assert_eq!(reports.lock().unwrap().len(), 1, "the stall is reported");
        return;
    }
    let output = run_child(
        "a_stall_shorter_than_abort_after_does_not_abort",
        "short",
        &[],
    );
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(marks(&output, "DONE").len(), 1, "{}", show(&output));
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("aborting"),
        "{}",
        show(&output)
    );
}
