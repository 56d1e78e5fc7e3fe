//! The KV pool's blocks: which are free, which sequences hold which, and the prefix cache.
//!
//! The pool (`smelt_model::KvPool`) is `--ctx-size` positions in blocks of [`BLOCK_SIZE`]; a
//! sequence holds a block table and takes a block when it grows past its last one. A block
//! that a sequence has filled is named by the hash of every token up to and including it (its
//! parent's hash and its own tokens, as vLLM names them), so a later prompt with the same
//! prefix finds it and shares it (reference-counted) instead of computing it again. When the
//! last holder lets go, a named block stays in the cache, free to be taken back: a new
//! allocation takes a never-named free block first, then evicts the least recently used named
//! one.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Positions per block (vLLM's default).
pub const BLOCK_SIZE: usize = 16;

/// What a named block holds: its parent's hash and its own tokens (checked on a hit, so a
/// hash collision is a miss, never someone else's keys).
struct Name {
    hash: u64,
    parent: u64,
    tokens: Vec<u32>,
}

pub struct Blocks {
    size: usize,
    refs: Vec<u32>,
    names: Vec<Option<Name>>,
    last_used: Vec<u64>,
    by_hash: HashMap<u64, u32>,
    /// Blocks nobody holds, named or not.
    unused: usize,
    tick: u64,
}

/// The hash of a block: its parent's and its tokens'. The first block's parent is 0.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl Blocks {
    pub fn new(blocks: usize, size: usize) -> Self {
        Blocks {
            size,
            refs: vec![0; blocks],
            names: (0..blocks).map(|_| None).collect(),
            last_used: vec![0; blocks],
            by_hash: HashMap::new(),
            unused: blocks,
            tick: 0,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }
    pub fn total(&self) -> usize {
        self.refs.len()
    }
    /// Blocks nobody holds (free or cached).
    pub fn unused(&self) -> usize {
        self.unused
    }
    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.unused
    }
    /// Unheld blocks that still name a prefix (reusable until evicted).
    pub fn cached(&self) -> usize {
        (0..self.total()).filter(|&b| self.refs[b] == 0 && self.names[b].is_some()).count()
    }

    fn hold(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.unused -= 1;
        }
        self.refs[i] += 1;
    }

    /// A block for a growing sequence (held once), or None when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        if self.unused == 0 {
            return None;
        }
        let unheld = (0..self.total()).filter(|&b| self.refs[b] == 0);
        // A never-named block first, else the least recently used named one (evicted).
        let b = match unheld.clone().find(|&b| self.names[b].is_none()) {
            Some(b) => b,
            None => unheld.min_by_key(|&b| self.last_used[b])?,
        };
        if let Some(name) = self.names[b].take() {
            self.by_hash.remove(&name.hash);
        }
        self.hold(b as u32);
        Some(b as u32)
    }

    /// The longest run of cached full blocks that `tokens` begins with, at most `max_blocks`,
    /// each now held once more; with the hash of the last one (0 for none).
    pub fn match_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, u64) {
        let mut out = Vec::new();
        let mut parent = 0;
        for chunk in tokens.chunks_exact(self.size).take(max_blocks) {
            let h = chain_hash(parent, chunk);
            let Some(&b) = self.by_hash.get(&h) else { break };
            match &self.names[b as usize] {
                Some(n) if n.parent == parent && n.tokens == chunk => {}
                _ => break,
            }
            self.hold(b);
            out.push(b);
            parent = h;
        }
        (out, parent)
    }

    /// Names block `b` (full, its keys and values computed) by `hash`, so later prompts can
    /// find it. If another block already has that name the first one keeps it.
    pub fn name(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        let hash = chain_hash(parent, tokens);
        if self.names[b as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.by_hash.insert(hash, b);
            self.names[b as usize] = Some(Name { hash, parent, tokens: tokens.to_vec() });
        }
        hash
    }

    /// A sequence lets go of its blocks; named ones stay cached, most recently used last.
    pub fn release(&mut self, table: &[u32]) {
        self.tick += 1;
        for &b in table {
            let i = b as usize;
            self.refs[i] -= 1;
            if self.refs[i] == 0 {
                self.unused += 1;
                self.last_used[i] = self.tick;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_blocks_are_shared_kept_after_release_and_evicted_least_recent_first() {
        let mut b = Blocks::new(4, 2);
        let toks = [1, 2, 3, 4, 5];
        // A first sequence fills two blocks and names them.
        let t1 = [b.allocate().unwrap(), b.allocate().unwrap()];
        let h = b.name(t1[0], 0, &toks[0..2]);
        b.name(t1[1], h, &toks[2..4]);
        assert_eq!(b.unused(), 2);
        // A second with the same prefix shares both; one that differs in block 2 shares one.
        let (m, _) = b.match_prefix(&toks, 8);
        assert_eq!(m, t1.to_vec());
        let (m2, _) = b.match_prefix(&[1, 2, 9, 9], 8);
        assert_eq!(m2, vec![t1[0]]);
        assert_eq!(b.match_prefix(&toks, 1).0.len(), 1, "max_blocks caps the match");
        b.release(&[t1[0]]);
        assert_eq!(b.unused(), 2, "still held by the others");
        b.release(&t1);
        b.release(&m);
        b.release(&m2);
        assert_eq!((b.unused(), b.cached()), (4, 2));
        // Allocation takes the never-named blocks first, then evicts the least recent.
        let fresh = [b.allocate().unwrap(), b.allocate().unwrap()];
        assert!(!fresh.contains(&t1[0]) && !fresh.contains(&t1[1]));
        assert_eq!(b.match_prefix(&toks, 8).0.len(), 2);
        b.release(&t1);
        let evicted = b.allocate().unwrap();
        assert!(t1.contains(&evicted));
        assert_eq!(b.cached(), 1);
        assert!(b.allocate().is_some());
        assert!(b.allocate().is_none(), "every block held");
        // An evicted block's name is gone: the prefix no longer matches.
        assert!(b.match_prefix(&toks, 8).0.is_empty());
    }
}
