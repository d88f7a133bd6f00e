//! Each thread's stack of entered spans, pushed and popped by that thread
//! alone, without a lock, and read by the watchdog thread by kernel thread id.
//!
//! An entry is the span's id and its description's [`Handle`]. The owner
//! writes under a sequence lock of its own (two plain stores and a compiler
//! fence on x86), so the watchdog's copy of a stack is whole or retried, and
//! the descriptions it names are read from the arena, which checks that each
//! is still the one the entry meant. A thread's first enter registers its
//! stack (one lock, once per thread); its exit unregisters it.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::arena::{self, Handle, Slot};

/// The deepest nesting kept per thread; deeper spans are counted, not named.
pub(crate) const MAX_DEPTH: usize = 32;
/// Entries of each thread's cache from span id to description.
const CACHE: usize = 64;

/// One thread's entered spans, as the watchdog reads them.
#[derive(Debug)]
pub(crate) struct ThreadStack {
    tid: i64,
    /// Sequence lock over `depth` and the entries: odd while the owner writes.
    seq: AtomicU64,
    /// Spans entered now, including those past [`MAX_DEPTH`].
    depth: AtomicU32,
    ids: [AtomicU64; MAX_DEPTH],
    /// [`Handle`] bits, 0 for a span without a description.
    descs: [AtomicU64; MAX_DEPTH],
}

impl ThreadStack {
    fn new(tid: i64) -> ThreadStack {
        ThreadStack {
            tid,
            seq: AtomicU64::new(0),
            depth: AtomicU32::new(0),
            ids: std::array::from_fn(|_| AtomicU64::new(0)),
            descs: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Runs `write` with the sequence lock held (owner only).
    #[inline]
    fn write(&self, write: impl FnOnce()) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        write();
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    #[inline]
    fn push(&self, id: u64, desc: u64) {
        let depth = self.depth.load(Ordering::Relaxed);
        self.write(|| {
            let i = depth as usize;
            if i < MAX_DEPTH {
                self.ids[i].store(id, Ordering::Relaxed);
                self.descs[i].store(desc, Ordering::Relaxed);
            }
            self.depth.store(depth.saturating_add(1), Ordering::Relaxed);
        });
    }

    #[inline]
    fn pop(&self, id: u64) {
        let depth = self.depth.load(Ordering::Relaxed);
        if depth == 0 {
            return;
        }
        let kept = (depth as usize).min(MAX_DEPTH);
        if depth as usize > MAX_DEPTH || self.ids[kept - 1].load(Ordering::Relaxed) == id {
            // The innermost span exits: the usual case.
            self.write(|| self.depth.store(depth - 1, Ordering::Relaxed));
            return;
        }
        // Exited out of order (guards dropped out of order): take out the
        // innermost entry of this span, if it is here at all.
        let Some(at) = (0..kept)
            .rev()
            .find(|&i| self.ids[i].load(Ordering::Relaxed) == id)
        else {
            return;
        };
        self.write(|| {
            for i in at..kept - 1 {
                let (id, desc) = (
                    self.ids[i + 1].load(Ordering::Relaxed),
                    self.descs[i + 1].load(Ordering::Relaxed),
                );
                self.ids[i].store(id, Ordering::Relaxed);
                self.descs[i].store(desc, Ordering::Relaxed);
            }
            self.depth.store(depth - 1, Ordering::Relaxed);
        });
    }

    /// A whole copy of the entries and the full depth, or `None` if the
    /// owner kept writing through every try.
    fn copy(&self) -> Option<(Vec<(u64, u64)>, usize)> {
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let depth = self.depth.load(Ordering::Relaxed) as usize;
            let entries: Vec<(u64, u64)> = (0..depth.min(MAX_DEPTH))
                .map(|i| {
                    (
                        self.ids[i].load(Ordering::Relaxed),
                        self.descs[i].load(Ordering::Relaxed),
                    )
                })
                .collect();
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some((entries, depth));
            }
        }
        None
    }
}

/// Every thread's stack, for the watchdog to find by thread id.
static THREADS: Mutex<Vec<Arc<ThreadStack>>> = Mutex::new(Vec::new());

/// What a thread keeps for itself: its stack and a small cache from span id
/// to description, so that an enter looks nothing up in the registry.
struct Local {
    stack: Arc<ThreadStack>,
    cache: [Cell<Cached>; CACHE],
}

/// A span id, its description's handle bits and the description's slot.
#[derive(Clone, Copy)]
struct Cached {
    id: u64,
    handle: Option<Handle>,
    slot: Option<&'static Slot>,
}

impl Local {
    fn new() -> Local {
        let stack = Arc::new(ThreadStack::new(loopwatch_stack::current_tid()));
        THREADS.lock().push(stack.clone());
        Local {
            stack,
            cache: std::array::from_fn(|_| {
                Cell::new(Cached {
                    id: 0,
                    handle: None,
                    slot: None,
                })
            }),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        THREADS.lock().retain(|s| !Arc::ptr_eq(s, &self.stack));
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

#[inline]
fn cache_index(id: u64) -> usize {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE.trailing_zeros())) as usize
}

/// The calling thread entered span `id`; `describe` finds its description
/// when the thread's cache does not have it (or has it for a span closed
/// since).
#[inline]
pub(crate) fn enter(id: u64, describe: impl FnOnce() -> Option<Handle>) {
    let _ = LOCAL.try_with(|local| {
        let cached = &local.cache[cache_index(id)];
        let c = cached.get();
        let bits = match (c.handle, c.slot) {
            // The description is still live, so its span is still open and
            // still the one with this id.
            (Some(h), Some(slot)) if c.id == id && h.is_live_in(slot) => h.to_bits(),
            _ => miss(cached, id, describe),
        };
        local.stack.push(id, bits);
        crate::board::live::capture_span(bits);
    });
}

/// The description handle bits of the innermost span the calling thread is
/// in (0: none, or no description).
#[inline]
pub(crate) fn current() -> u64 {
    LOCAL
        .try_with(|local| {
            let stack = &local.stack;
            let depth = stack.depth.load(Ordering::Relaxed) as usize;
            match depth {
                0 => 0,
                d if d > MAX_DEPTH => stack.descs[MAX_DEPTH - 1].load(Ordering::Relaxed),
                d => stack.descs[d - 1].load(Ordering::Relaxed),
            }
        })
        .unwrap_or(0)
}

/// Asks for a span's description and keeps it in the thread's cache.
#[cold]
#[inline(never)]
fn miss(cached: &Cell<Cached>, id: u64, describe: impl FnOnce() -> Option<Handle>) -> u64 {
    let handle = describe();
    cached.set(Cached {
        id,
        handle,
        slot: handle.and_then(Handle::slot),
    });
    handle.map_or(0, Handle::to_bits)
}

/// The calling thread exited span `id`.
#[inline]
pub(crate) fn exit(id: u64) {
    let _ = LOCAL.try_with(|local| local.stack.pop(id));
}

/// The entered spans of the thread with kernel id `tid`, outermost first:
/// each described as `name{field=value ...}`. Empty when the thread entered
/// none (or never entered a span since the layer was installed).
pub(crate) fn of_thread(tid: i64) -> Vec<String> {
    if tid == 0 {
        return Vec::new();
    }
    let Some(stack) = THREADS.lock().iter().find(|s| s.tid == tid).cloned() else {
        return Vec::new();
    };
    // Descriptions that went stale mean the stack changed: copy it again.
    for _ in 0..8 {
        let Some((entries, depth)) = stack.copy() else {
            break;
        };
        let mut seen = Vec::with_capacity(entries.len());
        let mut spans = Vec::with_capacity(entries.len() + 1);
        let mut stale = false;
        for (id, bits) in entries {
            // A span entered again inside itself is shown once.
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            match Handle::from_bits(bits) {
                Some(h) => match arena::read(h) {
                    Some(text) => spans.push(text),
                    None => stale = true,
                },
                None => spans.push(format!(
                    "(a span without description: more than {} open at once)",
                    arena::MAX_DESCRIBED
                )),
            }
        }
        if stale {
            continue;
        }
        if depth > MAX_DEPTH {
            spans.push(format!("... {} more", depth - MAX_DEPTH));
        }
        return spans;
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack_of(entries: &[u64]) -> Vec<u64> {
        let s = ThreadStack::new(1);
        for &id in entries {
            s.push(id, 0);
        }
        s.copy().unwrap().0.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn push_pop_in_order_and_out_of_order() {
        let s = ThreadStack::new(1);
        for id in [1, 2, 3] {
            s.push(id, 0);
        }
        s.pop(3);
        assert_eq!(
            s.copy().unwrap().0.iter().map(|e| e.0).collect::<Vec<_>>(),
            [1, 2]
        );
        s.push(4, 0);
        s.pop(2); // out of order
        assert_eq!(
            s.copy().unwrap().0.iter().map(|e| e.0).collect::<Vec<_>>(),
            [1, 4]
        );
        s.pop(9); // never entered here
        assert_eq!(s.copy().unwrap().1, 2);
        assert_eq!(stack_of(&[5]), [5]);
    }

    #[test]
    fn depth_past_the_cap_is_counted_and_unwinds() {
        let s = ThreadStack::new(1);
        for id in 1..=(MAX_DEPTH as u64 + 5) {
            s.push(id, 0);
        }
        let (entries, depth) = s.copy().unwrap();
        assert_eq!((entries.len(), depth), (MAX_DEPTH, MAX_DEPTH + 5));
        for id in (1..=(MAX_DEPTH as u64 + 5)).rev() {
            s.pop(id);
        }
        assert_eq!(s.copy().unwrap().1, 0);
    }

    #[test]
    fn reads_racing_enters_exits_and_closes_see_a_whole_chain_or_none() {
        use std::sync::atomic::AtomicBool;
        let names = ["outer{n=1}", "middle", "inner{x=\"y\"}"];
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let owner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tid_tx.send(loopwatch_stack::current_tid()).unwrap();
                let mut next_id = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    // New spans each round (new ids, reused slots), entered,
                    // exited and closed, as requests come and go.
                    let handles: Vec<Handle> = names
                        .iter()
                        .map(|n| arena::allocate(n, 0).unwrap())
                        .collect();
                    let ids: Vec<u64> = (0..3).map(|i| next_id + i).collect();
                    next_id += 3;
                    for (id, h) in ids.iter().zip(&handles) {
                        enter(*id, || Some(*h));
                    }
                    for id in ids.iter().rev() {
                        exit(*id);
                    }
                    for h in handles {
                        arena::release(h);
                    }
                }
            })
        };
        let tid = tid_rx.recv().unwrap();
        let mut reads = 0;
        let began = std::time::Instant::now();
        while began.elapsed() < std::time::Duration::from_millis(300) {
            let spans = of_thread(tid);
            assert!(
                spans.len() <= 3 && spans.iter().zip(names).all(|(s, n)| s == n),
                "{spans:?}"
            );
            reads += 1;
        }
        stop.store(true, Ordering::Relaxed);
        owner.join().unwrap();
        assert!(reads > 100, "{reads}");
        // The thread is gone: nothing is found for it.
        assert!(of_thread(tid).is_empty());
    }

    #[test]
    fn cache_indices_spread() {
        let used: std::collections::HashSet<usize> = (1..=64u64).map(cache_index).collect();
        assert!(used.len() > 32 && used.iter().all(|&i| i < CACHE));
    }
}
