//! Evidence about a stuck thread: its stack, and whether it is on a CPU.

/// What could be learnt about a stuck thread.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    pub(crate) frames: Vec<usize>,
    pub(crate) backtrace: Option<String>,
    pub(crate) cpu_bound: Option<bool>,
}

/// Looks at thread `tid` (a kernel id of this process): its scheduler state
/// first (a signal would wake it), then its stack.
pub(crate) fn gather(tid: i64, sample_stacks: bool, full: bool) -> Evidence {
    if tid == 0 {
        return Evidence::default();
    }
    let cpu_bound = on_cpu(tid);
    let mut evidence = Evidence {
        cpu_bound,
        ..Evidence::default()
    };
    if sample_stacks {
        if let Ok(frames) = crate::stack::capture(tid, std::time::Duration::from_millis(100)) {
            evidence.backtrace = symbolize(&frames, full);
            evidence.frames = frames;
        }
    }
    evidence
}

/// Whether the thread is running or runnable (`R` in `/proc/self/task/TID/stat`).
#[cfg(target_os = "linux")]
fn on_cpu(tid: i64) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    Some(state == 'R')
}

#[cfg(not(target_os = "linux"))]
fn on_cpu(_tid: i64) -> Option<bool> {
    None
}

/// Resolves and trims a stack: the frames of the signal handler at the top
/// and of tokio's scheduler at the bottom are dropped unless `full`.
#[cfg(all(target_os = "linux", feature = "stacks"))]
pub(crate) fn symbolize(frames: &[usize], full: bool) -> Option<String> {
    let mut lines: Vec<(String, Option<String>)> = Vec::new();
    for (i, &ip) in frames.iter().enumerate() {
        let addr = if i == 0 { ip } else { ip.saturating_sub(1) };
        let mut any = false;
        backtrace::resolve(addr as *mut std::ffi::c_void, |symbol| {
            any = true;
            let name = symbol
                .name()
                .map_or_else(|| format!("{addr:#x}"), |n| format!("{n:#}"));
            let place = match (symbol.filename(), symbol.lineno()) {
                (Some(file), Some(line)) => Some(format!("{}:{line}", file.display())),
                _ => None,
            };
            lines.push((name, place));
        });
        if !any {
            lines.push((format!("{addr:#x}"), None));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let (start, end) = if full {
        (0, lines.len())
    } else {
        // Below the handler: the last frame of loopwatch's stack module or
        // of the unwinder, and the signal trampoline right after it.
        let handler = lines
            .iter()
            .rposition(|(n, _)| n.contains("loopwatch::stack") || n.starts_with("backtrace::"))
            .map_or(0, |i| i + 1);
        let start = if lines
            .get(handler)
            .is_some_and(|(n, _)| n.contains("restore_rt") || n.starts_with("0x"))
        {
            handler + 1
        } else {
            handler
        };
        // Above the scheduler: the first tokio runtime frame under the user's code.
        let end = lines
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, (n, _))| n.starts_with("tokio::runtime::"))
            .map_or(lines.len(), |(i, _)| i);
        (start.min(lines.len()), end.max(start.min(lines.len())))
    };
    let mut out = String::new();
    for (i, (name, place)) in lines[start..end].iter().enumerate() {
        out.push_str(&format!("{i:>4}: {name}\n"));
        if let Some(place) = place {
            out.push_str(&format!("             at {place}\n"));
        }
    }
    Some(out)
}

#[cfg(not(all(target_os = "linux", feature = "stacks")))]
pub(crate) fn symbolize(_frames: &[usize], _full: bool) -> Option<String> {
    None
}

/// Loads the symbolizer's tables (debug info or the symbol table) ahead of
/// the first stall: up to a second the first time in a debug build.
pub(crate) fn warm_up() {
    #[cfg(all(target_os = "linux", feature = "stacks"))]
    {
        // This thread's own frames (std, libc, loopwatch) and a few functions
        // every stuck stack goes through.
        let mut frames = Vec::new();
        backtrace::trace(|frame| {
            frames.push(frame.ip() as usize);
            true
        });
        frames.push(std::thread::sleep as fn(std::time::Duration) as usize);
        frames.push(tokio::runtime::Handle::current as fn() -> tokio::runtime::Handle as usize);
        frames.push(warm_up as fn() as usize);
        let _ = symbolize(&frames, true);
    }
}
