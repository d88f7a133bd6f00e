//! The instructions a walk reads, decoded with `yaxpeax-x86`: the call
//! before a return address, the prologue of a function with a frame
//! pointer, a PLT stub, and the jumps by which a function leaves for
//! another (its tail calls).
//!
//! Everything here is a pure function of the bytes it is given and the
//! address they were copied from, so that it can be tested on bytes
//! written by hand. Nothing is decoded by hand (a reader of opcodes once
//! took a byte inside a `mov` for a call): the crate's decoder keeps no
//! tables in memory (`iced-x86`'s built 588 KiB of them at its first use,
//! kept for the life of the process, which is why it is not used), and a
//! walk that decodes with it takes what one took with the opcodes read by
//! hand, within the noise (an 8-frame stack read from outside, release: 56
//! to 74 us against 53 to 68 us, the copy and the `/proc` reads most of
//! it).

use yaxpeax_arch::{Decoder as _, LengthedInstruction as _, U8Reader};
use yaxpeax_x86::long_mode::{InstDecoder, Instruction, Opcode, Operand, RegSpec};

/// What the instruction before a return address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// `call rel32` to this address.
    Direct(u64),
    /// `call *disp32(%rip)`: through the pointer stored at this address.
    Slot(u64),
    /// A call through a register or memory the walk cannot read.
    Indirect,
}

/// The longest call instruction looked for before a return address: `call
/// *disp32(%reg,%reg,s)` with a REX and a `bnd` or `notrack` prefix.
pub(crate) const MAX_CALL_LEN: usize = 9;

/// One decoded instruction with the address it was copied from.
struct At {
    ip: u64,
    i: Instruction,
}

impl At {
    fn len(&self) -> u64 {
        self.i.len().to_const()
    }

    /// Where a relative branch goes.
    fn target(&self) -> Option<u64> {
        let next = self.ip.wrapping_add(self.len());
        match self.i.operand(0) {
            Operand::ImmediateI8 { imm } => Some(next.wrapping_add_signed(i64::from(imm))),
            Operand::ImmediateI32 { imm } => Some(next.wrapping_add_signed(i64::from(imm))),
            _ => None,
        }
    }

    /// The address a RIP-relative memory operand reads.
    fn rip_slot(&self) -> Option<u64> {
        match self.i.operand(0) {
            Operand::Disp { base, disp } if base == RegSpec::rip() => Some(
                self.ip
                    .wrapping_add(self.len())
                    .wrapping_add_signed(i64::from(disp)),
            ),
            _ => None,
        }
    }

    /// Whether operand 0 is a register (a call or jump through one, or the
    /// destination of a move).
    fn op0_register(&self) -> Option<RegSpec> {
        match self.i.operand(0) {
            Operand::Register { reg } => Some(reg),
            _ => None,
        }
    }
}

/// Decodes the instructions of `code`, copied from `ip`, one after another;
/// stops at the first that does not decode.
fn instructions(ip: u64, code: &[u8]) -> impl Iterator<Item = At> + '_ {
    let decoder = InstDecoder::default();
    let mut offset = 0usize;
    std::iter::from_fn(move || {
        let rest = code.get(offset..).filter(|r| !r.is_empty())?;
        let i = decoder.decode(&mut U8Reader::new(rest)).ok()?;
        let at = At {
            ip: ip + offset as u64,
            i,
        };
        offset += usize::try_from(at.len()).ok()?;
        Some(at)
    })
}

/// The first instruction of `code`, copied from `ip`.
fn decode_one(ip: u64, code: &[u8]) -> Option<At> {
    instructions(ip, code).next()
}

/// The call instructions that may end just before `ra`, given the bytes
/// before it (`code[code.len() - 1]` is at `ra - 1`): each length up to
/// [`MAX_CALL_LEN`] that decodes to a near call ending exactly at `ra`. The
/// same bytes can read as two calls: the last bytes of an instruction
/// before a `call *%rax` can hold an `E8`
/// (`mov 0x27e856(%rip),%rax; call *%rax`), so no reading is taken over
/// another here (the walk weighs them). Empty when no call ends at `ra`.
pub(crate) fn calls_before(ra: u64, code: &[u8]) -> Vec<CallKind> {
    let mut out = Vec::with_capacity(2);
    for len in 2..=code.len().min(MAX_CALL_LEN) {
        let at = code.len() - len;
        let Some(call) = decode_one(ra - len as u64, &code[at..]) else {
            continue;
        };
        if call.len() != len as u64 || call.i.opcode() != Opcode::CALL {
            continue;
        }
        let kind = if let Some(target) = call.target() {
            CallKind::Direct(target)
        } else if let Some(slot) = call.rip_slot() {
            CallKind::Slot(slot)
        } else {
            CallKind::Indirect
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    out
}

/// The size of a frame-pointer function's frame below its record, from the
/// instructions right after `mov rbp, rsp` (`code`, copied from `ip`):
/// registers pushed and `sub rsp, N`; and how many of the pushes save a
/// callee-saved register (`rbx`, `r12`..`r15`; a push of another register
/// only reserves 8 bytes, and the unwind tables do not list it). `None`
/// when the prologue has another shape.
pub(crate) fn frame_below_record(ip: u64, code: &[u8]) -> Option<(u64, usize)> {
    let (mut bytes, mut saves) = (0u64, 0usize);
    let callee_saved = [
        RegSpec::rbx(),
        RegSpec::r12(),
        RegSpec::r13(),
        RegSpec::r14(),
        RegSpec::r15(),
    ];
    for at in instructions(ip, code) {
        let reg = at.op0_register();
        let writes_rsp = reg.is_some_and(|r| r == RegSpec::rsp() || r == RegSpec::esp());
        match at.i.opcode() {
            Opcode::PUSH => {
                let r = reg?;
                if r == RegSpec::rsp() || r == RegSpec::rbp() {
                    return None;
                }
                bytes += 8;
                saves += usize::from(callee_saved.contains(&r));
            }
            // sub rsp, N (below a page: larger frames are probed first)
            Opcode::SUB if writes_rsp => {
                let n = match at.i.operand(1) {
                    Operand::ImmediateI8 { imm } => i64::from(imm),
                    Operand::ImmediateI32 { imm } => i64::from(imm),
                    Operand::ImmediateI64 { imm } => imm,
                    _ => return None,
                };
                return (0..4096).contains(&n).then_some((bytes + n as u64, saves));
            }
            // An instruction that plainly does not move the stack pointer
            // ends a prologue without locals: a move between registers, a
            // load into a register from memory, or a call (the first
            // instruction of the body).
            Opcode::MOV if !writes_rsp => return Some((bytes, saves)),
            Opcode::CALL => return Some((bytes, saves)),
            _ => return None,
        }
    }
    None
}

/// The slot a PLT stub (or any stub that is only a jump through memory)
/// at `ip` jumps through: `[endbr64] [bnd] jmp *disp32(%rip)`.
pub(crate) fn stub_slot(ip: u64, code: &[u8]) -> Option<u64> {
    let mut it = instructions(ip, code);
    let mut first = it.next()?;
    if first.i.opcode() == Opcode::ENDBR64 {
        first = it.next()?;
    }
    (first.i.opcode() == Opcode::JMP)
        .then(|| first.rip_slot())
        .flatten()
}

/// Where a jump out of a function goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// `jmp rel` or `jcc rel` to this address.
    Direct(u64),
    /// `jmp *disp32(%rip)`: to the pointer stored at this address.
    Slot(u64),
    /// A jump through a register or memory that cannot be read (a jump
    /// table, or a tail call through a function pointer or a vtable).
    Unknown,
}

/// The jumps that leave the function whose code is `code` (copied from
/// `start`; the function is `start..start + code.len()`), each with the
/// address of its instruction: its tail calls. Jumps within the function
/// are not exits; a jump through a register or memory other than a
/// RIP-relative slot is [`Exit::Unknown`].
pub(crate) fn exits(start: u64, code: &[u8]) -> Vec<(u64, Exit)> {
    let end = start + code.len() as u64;
    let mut out = Vec::new();
    for at in instructions(start, code) {
        let op = at.i.opcode();
        let jump = op == Opcode::JMP;
        let exit = if jump || op.is_jcc() {
            match at.target() {
                Some(target) => (!(start..end).contains(&target)).then_some(Exit::Direct(target)),
                None if jump => Some(match at.rip_slot() {
                    Some(slot) => Exit::Slot(slot),
                    None => Exit::Unknown,
                }),
                None => None,
            }
        } else {
            None
        };
        if let Some(exit) = exit {
            out.push((at.ip, exit));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before(bytes: &[u8]) -> Vec<u8> {
        let mut code = vec![0x90u8; MAX_CALL_LEN];
        let n = code.len();
        code[n - bytes.len()..].copy_from_slice(bytes);
        code
    }

    #[test]
    fn calls_are_decoded_from_the_bytes_before_a_return_address() {
        let ra = 0x1000;
        // call rel32 (+0x20)
        assert_eq!(
            calls_before(ra, &before(&[0xe8, 0x20, 0, 0, 0])),
            [CallKind::Direct(0x1020)]
        );
        // call rel32 backwards (-0x100)
        assert_eq!(
            calls_before(ra, &before(&[0xe8, 0x00, 0xff, 0xff, 0xff])),
            [CallKind::Direct(0xf00)]
        );
        // addr32 call rel32: a call through the GOT relaxed by the linker;
        // its last five bytes read as the same call.
        assert_eq!(
            calls_before(ra, &before(&[0x67, 0xe8, 0x20, 0, 0, 0])),
            [CallKind::Direct(0x1020)]
        );
        // call *0x10(%rip)
        assert_eq!(
            calls_before(ra, &before(&[0xff, 0x15, 0x10, 0, 0, 0])),
            [CallKind::Slot(0x1010)]
        );
        // call *%rax, call *%r11, call *0x18(%rax), call *0x8(%rsp),
        // call *0x100(%r8), notrack call *%rax
        for bytes in [
            &[0xff, 0xd0][..],
            &[0x41, 0xff, 0xd3],
            &[0xff, 0x50, 0x18],
            &[0xff, 0x54, 0x24, 0x08],
            &[0x41, 0xff, 0x90, 0x00, 0x01, 0x00, 0x00],
            &[0x3e, 0xff, 0xd0],
        ] {
            assert_eq!(
                calls_before(ra, &before(bytes)),
                [CallKind::Indirect],
                "{bytes:x?}"
            );
        }
        // A move, a return, a jump: not calls.
        for bytes in [
            &[0x48, 0x89, 0xc7][..],
            &[0xc3],
            &[0xff, 0xe0],
            &[0xe9, 0, 0, 0, 0],
        ] {
            assert!(calls_before(ra, &before(bytes)).is_empty(), "{bytes:x?}");
        }
        // `mov 0x27e856(%rip),%rax; call *%rax`: the displacement holds an
        // E8 five bytes back, so the bytes also read as a `call rel32`.
        // Both readings are given, the real one among them.
        let code = [0x48, 0x8b, 0x05, 0x56, 0xe8, 0x27, 0x00, 0xff, 0xd0];
        let read = calls_before(ra, &code);
        assert_eq!(read.len(), 2, "{read:?}");
        assert!(read.contains(&CallKind::Indirect), "{read:?}");
    }

    #[test]
    fn frame_pointer_prologues_give_the_frame_below_the_record() {
        let ip = 0x1000;
        // push r15; push r14; push r12; push rbx; sub rsp, 0x20
        let code = [
            0x41, 0x57, 0x41, 0x56, 0x41, 0x54, 0x53, 0x48, 0x83, 0xec, 0x20,
        ];
        assert_eq!(frame_below_record(ip, &code), Some((64, 4)));
        // push rbx; push rax (8 bytes reserved, not a save); mov edi, [rdi]
        assert_eq!(
            frame_below_record(ip, &[0x53, 0x50, 0x8b, 0x3f]),
            Some((16, 1))
        );
        // push rbx; sub rsp, 0x128
        let code = [0x53, 0x48, 0x81, 0xec, 0x28, 0x01, 0, 0];
        assert_eq!(frame_below_record(ip, &code), Some((8 + 0x128, 1)));
        // No locals: push rbx; mov rbx, rdi
        assert_eq!(
            frame_below_record(ip, &[0x53, 0x48, 0x89, 0xfb]),
            Some((8, 1))
        );
        // No locals: push r12; call rel32
        assert_eq!(
            frame_below_record(ip, &[0x41, 0x54, 0xe8, 0, 0, 0, 0]),
            Some((8, 1))
        );
        // A realigned or probed frame: unknown.
        assert_eq!(frame_below_record(ip, &[0x48, 0x83, 0xe4, 0xe0]), None);
        assert_eq!(
            frame_below_record(ip, &[0x48, 0x81, 0xec, 0x00, 0x20, 0, 0]),
            None
        );
        // mov rsp, rbx moves the stack pointer: unknown.
        assert_eq!(frame_below_record(ip, &[0x53, 0x48, 0x89, 0xdc]), None);
    }

    #[test]
    fn a_plt_stub_gives_the_slot_it_jumps_through() {
        // endbr64; bnd jmp *0x2fe2(%rip)
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0xe2, 0x2f, 0, 0, 0x0f, 0x1f, 0x44, 0, 0,
        ];
        assert_eq!(stub_slot(0x1000, &code), Some(0x1000 + 11 + 0x2fe2));
        // jmp *0x10(%rip)
        let code = [0xff, 0x25, 0x10, 0, 0, 0, 0xcc, 0xcc];
        assert_eq!(stub_slot(0x1000, &code), Some(0x1016));
        // A function that does something first is no stub.
        let code = [0x50, 0xff, 0x25, 0x10, 0, 0, 0];
        assert_eq!(stub_slot(0x1000, &code), None);
    }

    #[test]
    fn the_jumps_that_leave_a_function_are_its_tail_calls() {
        // The shape `fn load_order() { truth(); std::thread::sleep(..) }`
        // compiles to in release:
        //   0: push %rax
        //   1: call rel32 (truth)
        //   6: pop %rax
        //   7: jmp *0x100(%rip)        (sleep, through the GOT)
        //   d: int3
        let code = [
            0x50, 0xe8, 0x00, 0x01, 0, 0, 0x58, 0xff, 0x25, 0x00, 0x01, 0, 0, 0xcc,
        ];
        assert_eq!(exits(0x1000, &code), [(0x1007, Exit::Slot(0x100d + 0x100))]);
        //   0: test %edi,%edi
        //   2: je +0x10 (inside)
        //   4: jne rel32 (outside: a conditional tail call)
        //   a: jmp rel32 (outside)
        //   f: jmp *%rdi (a function pointer)
        let code = [
            0x85, 0xff, 0x74, 0x10, 0x0f, 0x85, 0x00, 0x10, 0, 0, 0xe9, 0x00, 0x20, 0, 0, 0xff,
            0xe7, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        ];
        assert_eq!(
            exits(0x1000, &code),
            [
                (0x1004, Exit::Direct(0x100a + 0x1000)),
                (0x100a, Exit::Direct(0x100f + 0x2000)),
                (0x100f, Exit::Unknown),
            ]
        );
    }
}
