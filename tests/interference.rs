//! What watching does to the watched program (Linux): every blocking call a
//! stuck worker makes returns exactly what it returns unwatched, whether the
//! stuck task is instrumented or the runtime is known only by its handle,
//! and each report still carries the stuck thread's stack and culprit.
//!
//! Threshold 1 s, each call blocked 2.5 s on a worker, all cases at once
//! (one runtime each): a socket read with a read timeout, `poll(2)`,
//! `epoll_wait`, `nanosleep`, `std::thread::sleep`, a contended `Mutex`,
//! `read` on an empty pipe, `sigtimedwait` with every signal blocked, a spin
//! loop, and a spin loop with every signal blocked. Beside the `poll(2)`
//! case, a healthy task on the other worker makes short `poll(2)` calls and
//! must never see EINTR. Threads waiting in the kernel are read from outside
//! (`proc`), spinning ones sampled by the kernel (`perf`); none is signalled.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{multi_thread, serial, Reports};
use loopwatch::{StallReport, Watchdog};

const STALL: Duration = Duration::from_secs(1);
const BLOCK: Duration = Duration::from_millis(2500);
const BLOCK_MS: i32 = 2500;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Blocks every signal on this thread for the duration of `f`.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain sigmask calls on this thread with initialised sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let out = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        out
    }
}

#[inline(never)]
fn lw_socket_read() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(BLOCK)).unwrap();
    let mut buf = [0u8; 8];
    let out = match socket.recv(&mut buf) {
        Ok(n) => format!("read {n}"),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            "timed out".to_owned()
        }
        Err(e) => format!("{:?}", e.kind()),
    };
    std::hint::black_box(out)
}

/// What a call returned, as compared between watched and unwatched runs.
fn outcome(rc: i64, err: i32) -> String {
    if rc < 0 {
        format!("-1 errno {err}")
    } else {
        rc.to_string()
    }
}

#[inline(never)]
fn lw_poll() -> String {
    let mut fds = [0; 2];
    // SAFETY: a pipe into a two-element array; poll on its read end.
    let (rc, err) = unsafe {
        libc::pipe(fds.as_mut_ptr());
        let mut pfd = libc::pollfd {
            fd: fds[0],
            events: libc::POLLIN,
            revents: 0,
        };
        let rc = libc::poll(&mut pfd, 1, BLOCK_MS);
        let err = errno();
        libc::close(fds[0]);
        libc::close(fds[1]);
        (rc, err)
    };
    std::hint::black_box(outcome(rc as i64, err))
}

#[inline(never)]
fn lw_epoll_wait() -> String {
    // SAFETY: an empty epoll set waited on with a timeout.
    let (rc, err) = unsafe {
        let ep = libc::epoll_create1(0);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let rc = libc::epoll_wait(ep, events.as_mut_ptr(), 4, BLOCK_MS);
        let err = errno();
        libc::close(ep);
        (rc, err)
    };
    std::hint::black_box(outcome(rc as i64, err))
}

#[inline(never)]
fn lw_nanosleep() -> String {
    let ts = libc::timespec {
        tv_sec: 2,
        tv_nsec: 500_000_000,
    };
    let mut left = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointers.
    let rc = unsafe { libc::nanosleep(&ts, &mut left) };
    std::hint::black_box(outcome(rc as i64, errno()))
}

#[inline(never)]
fn lw_thread_sleep() -> String {
    std::thread::sleep(BLOCK);
    std::hint::black_box("slept".to_owned())
}

#[inline(never)]
fn lw_mutex() -> String {
    let lock = Arc::new(Mutex::new(0u32));
    let held = Arc::new(Barrier::new(2));
    let holder = {
        let (lock, held) = (lock.clone(), held.clone());
        std::thread::spawn(move || {
            let mut guard = lock.lock().unwrap();
            held.wait();
            std::thread::sleep(BLOCK);
            *guard += 1;
        })
    };
    held.wait();
    let value = *lock.lock().unwrap();
    holder.join().unwrap();
    std::hint::black_box(format!("locked after {value}"))
}

#[inline(never)]
fn lw_pipe_read() -> String {
    let mut fds = [0; 2];
    // SAFETY: a pipe into a two-element array.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let writer = fds[1];
    let later = std::thread::spawn(move || {
        std::thread::sleep(BLOCK);
        // SAFETY: one byte to the pipe's write end.
        unsafe { libc::write(writer, b"x".as_ptr().cast(), 1) };
    });
    let mut byte = 0u8;
    // SAFETY: one byte into a local.
    let (rc, err) = unsafe {
        let rc = libc::read(fds[0], std::ptr::from_mut(&mut byte).cast(), 1);
        (rc, errno())
    };
    later.join().unwrap();
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    std::hint::black_box(outcome(rc as i64, err))
}

#[inline(never)]
fn lw_sigtimedwait_blocked() -> String {
    with_signals_blocked(|| {
        // SAFETY: waiting for SIGUSR2 (never sent) with a timeout.
        let (rc, err) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            let timeout = libc::timespec {
                tv_sec: 2,
                tv_nsec: 500_000_000,
            };
            let rc = libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
            (rc, errno())
        };
        std::hint::black_box(if rc < 0 {
            format!("-1 errno {err}")
        } else {
            format!("signal {rc}")
        })
    })
}

/// Spins here (not in a helper), so that this function is the culprit.
#[inline(never)]
fn lw_spin() -> String {
    let at = Instant::now();
    while at.elapsed() < BLOCK {
        std::hint::spin_loop();
    }
    std::hint::black_box("spun".to_owned())
}

#[inline(never)]
fn lw_spin_signals_blocked() -> String {
    with_signals_blocked(|| {
        let at = Instant::now();
        while at.elapsed() < BLOCK {
            std::hint::spin_loop();
        }
        std::hint::black_box("spun".to_owned())
    })
}

struct Case {
    name: &'static str,
    call: fn() -> String,
    /// What the call returns unwatched.
    expected: String,
    /// A word the stack must contain (the blocking function).
    in_stack: &'static str,
    /// Whether the stuck thread is on a CPU: its stack is then the kernel's
    /// sample (`perf`), or, where `perf_event_open` is refused, missing with
    /// that reason; otherwise it is read from outside (`proc`).
    on_cpu: bool,
}

fn cases() -> Vec<Case> {
    let case = |name, call, expected: &str, in_stack, on_cpu| Case {
        name,
        call,
        expected: expected.to_owned(),
        in_stack,
        on_cpu,
    };
    vec![
        case(
            "lw_socket_read",
            lw_socket_read as fn() -> String,
            "timed out",
            "recv",
            false,
        ),
        case("lw_poll", lw_poll, "0", "poll", false),
        case("lw_epoll_wait", lw_epoll_wait, "0", "epoll_wait", false),
        case("lw_nanosleep", lw_nanosleep, "0", "nanosleep", false),
        case("lw_thread_sleep", lw_thread_sleep, "slept", "sleep", false),
        case("lw_mutex", lw_mutex, "locked after 1", "lock", false),
        case("lw_pipe_read", lw_pipe_read, "1", "read", false),
        case(
            "lw_sigtimedwait_blocked",
            lw_sigtimedwait_blocked,
            &format!("-1 errno {}", libc::EAGAIN),
            "sigtimedwait",
            false,
        ),
        case("lw_spin", lw_spin, "spun", "lw_spin", true),
        case(
            "lw_spin_signals_blocked",
            lw_spin_signals_blocked,
            "spun",
            "lw_spin_signals_blocked",
            true,
        ),
    ]
}

/// A task on a healthy worker making short `poll(2)` calls; counts EINTRs.
async fn healthy_polls(stop: Arc<AtomicBool>, eintr: Arc<AtomicU64>, polls: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: poll on no descriptors: a 10 ms sleep.
        let rc = unsafe { libc::poll(std::ptr::null_mut(), 0, 10) };
        if rc < 0 && errno() == libc::EINTR {
            eintr.fetch_add(1, Ordering::Relaxed);
        }
        polls.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Spawned through loopwatch: the stuck thread is known from its slot.
    Instrumented,
    /// `tokio::spawn` on a runtime known only by its handle.
    HandleOnly,
    /// `tokio::spawn` on a runtime built with `install_runtime_hooks` (under
    /// `--cfg tokio_unstable` the task poll hooks name the thread).
    Hooked,
}

fn runtime(mode: Mode) -> tokio::runtime::Runtime {
    if mode != Mode::Hooked {
        return multi_thread(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    loopwatch::install_runtime_hooks(&mut builder);
    builder.build().unwrap()
}

/// Runs every case at once, each on a runtime of its own, and checks what
/// each call returned and what each report carried.
fn run(mode: Mode) {
    let _serial = serial();
    let reports = Reports::default();
    let sink = reports.clone();
    let watchdog = Watchdog::builder()
        .stall_threshold(STALL)
        .check_interval(Duration::from_millis(50))
        .max_reports_per_minute(1000)
        .on_stall(move |r| sink.push(r.clone()))
        .start()
        .unwrap();
    let cases = cases();
    let runtimes: Vec<_> = cases
        .iter()
        .map(|c| {
            let rt = runtime(mode);
            watchdog.watch_runtime(c.name, rt.handle()).unwrap();
            rt
        })
        .collect();
    // Let the heartbeat visit every worker, as it does in a running service.
    std::thread::sleep(Duration::from_millis(1500));

    let stop = Arc::new(AtomicBool::new(false));
    let eintr = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let mut healthy = None;
    let began = Instant::now();
    let tasks: Vec<_> = cases
        .iter()
        .zip(&runtimes)
        .map(|(c, rt)| {
            if c.name == "lw_poll" {
                healthy = Some(rt.spawn(healthy_polls(stop.clone(), eintr.clone(), polls.clone())));
            }
            let call = c.call;
            let timed = async move {
                let at = Instant::now();
                let out = call();
                (out, at.elapsed())
            };
            if mode == Mode::Instrumented {
                let _guard = rt.enter();
                loopwatch::spawn_named(c.name, timed)
            } else {
                rt.spawn(timed)
            }
        })
        .collect();
    let outcomes: Vec<(String, Duration)> = tasks
        .into_iter()
        .zip(&runtimes)
        .map(|(t, rt)| rt.block_on(t).unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    if let (Some(h), Some(rt)) = (healthy, runtimes.get(1)) {
        rt.block_on(h).unwrap();
    }
    let all = reports.all();
    let firsts: HashMap<String, StallReport> = all
        .iter()
        .filter(|(_, r)| r.escalation == 0)
        .map(|(_, r)| (r.runtime.clone(), r.clone()))
        .collect();
    let mut failures = Vec::new();
    let perf = common::perf_available();
    for (c, (out, took)) in cases.iter().zip(&outcomes) {
        if *out != c.expected {
            failures.push(format!(
                "{}: returned {out:?}, unwatched {:?}",
                c.name, c.expected
            ));
        }
        if *took < BLOCK - Duration::from_millis(100) {
            failures.push(format!(
                "{}: returned after {took:?}, before its {BLOCK:?}",
                c.name
            ));
        }
        let Some(report) = firsts.get(c.name) else {
            failures.push(format!("{}: no report", c.name));
            continue;
        };
        if c.on_cpu && !perf {
            let why = report.stack_missing.clone().unwrap_or_default();
            if report.backtrace.is_some() || !why.contains("perf_event_open") {
                failures.push(format!(
                    "{}: expected no stack and the reason, got {report} / {:?}",
                    c.name, report.stack_missing
                ));
            }
            continue;
        }
        let method = if c.on_cpu { "perf" } else { "proc" };
        if report.stack_method != Some(method) {
            failures.push(format!(
                "{}: stack taken by {:?}, expected {method}",
                c.name, report.stack_method
            ));
        }
        let stack = report.backtrace.clone().unwrap_or_default();
        if !stack.contains(c.name) || !stack.contains(c.in_stack) {
            failures.push(format!(
                "{}: the stack does not name {} and {}: {:?}\n{stack}",
                c.name, c.in_stack, c.name, report.stack_missing
            ));
        }
        let culprit = report.culprit.clone().unwrap_or_default();
        if !culprit.contains(c.name) {
            failures.push(format!("{}: culprit {culprit:?}\n{stack}", c.name));
        }
    }
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the cases ran at once"
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(polls.load(Ordering::Relaxed) > 20, "the healthy task ran");
    assert_eq!(
        eintr.load(Ordering::Relaxed),
        0,
        "the healthy worker saw EINTR"
    );
    watchdog.shutdown();
}

#[test]
fn instrumented_tasks_see_what_they_see_unwatched() {
    run(Mode::Instrumented);
}

#[test]
fn a_handle_only_runtime_sees_what_it_sees_unwatched() {
    run(Mode::HandleOnly);
}

#[test]
fn a_hooked_runtime_sees_what_it_sees_unwatched() {
    run(Mode::Hooked);
}
