//! Thread ids, and what the kernel says about a thread of this process
//! (`/proc/self/task/TID`), all without touching the thread. Every reader
//! answers `None` where the file cannot be read (not Linux, the thread is
//! gone, a hidden `/proc`).

/// How many times this process was forked into the one running (each child
/// adds one): a thread's cached id is good only for the generation it was
/// read in, since the thread that calls `fork()` goes on in the child under
/// another id.
#[cfg(target_os = "linux")]
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(target_os = "linux")]
thread_local! {
    /// The thread's id and the fork generation it was read in.
    static TID: std::cell::Cell<(u64, i64)> = const { std::cell::Cell::new((u64::MAX, 0)) };
}

/// Counts forks, so that a forked child reads its thread ids again.
#[cfg(target_os = "linux")]
extern "C" fn forked() {
    // An atomic add is async-signal-safe, as a fork handler must be.
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The calling thread's kernel id (0 while the thread is torn down, and
/// where there is no such id). Read once per thread (and again in a forked
/// child): one thread-local and one relaxed load after that.
pub fn current_tid() -> i64 {
    #[cfg(target_os = "linux")]
    {
        use std::sync::atomic::Ordering::Relaxed;
        static ATFORK: std::sync::Once = std::sync::Once::new();
        ATFORK.call_once(|| {
            // SAFETY: registers a child handler that only does an atomic add.
            unsafe { libc::pthread_atfork(None, None, Some(forked)) };
        });
        let generation = FORKS.load(Relaxed);
        TID.try_with(|cell| {
            let (seen, tid) = cell.get();
            if seen == generation {
                return tid;
            }
            // SAFETY: gettid has no preconditions.
            let tid = i64::from(unsafe { libc::gettid() });
            cell.set((generation, tid));
            tid
        })
        .unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Whether the thread is running or runnable (`R` in
/// `/proc/self/task/TID/stat`), rather than waiting in the kernel (a sleep,
/// a lock, blocking I/O).
pub fn on_cpu(tid: i64) -> Option<bool> {
    let stat = read(tid, "stat")?;
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    Some(state == 'R')
}

/// Where a thread waiting in the kernel stopped, from
/// `/proc/self/task/TID/syscall`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syscall {
    /// Waiting in the kernel: the whole line (to compare two readings), and
    /// the user stack pointer and program counter.
    Blocked {
        /// The whole line.
        line: String,
        /// The user stack pointer.
        sp: u64,
        /// The user program counter.
        pc: u64,
    },
    /// On a CPU: its registers cannot be read from outside.
    Running,
}

/// The thread's `/proc/self/task/TID/syscall`.
pub fn syscall(tid: i64) -> Option<Syscall> {
    parse_syscall(&read(tid, "syscall")?)
}

fn parse_syscall(text: &str) -> Option<Syscall> {
    let line = text.trim();
    if line == "running" {
        return Some(Syscall::Running);
    }
    // `NR ARG1 .. ARG6 SP PC`, or `-1 SP PC` when blocked outside a syscall.
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let sp = hex(fields[fields.len() - 2])?;
    let pc = hex(fields[fields.len() - 1])?;
    Some(Syscall::Blocked {
        line: line.to_owned(),
        sp,
        pc,
    })
}

/// A thread's times so far (`/proc/self/task/TID/schedstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// Time on a CPU, in ns.
    pub on_cpu_ns: u64,
    /// Time runnable and waiting for a CPU, in ns.
    pub waiting_ns: u64,
    /// How many times the thread has been put on a CPU: unchanged across
    /// two reads only if it did not run in between.
    pub timeslices: u64,
}

/// Thread `tid`'s times.
pub fn times(tid: i64) -> Option<Times> {
    parse_schedstat(&read(tid, "schedstat")?)
}

/// The one parser of `schedstat` (`on-CPU-ns waiting-ns timeslices`).
pub fn parse_schedstat(text: &str) -> Option<Times> {
    let mut it = text.split_whitespace();
    Some(Times {
        on_cpu_ns: it.next()?.parse().ok()?,
        waiting_ns: it.next()?.parse().ok()?,
        timeslices: it.next()?.parse().ok()?,
    })
}

/// The calling thread's `schedstat`, kept open: a read of an open file is
/// one `pread` (a few microseconds), where opening it walks `/proc` again
/// (some 80 us after a sleep, cold). For a thread that reads its own times
/// often (the watchdog's).
#[derive(Debug, Default)]
pub struct OwnTimes {
    #[cfg(target_os = "linux")]
    file: Option<std::fs::File>,
}

impl OwnTimes {
    /// The calling thread's times (the thread that first called this).
    pub fn read(&mut self) -> Option<Times> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::FileExt as _;
            if self.file.is_none() {
                self.file =
                    std::fs::File::open(format!("/proc/self/task/{}/schedstat", current_tid()))
                        .ok();
            }
            let mut buf = [0u8; 128];
            let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
            parse_schedstat(std::str::from_utf8(&buf[..n]).ok()?)
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

/// How many times the thread gave up its CPU by itself (to wait in the
/// kernel): a thread stuck in one blocking call does not add to it.
pub fn voluntary_switches(tid: i64) -> Option<u64> {
    read(tid, "status")?
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Whether thread `tid` of this process exists, whatever `/proc` shows
/// (`tgkill` with signal 0 sends nothing: it only asks).
pub fn exists(tid: i64) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: tgkill with signal 0 delivers no signal.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::c_long::from(libc::getpid()),
                tid as libc::c_long,
                0 as libc::c_long,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        false
    }
}

/// The ids of this process's threads (`/proc/self/task`).
pub fn all() -> Option<Vec<i64>> {
    #[cfg(target_os = "linux")]
    {
        Some(
            std::fs::read_dir("/proc/self/task")
                .ok()?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect(),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// This process's threads with their names (`comm`, at most 15 bytes);
/// empty where `/proc/self/task` cannot be read.
pub fn named() -> Vec<(i64, String)> {
    all()
        .unwrap_or_default()
        .into_iter()
        .map(|tid| {
            let name = read(tid, "comm")
                .map(|n| n.trim_end().to_owned())
                .unwrap_or_default();
            (tid, name)
        })
        .collect()
}

/// `/proc/self/task/TID/FILE` as text.
fn read(tid: i64, file: &str) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/{file}")).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, file);
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_are_parsed() {
        assert_eq!(parse_syscall("running\n"), Some(Syscall::Running));
        let line =
            "230 0x1 0x1 0x7fa445f76ab0 0x0 0x0 0x7fa446d4e6e8 0x7fa445f76a70 0x7fa4466ed545";
        assert_eq!(
            parse_syscall(line),
            Some(Syscall::Blocked {
                line: line.to_owned(),
                sp: 0x7fa445f76a70,
                pc: 0x7fa4466ed545
            })
        );
        assert!(matches!(
            parse_syscall("-1 0x7ffd1000 0x401000"),
            Some(Syscall::Blocked {
                sp: 0x7ffd1000,
                pc: 0x401000,
                ..
            })
        ));
        assert_eq!(parse_syscall(""), None);
        assert_eq!(parse_syscall("230 zz"), None);
    }

    #[test]
    fn schedstat_is_parsed_and_bad_text_is_none() {
        assert_eq!(
            parse_schedstat("123 45 6\n"),
            Some(Times {
                on_cpu_ns: 123,
                waiting_ns: 45,
                timeslices: 6
            })
        );
        assert_eq!(parse_schedstat("1 2"), None);
        assert_eq!(parse_schedstat("x 2 3"), None);
    }

    #[test]
    fn a_forked_child_reads_its_own_thread_id() {
        let parent = current_tid();
        // SAFETY: the child only calls async-signal-safe functions (gettid
        // through current_tid, a thread-local already set, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: as above.
            let own = i64::from(unsafe { libc::getpid() });
            let code = if current_tid() == own && own != parent {
                0
            } else {
                1
            };
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status}"
        );
        assert_eq!(current_tid(), parent);
    }

    #[test]
    fn a_live_thread_exists_and_an_unused_id_does_not() {
        assert!(exists(current_tid()));
        assert!(!exists(i64::from(i32::MAX)));
    }

    #[test]
    fn own_times_grow_with_work_and_agree_with_proc() {
        let mut own = OwnTimes::default();
        let before = own.read().expect("own schedstat");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::black_box(0u64);
        }
        let after = own.read().expect("own schedstat");
        assert!(after.on_cpu_ns > before.on_cpu_ns, "{before:?} {after:?}");
        let read = times(current_tid()).expect("schedstat by id");
        assert!(read.on_cpu_ns >= after.on_cpu_ns);
        assert_eq!(on_cpu(current_tid()), Some(true));
        assert!(all().unwrap().contains(&current_tid()));
        std::thread::Builder::new()
            .name("named-reader".into())
            .spawn(|| {
                let me = current_tid();
                assert!(named().contains(&(me, "named-reader".to_owned())));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
