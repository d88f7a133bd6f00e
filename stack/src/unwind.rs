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
//!    instruction before it is a call that *reaches this function* (below):
//!    directly, or through functions that left by tail calls. A stale
//!    record of an earlier call to the same function is the one way this
//!    can still be fooled, so the first few such candidates are each walked
//!    on, and the first whose walk reaches the thread's first frame is
//!    taken.
//!
//! When neither verifies a record, the walk stops there and says so
//! ([`Stop::Unverified`]): the frames before are right, and no frame the
//! thread is not in is ever added. Every return address the walk takes,
//! verified or plainly read through the tables, must be just after a call
//! instruction inside a loaded object, and each frame must lie above the
//! one before; a walk that ends where the tables say a thread's first frame
//! is (`clone3`, `_start`: no return address) is complete.
//!
//! # Tail calls
//!
//! A function whose last act is a call is often compiled into a jump: `fn
//! load_order() { std::thread::sleep(d) }` is `mov …; jmp *slot(%rip)` in a
//! release build. Its frame is gone while the callee runs: the callee
//! returns straight to `load_order`'s caller. So the call before a return
//! address may name a function other than the one being unwound, and the
//! frame is still right. For every frame, the walk reads the call before
//! its return address and asks how it reaches the function being unwound
//! ([`Reach`]):
//!
//! - it calls it: directly, through a PLT stub (a jump through a slot, at
//!   an address where no unwind entry starts) or a GOT slot (read from the
//!   process's memory);
//! - it calls a function that jumps to it: the jumps out of that function
//!   (`jmp`, a conditional `jcc`, `jmp *slot(%rip)`, decoded over the
//!   function's extent from its unwind entry) are followed, through PLT
//!   stubs, up to [`TAIL_DEPTH`] functions deep, until one lands at the
//!   start of the function being unwound. Each function on the way left by
//!   a tail call, and is added to the walk as a frame of its own, at the
//!   address of its jump (its name and `file:line` are the jump's), marked
//!   as a tail call (see [`Walk::tail_calls`]);
//! - a jump into a function's `.cold` part (code of the function placed
//!   elsewhere, whose unwind entry begins inside the function's frame, not
//!   at a function's entry: CFA = RSP + 8) is a jump within the function,
//!   not a tail call: no frame is added;
//! - it calls a function that did not return here and jumps where the walk
//!   cannot follow (through a register or memory: a function pointer, a
//!   trait object, a jump table): that function left by a tail call, and
//!   more may have been left out after it, which the walk cannot name: it
//!   adds the function and a frame that says so ([`UNKNOWN_TAIL_CALLS`]).
//!   Such a call verifies a frame record only when the walk on from it
//!   reaches the thread's first frame, and after every other candidate;
//! - the call goes through a register or memory the walk cannot read: it
//!   cannot tell, and adds nothing. A function reached that way whose last
//!   act is a call (a closure called through `dyn FnOnce`) leaves no trace
//!   at all.
//!
//! A frame the tables describe from SP is right whatever the call before
//! it says, and is taken; the answer only adds the functions left by tail
//! calls. A frame record found while RBP is unknown is taken only when the
//! call reaches the function (by position: unless the call is known to
//! reach another function only).
//!
//! The instructions are decoded with `yaxpeax-x86` ([`super::decode`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use addr2line::gimli::{self, UnwindSection as _};

use super::decode::{self, CallKind, Exit};

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
    pub text: Range<u64>,
    /// `.eh_frame_hdr` and its run-time address.
    pub hdr_avma: u64,
    pub eh_frame_hdr: Vec<u8>,
    /// `.eh_frame` and its run-time address.
    pub eh_frame_avma: u64,
    pub eh_frame: Vec<u8>,
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
    /// then each return address minus one (inside the call); for a
    /// function left by a tail call, the address of its jump, and for
    /// functions that may have been left through a jump whose target is not
    /// known, [`UNKNOWN_TAIL_CALLS`].
    pub frames: Vec<usize>,
    /// The stack pointer in each frame (parallel to `frames`).
    pub sps: Vec<u64>,
    /// Which frames stand for functions left by a tail call (indices into
    /// `frames`, ascending).
    pub tail_calls: Vec<usize>,
    /// `None` when the walk reached the thread's first frame; otherwise why
    /// it stopped after the last frame.
    pub stop: Option<Stop>,
}

/// The address of the frame that marks where functions may have been left
/// out by a tail call through a jump whose target is not known.
pub(crate) const UNKNOWN_TAIL_CALLS: usize = 0;

impl Walk {
    /// Whether the walk reached the thread's first frame.
    pub(crate) fn complete(&self) -> bool {
        self.stop.is_none()
    }

    /// Adds a frame the walk reached through a return address.
    fn push(&mut self, regs: Regs) {
        self.frames.push((regs.pc - 1) as usize);
        self.sps.push(regs.sp);
    }

    /// Adds the frames of functions left by tail calls between the last
    /// frame and the next (`reach`'s jumps, outermost first).
    fn push_tail_calls(&mut self, reach: &Reach, sp: u64) {
        let (jumps, unknown): (&[u64], bool) = match reach {
            Reach::TailCalls(jumps) => (jumps, false),
            Reach::Maybe(jumps) => (jumps, true),
            _ => return,
        };
        if unknown {
            self.tail_calls.push(self.frames.len());
            self.frames.push(UNKNOWN_TAIL_CALLS);
            self.sps.push(sp);
        }
        for &jump in jumps.iter().rev() {
            self.tail_calls.push(self.frames.len());
            self.frames.push(jump as usize);
            self.sps.push(sp);
        }
    }
}

/// How the call before a return address reaches the function being
/// unwound (see the module's doc).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// It calls it: directly, through a PLT stub or a GOT slot, or it calls
    /// the function whose part (a `.cold` part) this is.
    Calls,
    /// It calls a function that reaches it by tail calls: the jump of each
    /// function left out, outermost first.
    TailCalls(Vec<u64>),
    /// It calls a function that did not return here and jumps where the
    /// walk cannot follow (a jump through a register or memory): that
    /// function's jump; more functions may have been left out after it.
    Maybe(Vec<u64>),
    /// It calls another function, which does not reach it.
    Other,
    /// Cannot tell: the call goes through a register or memory the walk
    /// cannot read.
    Unknown,
}

impl Reach {
    /// Whether the call is known to reach the function.
    fn known(&self) -> bool {
        matches!(self, Reach::Calls | Reach::TailCalls(_))
    }
}

/// The function being unwound, as far as telling what reaches it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Func {
    /// Its code (its unwind entry's addresses).
    start: u64,
    end: u64,
}

/// How many functions deep a chain of tail calls is followed.
const TAIL_DEPTH: usize = 4;

/// The most functions whose jumps one question about a tail call reads.
const TAIL_FUNCTIONS: usize = 24;

/// The most bytes of one function decoded for its jumps: a tail call
/// further in is not seen (the frame is then taken without it, or not
/// verified).
const MAX_FUNCTION_BYTES: usize = 64 * 1024;

/// The most bytes of code one walk decodes for tail calls; past it, calls
/// that did not reach the function being unwound are taken as not reaching
/// it (no frame added, none verified by them).
const CODE_BUDGET: usize = 1 << 20;

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
    /// The function (its unwind entry's addresses).
    func: Func,
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
    /// The jumps out of each function read during this walk.
    exits: HashMap<u64, Rc<[(u64, Exit)]>>,
    /// Whether each function start read is a function's entry.
    entries: HashMap<u64, bool>,
    /// Bytes of code this walk may still decode for tail calls.
    budget: usize,
    /// The calls read before each return address (each is asked twice:
    /// whether it is one, and what it reaches).
    calls: RefCell<HashMap<u64, Vec<CallKind>>>,
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

impl<'a> Unwinder<'a> {
    pub(crate) fn new(objects: &'a [std::sync::Arc<Tables>], read_code: ReadCode<'a>) -> Self {
        Unwinder {
            objects,
            read_code,
            ctx: Box::new(gimli::UnwindContext::new()),
            steps: 0,
            exits: HashMap::new(),
            entries: HashMap::new(),
            budget: CODE_BUDGET,
            calls: RefCell::new(HashMap::new()),
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
        self.budget = CODE_BUDGET;
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
            tail_calls: Vec::new(),
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

    /// The pointer stored at `slot` (a GOT entry), when it can be read.
    fn pointer(&self, slot: u64) -> Option<u64> {
        self.code::<8>(slot).map(u64::from_le_bytes)
    }

    /// The calls that may end at `ra` (see [`decode::calls_before`]), when
    /// `ra` is in loaded code; empty when it is not a return address.
    fn calls_at(&self, ra: u64) -> Vec<CallKind> {
        if let Some(calls) = self.calls.borrow().get(&ra) {
            return calls.clone();
        }
        let calls = self.read_calls_at(ra);
        self.calls.borrow_mut().insert(ra, calls.clone());
        calls
    }

    fn read_calls_at(&self, ra: u64) -> Vec<CallKind> {
        const N: usize = decode::MAX_CALL_LEN;
        let Some(before) = ra.checked_sub(N as u64) else {
            return Vec::new();
        };
        if !self.in_code(ra) || !self.in_code(before) {
            return Vec::new();
        }
        match self.code::<N>(before) {
            Some(code) => decode::calls_before(ra, &code),
            None => Vec::new(),
        }
    }

    /// Where a call lands after a PLT stub (a jump through a slot), if
    /// `target` is one. A function of its own (an unwind entry starts
    /// there) that is only such a jump is not a stub: it tail-calls.
    fn through_stub(&self, target: u64) -> u64 {
        if self.starts_function(target) {
            return target;
        }
        self.code::<16>(target)
            .and_then(|code| decode::stub_slot(target, &code))
            .and_then(|slot| self.pointer(slot))
            .filter(|&to| self.in_code(to))
            .unwrap_or(target)
    }

    /// How the call before `ra` reaches `func` (see [`Reach`]). Where the
    /// bytes read as two calls (see [`decode::calls_before`]), a direct call
    /// whose target is in no loaded code is no call; a reading that reaches
    /// `func` is taken; otherwise the readings must agree, and where they
    /// do not, the walk cannot tell.
    fn reach(&mut self, ra: u64, func: Func) -> Reach {
        let mut readings: Vec<Reach> = Vec::with_capacity(2);
        for kind in self.calls_at(ra) {
            let target = match kind {
                CallKind::Direct(t) if self.in_code(t) => Some(t),
                CallKind::Direct(_) => continue,
                CallKind::Slot(slot) => self.pointer(slot),
                CallKind::Indirect => None,
            };
            readings.push(match target {
                Some(target) => self.reach_from(target, func),
                None => Reach::Unknown,
            });
        }
        if let Some(i) = readings.iter().position(|r| *r == Reach::Calls) {
            return readings.swap_remove(i);
        }
        if let Some(i) = readings.iter().position(Reach::known) {
            return readings.swap_remove(i);
        }
        match readings.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] if rest.iter().all(|r| r == first) => first.clone(),
            _ => Reach::Unknown,
        }
    }

    /// How a call to `target` reaches `func`: it is `func` (through a stub
    /// or not), or a chain of at most [`TAIL_DEPTH`] functions leaving by
    /// jumps ends in it. A jump to `func`'s start is a tail call only when
    /// `func` starts as a function does (its caller's return address on
    /// top of the stack); a jump into a part that does not (a `.cold`
    /// part) is a jump within the function that made it.
    fn reach_from(&mut self, target: u64, func: Func) -> Reach {
        let target = self.through_stub(target);
        if target == func.start {
            return Reach::Calls;
        }
        // A call goes to a function's start: a target where none starts is
        // a misreading of the bytes before the return address, and nothing
        // is followed from it.
        if !self.starts_function(target) {
            return Reach::Other;
        }
        let entry = self.is_entry(func.start);
        // Breadth first: each function with the jumps of those left on the
        // way to it, outermost first.
        let mut frontier: Vec<(u64, Vec<u64>)> = vec![(target, Vec::new())];
        let mut seen: Vec<u64> = vec![target];
        let mut unknown: Option<u64> = None;
        for _ in 0..TAIL_DEPTH {
            let mut next = Vec::new();
            for (f, path) in frontier {
                for &(site, exit) in self.exits_of(f).iter() {
                    let to = match exit {
                        Exit::Direct(to) => Some(to),
                        Exit::Slot(slot) => self.pointer(slot),
                        Exit::Unknown => None,
                    };
                    let Some(to) = to.map(|t| self.through_stub(t)) else {
                        // The first function of the chain is certain; its
                        // jump whose target is not known is where more may
                        // have been left out.
                        if unknown.is_none() {
                            unknown = Some(path.first().copied().unwrap_or(site));
                        }
                        continue;
                    };
                    let mut jumps = path.clone();
                    if to == func.start && entry {
                        jumps.push(site);
                        return Reach::TailCalls(jumps);
                    }
                    if (func.start..func.end).contains(&to) && !entry {
                        // A part of `f`'s own: `f` is this frame.
                        return if jumps.is_empty() {
                            Reach::Calls
                        } else {
                            Reach::TailCalls(jumps)
                        };
                    }
                    // Followed only to a function's start: a jump into
                    // another function's middle is not a call of it.
                    if self.starts_function(to)
                        && !seen.contains(&to)
                        && seen.len() < TAIL_FUNCTIONS
                    {
                        seen.push(to);
                        jumps.push(site);
                        next.push((to, jumps));
                    }
                }
            }
            frontier = next;
            if frontier.is_empty() {
                break;
            }
        }
        match unknown {
            Some(site) => Reach::Maybe(vec![site]),
            None => Reach::Other,
        }
    }

    /// The length of the function starting at `start`, when an unwind
    /// entry starts there (a PLT stub has none of its own).
    fn function_len(&self, start: u64) -> Option<u64> {
        let (_, _, fde) = fde_of(self.tables(start)?, start)?;
        (fde.initial_address() == start).then(|| fde.len())
    }

    fn starts_function(&self, addr: u64) -> bool {
        self.function_len(addr).is_some()
    }

    /// The jumps out of the function starting at `start` (read once per
    /// walk), decoded over its unwind entry's extent; none where no entry
    /// starts there.
    fn exits_of(&mut self, start: u64) -> Rc<[(u64, Exit)]> {
        if let Some(exits) = self.exits.get(&start) {
            return exits.clone();
        }
        let len = self
            .function_len(start)
            .map_or(0, |len| usize::try_from(len).unwrap_or(usize::MAX))
            .min(MAX_FUNCTION_BYTES)
            .min(self.budget);
        self.budget -= len;
        let mut code = vec![0u8; len];
        let read = (self.read_code)(start, &mut code);
        code.truncate(read);
        let exits: Rc<[(u64, Exit)]> = decode::exits(start, &code).into();
        self.exits.insert(start, exits.clone());
        exits
    }

    /// Whether the code at `start` begins as a function does: the caller's
    /// return address on top of the stack (CFA = RSP + 8), as after a call
    /// or a tail call's jump. A `.cold` part begins inside its function's
    /// frame.
    fn is_entry(&mut self, start: u64) -> bool {
        if let Some(&entry) = self.entries.get(&start) {
            return entry;
        }
        let entry = self
            .row(start)
            .is_ok_and(|row| !row.cfa_bp && row.cfa_offset == 8 && row.ra == Rule::Offset(-8));
        self.entries.insert(start, entry);
        entry
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
            func: Func {
                start: fde.initial_address(),
                end: fde.initial_address().wrapping_add(fde.len()),
            },
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
                    // The tables say where the return address is: the frame
                    // is right. Functions that left by a tail call on the
                    // way are added.
                    let reach = self.reach(next.pc, row.func);
                    walk.push_tail_calls(&reach, next.sp);
                    walk.push(next);
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
        // 1. By position, from the prologue. A call to another function
        // that does not reach this one before the return address found
        // there means the prologue was misread: the records are then
        // looked for by call.
        if let Some(set) = self.frame_pointer_set_at(lookup) {
            if let Some((below, pushes)) = self
                .code::<32>(set)
                .and_then(|c| decode::frame_below_record(set, &c))
            {
                let bp = regs.sp + below;
                if pushes == row.saved && bp.is_multiple_of(16) {
                    if let Some(next) = take(self, bp) {
                        let reach = self.reach(next.pc, row.func);
                        if reach != Reach::Other {
                            walk.push_tail_calls(&reach, next.sp);
                            walk.push(next);
                            return self.walk_on(next, stack, walk);
                        }
                    }
                }
            }
        }
        // 2. By the call: records whose return address follows a call that
        // reaches this function; the first whose walk completes. A call to
        // a function that left by a jump whose target is not known may
        // reach it too: such a record is taken only when its walk
        // completes, and after the others.
        let mut tried: Option<Walk> = None;
        let mut maybe: Vec<(Regs, Reach)> = Vec::new();
        let mut n = 0;
        let mut bp = (regs.sp + 15) & !15;
        let limit = stack.end().min(regs.sp + SCAN_BYTES);
        while bp + 16 <= limit && n < TRIED {
            if let Some(next) = take(self, bp) {
                let reach = self.reach(next.pc, row.func);
                if reach.known() {
                    n += 1;
                    let candidate = self.candidate(walk, next, &reach, stack);
                    if candidate.complete() {
                        *walk = candidate;
                        return;
                    }
                    if tried.is_none() {
                        tried = Some(candidate);
                    }
                } else if matches!(reach, Reach::Maybe(_)) && maybe.len() < TRIED {
                    maybe.push((next, reach));
                }
            }
            bp += 16;
        }
        for (next, reach) in maybe {
            let candidate = self.candidate(walk, next, &reach, stack);
            if candidate.complete() {
                *walk = candidate;
                return;
            }
        }
        match tried {
            Some(first) => *walk = first,
            None => walk.stop = Some(Stop::Unverified),
        }
    }

    /// `walk` with the frame at `next` (reached as `reach` says) and the
    /// walk on from it.
    fn candidate(&mut self, walk: &Walk, next: Regs, reach: &Reach, stack: Stack<'_>) -> Walk {
        let mut candidate = walk.clone();
        candidate.push_tail_calls(reach, next.sp);
        candidate.push(next);
        self.walk_on(next, stack, &mut candidate);
        candidate
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod prop;
