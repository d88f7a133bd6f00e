//! The walk over arbitrary input: stack bytes, registers and code
//! addresses drawn at random (a fixed seed, so a failure is reproduced),
//! some of them plausible (return addresses into real code, pointers into
//! the stack itself), and the real stack of a sleeping thread with words
//! overwritten at random. Whatever it is given, the walk does not panic, ends
//! within its bounds, and every frame it returns past the first is code of
//! a loaded object, reached through stack addresses that only grow and stay
//! inside the copy: it never hands back a frame it did not verify.

use super::{MAX_FRAMES, TAIL_FUNCTIONS, UNKNOWN_TAIL_CALLS};

/// xorshift64*: enough randomness, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// An address inside the code of a loaded object.
fn code_address(rng: &mut Rng, code: &[std::ops::Range<u64>]) -> u64 {
    let range = &code[rng.below(code.len() as u64) as usize];
    range.start + rng.below(range.end - range.start)
}

/// The registers and a copy of the stack of a thread sleeping in
/// `std::thread::sleep`, read from outside.
fn real_stack() -> (u64, u64, Vec<u8>) {
    use crate::os::thread::{self, Syscall};
    let (tx, rx) = std::sync::mpsc::channel();
    let sleeper = std::thread::spawn(move || {
        tx.send(thread::current_tid()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    let tid = rx.recv().unwrap();
    let mut taken = None;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        if let Some(Syscall::Blocked { sp, pc, .. }) = thread::syscall(tid) {
            let mut stack = vec![0u8; 64 * 1024];
            let n = crate::os::memory::copy_memory(sp, &mut stack);
            stack.truncate(n);
            taken = Some((pc, sp, stack));
            break;
        }
    }
    sleeper.join().unwrap();
    taken.expect("a sleeping thread's registers")
}

#[test]
fn arbitrary_stacks_never_panic_and_give_only_verified_frames() {
    let modules = crate::linux::modules();
    let code: Vec<std::ops::Range<u64>> = modules
        .objects()
        .iter()
        .map(|o| o.text.clone())
        .filter(|r| r.end > r.start)
        .collect();
    assert!(!code.is_empty(), "no loaded code found");
    let (real_ip, real_sp, real) = real_stack();
    assert!(
        modules
            .walk(real_ip, real_sp, None, real_sp, &real)
            .frames
            .len()
            > 3,
        "the real stack walks"
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut frames_seen = 0;
    let mut deep = 0;
    for round in 0..4_000 {
        // Two rounds in three: the real stack, a few words overwritten.
        let (ip, base, bp, stack) = if round % 3 != 0 {
            let mut stack = real.clone();
            let words = stack.len() / 8;
            for _ in 0..1 + rng.below(16) {
                let at = 8 * rng.below(words as u64) as usize;
                let value = match rng.below(4) {
                    0 => code_address(&mut rng, &code),
                    1 => real_sp + 8 * rng.below(words as u64 + 4),
                    2 => 0,
                    _ => rng.next(),
                };
                stack[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            (real_ip, real_sp, None, stack)
        } else {
            let len = 8 * (1 + rng.below(2_048)) as usize;
            let base = 0x7ff0_0000_0000 + 16 * rng.below(1 << 20);
            let mut stack = vec![0u8; len];
            for word in stack.chunks_exact_mut(8) {
                let value = match rng.below(10) {
                    // A return address into real code.
                    0..=3 => code_address(&mut rng, &code),
                    // A saved frame pointer: somewhere in this stack.
                    4..=5 => base + 8 * rng.below(len as u64 / 8 + 4),
                    6 => 0,
                    _ => rng.next(),
                };
                word.copy_from_slice(&value.to_le_bytes());
            }
            let ip = if rng.chance(85) {
                code_address(&mut rng, &code)
            } else {
                rng.next()
            };
            let bp = match rng.below(3) {
                0 => None,
                1 => Some(base + 8 * rng.below(len as u64 / 8 + 4)),
                _ => Some(rng.next()),
            };
            (ip, base, bp, stack)
        };
        let len = stack.len();
        let walk = modules.walk(ip, base, bp, base, &stack);
        let context = format!("round {round}: ip {ip:#x} bp {bp:x?} len {len}");
        assert_eq!(walk.frames.len(), walk.sps.len(), "{context}");
        assert!(
            walk.frames.len() <= MAX_FRAMES + TAIL_FUNCTIONS + 1,
            "{context}: {} frames",
            walk.frames.len()
        );
        assert!(
            walk.tail_calls.iter().all(|&i| i < walk.frames.len()),
            "{context}"
        );
        for i in 1..walk.frames.len() {
            let frame = walk.frames[i];
            if frame == UNKNOWN_TAIL_CALLS {
                assert!(walk.tail_calls.contains(&i), "{context}: frame {i}");
                continue;
            }
            assert!(
                modules.object_of(frame as u64).is_some(),
                "{context}: frame {i} ({frame:#x}) is in no loaded code"
            );
            assert!(
                walk.sps[i] >= walk.sps[i - 1],
                "{context}: frame {i}'s stack address went down"
            );
            assert!(
                walk.sps[i] <= base + len as u64,
                "{context}: frame {i}'s stack address {:#x} is past the copy",
                walk.sps[i]
            );
        }
        frames_seen += walk.frames.len();
        deep += usize::from(walk.frames.len() > 1);
    }
    // The input reached past the first frame often enough to test anything.
    // Most walks of the real stack, changed or not, go past its first
    // frames: the bounds and checks above were tested on deep walks.
    assert!(
        deep > 2_000,
        "{deep} walks past the first frame, {frames_seen} frames"
    );
}
