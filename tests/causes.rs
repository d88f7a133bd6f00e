//! Why a worker is stuck (`StallReport::cause`, `StallReport::cpu`) on real
//! kernels: a sleep is blocked, a spin loop alone is busy, a worker sharing
//! its CPU with three hogs or held back by a cgroup's CPU limit is starved,
//! and a pause of the whole process (SIGSTOP) is no stall at all (Linux).
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, multi_thread, serial, spin, start};
use loopwatch::{CpuAccount, Exporter, StallCause, StallReport, WatchExt as _};

const STALL: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_millis(50);

/// The account's figures add up to its span, and the span is the stall so
/// far but for at most a few check intervals at its start (the thread's
/// first reading is taken at the first check that sees it stuck; on a
/// loaded machine a check may run late).
fn assert_adds_up(report: &StallReport, check: Duration) -> CpuAccount {
    let cpu = report
        .cpu
        .unwrap_or_else(|| panic!("no CPU account: {report:?}"));
    assert_eq!(
        cpu.on_cpu + cpu.waiting_for_cpu + cpu.off_cpu,
        cpu.span,
        "{cpu:?}"
    );
    assert!(
        cpu.span <= report.stalled_for + Duration::from_millis(100),
        "the account covers more than the stall: {cpu:?}, stalled for {:?}",
        report.stalled_for
    );
    assert!(
        cpu.span + check * 4 + Duration::from_millis(250) >= report.stalled_for,
        "the account covers too little of the stall: {cpu:?}, stalled for {:?}",
        report.stalled_for
    );
    cpu
}

/// The first report says busy: on a CPU for half its span or more.
fn assert_first_is_busy(all: &[(Instant, StallReport)]) {
    let first = &all
        .iter()
        .find(|(_, r)| r.escalation == 0)
        .expect("reported")
        .1;
    assert_eq!(first.cause, StallCause::Busy, "{first}");
    let cpu = assert_adds_up(first, CHECK);
    assert!(cpu.on_cpu * 2 >= cpu.span, "{cpu:?}");
    assert!(first.to_string().contains(" (busy: on a CPU "), "{first}");
}

#[test]
fn a_worker_that_sleeps_is_blocked_in_the_report_health_and_metrics() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .start(&watchdog)
        .unwrap();
    let rt = multi_thread(2);
    watchdog.watch_runtime("cause.sleep", rt.handle()).unwrap();
    let task = rt
        .spawn(async { std::thread::sleep(Duration::from_millis(2500)) }.watched("cause.sleeper"));
    let (_, first) = reports
        .wait_first("cause.sleep", Duration::from_secs(4))
        .expect("reported");
    assert_eq!(first.cause, StallCause::Blocked, "{first}");
    let cpu = assert_adds_up(&first, CHECK);
    assert!(cpu.off_cpu * 10 >= cpu.span * 8, "{cpu:?}");
    assert!(
        first.to_string().contains(" (blocked: on a CPU "),
        "{first}"
    );
    let health = watchdog.health();
    let stalled = &health.runtimes[0].stalled_workers;
    assert_eq!(stalled.len(), 1, "{health:?}");
    assert_eq!(stalled[0].cause, StallCause::Blocked);
    assert!(stalled[0].cpu.is_some());
    assert_eq!(health.recent_stalls[0].cause, StallCause::Blocked);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(
        json["runtimes"][0]["stalled_workers"][0]["cause"], "blocked",
        "{json}"
    );
    assert!(json["recent_stalls"][0]["cpu"]["off_cpu_seconds"].as_f64() > Some(0.5));
    let metrics = get(exporter.local_addr(), "/metrics").body;
    assert!(
        metrics.contains(
            "loopwatch_stalls_by_cause_total{runtime=\"cause.sleep\",cause=\"blocked\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "loopwatch_stalls_by_cause_total{runtime=\"cause.sleep\",cause=\"starved\"} 0"
        ),
        "{metrics}"
    );
    rt.block_on(task).unwrap();
    exporter.shutdown();
    watchdog.shutdown();
}

#[test]
fn a_worker_of_a_runtime_known_only_by_its_handle_that_sleeps_is_blocked() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("cause.handle", rt.handle()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let task = rt.spawn(async { std::thread::sleep(Duration::from_millis(2500)) });
    let (_, first) = reports
        .wait_first("cause.handle", Duration::from_secs(4))
        .expect("reported");
    assert_eq!(first.cause, StallCause::Blocked, "{first}");
    let cpu = assert_adds_up(&first, CHECK);
    assert!(cpu.off_cpu * 10 >= cpu.span * 8, "{cpu:?}");
    rt.block_on(task).unwrap();
    watchdog.shutdown();
}

#[test]
fn a_spin_loop_alone_is_busy_at_the_first_report_and_the_escalation() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("cause.spin", rt.handle()).unwrap();
    let task = rt.spawn(async { spin(Duration::from_millis(2600)) }.watched("cause.spinner"));
    rt.block_on(task).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let all = reports.all();
    assert_first_is_busy(&all);
    let escalation = &all
        .iter()
        .find(|(_, r)| r.escalation == 1)
        .expect("an escalation at twice the threshold")
        .1;
    assert_eq!(escalation.cause, StallCause::Busy, "{escalation}");
    let cpu = assert_adds_up(escalation, CHECK);
    assert!(cpu.span >= Duration::from_millis(1500), "{cpu:?}");
    watchdog.shutdown();
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the call.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the set is of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity");
    // SAFETY: reading bits of an initialised set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread to `cpus`.
fn pin(cpus: &[usize]) {
    // SAFETY: as above; the set holds only CPUs this process may use.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(rc, 0, "sched_setaffinity");
}

#[test]
fn a_worker_pinned_with_three_cpu_hogs_on_its_cpu_is_starved() {
    let _serial = serial();
    let cpus = allowed_cpus();
    let cpu = *cpus.last().unwrap();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog
        .watch_runtime("cause.starved", rt.handle())
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin(&[cpu]);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    let all = cpus.clone();
    let task = rt.spawn(
        async move {
            pin(&[cpu]);
            spin(Duration::from_millis(2500));
            pin(&all);
        }
        .watched("cause.crowded"),
    );
    let first = reports.wait_first("cause.starved", Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    rt.block_on(task).unwrap();
    let (_, first) = first.expect("reported");
    assert_eq!(first.cause, StallCause::Starved, "{first}");
    let account = assert_adds_up(&first, CHECK);
    assert!(
        account.waiting_for_cpu >= account.on_cpu,
        "sharing a CPU with three hogs, it waits for it more than it runs: {account:?}"
    );
    assert!(
        first.to_string().contains(" (starved: on a CPU "),
        "{first}"
    );
    watchdog.shutdown();
}

/// Where the cgroup v1 hierarchy of `controller` and the v2 one are mounted.
fn cgroup_mounts(controller: &str) -> Result<(Option<PathBuf>, Option<PathBuf>), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let (mut v1, mut v2) = (None, None);
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let point = PathBuf::from(before.split(' ').nth(4).unwrap_or(""));
        let mut after = after.split(' ');
        match (after.next(), after.nth(1)) {
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == controller) => {
                v1 = Some(point);
            }
            (Some("cgroup2"), _) => v2 = Some(point),
            _ => {}
        }
    }
    Ok((v1, v2))
}

/// Removes a test's cgroup once its child has exited (it empties a moment
/// later).
fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("could not remove {}", dir.display());
}

/// A cgroup with a CPU limit, made for a test and removed after it.
struct LimitedCgroup {
    dir: PathBuf,
}

impl LimitedCgroup {
    /// A new cgroup of the CPU controller limited to `cores`, or why none
    /// can be made here.
    fn create(cores: f64) -> Result<LimitedCgroup, String> {
        let (v1, v2) = cgroup_mounts("cpu")?;
        let name = format!("loopwatch-test-{}", std::process::id());
        let period = 100_000u64;
        let quota = (cores * period as f64) as u64;
        if let Some(root) = v1 {
            let dir = root.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let cg = LimitedCgroup { dir };
            std::fs::write(cg.dir.join("cpu.cfs_period_us"), period.to_string())
                .and_then(|_| std::fs::write(cg.dir.join("cpu.cfs_quota_us"), quota.to_string()))
                .map_err(|e| format!("setting the quota: {e}"))?;
            return Ok(cg);
        }
        let Some(root) = v2 else {
            return Err("no cgroup hierarchy with the cpu controller is mounted".to_owned());
        };
        let controllers =
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            std::fs::write(root.join("cgroup.subtree_control"), "+cpu")
                .map_err(|e| format!("enabling the cpu controller at {}: {e}", root.display()))?;
        }
        let dir = root.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cg = LimitedCgroup { dir };
        std::fs::write(cg.dir.join("cpu.max"), format!("{quota} {period}"))
            .map_err(|e| format!("setting cpu.max: {e}"))?;
        Ok(cg)
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.dir);
    }
}

#[test]
fn a_cpu_bound_poll_in_a_cgroup_with_a_cpu_limit_is_starved_with_its_throttling() {
    if let Some(dir) = std::env::var_os("LOOPWATCH_TEST_CGROUP") {
        return cgroup_child(Path::new(&dir));
    }
    let _serial = serial();
    let cgroup = match LimitedCgroup::create(0.1) {
        Ok(cg) => cg,
        Err(why) => {
            assert!(
                // SAFETY: geteuid has no preconditions.
                std::env::var_os("CI").is_none() || unsafe { libc::geteuid() } != 0,
                "CI runs as root and must be able to make a cgroup: {why}"
            );
            eprintln!("skipped: no cgroup with a CPU limit can be made here: {why}");
            return;
        }
    };
    let dir = cgroup.dir.to_str().unwrap().to_owned();
    let out = common::run_child_process(
        "a_cpu_bound_poll_in_a_cgroup_with_a_cpu_limit_is_starved_with_its_throttling",
        &[("LOOPWATCH_TEST_CGROUP", &dir)],
    );
    eprintln!("{out}");
}

/// In the child: joins the cgroup (limited to 0.1 cores), then does 300 ms
/// of CPU work in one poll, which takes about 3 s.
fn cgroup_child(dir: &Path) {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .expect("joins the test's cgroup");
    let reports = common::Reports::default();
    let sink = reports.clone();
    // No stacks: symbolizing at a tenth of a core would take seconds.
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(STALL)
        .check_interval(CHECK)
        .sample_stacks(false)
        .on_stall(move |r| sink.push(r.clone()))
        .start()
        .unwrap();
    let rt = multi_thread(1);
    watchdog
        .watch_runtime("cause.limited", rt.handle())
        .unwrap();
    let task = rt.spawn(
        async {
            let start = thread_cpu_time();
            while thread_cpu_time() - start < Duration::from_millis(300) {
                for _ in 0..10_000 {
                    std::hint::spin_loop();
                }
            }
        }
        .watched("cause.crunch"),
    );
    let began = Instant::now();
    rt.block_on(task).unwrap();
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let first = reports
        .first_reports()
        .into_iter()
        .map(|(_, r)| r)
        .find(|r| r.runtime == "cause.limited")
        .unwrap_or_else(|| panic!("no report; the poll took {took:?}"));
    eprintln!("the poll took {took:?}; first report: {first}");
    assert!(
        took >= Duration::from_millis(1500),
        "the limit held it back: {took:?}"
    );
    assert_eq!(first.cause, StallCause::Starved, "{first}");
    let cpu = assert_adds_up(&first, CHECK * 2);
    assert!(cpu.waiting_for_cpu * 10 >= cpu.span * 6, "{cpu:?}");
    let throttling = cpu.throttling.expect("the cgroup's throttling");
    assert!(throttling.throttled_periods > 0, "{throttling:?}");
    assert!(throttling.periods >= throttling.throttled_periods);
    assert!(throttling.throttled > Duration::ZERO, "{throttling:?}");
    let cores = throttling.cpu_limit_cores.expect("the CPU limit");
    assert!((cores - 0.1).abs() < 1e-6, "{cores}");
    assert!(
        first
            .to_string()
            .contains("the cgroup's CPU limit (0.10 cores) throttled "),
        "{first}"
    );
    // Health's process figures show the limit and the throttling.
    let process = watchdog.health().process;
    assert_eq!(process.cpu_limit_cores, Some(0.1), "{process:?}");
    assert!(process.cpu_throttled_seconds > Some(0.0), "{process:?}");
    watchdog.shutdown();
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn a_pause_of_the_whole_process_is_no_stall_and_health_says_how_long_it_was() {
    if std::env::var_os("LOOPWATCH_TEST_PAUSE").is_some() {
        return pause_child();
    }
    let _serial = serial();
    run_paused_child(
        "a_pause_of_the_whole_process_is_no_stall_and_health_says_how_long_it_was",
        &|pid| {
            // SAFETY: signalling the child this test started.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        },
        &|pid| {
            // SAFETY: as above.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        },
    );
}

/// A freezer cgroup made for a test, and how to freeze and thaw it.
struct Freezer {
    dir: PathBuf,
    v2: bool,
}

impl Freezer {
    fn create() -> Result<Freezer, String> {
        let name = format!("loopwatch-test-freezer-{}", std::process::id());
        let (v1, v2) = cgroup_mounts("freezer")?;
        if let Some(point) = v1 {
            let dir = point.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(Freezer { dir, v2: false });
        }
        let root = v2.ok_or("no freezer cgroup hierarchy is mounted")?;
        let dir = root.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !dir.join("cgroup.freeze").exists() {
            let _ = std::fs::remove_dir(&dir);
            return Err("cgroup v2 without cgroup.freeze".to_owned());
        }
        Ok(Freezer { dir, v2: true })
    }

    fn join(&self, pid: libc::pid_t) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("moves the child");
    }

    fn set(&self, frozen: bool) {
        let (file, value) = match (self.v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        std::fs::write(self.dir.join(file), value).expect("freezes or thaws");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.set(false);
        remove_cgroup(&self.dir);
    }
}

#[test]
fn a_frozen_cgroup_is_no_stall_and_health_says_how_long_it_was() {
    if std::env::var_os("LOOPWATCH_TEST_PAUSE").is_some() {
        return pause_child();
    }
    let _serial = serial();
    let freezer = match Freezer::create() {
        Ok(f) => f,
        Err(why) => {
            assert!(
                // SAFETY: geteuid has no preconditions.
                std::env::var_os("CI").is_none() || unsafe { libc::geteuid() } != 0,
                "CI runs as root and must be able to make a freezer cgroup: {why}"
            );
            eprintln!("skipped: no freezer cgroup can be made here: {why}");
            return;
        }
    };
    run_paused_child(
        "a_frozen_cgroup_is_no_stall_and_health_says_how_long_it_was",
        &|pid| {
            freezer.join(pid);
            freezer.set(true);
        },
        &|_| freezer.set(false),
    );
}

/// Runs `test` in a child process (see [`pause_child`]), pauses it with
/// `pause` 0.7 s after it is ready for 3 s, resumes it, and asserts that it
/// passed.
fn run_paused_child(test: &str, pause: &dyn Fn(libc::pid_t), resume: &dyn Fn(libc::pid_t)) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env("LOOPWATCH_TEST_PAUSE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("loopwatch-test-child-ready"));
    assert!(ready, "the child never got ready");
    // Polls of 300 ms run back to back: one is in progress when it stops.
    std::thread::sleep(Duration::from_millis(700));
    let pid = child.id() as libc::pid_t;
    pause(pid);
    std::thread::sleep(Duration::from_secs(3));
    resume(pid);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        rest.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the paused child failed:\n{text}"
    );
}

/// In the child: a runtime busy with polls of 300 ms (threshold 1 s),
/// stopped for 3 s by the parent, then looked at.
fn pause_child() {
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = multi_thread(2);
    watchdog.watch_runtime("cause.paused", rt.handle()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let task = rt.spawn(
        async move {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                spin(Duration::from_millis(300));
                tokio::task::yield_now().await;
            }
        }
        .watched("cause.working"),
    );
    std::thread::sleep(Duration::from_millis(300));
    println!("loopwatch-test-child-ready");
    // Stopped within the next second for 3 s; looked at 2 s after.
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline && watchdog.health().process.pauses == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(task).unwrap();
    let health = watchdog.health();
    let process = health.process;
    assert_eq!(process.pauses, 1, "{health:?}");
    let len = process.last_pause_seconds.unwrap();
    assert!(
        (2.5..=3.6).contains(&len),
        "a pause of 3 s, seen as {len} s"
    );
    assert!(process.paused_seconds >= len);
    assert!(
        process.last_pause_ago_seconds.unwrap() >= 1.5,
        "{process:?}"
    );
    assert!(
        health
            .issues
            .iter()
            .any(|i| i.contains("the whole process was paused for ")),
        "{:?}",
        health.issues
    );
    assert_eq!(health.runtimes[0].stalls_total, 0, "{health:?}");
    reports.assert_none();
    watchdog.shutdown();
}

#[test]
fn a_current_thread_runtime_s_block_on_future_that_spins_is_busy() {
    let _serial = serial();
    let (watchdog, reports) = start(STALL, CHECK);
    let rt = common::current_thread();
    watchdog
        .watch_runtime("cause.ct_spin", rt.handle())
        .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spin(Duration::from_millis(2600));
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_first_is_busy(&reports.all());
    watchdog.shutdown();
}
