//! Names and places (file:line) of sampled frames, resolved on the watchdog
//! thread with the `backtrace` crate.

use std::fmt::Write as _;

use super::classify::{self, kind_of_name, lookup_address, FrameKind};

/// One resolved frame: function name, and `file:line` where debug info has it.
type Line = (String, Option<String>);

/// Every function at one address, innermost (inlined) first.
fn resolve(i: usize, ip: usize) -> Vec<Line> {
    let addr = lookup_address(i, ip);
    let mut lines = Vec::new();
    backtrace::resolve(addr as *mut std::ffi::c_void, |symbol| {
        let name = symbol
            .name()
            .map_or_else(|| format!("{addr:#x}"), |n| format!("{n:#}"));
        let place = match (symbol.filename(), symbol.lineno()) {
            (Some(file), Some(line)) => Some(format!("{}:{line}", file.display())),
            _ => None,
        };
        lines.push((name, place));
    });
    if lines.is_empty() {
        lines.push((format!("{addr:#x}"), None));
    }
    lines
}

/// Resolves a stack to text, one numbered frame per line. Unless `full`, it
/// is trimmed by [`classify::trimmed`]: the capture's own frames at the top
/// and tokio's runtime at the bottom are left out, except user code inlined
/// into the first runtime frame.
pub(crate) fn symbolize(frames: &[usize], full: bool) -> Option<String> {
    if frames.is_empty() {
        return None;
    }
    let mut lines: Vec<Line> = Vec::new();
    if full {
        for (i, &ip) in frames.iter().enumerate() {
            lines.extend(resolve(i, ip));
        }
    } else {
        let range = classify::trimmed(frames);
        for i in range.clone() {
            lines.extend(resolve(i, frames[i]));
        }
        if let Some(&ip) = frames.get(range.end) {
            lines.extend(
                resolve(range.end, ip)
                    .into_iter()
                    .take_while(|(name, _)| kind_of_name(name) == FrameKind::Other),
            );
        }
    }
    if lines.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, (name, place)) in lines.iter().enumerate() {
        let _ = writeln!(out, "{i:>4}: {name}");
        if let Some(place) = place {
            let _ = writeln!(out, "             at {place}");
        }
    }
    Some(out)
}

/// Loads the symbolizer's tables (debug info or the symbol table) ahead of
/// the first stall: up to a second the first time in a debug build.
pub(crate) fn warm_up() {
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
