//! The open spans as a tree, for the task dump: where a task waits is the
//! chain of open spans below the one it is instrumented with.

use std::collections::HashMap;

use super::arena::{self, Handle};

/// Most chains listed below one span.
const MAX_CHAINS: usize = 8;
/// Most spans in one chain.
const MAX_CHAIN: usize = 32;

/// Every open span at one moment: its description and parent.
#[derive(Debug, Default)]
pub(crate) struct OpenSpans {
    /// Handle bits -> (description, parent's handle bits).
    spans: HashMap<u64, (String, u64)>,
    /// Handle bits -> its open children's.
    children: HashMap<u64, Vec<u64>>,
}

impl OpenSpans {
    /// Reads the open spans (at most `arena::MAX_DESCRIBED`).
    pub(crate) fn read() -> OpenSpans {
        let mut spans = HashMap::new();
        arena::for_each_open(|handle, parent, text| {
            spans.insert(handle.to_bits(), (text, parent));
        });
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        for (&bits, &(_, parent)) in &spans {
            if parent != 0 && spans.contains_key(&parent) {
                children.entry(parent).or_default().push(bits);
            }
        }
        for list in children.values_mut() {
            list.sort_unstable();
        }
        OpenSpans { spans, children }
    }

    /// Whether the span described by `bits` is open.
    pub(crate) fn is_open(&self, bits: u64) -> bool {
        Handle::from_bits(bits).is_some() && self.spans.contains_key(&bits)
    }

    /// The span's open ancestors, outermost first, and the span itself.
    pub(crate) fn context(&self, bits: u64) -> Vec<String> {
        let mut chain = Vec::new();
        let mut at = bits;
        while let Some((text, parent)) = self.spans.get(&at) {
            if chain.len() == MAX_CHAIN {
                break;
            }
            chain.push(text.clone());
            at = *parent;
        }
        chain.reverse();
        chain
    }

    /// The span's open descendants as chains from the span down to each
    /// span with no open child, the deepest first (at most 8 chains of 32).
    pub(crate) fn below(&self, bits: u64) -> Vec<Vec<String>> {
        // Paths from `bits` to each leaf, by depth-first search.
        let mut leaves: Vec<Vec<u64>> = Vec::new();
        let mut stack: Vec<Vec<u64>> = vec![vec![bits]];
        while let Some(path) = stack.pop() {
            let last = *path.last().expect("a path is never empty");
            let kids = self.children.get(&last).filter(|_| path.len() < MAX_CHAIN);
            match kids {
                Some(kids) if !kids.is_empty() => {
                    for &kid in kids.iter().rev() {
                        let mut next = path.clone();
                        next.push(kid);
                        stack.push(next);
                    }
                }
                _ => {
                    if path.len() > 1 {
                        leaves.push(path);
                    }
                }
            }
            if leaves.len() >= 64 * MAX_CHAINS {
                break;
            }
        }
        leaves.sort_by_key(|p| std::cmp::Reverse(p.len()));
        leaves.truncate(MAX_CHAINS);
        leaves
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .skip(1)
                    .filter_map(|b| self.spans.get(&b).map(|(t, _)| t.clone()))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_below_a_span_come_deepest_first_with_its_context_above() {
        let root = arena::allocate("request{id=1}", 0).unwrap();
        let job = arena::allocate("job{id=42}", root.to_bits()).unwrap();
        let fetch = arena::allocate("fetch{host=a}", job.to_bits()).unwrap();
        let permit = arena::allocate("acquire_permit", fetch.to_bits()).unwrap();
        let beat = arena::allocate("heartbeat", job.to_bits()).unwrap();
        let closed = arena::allocate("closed", job.to_bits()).unwrap();
        arena::release(closed);
        let open = OpenSpans::read();
        assert!(open.is_open(job.to_bits()));
        assert!(!open.is_open(closed.to_bits()));
        assert_eq!(open.context(job.to_bits()), ["request{id=1}", "job{id=42}"]);
        assert_eq!(
            open.below(job.to_bits()),
            vec![
                vec!["fetch{host=a}".to_owned(), "acquire_permit".to_owned()],
                vec!["heartbeat".to_owned()]
            ]
        );
        assert!(open.below(permit.to_bits()).is_empty());
        // A parent that closes leaves its children out of its chains.
        arena::release(fetch);
        let open = OpenSpans::read();
        assert_eq!(
            open.below(job.to_bits()),
            vec![vec!["heartbeat".to_owned()]]
        );
        for h in [root, job, permit, beat] {
            arena::release(h);
        }
    }
}
