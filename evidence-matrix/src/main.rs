//! loopwatch's stall evidence, checked on every way a worker blocks
//! ([`cases`], and the shapes real code takes around a blocking call:
//! [`shapes`]) and every kind of runtime, in the profile this binary was
//! built with: a child process per case and kind, each with its own
//! watchdog (threshold 1 s by default), blocks a worker for 3 s from the
//! start (no warm-up), and prints its first stall report. Each report must:
//!
//! - come while the worker is stuck, and not change what the call returns;
//! - carry a complete stack holding the blocking function, whose culprit is
//!   that function;
//! - show no frame the thread is not in: from the culprit outwards, the
//!   frames are those the standard library's own unwinder saw just before
//!   the call blocked, in the same order, and no tokio or mio frame sits
//!   inside the blocking call; functions that left by a tail call (a jump,
//!   in optimized builds) stand in it marked `(tail call)`, each of the
//!   case's wrappers is there, and no other function is so marked but the
//!   standard library's and libc's known ones;
//! - name the `tracing` span the case runs in (`loopwatch::spans::layer()`);
//! - for a current-thread runtime, be a confirmed stall.
//!
//! Without debug info (cargo's default release profile, `debug = 0`) the
//! culprit is the function the blocking one was inlined into: the first
//! application frame the thread's own unwinder names. Code without unwind
//! tables gives a partial stack, whose thread must still be found. With
//! `--stripped` (a binary without its symbol table and debug info) names
//! are checked to be absent or right, never wrong, and the stall must
//! still be reported.
//!
//! ```text
//! cargo run --release -p loopwatch-evidence-matrix -- --runs 10 --hogs 2
//! ```

mod cases;
mod shapes;

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use loopwatch::WatchExt as _;

const KINDS: [&str; 4] = ["instrumented", "handle", "hooked", "current"];
const CRATE: &str = "loopwatch_evidence_matrix::";

/// A number unique in this process (for file names).
pub(crate) fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// When the case began to block (set by [`cases::truth`]).
pub(crate) static BLOCKED_AT: Mutex<Option<Instant>> = Mutex::new(None);

use loopwatch_test_support::seccomp;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        // --child CASE KIND THRESHOLD_MS BLOCK_MS [--name-callers] [--deny-perf] [--deny-vm-readv]
        let ms = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
        let (Some(threshold), Some(block)) = (ms(3), ms(4)) else {
            eprintln!("evidence matrix: --child CASE KIND THRESHOLD_MS BLOCK_MS");
            return ExitCode::from(2);
        };
        cases::BLOCK_MS.store(block, Ordering::Relaxed);
        let flag = |f: &str| args[5..].iter().any(|a| a == f);
        let name_callers = flag("--name-callers");
        // A hardened service: a seccomp filter refuses these calls.
        let mut denied = Vec::new();
        if flag("--deny-perf") {
            denied.push((libc::SYS_perf_event_open, libc::EACCES));
        }
        if flag("--deny-vm-readv") {
            denied.push((libc::SYS_process_vm_readv, libc::EPERM));
        }
        if !denied.is_empty() {
            seccomp::deny(&denied);
        }
        return child(
            &args[1],
            &args[2],
            Duration::from_millis(threshold),
            name_callers,
        );
    }
    match parent(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("evidence matrix: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs one case on one kind of runtime and prints what happened as JSON;
/// with `name_callers`, the names of the blocking function's callers too
/// (the standard library takes a while to name them, so the parent asks for
/// them once per case and kind: they are the same every run).
fn child(case_name: &str, kind: &str, threshold: Duration, name_callers: bool) -> ExitCode {
    let case = cases::all()
        .into_iter()
        .find(|c| c.name == case_name)
        .expect("a known case");
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let watchdog = loopwatch::Watchdog::builder()
        .stall_threshold(threshold)
        .check_interval(Duration::from_millis(50))
        .max_reports_per_minute(1000)
        .on_stall(move |r| {
            if r.escalation == 0 {
                let _ = tx.lock().unwrap().send((Instant::now(), r.clone()));
            }
        })
        .start()
        .expect("the watchdog starts");
    // The case runs in a span: the report must name it.
    use tracing_subscriber::layer::SubscriberExt as _;
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(loopwatch::spans::layer()),
    )
    .expect("the only subscriber");
    let future = tracing::Instrument::instrument((case.run)(), tracing::info_span!("case", id = 7));
    let multi = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let result = match kind {
        "instrumented" => {
            let rt = multi();
            watchdog.watch_runtime("m", rt.handle()).unwrap();
            rt.block_on(rt.spawn(future.watched("case"))).unwrap()
        }
        "handle" => {
            let rt = multi();
            watchdog.watch_runtime("m", rt.handle()).unwrap();
            rt.block_on(rt.spawn(future)).unwrap()
        }
        "hooked" => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2).enable_all();
            loopwatch::install_runtime_hooks(&mut builder);
            let rt = builder.build().unwrap();
            watchdog.watch_runtime("m", rt.handle()).unwrap();
            rt.block_on(rt.spawn(future)).unwrap()
        }
        "current" if !case.stalls => {
            // Driven once, then left: its thread works on without driving
            // it. Nobody is stuck.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            watchdog.watch_runtime("m", rt.handle()).unwrap();
            rt.block_on(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                future.await
            });
            cases::draws_random()
        }
        "current" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            watchdog.watch_runtime("m", rt.handle()).unwrap();
            rt.block_on(future)
        }
        other => panic!("unknown kind {other}"),
    };
    let first = rx.recv_timeout(Duration::from_millis(300)).ok();
    let blocked_at = *BLOCKED_AT.lock().unwrap();
    let latency = match (&first, blocked_at) {
        (Some((at, _)), Some(began)) => Some(at.saturating_duration_since(began).as_secs_f64()),
        _ => None,
    };
    let out = serde_json::json!({
        "result": result,
        "report": first.map(|(_, r)| r),
        "truth": if name_callers { cases::callers() } else { Vec::new() },
        "latency_seconds": latency,
    });
    println!("{out}");
    watchdog.shutdown();
    ExitCode::SUCCESS
}

/// Settings of a matrix run.
struct Settings {
    threshold_ms: u64,
    block_ms: u64,
    runs: usize,
    hogs: usize,
    jobs: usize,
    label: String,
    stripped: bool,
    /// Whether this binary has debug info (line tables): without it
    /// (cargo's default release profile, `debug = 0`), inlined functions
    /// have no names, and a culprit is the function its code was inlined
    /// into.
    debuginfo: bool,
    only: Option<Vec<String>>,
    kinds: Vec<String>,
    /// Which cases: the ways of blocking (`evidence`), the calls a look at a
    /// thread on a CPU could disturb (`interference`), or `all`.
    set: String,
    deny_perf: bool,
    deny_vm_readv: bool,
}

fn settings(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings {
        threshold_ms: 1000,
        block_ms: 3000,
        runs: 1,
        hogs: 0,
        jobs: 64,
        label: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
        stripped: false,
        debuginfo: has_debuginfo(),
        only: None,
        kinds: KINDS.iter().map(|k| (*k).to_owned()).collect(),
        set: "evidence".to_owned(),
        deny_perf: false,
        deny_vm_readv: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{arg}: not a number: {v}"))
        };
        match arg.as_str() {
            "--threshold-ms" => s.threshold_ms = number(value()?)? as u64,
            "--block-ms" => s.block_ms = number(value()?)? as u64,
            "--runs" => s.runs = number(value()?)?,
            "--hogs" => s.hogs = number(value()?)?,
            "--jobs" => s.jobs = number(value()?)?.max(1),
            "--label" => s.label = value()?,
            "--stripped" => s.stripped = true,
            "--only" => s.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--kinds" => s.kinds = value()?.split(',').map(str::to_owned).collect(),
            "--set" => s.set = value()?,
            "--deny-perf" => s.deny_perf = true,
            "--deny-vm-readv" => s.deny_vm_readv = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if s.threshold_ms < 100 || s.block_ms < 2 * s.threshold_ms {
        return Err("--threshold-ms is at least 100 and --block-ms at least twice it".to_owned());
    }
    if !["evidence", "interference", "all"].contains(&s.set.as_str()) {
        return Err(format!(
            "unknown --set {}; sets: evidence, interference, all",
            s.set
        ));
    }
    if let Some(bad) = s.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(format!("unknown kind {bad}; kinds: {}", KINDS.join(", ")));
    }
    Ok(s)
}

/// Whether this executable has line tables.
fn has_debuginfo() -> bool {
    use object::{Object as _, ObjectSection as _};
    let Ok(bytes) = std::fs::read("/proc/self/exe") else {
        return false;
    };
    object::File::parse(&*bytes)
        .ok()
        .and_then(|f| f.section_by_name(".debug_line").map(|s| s.size() > 0))
        .unwrap_or(false)
}

fn parent(args: &[String]) -> Result<bool, String> {
    let s = settings(args)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let all = cases::all();
    let cases: Vec<&cases::Case> = all
        .iter()
        .filter(|c| {
            s.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == c.name))
        })
        .filter(|c| match s.set.as_str() {
            "evidence" => !cases::ON_CPU.contains(&c.name),
            "interference" => cases::ON_CPU.contains(&c.name),
            _ => true,
        })
        .collect();
    println!(
        "evidence matrix ({}{}{}), {} profile{}: {} cases x {} kinds, {} runs each, {} CPU hogs beside; threshold {} ms, each call blocks {} ms",
        s.set,
        if s.deny_perf { ", perf_event_open denied" } else { "" },
        if s.deny_vm_readv { ", process_vm_readv denied" } else { "" },
        s.label,
        if s.debuginfo { "" } else { " (no debug info)" },
        cases.len(),
        s.kinds.len(),
        s.runs,
        s.hogs,
        s.threshold_ms,
        s.block_ms
    );
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..s.hogs)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let began = Instant::now();
    let mut jobs: Vec<(&cases::Case, String)> = Vec::new();
    for _ in 0..s.runs {
        for case in &cases {
            for kind in &s.kinds {
                if case.kinds.is_none_or(|k| k.contains(&kind.as_str())) {
                    jobs.push((case, kind.clone()));
                }
            }
        }
    }
    let mut results: BTreeMap<(&str, String), (usize, usize)> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    // A rolling pool of `jobs` children: a new one starts as one ends, so
    // that their reports (and the symbolizing each one does) spread out.
    let mut queue = jobs.iter();
    let mut running: Vec<(&cases::Case, &String, std::process::Child)> = Vec::new();
    // The callers each case's blocking function has, as the standard
    // library names them: asked of the first run of each case and kind.
    let mut truths: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    let mut asked: std::collections::BTreeSet<(&str, String)> = Default::default();
    type Output = Result<serde_json::Value, String>;
    let mut outputs: Vec<(&cases::Case, &String, Output)> = Vec::new();
    loop {
        while running.len() < s.jobs {
            let Some((case, kind)) = queue.next() else {
                break;
            };
            let ask = !s.stripped && asked.insert((case.name, kind.clone()));
            let child = Command::new(&exe)
                .args(["--child", case.name, kind])
                .args([s.threshold_ms.to_string(), s.block_ms.to_string()])
                .args(ask.then_some("--name-callers"))
                .args(s.deny_perf.then_some("--deny-perf"))
                .args(s.deny_vm_readv.then_some("--deny-vm-readv"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("could not start a child: {e}"))?;
            running.push((case, kind, child));
        }
        if running.is_empty() {
            break;
        }
        let Some(done) = running
            .iter_mut()
            .position(|(_, _, c)| c.try_wait().ok().flatten().is_some())
        else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let (case, kind, child) = running.swap_remove(done);
        let output = child
            .wait_with_output()
            .map_err(|e| e.to_string())
            .and_then(|out| {
                if !out.status.success() {
                    return Err(format!(
                        "exited with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text.lines().last().unwrap_or_default();
                serde_json::from_str::<serde_json::Value>(line)
                    .map_err(|e| format!("bad output ({e}): {text}"))
            });
        if let Ok(json) = &output {
            if let Some(l) = json["latency_seconds"].as_f64() {
                latencies.push(l);
            }
            if let Some(names) = json["truth"].as_array().filter(|a| !a.is_empty()) {
                let names = names
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                truths.insert((case.name, kind.clone()), names);
            }
        }
        outputs.push((case, kind, output));
    }
    // Checked once all are in: the callers are known by then.
    for (case, kind, output) in outputs {
        let key = (case.name, kind.clone());
        let verdict = output
            .and_then(|json| check(case, kind, &json, truths.get(&key).map(Vec::as_slice), &s));
        let entry = results.entry(key).or_default();
        entry.1 += 1;
        match verdict {
            Ok(()) => entry.0 += 1,
            Err(why) => failures.push(format!("{} / {kind}: {why}", case.name)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for hog in hogs {
        let _ = hog.join();
    }
    print_table(&cases, &s.kinds, &results);
    latencies.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (latencies.first(), latencies.last()) {
        let median = latencies[latencies.len() / 2];
        println!(
            "report latency after the call blocked: min {min:.2} s, median {median:.2} s, max {max:.2} s (threshold {:.1} s)",
            s.threshold_ms as f64 / 1000.0
        );
    }
    println!(
        "{} runs in {:.0} s",
        jobs.len(),
        began.elapsed().as_secs_f64()
    );
    for f in failures.iter().take(20) {
        println!("FAIL {f}");
    }
    if failures.len() > 20 {
        println!("... and {} more failures", failures.len() - 20);
    }
    println!(
        "{}: {} of {} runs passed",
        if failures.is_empty() { "PASS" } else { "FAIL" },
        jobs.len() - failures.len(),
        jobs.len()
    );
    Ok(failures.is_empty())
}

fn print_table(
    cases: &[&cases::Case],
    kinds: &[String],
    results: &BTreeMap<(&str, String), (usize, usize)>,
) {
    print!("{:<20}", "case");
    for kind in kinds {
        print!(" {kind:>13}");
    }
    println!();
    for case in cases {
        print!("{:<20}", case.name);
        for kind in kinds {
            let (ok, all) = results
                .get(&(case.name, kind.clone()))
                .copied()
                .unwrap_or_default();
            print!(" {:>13}", format!("{ok}/{all}"));
        }
        println!();
    }
}

/// A frame of a stack's text: its function's name, and whether it stands
/// for a function that left by a tail call (`name (tail call)`).
struct Frame<'a> {
    name: &'a str,
    tail: bool,
}

/// The frames of a stack's text, innermost first.
fn frame_names(backtrace: &str) -> Vec<Frame<'_>> {
    backtrace
        .lines()
        .filter_map(|l| {
            let (n, name) = l.trim_start().split_once(": ")?;
            n.parse::<usize>().ok()?;
            let name = name.trim();
            Some(match name.strip_suffix(" (tail call)") {
                Some(name) => Frame { name, tail: true },
                None => Frame { name, tail: false },
            })
        })
        .collect()
}

/// Whether a name is of a Rust path (`a::b`): the frames compared with the
/// standard library's unwinder (a shared library's frames are named from
/// its symbols by one and by address by the other).
fn is_path(name: &str) -> bool {
    name.contains("::")
}

/// Checks one child's output.
fn check(
    case: &cases::Case,
    kind: &str,
    out: &serde_json::Value,
    truth: Option<&[String]>,
    settings: &Settings,
) -> Result<(), String> {
    let stripped = settings.stripped;
    let result = out["result"].as_str().unwrap_or_default();
    if result != case.expected {
        return Err(format!(
            "the call returned {result:?}; unwatched it returns {:?}",
            case.expected
        ));
    }
    let report = &out["report"];
    if !case.stalls {
        // Nobody is stuck: nothing is reported, or, when the thread could
        // not be read (it stays inside system calls), a stall marked
        // unconfirmed with the reason, and no stack to blame.
        let unconfirmed = report["unconfirmed"].as_str().is_some();
        return match report.is_null() || (unconfirmed && report["culprit"].is_null()) {
            true => Ok(()),
            false => Err(format!(
                "nobody was stuck, and a stall was reported: {report}"
            )),
        };
    }
    if report.is_null() {
        return Err("no stall reported".to_owned());
    }
    let latency = out["latency_seconds"].as_f64();
    if latency.is_none_or(|l| l >= settings.block_ms as f64 / 1000.0) {
        let latency = latency.unwrap_or(f64::NAN);
        return Err(format!(
            "reported {latency:.2} s after the call blocked, not while it was stuck"
        ));
    }
    let backtrace = report["backtrace"].as_str();
    let culprit = report["culprit"].as_str();
    let missing = report["stack_missing"].as_str();
    if case.partial && kind == "current" {
        // A current-thread runtime that has not run since it was watched
        // (the case blocks at once) has no known driver, and a thread whose
        // walk stops early cannot be told to drive it (an undriven runtime
        // looks the same): the stall is reported unconfirmed, saying so,
        // and nobody is blamed.
        // (Stripped, no thread can be told to drive it, for want of names.)
        let why = report["unconfirmed"].as_str().unwrap_or_default();
        let said = why.contains("stopped before it could be told")
            || (stripped && why.contains("no symbol table"));
        if !said || culprit.is_some() {
            return Err(format!(
                "expected an unconfirmed stall saying the walk stopped: {report}"
            ));
        }
        return Ok(());
    }
    // A thread on a CPU has a stack only from the kernel's sample: none
    // where perf_event_open is refused, and none when the samples never land
    // in its own code (a long system call); then the report says why.
    let may_lack = match case.shape {
        cases::Shape::Waits => false,
        cases::Shape::Runs => settings.deny_perf,
        cases::Shape::InKernel => true,
    };
    if backtrace.is_none() && may_lack {
        let Some(why) = missing else {
            return Err("no stack, and no reason given".to_owned());
        };
        if settings.deny_perf
            && case.shape == cases::Shape::Runs
            && !why.contains("perf_event_open")
        {
            return Err(format!("no stack, and not the real reason: {why}"));
        }
        return Ok(());
    }
    // Why it is stuck, from what its thread did with its time: a wait in the
    // kernel is blocked; a spin loop or a long system call on a CPU busy,
    // or starved where the other runs and hogs left it no CPU (the matrix
    // runs several at once). Unknown only where the thread is not found (a
    // stripped binary's handle-only runtime).
    let cause = report["cause"].as_str().unwrap_or_default();
    let want: &[&str] = match (case.shape, case.name) {
        (cases::Shape::Waits, _) => &["blocked"],
        (cases::Shape::InKernel, _) | (_, "spin") => &["busy", "starved"],
        _ => &[],
    };
    let allowed = want.contains(&cause) || (stripped && cause == "unknown");
    if !want.is_empty() && !allowed {
        return Err(format!(
            "cause {cause:?}, expected {want:?}; time: {}",
            report["cpu"]
        ));
    }
    if cause != "unknown" && report["cpu"].is_null() {
        return Err(format!("cause {cause:?} without the figures"));
    }
    // The figures add up to their span, which is the stall so far but for
    // its first check interval or two (more on a loaded machine).
    if !report["cpu"].is_null() {
        let cpu = &report["cpu"];
        let f = |k: &str| cpu[k].as_f64().unwrap_or(f64::NAN);
        let span = f("span_seconds");
        let sum = f("on_cpu_seconds") + f("waiting_for_cpu_seconds") + f("off_cpu_seconds");
        let stalled = report["stalled_for_seconds"].as_f64().unwrap_or(f64::NAN);
        if (sum - span).abs() > 1e-6 || !(stalled - 0.5..=stalled + 0.1).contains(&span) {
            return Err(format!(
                "the time figures do not add up to the stall of {stalled:.3} s: {cpu}"
            ));
        }
    }
    if let Some(why) = report["unconfirmed"].as_str() {
        if !stripped && !may_lack {
            return Err(format!("reported as unconfirmed: {why}"));
        }
    }
    let method = report["stack_method"].as_str();
    if backtrace.is_some() {
        let expected = match (case.shape, case.name) {
            (cases::Shape::Waits, _) => Some("proc"),
            (_, "spin") => Some("perf"),
            _ => None,
        };
        if expected.is_some_and(|m| method != Some(m)) {
            return Err(format!("stack taken by {method:?}, expected {expected:?}"));
        }
    }
    if stripped {
        // Nothing to name the application's functions by: a culprit, if
        // any, must still be right, and a stack complete.
        if let Some(c) = culprit {
            if !c.starts_with(&format!("{} ", case.culprit)) {
                return Err(format!("wrong culprit {c:?}"));
            }
        }
        let complete = report["stack_complete"] == serde_json::Value::Bool(true);
        // Complete, but where the walk must stop (code without unwind
        // tables).
        if backtrace.is_some() && complete == case.partial {
            return Err(format!(
                "stack_complete {complete}, expected {}:\n{}",
                !case.partial,
                backtrace.unwrap_or_default()
            ));
        }
        return Ok(());
    }
    let Some(backtrace) = backtrace else {
        return Err(format!(
            "no stack: {}",
            report["stack_missing"]
                .as_str()
                .unwrap_or("no reason given")
        ));
    };
    if case.partial {
        // The walk stops in the code without unwind tables: the thread is
        // found all the same, and the report has what was walked and says
        // where it stopped.
        if report["stack_complete"] != serde_json::Value::Bool(false)
            || !backtrace.contains("(partial: the walk stopped here")
        {
            return Err(format!("not reported as a partial stack:\n{backtrace}"));
        }
        if culprit.map(|c| c.split(" (").next().unwrap_or(c)) != Some(case.culprit) {
            return Err(format!(
                "culprit {culprit:?}, expected {}\n{backtrace}",
                case.culprit
            ));
        }
        return Ok(());
    }
    if report["stack_complete"] != serde_json::Value::Bool(true) {
        return Err(format!("a partial stack:\n{backtrace}"));
    }
    let spans = &report["spans"];
    if spans != &serde_json::json!(["case{id=7}"]) {
        return Err(format!("spans {spans}, expected [\"case{{id=7}}\"]"));
    }
    let Some(truth) = truth else {
        return Err(
            "the callers of the blocking function are not known (the first run failed)".to_owned(),
        );
    };
    let truth: Vec<&str> = truth
        .iter()
        .map(String::as_str)
        .filter(|n| is_path(n))
        .collect();
    // The culprit is the function that blocks; without debug info, the
    // function it was inlined into, which is where the thread's own
    // unwinder saw the call that notes the truth.
    let culprit_name = culprit.map(|c| c.split(" (").next().unwrap_or(c));
    let optimized = !cfg!(debug_assertions);
    let want = match (settings.debuginfo, case.culprit_without_debuginfo) {
        (true, _) if optimized && case.culprit_when_optimized.is_some() => {
            case.culprit_when_optimized.unwrap_or(case.culprit)
        }
        (true, _) => case.culprit,
        (false, Some(culprit)) => culprit,
        // The application's first frame: a closure inlined into the
        // standard library's shim that calls it is named as the shim.
        (false, None) => truth
            .iter()
            .copied()
            .find(|n| n.contains(CRATE))
            .unwrap_or(case.culprit),
    };
    if culprit_name != Some(want)
        || (settings.debuginfo && !culprit.is_some_and(|c| c.contains(" (")))
    {
        return Err(format!("culprit {culprit:?}, expected {want}\n{backtrace}"));
    }
    let frames = frame_names(backtrace);
    let names: Vec<&str> = frames.iter().map(|f| f.name).collect();
    let Some(app) = names.iter().position(|n| n.contains(CRATE)) else {
        return Err(format!("no application frame in the stack:\n{backtrace}"));
    };
    // Inside the blocking call: no runtime frame.
    if let Some(bad) = names[..app].iter().find(|n| {
        let n = n.trim_start_matches('<');
        n.starts_with("tokio::") || n.starts_with("mio::") || n.starts_with("loopwatch::")
    }) {
        return Err(format!(
            "frame {bad:?} inside the blocking call:\n{backtrace}"
        ));
    }
    // Tail-call frames: only the case's wrappers (none in a debug build,
    // where nothing of the application is turned into a jump) and the
    // standard library's and libc's known ones (built optimized in every
    // profile); each of the case's wrappers stands in the stack, as a tail
    // call or as a frame of its own.
    let tails: Vec<&str> = frames.iter().filter(|f| f.tail).map(|f| f.name).collect();
    let allowed = |t: &str| {
        (optimized && case.tail.contains(&t)) || case.plumbing_tail.iter().any(|p| t.starts_with(p))
    };
    if let Some(bad) = tails.iter().find(|t| !allowed(t)) {
        return Err(format!(
            "{bad:?} shown as a tail call; the case's wrappers are {:?}\n{backtrace}",
            case.tail
        ));
    }
    if settings.debuginfo {
        if let Some(missing) = case.tail.iter().find(|t| !names.contains(t)) {
            return Err(format!("{missing:?} is not in the stack:\n{backtrace}"));
        }
    }
    // From the first application frame outwards: what the thread's own
    // unwinder saw. A tail call's frame was gone before the truth was noted
    // (or after): each list is compared without the wrappers the other
    // lacks.
    let ours: Vec<&str> = names[app..]
        .iter()
        .copied()
        .filter(|n| is_path(n))
        .filter(|n| !tails.contains(n) || truth.contains(n))
        .collect();
    let truth: Vec<&str> = truth
        .into_iter()
        .filter(|n| !case.tail.contains(n) || ours.contains(n))
        .collect();
    let Some(start) = truth.iter().position(|t| *t == ours[0]) else {
        return Err(format!(
            "the first application frame {:?} is not among the callers the thread saw: {truth:?}",
            ours[0]
        ));
    };
    for (i, name) in ours.iter().enumerate() {
        if truth.get(start + i) != Some(name) {
            return Err(format!(
                "frame {name:?} where the thread was in {:?}\nreported:\n{backtrace}\nthe thread's own unwinder: {:?}",
                truth.get(start + i),
                &truth[start..]
            ));
        }
    }
    Ok(())
}
