//! Walks through tail calls, on threads blocked behind functions written
//! in assembly, so that each shape is the same in every profile (a debug
//! build makes no tail call of its own): a jump to a function, a chain of
//! two, a jump through a slot in memory (as through the GOT), a jump
//! through a register (its target not known), a jump to a function with a
//! frame pointer that blocks in its own code (its record is found by the
//! call before it), a `.cold` part that begins inside its function's frame,
//! and a plain call for contrast.

use std::hint::black_box;
use std::time::Duration;

use super::super::{sample, Sample, Symbolizer};

std::arch::global_asm!(
    ".pushsection .text.loopwatch_test_tail_calls,\"ax\",@progbits",
    // A jump to a function (`jmp rel32`).
    ".globl loopwatch_test_jumps",
    ".type loopwatch_test_jumps,@function",
    "loopwatch_test_jumps:",
    ".cfi_startproc",
    "jmp {sleeps}",
    ".cfi_endproc",
    ".size loopwatch_test_jumps, .-loopwatch_test_jumps",
    // A chain: a jump to the function above.
    ".globl loopwatch_test_chain",
    ".type loopwatch_test_chain,@function",
    "loopwatch_test_chain:",
    ".cfi_startproc",
    "jmp loopwatch_test_jumps",
    ".cfi_endproc",
    ".size loopwatch_test_chain, .-loopwatch_test_chain",
    // A jump through a slot in memory, as a tail call through the GOT.
    ".globl loopwatch_test_through_slot",
    ".type loopwatch_test_through_slot,@function",
    "loopwatch_test_through_slot:",
    ".cfi_startproc",
    "jmp *loopwatch_test_slot(%rip)",
    ".cfi_endproc",
    ".size loopwatch_test_through_slot, .-loopwatch_test_through_slot",
    // A jump through a register: the function pointer in the second
    // argument.
    ".globl loopwatch_test_through_register",
    ".type loopwatch_test_through_register,@function",
    "loopwatch_test_through_register:",
    ".cfi_startproc",
    "jmp *%rsi",
    ".cfi_endproc",
    ".size loopwatch_test_through_register, .-loopwatch_test_through_register",
    // A plain call.
    ".globl loopwatch_test_calls",
    ".type loopwatch_test_calls,@function",
    "loopwatch_test_calls:",
    ".cfi_startproc",
    "push %rax",
    ".cfi_def_cfa_offset 16",
    "call {sleeps}",
    "pop %rax",
    ".cfi_def_cfa_offset 8",
    "ret",
    ".cfi_endproc",
    ".size loopwatch_test_calls, .-loopwatch_test_calls",
    // A jump to a function with a frame pointer that blocks in its own
    // code (`nanosleep` by a system call; the first argument points to the
    // time), after a prologue the walk cannot size: its record is found by
    // the call before its return address.
    ".globl loopwatch_test_jumps_to_fp",
    ".type loopwatch_test_jumps_to_fp,@function",
    "loopwatch_test_jumps_to_fp:",
    ".cfi_startproc",
    "jmp loopwatch_test_fp_sleeps",
    ".cfi_endproc",
    ".size loopwatch_test_jumps_to_fp, .-loopwatch_test_jumps_to_fp",
    ".globl loopwatch_test_fp_sleeps",
    ".type loopwatch_test_fp_sleeps,@function",
    "loopwatch_test_fp_sleeps:",
    ".cfi_startproc",
    "push %rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset %rbp, -16",
    "mov %rsp, %rbp",
    ".cfi_def_cfa_register %rbp",
    "push %rbx",
    ".cfi_offset %rbx, -24",
    "xor %esi, %esi",
    "mov $35, %eax",
    "syscall",
    "pop %rbx",
    "pop %rbp",
    ".cfi_def_cfa %rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size loopwatch_test_fp_sleeps, .-loopwatch_test_fp_sleeps",
    // A function whose call is in a `.cold` part of its own: the part has
    // its own unwind entry, which begins inside the function's frame.
    ".globl loopwatch_test_cold_owner",
    ".type loopwatch_test_cold_owner,@function",
    "loopwatch_test_cold_owner:",
    ".cfi_startproc",
    "sub $24, %rsp",
    ".cfi_def_cfa_offset 32",
    "jmp loopwatch_test_cold_owner.cold",
    "loopwatch_test_cold_back:",
    "add $24, %rsp",
    ".cfi_def_cfa_offset 8",
    "ret",
    ".cfi_endproc",
    ".size loopwatch_test_cold_owner, .-loopwatch_test_cold_owner",
    ".type loopwatch_test_cold_owner.cold,@function",
    "loopwatch_test_cold_owner.cold:",
    ".cfi_startproc",
    ".cfi_def_cfa_offset 32",
    "call {sleeps}",
    "jmp loopwatch_test_cold_back",
    ".cfi_endproc",
    ".size loopwatch_test_cold_owner.cold, .-loopwatch_test_cold_owner.cold",
    ".popsection",
    ".pushsection .data.rel.ro.loopwatch_test_tail_calls,\"aw\",@progbits",
    ".p2align 3",
    "loopwatch_test_slot:",
    ".quad {sleeps}",
    ".popsection",
    sleeps = sym tail_target_sleeps,
    options(att_syntax),
);

extern "C" {
    fn loopwatch_test_jumps(ms: u64);
    fn loopwatch_test_chain(ms: u64);
    fn loopwatch_test_through_slot(ms: u64);
    fn loopwatch_test_through_register(ms: u64, f: extern "C" fn(u64));
    fn loopwatch_test_calls(ms: u64);
    fn loopwatch_test_jumps_to_fp(time: *const libc::timespec);
    fn loopwatch_test_cold_owner(ms: u64);
}

/// The function the tail calls reach: it blocks, then returns.
#[inline(never)]
extern "C" fn tail_target_sleeps(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    black_box(());
}

/// How long a thread blocks.
const BLOCK_MS: u64 = 400;

/// Calls `entry` on a thread of its own and takes its stack while it
/// blocks, from outside.
fn stack_while_blocked_in(entry: fn()) -> Sample {
    let (tx, rx) = std::sync::mpsc::channel();
    let blocked = std::thread::spawn(move || {
        tx.send(crate::current_tid()).unwrap();
        entry();
    });
    let tid = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let taken = sample(tid, false).expect("a blocked thread is read from outside");
    blocked.join().unwrap();
    taken
}

/// Defines a caller of an assembly entry: a function of its own that calls
/// it directly (a call through a pointer would not say where it went) and
/// does something after, so that it stays a frame of its own. Each walk
/// must reach it after the functions that left by a tail call.
macro_rules! caller {
    ($name:ident, $call:expr) => {
        #[inline(never)]
        fn $name() {
            // SAFETY: the entries take what they are given here.
            unsafe { $call };
            black_box(());
        }
    };
}

caller!(calls_jumps, loopwatch_test_jumps(BLOCK_MS));
caller!(calls_chain, loopwatch_test_chain(BLOCK_MS));
caller!(calls_through_slot, loopwatch_test_through_slot(BLOCK_MS));
caller!(
    calls_through_register,
    loopwatch_test_through_register(BLOCK_MS, tail_target_sleeps)
);
caller!(calls_calls, loopwatch_test_calls(BLOCK_MS));
caller!(calls_jumps_to_fp, loopwatch_test_jumps_to_fp(&FP_TIME));
caller!(calls_cold_owner, loopwatch_test_cold_owner(BLOCK_MS));

/// How long the frame-pointer function sleeps.
static FP_TIME: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: (BLOCK_MS * 1_000_000) as libc::c_long,
};

/// The stack's frames as `(name, tail call)`, innermost first.
fn named(taken: &Sample) -> Vec<(String, bool)> {
    let text = Symbolizer::default()
        .symbolize(taken, true)
        .expect("named")
        .text;
    text.lines()
        .filter_map(|l| l.trim_start().split_once(": "))
        .filter(|(n, _)| n.parse::<usize>().is_ok())
        .map(|(_, name)| match name.strip_suffix(" (tail call)") {
            Some(name) => (name.to_owned(), true),
            None => (name.to_owned(), false),
        })
        .collect()
}

/// The position of the first frame whose name contains `part`.
fn at(frames: &[(String, bool)], part: &str) -> usize {
    frames
        .iter()
        .position(|(n, _)| n.contains(part))
        .unwrap_or_else(|| panic!("no frame named {part}: {frames:#?}"))
}

/// Asserts that the frames from `first` on are `expected` (name parts and
/// whether each is a tail call), with nothing between, and that no other
/// frame is a tail call of this test's functions.
fn assert_frames(frames: &[(String, bool)], expected: &[(&str, bool)]) {
    let first = at(frames, expected[0].0);
    for (i, (part, tail)) in expected.iter().enumerate() {
        let (name, is_tail) = &frames[first + i];
        assert!(
            name.contains(part) && is_tail == tail,
            "frame {} is {name:?} (tail call: {is_tail}), expected {part:?} (tail call: {tail}): {frames:#?}",
            first + i
        );
    }
    let test_tails = frames
        .iter()
        .filter(|(n, tail)| *tail && n.contains("loopwatch_test"))
        .count();
    let expected_tails = expected.iter().filter(|(_, t)| *t).count();
    assert_eq!(test_tails, expected_tails, "{frames:#?}");
}

#[test]
fn a_function_that_jumps_to_the_one_that_blocks_is_a_tail_call_frame() {
    let taken = stack_while_blocked_in(calls_jumps);
    assert!(taken.complete, "{:?}", taken.stopped);
    let frames = named(&taken);
    assert_frames(
        &frames,
        &[
            ("tail_target_sleeps", false),
            ("loopwatch_test_jumps", true),
            ("calls_jumps", false),
        ],
    );
}

#[test]
fn a_chain_of_two_tail_calls_is_two_frames_innermost_first() {
    let taken = stack_while_blocked_in(calls_chain);
    assert!(taken.complete, "{:?}", taken.stopped);
    assert_frames(
        &named(&taken),
        &[
            ("tail_target_sleeps", false),
            ("loopwatch_test_jumps", true),
            ("loopwatch_test_chain", true),
            ("calls_chain", false),
        ],
    );
}

#[test]
fn a_tail_call_through_a_slot_in_memory_is_followed() {
    let taken = stack_while_blocked_in(calls_through_slot);
    assert!(taken.complete, "{:?}", taken.stopped);
    assert_frames(
        &named(&taken),
        &[
            ("tail_target_sleeps", false),
            ("loopwatch_test_through_slot", true),
            ("calls_through_slot", false),
        ],
    );
}

#[test]
fn a_tail_call_through_a_register_is_shown_with_what_it_may_have_left_out() {
    let taken = stack_while_blocked_in(calls_through_register);
    assert!(taken.complete, "{:?}", taken.stopped);
    let frames = named(&taken);
    assert_frames(
        &frames,
        &[
            ("tail_target_sleeps", false),
            (
                "?? (tail calls through a jump whose target is not known",
                false,
            ),
            ("loopwatch_test_through_register", true),
            ("calls_through_register", false),
        ],
    );
}

#[test]
fn a_plain_call_has_no_tail_call_frame() {
    let taken = stack_while_blocked_in(calls_calls);
    assert!(taken.complete, "{:?}", taken.stopped);
    assert_frames(
        &named(&taken),
        &[
            ("tail_target_sleeps", false),
            ("loopwatch_test_calls", false),
            ("calls_calls", false),
        ],
    );
}

#[test]
fn a_frame_pointer_function_reached_by_a_tail_call_is_verified_by_the_call() {
    let taken = stack_while_blocked_in(calls_jumps_to_fp);
    assert!(taken.complete, "{:?}", taken.stopped);
    assert_frames(
        &named(&taken),
        &[
            ("loopwatch_test_fp_sleeps", false),
            ("loopwatch_test_jumps_to_fp", true),
            ("calls_jumps_to_fp", false),
        ],
    );
}

#[test]
fn a_cold_part_is_its_functions_frame_not_a_tail_call() {
    let taken = stack_while_blocked_in(calls_cold_owner);
    assert!(taken.complete, "{:?}", taken.stopped);
    assert_frames(
        &named(&taken),
        &[
            ("tail_target_sleeps", false),
            ("loopwatch_test_cold_owner.cold", false),
            ("calls_cold_owner", false),
        ],
    );
}
