//! The README's "What you see during a stall" is the demo's real output: the
//! demo (`examples/demo.rs`, built by `cargo test`) is run, and every line
//! the README shows must be among its lines, the numbered steps in order.
//! Numbers (times, line numbers) may differ, and `...` in a line stands for
//! anything (paths, trailing fields); a line of `...` alone for lines left
//! out. Linux: the README shows a Linux stack.
#![cfg(target_os = "linux")]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The README's demo block.
fn readme_block() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let marker = "<!-- demo output: checked by tests/readme_demo.rs -->";
    let after = &readme[readme
        .find(marker)
        .expect("the README marks the demo's output")..];
    let start = after
        .find("```text\n")
        .expect("a text block after the marker")
        + 8;
    let end = start + after[start..].find("\n```").expect("the block ends");
    after[start..end].lines().map(str::to_owned).collect()
}

/// Digits runs made one digit, so that times and line numbers may differ.
fn normalize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_digits = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('0');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

/// Whether `line` reads as `pattern`, where `...` stands for anything.
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    let mut rest = line;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

#[test]
fn matching_takes_dots_for_anything_and_numbers_as_numbers() {
    assert!(matches("a ... b", "a x y b"));
    assert!(matches("at .../demo.rs:0", "at /x/y/demo.rs:0"));
    assert!(!matches("a ... b", "a x y c"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exact more"));
    assert_eq!(
        normalize("stalled for 5.1 s at x.rs:27"),
        "stalled for 0.0 s at x.rs:0"
    );
}

#[test]
fn the_readme_shows_what_the_demo_prints() {
    let exe = std::env::current_exe().unwrap();
    let demo = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("demo"))
        .unwrap();
    if !demo.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing: `cargo test` builds the examples",
            demo.display()
        );
        eprintln!(
            "skipped: the demo is not built ({}); run `cargo test`",
            demo.display()
        );
        return;
    }
    let mut child = Command::new(&demo)
        .env_remove("LOOPWATCH_ADDR")
        .env_remove("LOOPWATCH")
        .env_remove("LOOPWATCH_STALL_THRESHOLD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo ran for more than 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "the demo failed:\n{out}\n{err}");
    let lines: Vec<String> = out.lines().map(normalize).collect();
    let mut last_step = 0;
    for shown in readme_block() {
        if shown == "..." {
            continue;
        }
        let pattern = normalize(&shown);
        let Some(at) = lines.iter().position(|l| matches(&pattern, l)) else {
            panic!("the README shows a line the demo does not print:\n  {shown}\nThe demo printed:\n{out}");
        };
        if shown.starts_with(|c: char| c.is_ascii_digit()) {
            assert!(at >= last_step, "step out of order: {shown}\n{out}");
            last_step = at;
        }
    }
}
