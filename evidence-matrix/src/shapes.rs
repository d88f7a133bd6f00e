//! The shapes real code takes around a blocking call: a thin wrapper whose
//! last act is the call (compiled into a jump, a tail call, in optimized
//! builds, so that its frame is gone while the call blocks), chains of
//! them, calls through the PLT, through function pointers and trait
//! objects, generic, cold and closure wrappers, and last acts that are a
//! lock, a wait or a read.
//!
//! Each shape calls [`truth`] in the function that must be the culprit, just
//! before its last act; the wrappers are `#[inline(never)]`, so that they
//! stay functions of their own, and nothing follows the blocking call in
//! them, so that the compiler may turn it into a jump.

use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::cases::{block, contend, late_connection, make_fifo, truth, waited};

/// A FIFO nobody opens for writing until [`block`] has passed; then a
/// writer opens it, writes `data` and closes it. Removed when dropped.
pub(crate) struct Fifo {
    path: PathBuf,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Fifo {
    pub(crate) fn new(data: &'static [u8]) -> Fifo {
        let path = make_fifo();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(block());
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all(data).unwrap();
            })
        };
        Fifo {
            path,
            writer: Some(writer),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A pipe whose write end is written one byte after [`block`].
fn late_pipe() -> (libc::c_int, std::thread::JoinHandle<()>) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe into an array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let write_end = fds[1];
    let writer = std::thread::spawn(move || {
        std::thread::sleep(block());
        // SAFETY: our own pipe's write end and a one-byte buffer.
        unsafe {
            libc::write(write_end, b"x".as_ptr().cast(), 1);
            libc::close(write_end);
        }
    });
    (fds[0], writer)
}

// 1. A tail call into the standard library.
#[inline(never)]
pub(crate) fn load_order() {
    truth();
    std::thread::sleep(block())
}

pub(crate) fn tail_sleep() -> String {
    load_order();
    black_box("slept".to_owned())
}

// 2. A tail call into `fs::read_to_string`, blocked opening a FIFO.
#[inline(never)]
pub(crate) fn read_config(path: &Path) -> std::io::Result<String> {
    truth();
    std::fs::read_to_string(path)
}

pub(crate) fn tail_read_to_string() -> String {
    let fifo = Fifo::new(b"x");
    let text = read_config(fifo.path()).unwrap();
    black_box(format!("read {text}"))
}

// 3. `File::open` on a FIFO as the last act.
#[inline(never)]
pub(crate) fn open_fifo(path: &Path) -> std::io::Result<std::fs::File> {
    truth();
    std::fs::File::open(path)
}

pub(crate) fn tail_file_open() -> String {
    let fifo = Fifo::new(b"");
    let opened = open_fifo(fifo.path()).is_ok();
    black_box(if opened { "opened" } else { "failed" }.to_owned())
}

// 4. A tail call into a C library through the PLT.
#[inline(never)]
pub(crate) fn naps(us: libc::c_uint) -> libc::c_int {
    truth();
    // SAFETY: usleep has no preconditions.
    unsafe { libc::usleep(us) }
}

pub(crate) fn tail_usleep() -> String {
    let us = u32::try_from(block().as_micros()).unwrap();
    let rc = naps(black_box(us));
    black_box(format!("returned {rc}"))
}

// 5. A tail call to another application function, which blocks.
#[inline(never)]
pub(crate) fn fetch_rows() {
    truth();
    std::thread::sleep(block());
    black_box(());
}

#[inline(never)]
pub(crate) fn handle_request() {
    fetch_rows()
}

pub(crate) fn tail_app() -> String {
    handle_request();
    black_box("slept".to_owned())
}

// 6. A chain of two tail calls: `serve` jumps to `route`, which jumps to
// `sleep`.
#[inline(never)]
pub(crate) fn route() {
    truth();
    // Not the same code as `load_order`'s, which the compiler would merge.
    std::thread::sleep(block() + Duration::from_millis(1))
}

#[inline(never)]
pub(crate) fn serve() {
    route()
}

pub(crate) fn tail_chain() -> String {
    serve();
    black_box("slept".to_owned())
}

// 7. `Mutex::lock` as the last act.
#[inline(never)]
pub(crate) fn take_lock(
    lock: &Mutex<u32>,
) -> std::sync::LockResult<std::sync::MutexGuard<'_, u32>> {
    truth();
    lock.lock()
}

pub(crate) fn mutex_last() -> String {
    let lock = Arc::new(Mutex::new(0));
    let value = contend(&lock, block(), |l| *take_lock(l).unwrap());
    black_box(format!("locked {value}"))
}

// 8. `Condvar::wait_timeout` as the last act.
type Waited<'a> = std::sync::LockResult<(
    std::sync::MutexGuard<'a, bool>,
    std::sync::WaitTimeoutResult,
)>;

#[inline(never)]
pub(crate) fn wait_ready<'a>(
    ready: &Condvar,
    guard: std::sync::MutexGuard<'a, bool>,
) -> Waited<'a> {
    truth();
    ready.wait_timeout(guard, block())
}

pub(crate) fn condvar_last() -> String {
    let pair = (Mutex::new(false), Condvar::new());
    let (_guard, timeout) = wait_ready(&pair.1, pair.0.lock().unwrap()).unwrap();
    black_box(waited(timeout))
}

// 9. A generic wrapper.
#[inline(never)]
pub(crate) fn pause_for<D: Into<Duration>>(d: D) {
    truth();
    std::thread::sleep(d.into())
}

pub(crate) fn generic_wrapper() -> String {
    pause_for(black_box(block()));
    black_box("slept".to_owned())
}

// 10. A closure passed to `Option::map`.
#[inline(never)]
pub(crate) fn maybe_wait(d: Option<Duration>) {
    let _ = d.map(|d| {
        truth();
        std::thread::sleep(d)
    });
}

pub(crate) fn option_map() -> String {
    maybe_wait(black_box(Some(block())));
    black_box("slept".to_owned())
}

// 11. A `Box<dyn FnOnce>`.
#[inline(never)]
pub(crate) fn run_job(job: Box<dyn FnOnce() + Send>) {
    job()
}

#[inline(never)]
pub(crate) fn boxed_job() -> String {
    let d = black_box(block());
    run_job(black_box(Box::new(move || {
        truth();
        std::thread::sleep(d);
        black_box(());
    })));
    black_box("slept".to_owned())
}

#[inline(never)]
pub(crate) fn boxed_job_tail() -> String {
    let d = black_box(block());
    run_job(black_box(Box::new(move || {
        truth();
        std::thread::sleep(d)
    })));
    black_box("slept".to_owned())
}

// 12. A `#[cold]` function.
#[cold]
#[inline(never)]
pub(crate) fn recover_slowly() {
    truth();
    // Not the same code as another wrapper's: functions with the same
    // code are merged by the compiler, and named after one of them.
    std::thread::sleep(block() + Duration::from_millis(2))
}

pub(crate) fn cold_fn() -> String {
    recover_slowly();
    black_box("slept".to_owned())
}

// 13. A function inside `catch_unwind`.
#[inline(never)]
pub(crate) fn guarded() -> std::thread::Result<()> {
    std::panic::catch_unwind(|| {
        truth();
        // Not the same code as another wrapper's (with `panic = "abort"`
        // the closure is `load_order`'s code, and would be merged with it).
        std::thread::sleep(block() + Duration::from_millis(3))
    })
}

pub(crate) fn catch_unwind() -> String {
    let ok = guarded().is_ok();
    black_box(if ok { "slept" } else { "panicked" }.to_owned())
}

// 14. An `async fn` whose last await is the blocking call.
pub(crate) async fn lookup() {
    truth();
    std::thread::sleep(block())
}

pub(crate) async fn resolve() {
    lookup().await
}

pub(crate) async fn async_last_await() -> String {
    resolve().await;
    black_box("slept".to_owned())
}

// 15. An indirect tail call: through a trait object the wrapper cannot see.
#[inline(never)]
pub(crate) fn apply(f: &dyn Fn()) {
    f()
}

#[inline(never)]
pub(crate) fn dyn_fn() -> String {
    let d = black_box(block());
    // Through `black_box`, so that the call is not made direct.
    // Ends unlike `boxed_job`'s closure (`black_box(d)`, not
    // `black_box(())`): two closures of the same code are merged into one
    // function by LLVM, named after either, as `panic = "abort"` builds show.
    apply(black_box(&move || {
        truth();
        std::thread::sleep(d);
        black_box(d);
    }));
    black_box("slept".to_owned())
}

// 16. An indirect tail call through a function pointer.
#[inline(never)]
pub(crate) fn dispatch(handler: fn()) {
    handler()
}

#[inline(never)]
pub(crate) fn sleeping_handler() {
    truth();
    std::thread::sleep(block());
    black_box(());
}

pub(crate) fn fn_pointer() -> String {
    dispatch(black_box(sleeping_handler));
    black_box("slept".to_owned())
}

// 17. A repository method whose last act is the driver's read.
pub(crate) struct Repo {
    conn: std::net::TcpStream,
}

impl Repo {
    #[inline(never)]
    pub(crate) fn fetch(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        truth();
        self.conn.read(buf)
    }
}

pub(crate) fn repo_method() -> String {
    let (conn, server) = late_connection();
    let mut repo = Repo { conn };
    let mut buf = [0u8; 8];
    let n = repo.fetch(&mut buf).unwrap();
    server.join().unwrap();
    black_box(format!("read {n}"))
}

// 18. `read(2)` of a pipe through the PLT as the last act.
#[inline(never)]
pub(crate) fn read_pipe(fd: libc::c_int, buf: &mut [u8]) -> isize {
    truth();
    // SAFETY: our own descriptor and buffer.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

pub(crate) fn pipe_read() -> String {
    let (fd, writer) = late_pipe();
    let mut buf = [0u8; 8];
    let n = read_pipe(fd, &mut buf);
    writer.join().unwrap();
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    black_box(format!("read {n}"))
}

// 19. `poll(2)` through the PLT as the last act, timing out.
#[inline(never)]
pub(crate) fn wait_readable(fd: &mut libc::pollfd, ms: libc::c_int) -> libc::c_int {
    truth();
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(fd, 1, ms) }
}

pub(crate) fn poll_last() -> String {
    // A pipe nobody writes to: the poll times out after the block.
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe into an array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let mut pfd = libc::pollfd {
        fd: fds[0],
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(block().as_millis()).unwrap();
    let rc = wait_readable(&mut pfd, ms);
    // SAFETY: our own descriptors.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    black_box(format!("returned {rc}"))
}

// 20. A channel's `recv` as the last act.
#[inline(never)]
pub(crate) fn next_message(
    rx: &std::sync::mpsc::Receiver<u8>,
) -> Result<u8, std::sync::mpsc::RecvError> {
    truth();
    rx.recv()
}

pub(crate) fn recv_last() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(block());
        tx.send(7u8).unwrap();
    });
    let got = next_message(&rx).unwrap();
    sender.join().unwrap();
    black_box(format!("got {got}"))
}

// 21. A thread's `join` as the last act.
#[inline(never)]
pub(crate) fn wait_worker(worker: std::thread::JoinHandle<u8>) -> std::thread::Result<u8> {
    truth();
    worker.join()
}

pub(crate) fn join_last() -> String {
    let worker = std::thread::spawn(|| {
        std::thread::sleep(block());
        7u8
    });
    black_box(format!("joined {}", wait_worker(worker).unwrap()))
}

// 22. `Barrier::wait` as the last act.
#[inline(never)]
pub(crate) fn meet(barrier: &Barrier) -> std::sync::BarrierWaitResult {
    truth();
    barrier.wait()
}

pub(crate) fn barrier_last() -> String {
    let barrier = Arc::new(Barrier::new(2));
    let other = {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            std::thread::sleep(block());
            barrier.wait();
        })
    };
    meet(&barrier);
    other.join().unwrap();
    black_box("met".to_owned())
}

// 23. `RwLock::read` as the last act, while a writer holds it.
#[inline(never)]
pub(crate) fn read_shared(
    lock: &RwLock<u32>,
) -> std::sync::LockResult<std::sync::RwLockReadGuard<'_, u32>> {
    truth();
    lock.read()
}

pub(crate) fn rwlock_read_last() -> String {
    let lock = Arc::new(RwLock::new(0u32));
    let held = Arc::new(Barrier::new(2));
    let writer = {
        let (lock, held) = (lock.clone(), held.clone());
        std::thread::spawn(move || {
            let mut guard = lock.write().unwrap();
            held.wait();
            std::thread::sleep(block());
            *guard += 1;
        })
    };
    held.wait();
    let value = *read_shared(&lock).unwrap();
    writer.join().unwrap();
    black_box(format!("read {value}"))
}

// 24. `park_timeout` as the last act.
#[inline(never)]
pub(crate) fn idle_until_woken() {
    truth();
    std::thread::park_timeout(block())
}

pub(crate) fn park_last() -> String {
    idle_until_woken();
    black_box("parked".to_owned())
}

// 25. A child's `wait` as the last act.
#[inline(never)]
pub(crate) fn reap(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    truth();
    child.wait()
}

pub(crate) fn child_wait_last() -> String {
    let secs = format!("{:.1}", block().as_secs_f64());
    let mut child = std::process::Command::new("sleep")
        .arg(secs)
        .spawn()
        .unwrap();
    let status = reap(&mut child).unwrap();
    black_box(format!("exit {}", status.code().unwrap_or(-1)))
}

// 26. A C function whose cleanup blocks while a panic unwinds through it,
// in a `.cold` part of its own (`csrc/cold.c`): the walk passes through the
// part, which begins inside the function's frame.
extern "C-unwind" {
    fn run_holding(
        held: *mut libc::c_int,
        us: libc::c_uint,
        work: extern "C-unwind" fn(),
    ) -> libc::c_int;
}

/// The work done holding the slot: it notes the truth and panics (without
/// the panic hook, which would print).
extern "C-unwind" fn fails_holding() {
    truth();
    std::panic::resume_unwind(Box::new(()));
}

#[inline(never)]
pub(crate) fn unwinds_through_c() -> String {
    let mut held: libc::c_int = 0;
    let us = u32::try_from(block().as_micros()).unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: a valid pointer to our own int, and work that unwinds
        // through C code built with exceptions.
        unsafe { run_holding(&mut held, us, fails_holding) }
    }))
    .is_err();
    black_box(format!("unwound {unwound}, released {}", held == 0))
}

// 27. Code without unwind tables (hand-written assembly, code generated at
// run time, C built without them): the walk stops at its first frame, and
// the stuck worker must still be found, with what was walked.
std::arch::global_asm!(
    ".pushsection .text.loopwatch_matrix_no_unwind_info,\"ax\",@progbits",
    ".globl loopwatch_matrix_sleeps_without_unwind_info",
    ".type loopwatch_matrix_sleeps_without_unwind_info,@function",
    "loopwatch_matrix_sleeps_without_unwind_info:",
    "xor %esi, %esi",
    "mov $35, %eax",
    "syscall",
    "ret",
    ".size loopwatch_matrix_sleeps_without_unwind_info, .-loopwatch_matrix_sleeps_without_unwind_info",
    ".popsection",
    options(att_syntax),
);

extern "C" {
    /// `nanosleep(time, NULL)` by a system call, in code no unwind table
    /// describes.
    fn loopwatch_matrix_sleeps_without_unwind_info(time: *const libc::timespec) -> libc::c_long;
}

#[inline(never)]
pub(crate) fn no_unwind_info() -> String {
    let d = block();
    let time = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    };
    truth();
    // SAFETY: a valid timespec; the function only makes the system call.
    let rc = unsafe { loopwatch_matrix_sleeps_without_unwind_info(&time) };
    black_box(format!("returned {rc}"))
}
