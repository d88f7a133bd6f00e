//! The walk of a copied stack: from a thread's registers and a copy of its
//! stack bytes, with the loaded objects' unwind tables (`.eh_frame`), on the
//! watchdog thread. The live stack is never read.
//!
//! # Why the walk is right without the frame pointer
//!
//! A thread waiting in the kernel is read from outside: `/proc` gives its
//! stack pointer (SP) and program counter (PC), not its frame pointer (RBP).
//! The unwind tables say, for every instruction, how to find the caller's
//! frame (the CFA, the return address, the saved registers) from SP or RBP.
//! Code built without frame pointers (application code and its
//! dependencies in release builds) is described from SP and needs nothing
//! else. Code built with frame pointers (the standard library, some C
//! libraries) is described from RBP, and RBP is unknown at the start of a
//! walk of a waiting thread: the value the thread had in the register is in
//! the kernel, and the function that called into the kernel (libc's syscall
//! wrapper) usually did not save it.
//!
//! The walker tracks RBP as *unknown* until a frame's tables say where it
//! was saved (then it is the true register value, and stays exact through
//! every frame the tables describe). Guessing it from the stack, as a plain
//! frame-pointer walk does, is what goes wrong: application code uses RBP as
//! an ordinary register, so the saved value need not point to a frame, and a
//! stale frame record left deeper in the stack by an earlier call looks
//! like a real one. So a frame described from RBP while RBP is unknown gets
//! its frame record found and *verified* before the walk goes on:
//!
//! 1. **By position.** A function with a frame pointer sets it up with
//!    `push rbp; mov rbp, rsp`, then saves registers and reserves its locals
//!    (`push r15 …; sub rsp, N`). The tables say where `mov rbp, rsp` ends;
//!    decoding the few instructions after it gives the distance from SP to
//!    the record at every call the function makes. A return address (just
//!    after a call instruction, in loaded code) found exactly there is the
//!    record.
//! 2. **By the call.** Otherwise each 16-byte aligned slot above SP holding
//!    a return address is tried, lowest first, and kept only if the
//!    instruction before it is a call *to this function*: a direct
//!    `call rel32` (through a PLT stub, followed) or a `call` through a
//!    RIP-relative slot (a GOT entry, read) whose target is the start of the
//!    function being unwound, from its unwind entry. A stale record of an
//!    earlier call to the same function is the one way this can still be
//!    fooled, so the first few such candidates are each walked on, and the
//!    first whose walk reaches the thread's first frame is taken.
//!
//! When neither verifies a record, the walk stops there and says so
//! ([`Stop::Unverified`]): the frames before are right, and no frame the
//! thread is not in is ever added. Every return address the walk takes,
//! verified or plainly read through the tables, must be just after a call
//! instruction inside a loaded object, and each frame must lie above the
//! one before; a walk that ends where the tables say a thread's first frame
//! is (`clone3`, `_start`: no return address) is complete.

use std::ops::Range;

use addr2line::gimli::{self, UnwindSection as _};

/// The most frames kept of one stack.
pub(crate) const MAX_FRAMES: usize = 128;

/// How far above a frame's stack pointer its frame record is looked for.
const SCAN_BYTES: u64 = 32 * 1024;

/// How many records verified by their call are walked on at one point.
const TRIED: usize = 4;

/// Steps the walk may take in all, counting the walks of candidates.
const STEP_BUDGET: usize = 2048;

/// An object's unwind tables, copied, with the run-time addresses they were
/// copied from.
pub(crate) struct Tables {
    /// Where the object's code is mapped.
    pub(crate) text: Range<u64>,
    /// `.eh_frame_hdr` and its run-time address.
    pub(crate) hdr_avma: u64,
    pub(crate) eh_frame_hdr: Vec<u8>,
    /// `.eh_frame` and its run-time address.
    pub(crate) eh_frame_avma: u64,
    pub(crate) eh_frame: Vec<u8>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("text", &self.text)
            .field("eh_frame_hdr_bytes", &self.eh_frame_hdr.len())
            .field("eh_frame_bytes", &self.eh_frame.len())
            .finish()
    }
}

/// Where a walk stopped short of the thread's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The next frame's code is in no loaded object.
    NoCode,
    /// The code has no unwind information.
    NoUnwindInfo,
    /// The unwind information uses a rule this walker does not evaluate (a
    /// DWARF expression: a signal frame, a PLT stub).
    Unsupported,
    /// A function built with frame pointers, reached with the frame pointer
    /// unknown, whose frame record could not be verified.
    Unverified,
    /// The frame lies beyond the stack bytes copied.
    EndOfCopy,
    /// What the tables give as the return address is not just after a call
    /// in loaded code, or the frame is not above the one before.
    BadFrame,
    /// [`MAX_FRAMES`] frames walked.
    TooDeep,
}

impl Stop {
    /// Where the walk stopped, in words, for a report.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stop::NoCode => "the next return address is in no loaded code",
            Stop::NoUnwindInfo => "the next function has no unwind information",
            Stop::Unsupported => "the next frame's unwind rule is not supported",
            Stop::Unverified => {
                "the next frame's record could not be verified (a function with a frame pointer, reached without it)"
            }
            Stop::EndOfCopy => "the stack copied ends here",
            Stop::BadFrame => "the next return address read is not a call's",
            Stop::TooDeep => "the stack is deeper than the frames kept",
        }
    }
}

/// What a walk gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Walk {
    /// Addresses to look up, innermost first: the interrupted instruction,
    /// then each return address minus one (inside the call).
    pub(crate) frames: Vec<usize>,
    /// The stack pointer in each frame (parallel to `frames`).
    pub(crate) sps: Vec<u64>,
    /// `None` when the walk reached the thread's first frame; otherwise why
    /// it stopped after the last frame.
    pub(crate) stop: Option<Stop>,
}

impl Walk {
    /// Whether the walk reached the thread's first frame.
    pub(crate) fn complete(&self) -> bool {
        self.stop.is_none()
    }
}

/// How a register's caller value is found, as far as the walk needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Not changed by this function.
    Same,
    /// Not recoverable (for the return address: this is the first frame).
    Undefined,
    /// Saved at CFA + n.
    Offset(i64),
    /// Is CFA + n.
    ValOffset(i64),
    /// Anything else.
    Unsupported,
}

/// The unwind row for one address.
#[derive(Debug, Clone, Copy)]
struct Row {
    /// CFA = RBP + offset (true) or RSP + offset (false).
    cfa_bp: bool,
    cfa_offset: i64,
    ra: Rule,
    bp: Rule,
    /// Callee-saved registers other than RBP saved by this function.
    saved: usize,
    /// The start of the function (its unwind entry's first address).
    func_start: u64,
}

/// The unwind entry (FDE) of the function holding `addr`, with the section
/// and base addresses it is read with.
fn fde_of(
    t: &Tables,
    addr: u64,
) -> Option<(
    gimli::EhFrame<Slice<'_>>,
    gimli::BaseAddresses,
    gimli::FrameDescriptionEntry<Slice<'_>>,
)> {
    let bases = gimli::BaseAddresses::default()
        .set_eh_frame_hdr(t.hdr_avma)
        .set_eh_frame(t.eh_frame_avma)
        .set_text(t.text.start);
    let endian = gimli::LittleEndian;
    let hdr = gimli::EhFrameHdr::new(&t.eh_frame_hdr, endian)
        .parse(&bases, 8)
        .ok()?;
    let eh_frame = gimli::EhFrame::new(&t.eh_frame, endian);
    let fde = hdr
        .table()?
        .fde_for_address(&eh_frame, &bases, addr, gimli::EhFrame::cie_from_offset)
        .ok()?;
    Some((eh_frame, bases, fde))
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// DWARF register numbers on x86-64.
const RBP: gimli::Register = gimli::X86_64::RBP;
const RSP: gimli::Register = gimli::X86_64::RSP;
const RA: gimli::Register = gimli::X86_64::RA;

/// Reads loaded code (never faults). Returns how many bytes were read.
pub(crate) type ReadCode<'a> = &'a dyn Fn(u64, &mut [u8]) -> usize;

/// The walker over a set of objects' tables.
pub(crate) struct Unwinder<'a> {
    objects: &'a [std::sync::Arc<Tables>],
    read_code: ReadCode<'a>,
    ctx: Box<gimli::UnwindContext<usize>>,
    steps: usize,
}

/// The registers the walk knows in one frame.
#[derive(Debug, Clone, Copy)]
struct Regs {
    pc: u64,
    sp: u64,
    /// `None` while unknown.
    bp: Option<u64>,
    /// Whether `pc` is the interrupted instruction (frame 0) rather than a
    /// return address.
    exact: bool,
}

/// A copy of stack bytes starting at `base`.
#[derive(Clone, Copy)]
struct Stack<'s> {
    base: u64,
    bytes: &'s [u8],
}

impl Stack<'_> {
    fn word(&self, addr: u64) -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let bytes = self.bytes.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }
}

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

/// The call instructions that may end just before `ra`, given the 8 bytes
/// before it (`code[i]` is at `ra - 8 + i`): a `call rel32` (its `E8` byte
/// 5 bytes back) and a `call *…` (`FF /2`, which also ends at `ra`). Both
/// can be read from the same bytes: the last bytes of an instruction before
/// a `call *%rax` can hold an `E8` (`mov 0x27e856(%rip),%rax; call *%rax`),
/// so neither reading is taken over the other here ([`Unwinder::calls`]
/// weighs them). Empty when no call ends at `ra`.
pub(crate) fn calls_before(ra: u64, code: &[u8; 8]) -> Vec<CallKind> {
    let mut out = Vec::with_capacity(2);
    if code[3] == 0xe8 {
        let rel = i32::from_le_bytes([code[4], code[5], code[6], code[7]]);
        out.push(CallKind::Direct(ra.wrapping_add_signed(i64::from(rel))));
    }
    if let Some(kind) = indirect_call_before(ra, code) {
        out.push(kind);
    }
    out
}

/// The `call *…` (`FF /2`, maybe after a REX prefix) that ends at `ra`.
fn indirect_call_before(ra: u64, code: &[u8; 8]) -> Option<CallKind> {
    // Find a start whose operand ends exactly at `ra`.
    for len in 2..=7usize {
        let at = 8 - len;
        let (rex, op) = if (0x40..=0x4f).contains(&code[at]) {
            (true, at + 1)
        } else {
            (false, at)
        };
        if op >= 7 || code[op] != 0xff {
            continue;
        }
        let modrm = code[op + 1];
        if (modrm >> 3) & 7 != 2 {
            continue;
        }
        let (mode, rm) = (modrm >> 6, modrm & 7);
        let mut end = op + 2;
        if mode != 3 && rm == 4 {
            // SIB byte; base 5 with mode 0 means a 32-bit displacement.
            let Some(&sib) = code.get(end) else { continue };
            end += 1;
            if mode == 0 && sib & 7 == 5 {
                end += 4;
            }
        }
        let rip_relative = mode == 0 && rm == 5;
        end += match mode {
            0 if rm == 5 => 4,
            1 => 1,
            2 => 4,
            _ => 0,
        };
        if end != 8 {
            continue;
        }
        if rip_relative && !rex {
            let d = &code[op + 2..op + 6];
            let disp = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            return Some(CallKind::Slot(ra.wrapping_add_signed(i64::from(disp))));
        }
        return Some(CallKind::Indirect);
    }
    None
}

/// The size of a frame-pointer function's frame below its record, from the
/// instructions right after `mov rbp, rsp` (`code`): registers pushed and
/// `sub rsp, N`; and how many of the pushes save a callee-saved register
/// (`rbx`, `r12`..`r15`; a push of another register only reserves 8 bytes,
/// and the unwind tables do not list it). `None` when the prologue has
/// another shape.
pub(crate) fn frame_below_record(code: &[u8]) -> Option<(u64, usize)> {
    let mut i = 0;
    let (mut bytes, mut saves) = (0u64, 0usize);
    loop {
        match code.get(i..)? {
            // push r8..r15 (r12..r15 are callee-saved)
            [0x41, op, ..] if (0x50..=0x57).contains(op) => {
                bytes += 8;
                saves += usize::from(*op >= 0x54);
                i += 2;
            }
            // push rax..rdi (not rsp, rbp; rbx is callee-saved)
            [op, ..] if (0x50..=0x57).contains(op) && *op != 0x54 && *op != 0x55 => {
                bytes += 8;
                saves += usize::from(*op == 0x53);
                i += 1;
            }
            // sub rsp, imm8
            [0x48, 0x83, 0xec, n, ..] => return Some((bytes + u64::from(*n), saves)),
            // sub rsp, imm32 (below a page: larger frames are probed)
            [0x48, 0x81, 0xec, a, b, c, d, ..] => {
                let n = u32::from_le_bytes([*a, *b, *c, *d]);
                return (n < 4096).then_some((bytes + u64::from(n), saves));
            }
            // An instruction that plainly does not move the stack pointer
            // ends a prologue without locals: a move between registers, a
            // load into a register from memory, or a call (the first
            // instruction of the body).
            [0x40..=0x4f, op @ (0x89 | 0x8b), modrm, ..] | [op @ (0x89 | 0x8b), modrm, ..]
                if !writes_rsp(*op, *modrm) =>
            {
                return Some((bytes, saves));
            }
            [0xe8, ..] | [0xff, 0x15, ..] => return Some((bytes, saves)),
            _ => return None,
        }
    }
}

/// Whether `mov` (`0x89`: to r/m, `0x8b`: to a register) with this ModRM
/// byte writes the stack pointer (or might: REX.B/REX.R are ignored, so
/// `r12` counts as `rsp` here, which only makes the decoding more careful).
fn writes_rsp(op: u8, modrm: u8) -> bool {
    match op {
        0x8b => (modrm >> 3) & 7 == 4,
        _ => modrm >> 6 == 3 && modrm & 7 == 4,
    }
}

impl<'a> Unwinder<'a> {
    pub(crate) fn new(objects: &'a [std::sync::Arc<Tables>], read_code: ReadCode<'a>) -> Self {
        Unwinder {
            objects,
            read_code,
            ctx: Box::new(gimli::UnwindContext::new()),
            steps: 0,
        }
    }

    /// Walks the stack whose bytes from `stack_base` are `stack`, from
    /// registers `ip`, `sp` and `bp` (`None` when unknown).
    pub(crate) fn walk(
        &mut self,
        ip: u64,
        sp: u64,
        bp: Option<u64>,
        stack_base: u64,
        stack: &[u8],
    ) -> Walk {
        self.steps = 0;
        let regs = Regs {
            pc: ip,
            sp,
            bp,
            exact: true,
        };
        let stack = Stack {
            base: stack_base,
            bytes: stack,
        };
        let mut walk = Walk {
            frames: vec![ip as usize],
            sps: vec![sp],
            stop: None,
        };
        self.walk_on(regs, stack, &mut walk);
        walk
    }

    fn tables(&self, addr: u64) -> Option<&'a Tables> {
        self.objects
            .iter()
            .find(|t| t.text.contains(&addr))
            .map(|t| &**t)
    }

    fn in_code(&self, addr: u64) -> bool {
        self.tables(addr).is_some()
    }

    fn code<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        ((self.read_code)(addr, &mut out) == N).then_some(out)
    }

    /// The calls that may end at `ra` (see [`calls_before`]), when `ra`
    /// is in loaded code; empty when it is not a return address.
    fn calls_at(&self, ra: u64) -> Vec<CallKind> {
        let Some(before) = ra.checked_sub(8) else {
            return Vec::new();
        };
        if !self.in_code(ra) || !self.in_code(before) {
            return Vec::new();
        }
        match self.code::<8>(before) {
            Some(code) => calls_before(ra, &code),
            None => Vec::new(),
        }
    }

    /// Where a call lands after a PLT stub or a jump thunk, if it is one.
    fn through_stub(&self, target: u64) -> u64 {
        let Some(code) = self.code::<16>(target) else {
            return target;
        };
        let mut i = 0;
        if code[..4] == [0xf3, 0x0f, 0x1e, 0xfa] {
            i = 4; // endbr64
        }
        if code[i] == 0xf2 {
            i += 1; // bnd
        }
        if code[i] == 0xff && code[i + 1] == 0x25 {
            let d = &code[i + 2..i + 6];
            let disp = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let slot = (target + i as u64 + 6).wrapping_add_signed(i64::from(disp));
            if let Some(p) = self.code::<8>(slot) {
                return u64::from_le_bytes(p);
            }
        }
        target
    }

    /// Whether the call before `ra` calls the function starting at `start`:
    /// `Some(true)` yes (directly, through a PLT stub, or through a function
    /// that ends in a jump to it: a tail call), `Some(false)` it calls
    /// another, `None` cannot tell. Where the bytes read as two calls
    /// (see [`calls_before`]), a direct call whose target is in no loaded
    /// code is no call, and one reading that calls `start` is enough.
    fn calls(&self, ra: u64, start: u64) -> Option<bool> {
        let (mut unknown, mut other) = (false, false);
        for kind in self.calls_at(ra) {
            let target = match kind {
                CallKind::Direct(t) if self.in_code(t) => t,
                CallKind::Direct(_) => continue,
                CallKind::Slot(slot) => match self.code::<8>(slot) {
                    Some(p) => u64::from_le_bytes(p),
                    None => {
                        unknown = true;
                        continue;
                    }
                },
                CallKind::Indirect => {
                    unknown = true;
                    continue;
                }
            };
            if target == start {
                return Some(true);
            }
            let target = self.through_stub(target);
            if target == start || self.jumps_to(target, start) {
                return Some(true);
            }
            other = true;
        }
        if unknown || !other {
            None
        } else {
            Some(false)
        }
    }

    /// Whether the function at `func` jumps to `to` (`jmp rel32` or a
    /// conditional `jcc rel32`) within its first bytes: a tail call, which
    /// leaves the caller's return address for `to`'s frame.
    fn jumps_to(&self, func: u64, to: u64) -> bool {
        const LOOK: usize = 256;
        let Some(code) = self.code::<LOOK>(func).or_else(|| {
            self.code::<64>(func).map(|c| {
                let mut out = [0xccu8; LOOK];
                out[..64].copy_from_slice(&c);
                out
            })
        }) else {
            return false;
        };
        let rel = |at: usize| {
            i64::from(i32::from_le_bytes([
                code[at],
                code[at + 1],
                code[at + 2],
                code[at + 3],
            ]))
        };
        (0..LOOK - 6).any(|i| {
            (code[i] == 0xe9 && (func + i as u64 + 5).wrapping_add_signed(rel(i + 1)) == to)
                || (code[i] == 0x0f
                    && code[i + 1] & 0xf0 == 0x80
                    && (func + i as u64 + 6).wrapping_add_signed(rel(i + 2)) == to)
        })
    }

    /// The unwind row for `addr`.
    fn row(&mut self, addr: u64) -> Result<Row, Stop> {
        let t = self.tables(addr).ok_or(Stop::NoCode)?;
        let (eh_frame, bases, fde) = fde_of(t, addr).ok_or(Stop::NoUnwindInfo)?;
        let row = fde
            .unwind_info_for_address(&eh_frame, &bases, &mut self.ctx, addr)
            .map_err(|_| Stop::NoUnwindInfo)?;
        let (cfa_bp, cfa_offset) = match *row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset } if register == RSP => {
                (false, offset)
            }
            gimli::CfaRule::RegisterAndOffset { register, offset } if register == RBP => {
                (true, offset)
            }
            _ => return Err(Stop::Unsupported),
        };
        let rule = |r: Option<gimli::RegisterRule<usize>>| match r {
            None | Some(gimli::RegisterRule::SameValue) => Rule::Same,
            Some(gimli::RegisterRule::Undefined) => Rule::Undefined,
            Some(gimli::RegisterRule::Offset(n)) => Rule::Offset(n),
            Some(gimli::RegisterRule::ValOffset(n)) => Rule::ValOffset(n),
            Some(_) => Rule::Unsupported,
        };
        let saved = row
            .registers()
            .filter(|(r, rule)| {
                *r != RA && *r != RBP && matches!(rule, gimli::RegisterRule::Offset(_))
            })
            .count();
        Ok(Row {
            cfa_bp,
            cfa_offset,
            ra: rule(row.register(RA)),
            bp: rule(row.register(RBP)),
            saved,
            func_start: fde.initial_address(),
        })
    }

    /// The address just after the function's `mov rbp, rsp`: where its
    /// unwind rows first describe the CFA from RBP.
    fn frame_pointer_set_at(&mut self, addr: u64) -> Option<u64> {
        let (eh_frame, bases, fde) = fde_of(self.tables(addr)?, addr)?;
        let mut rows = fde.rows(&eh_frame, &bases, &mut self.ctx).ok()?;
        while let Ok(Some(row)) = rows.next_row() {
            if row.start_address() > addr {
                return None;
            }
            if matches!(*row.cfa(), gimli::CfaRule::RegisterAndOffset { register, .. } if register == RBP)
            {
                return Some(row.start_address());
            }
        }
        None
    }

    /// Takes the frame whose CFA is `cfa`: reads its return address and the
    /// caller's RBP, and checks them.
    fn step(&self, row: &Row, cfa: u64, regs: Regs, stack: Stack<'_>) -> Result<Regs, Stop> {
        if cfa <= regs.sp {
            return Err(Stop::BadFrame);
        }
        let read = |at: i64| -> Result<u64, Stop> {
            let addr = cfa.wrapping_add_signed(at);
            stack.word(addr).ok_or(if addr >= stack.end() {
                Stop::EndOfCopy
            } else {
                Stop::BadFrame
            })
        };
        let ra = match row.ra {
            Rule::Offset(n) => read(n)?,
            _ => return Err(Stop::Unsupported),
        };
        let bp = match row.bp {
            Rule::Same => regs.bp,
            Rule::Offset(n) => Some(read(n)?),
            Rule::ValOffset(n) => Some(cfa.wrapping_add_signed(n)),
            Rule::Undefined | Rule::Unsupported => None,
        };
        if self.calls_at(ra).is_empty() {
            return Err(if self.in_code(ra) {
                Stop::BadFrame
            } else {
                Stop::NoCode
            });
        }
        Ok(Regs {
            pc: ra,
            sp: cfa,
            bp,
            exact: false,
        })
    }

    /// Walks on from `regs`, appending to `walk`.
    fn walk_on(&mut self, mut regs: Regs, stack: Stack<'_>, walk: &mut Walk) {
        loop {
            if walk.frames.len() >= MAX_FRAMES {
                walk.stop = Some(Stop::TooDeep);
                return;
            }
            self.steps += 1;
            if self.steps > STEP_BUDGET {
                walk.stop = Some(Stop::TooDeep);
                return;
            }
            let lookup = if regs.exact { regs.pc } else { regs.pc - 1 };
            let row = match self.row(lookup) {
                Ok(row) => row,
                Err(stop) => {
                    walk.stop = Some(stop);
                    return;
                }
            };
            if row.ra == Rule::Undefined {
                walk.stop = None;
                return;
            }
            let next = if !row.cfa_bp {
                let cfa = regs.sp.wrapping_add_signed(row.cfa_offset);
                self.step(&row, cfa, regs, stack)
            } else if let Some(bp) = regs.bp {
                self.step(&row, bp.wrapping_add_signed(row.cfa_offset), regs, stack)
            } else {
                return self.recover(&row, lookup, regs, stack, walk);
            };
            match next {
                Ok(next) => {
                    walk.frames.push((next.pc - 1) as usize);
                    walk.sps.push(next.sp);
                    regs = next;
                }
                Err(stop) => {
                    walk.stop = Some(stop);
                    return;
                }
            }
        }
    }

    /// The frame at `regs` is described from RBP, which is unknown: finds
    /// and verifies its frame record (see the module's doc), then walks on.
    fn recover(&mut self, row: &Row, lookup: u64, regs: Regs, stack: Stack<'_>, walk: &mut Walk) {
        let take = |this: &Self, bp: u64| -> Option<Regs> {
            this.step(
                row,
                bp.wrapping_add_signed(row.cfa_offset),
                Regs {
                    bp: Some(bp),
                    ..regs
                },
                stack,
            )
            .ok()
        };
        // 1. By position, from the prologue. A direct call to another
        // function before the return address found there means the
        // prologue was misread: the records are then looked for by call.
        if let Some(set) = self.frame_pointer_set_at(lookup) {
            if let Some((below, pushes)) = self.code::<32>(set).and_then(|c| frame_below_record(&c))
            {
                let bp = regs.sp + below;
                if pushes == row.saved && bp.is_multiple_of(16) {
                    if let Some(next) = take(self, bp) {
                        if self.calls(next.pc, row.func_start) != Some(false) {
                            walk.frames.push((next.pc - 1) as usize);
                            walk.sps.push(next.sp);
                            return self.walk_on(next, stack, walk);
                        }
                    }
                }
            }
        }
        // 2. By the call: records whose return address follows a call to
        // this function; the first whose walk completes.
        let mut tried: Option<Walk> = None;
        let mut n = 0;
        let mut bp = (regs.sp + 15) & !15;
        let limit = stack.end().min(regs.sp + SCAN_BYTES);
        while bp + 16 <= limit && n < TRIED {
            if let Some(next) = take(self, bp) {
                if self.calls(next.pc, row.func_start) == Some(true) {
                    n += 1;
                    let mut candidate = walk.clone();
                    candidate.frames.push((next.pc - 1) as usize);
                    candidate.sps.push(next.sp);
                    self.walk_on(next, stack, &mut candidate);
                    if candidate.complete() {
                        *walk = candidate;
                        return;
                    }
                    if tried.is_none() {
                        tried = Some(candidate);
                    }
                }
            }
            bp += 16;
        }
        match tried {
            Some(first) => *walk = first,
            None => walk.stop = Some(Stop::Unverified),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before(bytes: &[u8]) -> [u8; 8] {
        let mut code = [0x90u8; 8];
        code[8 - bytes.len()..].copy_from_slice(bytes);
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
        // call *0x10(%rip)
        assert_eq!(
            calls_before(ra, &before(&[0xff, 0x15, 0x10, 0, 0, 0])),
            [CallKind::Slot(0x1010)]
        );
        // call *%rax, call *%r11, call *0x18(%rax), call *0x8(%rsp)
        for bytes in [
            &[0xff, 0xd0][..],
            &[0x41, 0xff, 0xd3],
            &[0xff, 0x50, 0x18],
            &[0xff, 0x54, 0x24, 0x08],
            &[0x41, 0xff, 0x90, 0x00, 0x01, 0x00, 0x00],
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
        let code = [0x8b, 0x05, 0x56, 0xe8, 0x27, 0x00, 0xff, 0xd0];
        let read = calls_before(ra, &code);
        assert_eq!(read.len(), 2, "{read:?}");
        assert!(read.contains(&CallKind::Indirect), "{read:?}");
    }

    #[test]
    fn frame_pointer_prologues_give_the_frame_below_the_record() {
        // push r15; push r14; push r12; push rbx; sub rsp, 0x20
        let code = [
            0x41, 0x57, 0x41, 0x56, 0x41, 0x54, 0x53, 0x48, 0x83, 0xec, 0x20,
        ];
        assert_eq!(frame_below_record(&code), Some((64, 4)));
        // push rbx; push rax (8 bytes reserved, not a save); mov edi, [rdi]
        assert_eq!(frame_below_record(&[0x53, 0x50, 0x8b, 0x3f]), Some((16, 1)));
        // push rbx; sub rsp, 0x128
        let code = [0x53, 0x48, 0x81, 0xec, 0x28, 0x01, 0, 0];
        assert_eq!(frame_below_record(&code), Some((8 + 0x128, 1)));
        // No locals: push rbx; mov rbx, rdi
        assert_eq!(frame_below_record(&[0x53, 0x48, 0x89, 0xfb]), Some((8, 1)));
        // A realigned or probed frame: unknown.
        assert_eq!(frame_below_record(&[0x48, 0x83, 0xe4, 0xe0]), None);
        assert_eq!(
            frame_below_record(&[0x48, 0x81, 0xec, 0x00, 0x20, 0, 0]),
            None
        );
    }
}
