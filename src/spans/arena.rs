//! Where span descriptions live while their spans are open: a fixed set of
//! slots that are reused, never freed.
//!
//! The watchdog thread reads the description of a span that another thread
//! may close at that very moment. A description freed on close would be a
//! use after free; here a slot's memory lives for the whole process, so a
//! read can only ever see a slot's *contents* change, never its memory go.
//! Each slot has a `life` counter, bumped when a span takes the slot (odd:
//! open) and when it closes (even: free): a handle is the slot's index and
//! the life it was given at, and a read that finds another life afterwards
//! is thrown away. A slot also keeps its span's parent (a handle), so that
//! the open spans can be read as a tree ([`for_each_open`]). The text is written under a
//! sequence lock (odd while a write is under way) and read as atomic words,
//! so a read torn by a concurrent `record` is seen as such and retried. No
//! `unsafe` is involved.
//!
//! Slots are allocated a chunk at a time, as spans open, up to
//! [`MAX_DESCRIBED`]; a span opened while all are taken gets no description
//! (its place in a report says so) until some close.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The longest description kept, in bytes.
pub(crate) const TEXT_BYTES: usize = 256;
const WORDS: usize = TEXT_BYTES / 8;
const CHUNK: usize = 256;
const CHUNKS: usize = 128;
/// Spans described at once at most; each slot takes about 300 bytes.
pub(crate) const MAX_DESCRIBED: usize = CHUNK * CHUNKS;

/// A description slot.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Bumped each time the slot is given to a span (then odd) and each
    /// time it is given back (then even).
    life: AtomicU64,
    /// Sequence lock over `len` and `words`: odd while being written.
    seq: AtomicU64,
    len: AtomicU32,
    words: [AtomicU64; WORDS],
    /// The handle bits of the span's parent's description (0: none), set
    /// when the slot is given to a span.
    parent: AtomicU64,
    /// Next free slot + 1 (0: none), while on the free list.
    next_free: AtomicU32,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            life: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            len: AtomicU32::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
            parent: AtomicU64::new(0),
            next_free: AtomicU32::new(0),
        }
    }
}

static CHUNK_TABLE: [OnceLock<Box<[Slot]>>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];
/// Slots handed out at least once.
static FRESH: AtomicU32 = AtomicU32::new(0);
/// Head of the free list: tag in the high 32 bits (against ABA), slot + 1 in the low.
static FREE: AtomicU64 = AtomicU64::new(0);

fn slot(index: u32) -> Option<&'static Slot> {
    let index = index as usize;
    let chunk = CHUNK_TABLE.get(index / CHUNK)?.get()?;
    chunk.get(index % CHUNK)
}

fn slot_or_init(index: u32) -> &'static Slot {
    let index = index as usize;
    let chunk = CHUNK_TABLE[index / CHUNK].get_or_init(|| {
        (0..CHUNK)
            .map(|_| Slot::new())
            .collect::<Vec<_>>()
            .into_boxed_slice()
    });
    &chunk[index % CHUNK]
}

/// A description in the arena: a slot and the life it was given at. Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle(u64);

impl Handle {
    const INDEX_BITS: u32 = 16;

    fn new(index: u32, life: u64) -> Handle {
        // Index + 1 so that no handle is 0 (0 = "no description" in stacks).
        Handle((life << Self::INDEX_BITS) | u64::from(index + 1))
    }

    fn index(self) -> u32 {
        (self.0 & ((1 << Self::INDEX_BITS) - 1)) as u32 - 1
    }

    fn life(self) -> u64 {
        self.0 >> Self::INDEX_BITS
    }

    /// As stored in a thread's stack.
    pub(crate) fn to_bits(self) -> u64 {
        self.0
    }

    /// From a thread's stack; `None` for 0.
    pub(crate) fn from_bits(bits: u64) -> Option<Handle> {
        (bits != 0).then_some(Handle(bits))
    }

    /// Whether the span it was given to is still open.
    #[cfg(test)]
    pub(crate) fn is_live(self) -> bool {
        self.slot().is_some_and(|s| self.is_live_in(s))
    }

    /// Its slot, for [`is_live_in`](Handle::is_live_in) to check again
    /// without finding it.
    pub(crate) fn slot(self) -> Option<&'static Slot> {
        slot(self.index())
    }

    /// Whether the span it was given to is still open, given its slot.
    #[inline]
    pub(crate) fn is_live_in(self, slot: &Slot) -> bool {
        slot.life.load(Ordering::Acquire) == self.life()
    }
}

const _: () = assert!(MAX_DESCRIBED < (1 << Handle::INDEX_BITS));

/// A slot for a new span's description, child of the span described by
/// `parent` (0: a root span), or `None` when all are taken.
pub(crate) fn allocate(text: &str, parent: u64) -> Option<Handle> {
    let index = pop_free().or_else(|| {
        let fresh = FRESH.fetch_add(1, Ordering::Relaxed);
        if (fresh as usize) < MAX_DESCRIBED {
            Some(fresh)
        } else {
            FRESH.fetch_sub(1, Ordering::Relaxed);
            None
        }
    })?;
    let slot = slot_or_init(index);
    // A free slot's life is even, an open span's odd: the text and parent
    // are written while it is still free, then the new life shows it open.
    let life = slot.life.load(Ordering::Acquire) + 1;
    slot.parent.store(parent, Ordering::Relaxed);
    write_slot(slot, text);
    slot.life.store(life, Ordering::Release);
    Some(Handle::new(index, life))
}

/// The span closed: its slot goes back, and every handle to it goes stale.
pub(crate) fn release(handle: Handle) {
    let Some(slot) = slot(handle.index()) else {
        return;
    };
    if slot
        .life
        .compare_exchange(
            handle.life(),
            handle.life() + 1,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return; // released already
    }
    push_free(handle.index(), slot);
}

/// Replaces the text (callers serialize writes to one span: tracing holds
/// the span's extensions lock).
pub(crate) fn write(handle: Handle, text: &str) {
    if let Some(slot) = slot(handle.index()) {
        write_slot(slot, text);
    }
}

fn write_slot(slot: &Slot, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(TEXT_BYTES)];
    let seq = slot.seq.load(Ordering::Relaxed);
    slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    for (word, chunk) in slot.words.iter().zip(bytes.chunks(8)) {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        word.store(u64::from_le_bytes(buf), Ordering::Relaxed);
    }
    slot.len.store(bytes.len() as u32, Ordering::Relaxed);
    slot.seq.store(seq.wrapping_add(2), Ordering::Release);
}

/// The text of a live description; `None` when its span closed (or the
/// slot was being rewritten through every try).
pub(crate) fn read(handle: Handle) -> Option<String> {
    let slot = slot(handle.index())?;
    for _ in 0..16 {
        if slot.life.load(Ordering::Acquire) != handle.life() {
            return None;
        }
        let before = slot.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let len = (slot.len.load(Ordering::Relaxed) as usize).min(TEXT_BYTES);
        let mut bytes = Vec::with_capacity(len);
        for word in &slot.words[..len.div_ceil(8)] {
            bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(len);
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != before {
            continue;
        }
        if slot.life.load(Ordering::Acquire) != handle.life() {
            return None;
        }
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    None
}

/// Calls `visit` with every open span's description handle, its parent's
/// handle bits (0: none) and its text (any thread; a span that closes
/// meanwhile is left out).
pub(crate) fn for_each_open(mut visit: impl FnMut(Handle, u64, String)) {
    let fresh = FRESH.load(Ordering::Acquire).min(MAX_DESCRIBED as u32);
    for index in 0..fresh {
        let Some(slot) = slot(index) else {
            continue;
        };
        let life = slot.life.load(Ordering::Acquire);
        if life % 2 == 0 {
            continue; // free
        }
        let handle = Handle::new(index, life);
        let parent = slot.parent.load(Ordering::Relaxed);
        if let Some(text) = read(handle) {
            visit(handle, parent, text);
        }
    }
}

fn pop_free() -> Option<u32> {
    let mut head = FREE.load(Ordering::Acquire);
    loop {
        let first = (head & u64::from(u32::MAX)) as u32;
        if first == 0 {
            return None;
        }
        let next = slot(first - 1).map_or(0, |s| s.next_free.load(Ordering::Relaxed));
        let tag = (head >> 32).wrapping_add(1);
        match FREE.compare_exchange_weak(
            head,
            (tag << 32) | u64::from(next),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(first - 1),
            Err(now) => head = now,
        }
    }
}

fn push_free(index: u32, slot: &Slot) {
    let mut head = FREE.load(Ordering::Relaxed);
    loop {
        slot.next_free
            .store((head & u64::from(u32::MAX)) as u32, Ordering::Relaxed);
        let tag = (head >> 32).wrapping_add(1);
        match FREE.compare_exchange_weak(
            head,
            (tag << 32) | u64::from(index + 1),
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_reads_back_until_released_then_never() {
        let h = allocate("request{method=GET}", 0).unwrap();
        assert!(h.is_live());
        assert_eq!(read(h).as_deref(), Some("request{method=GET}"));
        write(h, "request{method=GET status=200}");
        assert_eq!(read(h).as_deref(), Some("request{method=GET status=200}"));
        release(h);
        assert!(!h.is_live());
        assert_eq!(read(h), None);
        release(h); // twice is harmless
                    // The slot is reused under a new life; the old handle stays stale.
        let again = allocate("other", 0).unwrap();
        assert_eq!(read(h), None);
        assert_eq!(read(again).as_deref(), Some("other"));
        release(again);
    }

    #[test]
    fn text_is_capped() {
        let long = "x".repeat(1000);
        let h = allocate(&long, 0).unwrap();
        assert_eq!(read(h).unwrap().len(), TEXT_BYTES);
        release(h);
    }

    #[test]
    fn reads_racing_rewrites_and_releases_see_whole_texts_or_nothing() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
        let writer = {
            let (stop, handles) = (stop.clone(), handles.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = (n % 8) as usize;
                    if let Some(old) = Handle::from_bits(handles[i].load(Ordering::Relaxed)) {
                        release(old);
                    }
                    let text = if n.is_multiple_of(2) {
                        "a".repeat(200)
                    } else {
                        "b".repeat(40)
                    };
                    let h = allocate(&text, 0).unwrap();
                    write(h, &text);
                    handles[i].store(h.to_bits(), Ordering::Relaxed);
                    n += 1;
                }
            })
        };
        let mut seen = 0;
        let began = std::time::Instant::now();
        while began.elapsed() < std::time::Duration::from_millis(300) {
            for h in handles.iter() {
                if let Some(h) = Handle::from_bits(h.load(Ordering::Relaxed)) {
                    if let Some(text) = read(h) {
                        assert!(
                            text == "a".repeat(200) || text == "b".repeat(40),
                            "torn text {text:?}"
                        );
                        seen += 1;
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(seen > 0);
    }
}
