//! The ways a worker blocks: each case is application code that blocks for
//! [`block`] in a different way, returns what its call returned (to compare
//! with what it returns unwatched), and notes, just before it blocks, its
//! own callers as the standard library's unwinder sees them ([`truth`]).

use std::future::Future;
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Barrier, Condvar, Mutex, RwLock};
use std::time::Duration;

/// How long each case blocks, in milliseconds (set from the command line).
pub(crate) static BLOCK_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(3000);

/// How long each case blocks.
pub(crate) fn block() -> Duration {
    Duration::from_millis(BLOCK_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// The callers of the blocking function as `std::backtrace` sees them,
/// captured by [`truth`] (and named only after the call, in [`callers`]).
pub(crate) static TRUTH: Mutex<Option<std::backtrace::Backtrace>> = Mutex::new(None);

/// Notes the calling function's callers (itself first): the frames are
/// captured now, named later.
#[inline(never)]
pub(crate) fn truth() {
    *TRUTH.lock().unwrap() = Some(std::backtrace::Backtrace::force_capture());
    *crate::BLOCKED_AT.lock().unwrap() = Some(std::time::Instant::now());
}

/// The names of the callers [`truth`] captured, innermost first.
pub(crate) fn callers() -> Vec<String> {
    let Some(bt) = TRUTH.lock().unwrap().take() else {
        return Vec::new();
    };
    bt.to_string()
        .lines()
        .filter_map(|l| {
            let (n, name) = l.trim_start().split_once(": ")?;
            n.parse::<usize>().ok()?;
            Some(name.trim().to_owned())
        })
        .skip_while(|n| !n.contains("cases::truth"))
        .skip(1)
        .collect()
}

/// A case: its name, what it returns unwatched, the function that must be
/// the report's culprit, and how it runs.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) expected: &'static str,
    pub(crate) culprit: &'static str,
    pub(crate) run: fn() -> Pin<Box<dyn Future<Output = String> + Send>>,
    /// Where it spends its time: [`Shape::Waits`] in the kernel,
    /// [`Shape::Runs`] its own code on a CPU, [`Shape::InKernel`] mostly
    /// inside system calls on a CPU.
    pub(crate) shape: Shape,
    /// Whether the worker is stuck (`false`: nothing may be reported).
    pub(crate) stalls: bool,
    /// The kinds of runtime it runs on (`None`: every kind).
    pub(crate) kinds: Option<&'static [&'static str]>,
    /// The application's functions that may stand in its stack as
    /// tail-call frames (an optimized build turns their last call into a
    /// jump); each must stand in the stack, as a tail call or a frame of
    /// its own. None is a tail call in a debug build.
    pub(crate) tail: &'static [&'static str],
    /// The standard library's and libc's functions that may stand in its
    /// stack as tail-call frames, by the start of their names: each is
    /// known to end in a jump to the function shown inside it (read from
    /// their code).
    pub(crate) plumbing_tail: &'static [&'static str],
    /// The culprit in a build without debug info, where it is not the
    /// function the thread's own unwinder names first (C code whose line
    /// tables are gone with the rest).
    pub(crate) culprit_without_debuginfo: Option<&'static str>,
    /// The culprit in an optimized build, where a tail call through a jump
    /// that names no target hides the function that blocks (see
    /// `boxed_fn_once_tail`).
    pub(crate) culprit_when_optimized: Option<&'static str>,
    /// Whether its stack is partial: it blocks in code no unwind table
    /// describes, so the walk stops at the culprit, and the report must
    /// still find the thread and carry what was walked.
    pub(crate) partial: bool,
}

/// Where a case spends its time while it blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Shape {
    /// Waiting in the kernel: read from outside.
    Waits,
    /// On a CPU, in its own code most of the time: sampled by the kernel
    /// (no stack, with the reason, where `perf_event_open` is refused).
    Runs,
    /// On a CPU, inside system calls most of the time: a stack when the
    /// kernel's sample lands in user code, else none with the reason.
    InKernel,
}

macro_rules! sync_case {
    ($f:expr) => {
        || Box::pin(async { $f() })
    };
}

/// `Condvar::wait_timeout` ends in a jump to `wait_optional_timeout`.
const CONDVAR_TAIL: &[&str] = &["<std::sys::sync::condvar::futex::Condvar>::wait_timeout"];

/// glibc's `waitpid` jumps to `wait4`.
const WAITPID_TAIL: &[&str] = &["__waitpid", "waitpid"];

/// Every case.
pub(crate) fn all() -> Vec<Case> {
    const P: &str = "loopwatch_evidence_matrix::cases::";
    const S: &str = "loopwatch_evidence_matrix::shapes::";
    let c = |name, expected, culprit: &'static str, run| Case {
        name,
        expected,
        culprit: if culprit.starts_with('<') {
            culprit
        } else {
            Box::leak(format!("{P}{culprit}").into_boxed_str())
        },
        run,
        shape: Shape::Waits,
        stalls: true,
        kinds: None,
        tail: &[],
        plumbing_tail: &[],
        culprit_without_debuginfo: None,
        culprit_when_optimized: None,
        partial: false,
    };
    let shaped = |case: Case, shape| Case { shape, ..case };
    // The shapes around a blocking call (`shapes`): the culprit and the
    // functions that may be tail-call frames, by their name in that module.
    let t = |name, expected, culprit: &str, tail: &[&str], run| Case {
        culprit: Box::leak(format!("{S}{culprit}").into_boxed_str()),
        tail: Box::leak(
            tail.iter()
                .map(|f| &*Box::leak(format!("{S}{f}").into_boxed_str()))
                .collect::<Vec<&'static str>>()
                .into_boxed_slice(),
        ),
        ..c(name, expected, "", run)
    };
    let mut all = vec![
        c("sleep", "slept", "sleeps", sync_case!(sleeps)),
        c("mutex_first", "locked 1", "locks_held::{{closure}}", sync_case!(locks_first)),
        c("mutex_later", "locked 2", "locks_held::{{closure}}", sync_case!(locks_later)),
        Case {
            // `Condvar::wait_timeout` ends in a jump to `wait_optional_timeout`.
            plumbing_tail: CONDVAR_TAIL,
            ..c("condvar", "timed out", "waits_on_condvar", sync_case!(waits_on_condvar))
        },
        c("rwlock", "wrote 1", "writes_rwlock", sync_case!(writes_rwlock)),
        c("fifo", "read 1", "reads_fifo", sync_case!(reads_fifo)),
        c("tcp", "read 1", "reads_tcp", sync_case!(reads_tcp)),
        Case {
            plumbing_tail: WAITPID_TAIL,
            ..c("child", "exit 0", "waits_for_child", sync_case!(waits_for_child))
        },
        Case {
            // `qsort` jumps to `qsort_r`.
            plumbing_tail: &["qsort"],
            ..c("c_callback", "sorted", "compares", sync_case!(sorts))
        },
        c(
            "dyn_trait",
            "slept",
            "<loopwatch_evidence_matrix::cases::Sleeper as loopwatch_evidence_matrix::cases::Wait>::wait",
            sync_case!(through_dyn),
        ),
        c("closure", "slept", "with_closure::{{closure}}", sync_case!(with_closure)),
        c("generic", "slept 7", "waits_generic", sync_case!(generic)),
        c("async_chain", "slept", "inner::{{closure}}", || Box::pin(outer())),
        c("instrument_blocking", "slept", "instrumented", sync_case!(instrumented)),
        c("retry_loop", "gave up after 30", "retries", sync_case!(retries)),
        // What a look at a thread on a CPU must never change.
        shaped(c("spin", "spun", "spins", sync_case!(spins)), Shape::Runs),
        shaped(
            c("getrandom", "0 short", "draws_random", sync_case!(draws_random)),
            Shape::InKernel,
        ),
        shaped(
            c("urandom", "0 short", "reads_urandom", sync_case!(reads_urandom)),
            Shape::InKernel,
        ),
        shaped(
            c("sendfile", "0 short", "sends_file", sync_case!(sends_file)),
            Shape::InKernel,
        ),
        shaped(
            c("spin_poll", "0 interrupted", "spins_then_polls", sync_case!(spins_then_polls)),
            Shape::Runs,
        ),
        shaped(
            c(
                "spin_nanosleep",
                "0 interrupted",
                "spins_then_sleeps",
                sync_case!(spins_then_sleeps),
            ),
            Shape::Runs,
        ),
        Case {
            stalls: false,
            kinds: Some(&["current"]),
            ..shaped(
                c("undriven", "0 short", "draws_random", || Box::pin(async { String::new() })),
                Shape::InKernel,
            )
        },
    ];
    use crate::shapes as s;
    all.extend([
        t(
            "tail_sleep",
            "slept",
            "load_order",
            &["load_order"],
            sync_case!(s::tail_sleep),
        ),
        t(
            "tail_read_to_string",
            "read x",
            "read_config",
            &["read_config"],
            sync_case!(s::tail_read_to_string),
        ),
        t(
            "tail_file_open",
            "opened",
            "open_fifo",
            &["open_fifo"],
            sync_case!(s::tail_file_open),
        ),
        t(
            "tail_usleep",
            "returned 0",
            "naps",
            &["naps"],
            sync_case!(s::tail_usleep),
        ),
        t(
            "tail_app",
            "slept",
            "fetch_rows",
            &["handle_request"],
            sync_case!(s::tail_app),
        ),
        t(
            "tail_chain",
            "slept",
            "route",
            &["route", "serve"],
            sync_case!(s::tail_chain),
        ),
        t(
            "mutex_last",
            "locked 1",
            "take_lock",
            &["take_lock"],
            sync_case!(s::mutex_last),
        ),
        Case {
            plumbing_tail: CONDVAR_TAIL,
            ..t(
                "condvar_last",
                "timed out",
                "wait_ready",
                &["wait_ready"],
                sync_case!(s::condvar_last),
            )
        },
        t(
            "generic_wrapper",
            "slept",
            "pause_for",
            &["pause_for"],
            sync_case!(s::generic_wrapper),
        ),
        t(
            "option_map",
            "slept",
            "maybe_wait",
            &["maybe_wait"],
            sync_case!(s::option_map),
        ),
        t(
            "boxed_fn_once",
            "slept",
            "boxed_job::{{closure}}",
            &[],
            sync_case!(s::boxed_job),
        ),
        // The closure's last act is the call, and the call that reached it
        // went through the box's vtable, which names no target: in an
        // optimized build its frame is gone without a trace, and the
        // culprit is the function that called it (the limit the README
        // states).
        Case {
            culprit_when_optimized: Some("loopwatch_evidence_matrix::shapes::run_job"),
            ..t(
                "boxed_fn_once_tail",
                "slept",
                "boxed_job_tail::{{closure}}",
                &[],
                sync_case!(s::boxed_job_tail),
            )
        },
        t(
            "cold_fn",
            "slept",
            "recover_slowly",
            &["recover_slowly"],
            sync_case!(s::cold_fn),
        ),
        t(
            "catch_unwind",
            "slept",
            "guarded",
            // With `panic = "abort"` the closure is inlined into `guarded`,
            // which then jumps to `sleep`.
            &["guarded", "guarded::{{closure}}"],
            sync_case!(s::catch_unwind),
        ),
        t(
            "async_last_await",
            "slept",
            "lookup::{{closure}}",
            &[],
            || Box::pin(s::async_last_await()),
        ),
        t(
            "dyn_fn",
            "slept",
            "dyn_fn::{{closure}}",
            &["apply"],
            sync_case!(s::dyn_fn),
        ),
        t(
            "fn_pointer",
            "slept",
            "sleeping_handler",
            &["dispatch"],
            sync_case!(s::fn_pointer),
        ),
        t(
            "repo_method",
            "read 1",
            "Repo::fetch",
            &["Repo::fetch"],
            sync_case!(s::repo_method),
        ),
        t(
            "pipe_read",
            "read 1",
            "read_pipe",
            &["read_pipe"],
            sync_case!(s::pipe_read),
        ),
        t(
            "poll_last",
            "returned 0",
            "wait_readable",
            &["wait_readable"],
            sync_case!(s::poll_last),
        ),
        t(
            "recv_last",
            "got 7",
            "next_message",
            &["next_message"],
            sync_case!(s::recv_last),
        ),
        Case {
            // `pthread_join` jumps to `__pthread_clockjoin_ex`, and glibc's
            // futex wait to its common part (a local function, unnamed).
            plumbing_tail: &["pthread_join", "libc.so.6+0x"],
            ..t(
                "join_last",
                "joined 7",
                "wait_worker",
                &["wait_worker"],
                sync_case!(s::join_last),
            )
        },
        t(
            "barrier_last",
            "met",
            "meet",
            &["meet"],
            sync_case!(s::barrier_last),
        ),
        t(
            "rwlock_read_last",
            "read 1",
            "read_shared",
            &["read_shared"],
            sync_case!(s::rwlock_read_last),
        ),
        t(
            "park_last",
            "parked",
            "idle_until_woken",
            &["idle_until_woken"],
            sync_case!(s::park_last),
        ),
        Case {
            plumbing_tail: WAITPID_TAIL,
            ..t(
                "child_wait_last",
                "exit 0",
                "reap",
                &["reap"],
                sync_case!(s::child_wait_last),
            )
        },
        Case {
            culprit: "release",
            culprit_without_debuginfo: Some("run_holding.cold"),
            // It blocks while a panic unwinds: not with `panic = "abort"`.
            kinds: if cfg!(panic = "abort") {
                Some(&[])
            } else {
                None
            },
            ..t(
                "c_cold_part",
                "unwound true, released true",
                "",
                &[],
                sync_case!(s::unwinds_through_c),
            )
        },
        Case {
            culprit: "loopwatch_matrix_sleeps_without_unwind_info",
            partial: true,
            ..t(
                "no_unwind_info",
                "returned 0",
                "",
                &[],
                sync_case!(s::no_unwind_info),
            )
        },
    ]);
    all
}

/// The cases a look at a thread on a CPU could disturb.
pub(crate) const ON_CPU: &[&str] = &[
    "spin",
    "getrandom",
    "urandom",
    "sendfile",
    "spin_poll",
    "spin_nanosleep",
    "undriven",
];

/// Spins in its own code (clock reads and compares).
#[inline(never)]
fn spins() -> String {
    truth();
    let limit = block();
    let began = std::time::Instant::now();
    while began.elapsed() < limit {
        std::hint::spin_loop();
    }
    black_box("spun".to_owned())
}

const BIG: usize = 64 << 20;

/// Fills 64 MiB with `getrandom` again and again; counts short returns.
#[inline(never)]
pub(crate) fn draws_random() -> String {
    truth();
    let mut buf = vec![0u8; BIG];
    let limit = block();
    let began = std::time::Instant::now();
    let mut short = 0;
    while began.elapsed() < limit {
        // SAFETY: getrandom into our own buffer of that length.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        short += usize::from(n != BIG as isize);
    }
    black_box(format!("{short} short"))
}

/// Reads 64 MiB from `/dev/urandom` again and again; counts short reads.
#[inline(never)]
fn reads_urandom() -> String {
    let mut file = std::fs::File::open("/dev/urandom").unwrap();
    truth();
    let mut buf = vec![0u8; BIG];
    let limit = block();
    let began = std::time::Instant::now();
    let mut short = 0;
    while began.elapsed() < limit {
        // One read(2) each, as `Read::read` is.
        let n = file.read(&mut buf).unwrap_or(0);
        short += usize::from(n != BIG);
    }
    black_box(format!("{short} short"))
}

/// Copies a 64 MiB in-memory file to another with `sendfile`, again and
/// again; counts short copies.
#[inline(never)]
fn sends_file() -> String {
    // SAFETY: memfd_create with a literal name; the descriptors are ours.
    let (from, to) = unsafe {
        (
            libc::memfd_create(c"from".as_ptr(), 0),
            libc::memfd_create(c"to".as_ptr(), 0),
        )
    };
    assert!(from >= 0 && to >= 0);
    // SAFETY: sizing our own memfd.
    unsafe { libc::ftruncate(from, BIG as libc::off_t) };
    truth();
    let limit = block();
    let began = std::time::Instant::now();
    let mut short = 0;
    while began.elapsed() < limit {
        let mut offset: libc::off_t = 0;
        // SAFETY: both descriptors are open; the kernel copies.
        let n = unsafe {
            libc::lseek(to, 0, libc::SEEK_SET);
            libc::sendfile(to, from, &mut offset, BIG)
        };
        short += usize::from(n != BIG as isize);
    }
    // SAFETY: closing our descriptors.
    unsafe {
        libc::close(from);
        libc::close(to);
    }
    black_box(format!("{short} short"))
}

/// Spins 300 us in its own code, then waits 1 ms in `poll(2)`, again and
/// again; counts the polls that did not time out.
#[inline(never)]
fn spins_then_polls() -> String {
    truth();
    let limit = block();
    let began = std::time::Instant::now();
    let mut interrupted = 0;
    while began.elapsed() < limit {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_micros(300) {
            std::hint::spin_loop();
        }
        // SAFETY: poll with no descriptors is a 1 ms sleep.
        let rc = unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
        interrupted += usize::from(rc != 0);
    }
    black_box(format!("{interrupted} interrupted"))
}

/// Spins 300 us in its own code, then sleeps 1 ms in `nanosleep`, again and
/// again; counts the sleeps cut short.
#[inline(never)]
fn spins_then_sleeps() -> String {
    truth();
    let limit = block();
    let began = std::time::Instant::now();
    let mut interrupted = 0;
    while began.elapsed() < limit {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_micros(300) {
            std::hint::spin_loop();
        }
        let ask = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        let mut left = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: nanosleep with valid timespecs.
        let rc = unsafe { libc::nanosleep(&ask, &mut left) };
        interrupted += usize::from(rc != 0);
    }
    black_box(format!("{interrupted} interrupted"))
}

#[inline(never)]
fn sleeps() -> String {
    truth();
    std::thread::sleep(block());
    black_box("slept".to_owned())
}

/// Locks `lock` while another thread holds it for `hold`.
pub(crate) fn contend(
    lock: &Arc<Mutex<u32>>,
    hold: Duration,
    mut locked: impl FnMut(&Arc<Mutex<u32>>) -> u32,
) -> u32 {
    let held = Arc::new(Barrier::new(2));
    let holder = {
        let (lock, held) = (lock.clone(), held.clone());
        std::thread::spawn(move || {
            let mut guard = lock.lock().unwrap();
            held.wait();
            std::thread::sleep(hold);
            *guard += 1;
        })
    };
    held.wait();
    let value = locked(lock);
    holder.join().unwrap();
    value
}

/// Locks a mutex another thread holds for the whole block.
fn locks_held(lock: &Arc<Mutex<u32>>) -> String {
    let value = contend(lock, block(), |l| {
        truth();
        let v = *l.lock().unwrap();
        black_box(v)
    });
    format!("locked {value}")
}

#[inline(never)]
fn locks_first() -> String {
    locks_held(&Arc::new(Mutex::new(0)))
}

/// A contended lock after an earlier one (its frames are stale below).
#[inline(never)]
fn locks_later() -> String {
    let lock = Arc::new(Mutex::new(0));
    contend(&lock, Duration::from_millis(50), |l| *l.lock().unwrap());
    locks_held(&lock)
}

#[inline(never)]
fn waits_on_condvar() -> String {
    let pair = (Mutex::new(false), Condvar::new());
    let guard = pair.0.lock().unwrap();
    truth();
    let (_guard, timeout) = pair.1.wait_timeout(guard, block()).unwrap();
    black_box(waited(timeout))
}

/// What a wait on a condition variable ended with.
pub(crate) fn waited(timeout: std::sync::WaitTimeoutResult) -> String {
    if timeout.timed_out() {
        "timed out"
    } else {
        "woken"
    }
    .to_owned()
}

#[inline(never)]
fn writes_rwlock() -> String {
    let lock = Arc::new(RwLock::new(0u32));
    let held = Arc::new(Barrier::new(2));
    let reader = {
        let (lock, held) = (lock.clone(), held.clone());
        std::thread::spawn(move || {
            let guard = lock.read().unwrap();
            held.wait();
            std::thread::sleep(block());
            drop(guard);
        })
    };
    held.wait();
    truth();
    let mut guard = lock.write().unwrap();
    *guard += 1;
    let value = *guard;
    drop(guard);
    reader.join().unwrap();
    black_box(format!("wrote {value}"))
}

/// A new FIFO in the temporary directory, named for this process.
pub(crate) fn make_fifo() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "loopwatch-matrix-fifo-{}-{}",
        std::process::id(),
        crate::unique()
    ));
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    path
}

#[inline(never)]
fn reads_fifo() -> String {
    let path = make_fifo();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::thread::sleep(block());
            f.write_all(b"x").unwrap();
        })
    };
    let mut file = std::fs::File::open(&path).unwrap();
    let mut buf = [0u8; 8];
    truth();
    let n = file.read(&mut buf).unwrap();
    writer.join().unwrap();
    let _ = std::fs::remove_file(&path);
    black_box(format!("read {n}"))
}

/// A connection on loopback whose peer writes one byte after [`block`]; the
/// peer's thread is joined after the read.
pub(crate) fn late_connection() -> (std::net::TcpStream, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::thread::sleep(block());
        s.write_all(b"x").unwrap();
    });
    (std::net::TcpStream::connect(addr).unwrap(), server)
}

#[inline(never)]
fn reads_tcp() -> String {
    let (mut stream, server) = late_connection();
    let mut buf = [0u8; 8];
    truth();
    let n = stream.read(&mut buf).unwrap();
    server.join().unwrap();
    black_box(format!("read {n}"))
}

#[inline(never)]
fn waits_for_child() -> String {
    let secs = format!("{:.1}", block().as_secs_f64());
    let mut child = std::process::Command::new("sleep")
        .arg(secs)
        .spawn()
        .unwrap();
    truth();
    let status = child.wait().unwrap();
    black_box(format!("exit {}", status.code().unwrap_or(-1)))
}

/// A comparator that blocks, called by libc's `qsort`: C frames between
/// this and [`sorts`].
extern "C" fn compares(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
    static BLOCKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !BLOCKED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        truth();
        std::thread::sleep(block());
    }
    // SAFETY: qsort hands pointers to two elements of the i32 array.
    let (a, b) = unsafe { (*a.cast::<i32>(), *b.cast::<i32>()) };
    a.cmp(&b) as libc::c_int
}

#[inline(never)]
fn sorts() -> String {
    let mut values = [3i32, 1, 2];
    // SAFETY: an i32 array, its length and size, and a comparator of i32s.
    unsafe {
        libc::qsort(
            values.as_mut_ptr().cast(),
            values.len(),
            std::mem::size_of::<i32>(),
            Some(compares),
        );
    }
    black_box(
        if values == [1, 2, 3] {
            "sorted"
        } else {
            "unsorted"
        }
        .to_owned(),
    )
}

/// Something that waits, called through a trait object.
pub(crate) trait Wait {
    fn wait(&self) -> String;
}

struct Sleeper;

impl Wait for Sleeper {
    #[inline(never)]
    fn wait(&self) -> String {
        truth();
        std::thread::sleep(block());
        black_box("slept".to_owned())
    }
}

#[inline(never)]
fn through_dyn() -> String {
    let waiter: &dyn Wait = black_box(&Sleeper);
    waiter.wait()
}

#[inline(never)]
fn run_it<F: FnOnce() -> String>(f: F) -> String {
    f()
}

#[inline(never)]
fn with_closure() -> String {
    let block = black_box(block());
    run_it(move || {
        truth();
        std::thread::sleep(block);
        black_box("slept".to_owned())
    })
}

#[inline(never)]
fn waits_generic<T: std::fmt::Display>(value: T) -> String {
    truth();
    std::thread::sleep(block());
    black_box(format!("slept {value}"))
}

fn generic() -> String {
    waits_generic(black_box(7u8))
}

async fn inner() -> String {
    truth();
    std::thread::sleep(block());
    tokio::task::yield_now().await;
    black_box("slept".to_owned())
}

async fn outer() -> String {
    let out = inner().await;
    tokio::task::yield_now().await;
    out
}

#[loopwatch::instrument_blocking]
fn instrumented() -> String {
    truth();
    std::thread::sleep(block());
    black_box("slept".to_owned())
}

/// A call stuck in a retry loop that wakes every 100 ms (as SQLite's busy
/// handler does): one poll, many short sleeps.
#[inline(never)]
fn retries() -> String {
    truth();
    let mut tries = 0;
    while tries < 30 {
        std::thread::sleep(block() / 30);
        tries += 1;
    }
    black_box(format!("gave up after {tries}"))
}
