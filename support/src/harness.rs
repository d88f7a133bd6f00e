//! Helpers of the integration tests (loopwatch's and `extras/`'s): one
//! watchdog at a time, reports collected from the callback, runtimes,
//! blocking, HTTP requests, child processes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use loopwatch::{StallReport, Watchdog};

/// One watchdog runs per process: tests that start one take this lock, so the
/// suite also passes under `cargo test`, which runs tests on threads of one process.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reports received by the `on_stall` callback, with the time each arrived.
#[derive(Debug, Clone, Default)]
pub struct Reports(Arc<Mutex<Vec<(Instant, StallReport)>>>);

impl Reports {
    /// Records a report, as an `on_stall` callback would.
    pub fn push(&self, report: StallReport) {
        self.0.lock().unwrap().push((Instant::now(), report));
    }

    /// Every report so far, with when it arrived.
    pub fn all(&self) -> Vec<(Instant, StallReport)> {
        self.0.lock().unwrap().clone()
    }

    /// The first report of each stall (escalations left out).
    pub fn first_reports(&self) -> Vec<(Instant, StallReport)> {
        self.all()
            .into_iter()
            .filter(|(_, r)| r.escalation == 0)
            .collect()
    }

    /// Waits until a first report arrives for `runtime`, up to `timeout`.
    pub fn wait_first(&self, runtime: &str, timeout: Duration) -> Option<(Instant, StallReport)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(r) = self
                .first_reports()
                .into_iter()
                .find(|(_, r)| r.runtime == runtime)
            {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// Starts a watchdog with the given stall threshold and check interval that
/// collects its reports.
pub fn start(stall: Duration, check: Duration) -> (Watchdog, Reports) {
    let reports = Reports::default();
    let sink = reports.clone();
    let watchdog = Watchdog::builder()
        .stall_threshold(stall)
        .blocking_threshold(Duration::from_millis(100).min(stall / 2))
        .check_interval(check)
        .max_reports_per_minute(1000)
        .on_stall(move |r| sink.0.lock().unwrap().push((Instant::now(), r.clone())))
        .start()
        .expect("watchdog starts");
    (watchdog, reports)
}

/// Waits until `f` holds, up to `timeout`; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A multi-thread runtime with `workers` workers, I/O and time enabled.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime builds")
}

/// A current-thread runtime, I/O and time enabled.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime builds")
}

/// Busy-waits for `d` (a CPU-bound block, no syscalls).
pub fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Spawns `tasks` tasks on `rt`, each running `polls` polls that block for
/// `poll` (a `std::thread::sleep`), instrumented under `name` when given, and
/// waits for them all.
pub fn run_slow_polls(
    rt: &tokio::runtime::Runtime,
    tasks: usize,
    polls: usize,
    poll: Duration,
    name: Option<&'static str>,
) {
    use loopwatch::WatchExt as _;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let work = async move {
                for _ in 0..polls {
                    std::thread::sleep(poll);
                    tokio::task::yield_now().await;
                }
            };
            match name {
                Some(name) => rt.spawn(work.watched(name)),
                None => rt.spawn(work),
            }
        })
        .collect();
    for h in handles {
        rt.block_on(h).expect("slow-poll task");
    }
}

/// Spawns a task that blocks its worker with `std::thread::sleep(block)`,
/// instrumented under `name` when given; returns the task and when the block began.
pub fn spawn_block(
    rt: &tokio::runtime::Runtime,
    block: Duration,
    name: Option<&'static str>,
) -> (tokio::task::JoinHandle<()>, Instant) {
    use loopwatch::WatchExt as _;
    let (tx, rx) = std::sync::mpsc::channel();
    let work = async move {
        tx.send(Instant::now()).expect("test waits for the start");
        std::thread::sleep(block);
    };
    let task = match name {
        Some(name) => rt.spawn(work.watched(name)),
        None => rt.spawn(work),
    };
    (task, rx.recv().expect("the task starts"))
}

impl Reports {
    /// Asserts that no stall was reported.
    pub fn assert_none(&self) {
        let all = self.all();
        assert!(all.is_empty(), "false stalls: {all:?}");
    }
}

/// A response read with [`http`].
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
    /// How long the answer took.
    pub took: Duration,
}

/// Sends `request` (raw bytes) to `addr` and reads the response to the end.
pub fn http(addr: std::net::SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let began = Instant::now();
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let took = began.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
        took,
    })
}

/// `GET path` from `addr`.
pub fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .expect("HTTP request")
}

/// A watchdog for call tests: blocking at 100 ms, slow at 300 ms, checks every 25 ms.
pub fn call_watchdog() -> Watchdog {
    Watchdog::builder()
        .stall_threshold(Duration::from_secs(5))
        .blocking_threshold(Duration::from_millis(100))
        .slow_call_threshold(Duration::from_millis(300))
        .check_interval(Duration::from_millis(25))
        .start()
        .expect("watchdog starts")
}

/// The counts of call `name` once `calls` calls show in the health snapshot
/// (refreshed at every check), or as they stand after a second.
pub fn call_counts(w: &Watchdog, name: &str, calls: u64) -> loopwatch::CallCounts {
    let mut found = loopwatch::CallCounts::default();
    wait_until(Duration::from_secs(1), || {
        found = w.health().calls.get(name).copied().unwrap_or_default();
        found.calls >= calls
    });
    found
}

/// Whether this process may sample its own threads with `perf_event_open`
/// (a task-clock event, user code only): what loopwatch needs for the stack
/// of a thread on a CPU.
#[cfg(target_os = "linux")]
pub fn perf_available() -> bool {
    // `struct perf_event_attr` (128 bytes): type, size, config, ..., flags.
    let mut attr = [0u64; 16];
    attr[0] = 1 | (128 << 32); // PERF_TYPE_SOFTWARE, size
    attr[1] = 1; // PERF_COUNT_SW_TASK_CLOCK
    attr[2] = 1_000_000; // sample_period
    attr[5] = 1 | (1 << 5) | (1 << 6); // disabled, exclude_kernel, exclude_hv
                                       // SAFETY: a raw syscall with a zero-filled attribute struct of its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0 as libc::c_long,
            -1 as libc::c_long,
            -1 as libc::c_long,
            0 as libc::c_ulong,
        )
    };
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd as libc::c_int) };
    }
    fd >= 0
}

/// Runs test `name` of this test binary again in a child process with
/// `LOOPWATCH_TEST_CHILD` set, and asserts that it passed: for tests that
/// change the whole process (a seccomp filter, a mount namespace). Returns
/// `true` in the child, where the test does its work.
pub fn in_child_process(name: &str) -> bool {
    if std::env::var_os("LOOPWATCH_TEST_CHILD").is_some() {
        return true;
    }
    run_child_process(name, &[("LOOPWATCH_TEST_CHILD", "1")]);
    false
}

/// Runs test `name` of this test binary in a child process with `env` set,
/// asserts that it passed, and returns its output.
pub fn run_child_process(name: &str, env: &[(&str, &str)]) -> String {
    let (code, text) = child_process(name, env);
    assert!(
        code == Some(0) && text.contains("1 passed"),
        "the child process running {name} failed:\n{text}"
    );
    text
}

/// Runs test `name` of this test binary in a child process with `env` set;
/// returns its exit status and its output (stdout, then stderr).
pub fn child_process(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
