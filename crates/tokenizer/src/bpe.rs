//! The BPE model: turns one pre-tokenised piece into ids by applying merges in rank order
//! (lowest rank first, leftmost on ties), as Hugging Face `tokenizers` and llama.cpp's BPE do.
//! Handles byte fallback (`<0xNN>`), unknown tokens (optionally fused) and `ignore_merges`
//! (Llama-3: a piece that is itself a token is emitted whole).

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Clone, Debug, Default)]
pub struct Bpe {
    /// (left id, right id) → (rank, merged id).
    pub merges: FxHashMap<(u32, u32), (u32, u32)>,
    pub unk: Option<u32>,
    pub fuse_unk: bool,
    pub byte_fallback: bool,
    pub ignore_merges: bool,
    /// Ids of `<0x00>`..`<0xFF>` when the vocab has them.
    pub byte_tokens: Option<Box<[u32; 256]>>,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

const NONE: usize = usize::MAX;

impl Bpe {
    /// Encode one piece. `lookup` maps a token string to its id.
    pub fn encode_piece(&self, piece: &str, lookup: impl Fn(&str) -> Option<u32>, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(id) = lookup(piece) {
                out.push(id);
                return;
            }
        }
        // Initial symbols: one per char (or per byte with byte fallback, or unk).
        let mut syms: Vec<Sym> = Vec::with_capacity(piece.len());
        let mut buf = [0u8; 4];
        let mut last_unk = false;
        for c in piece.chars() {
            let s = c.encode_utf8(&mut buf);
            if let Some(id) = lookup(s) {
                syms.push(Sym { id, prev: NONE, next: NONE, alive: true });
                last_unk = false;
            } else if let (true, Some(bt)) = (self.byte_fallback, &self.byte_tokens) {
                for &b in s.as_bytes() {
                    syms.push(Sym { id: bt[b as usize], prev: NONE, next: NONE, alive: true });
                }
                last_unk = false;
            } else if let Some(unk) = self.unk {
                if !(self.fuse_unk && last_unk) {
                    syms.push(Sym { id: unk, prev: NONE, next: NONE, alive: true });
                }
                last_unk = true;
            }
        }
        let n = syms.len();
        for (i, s) in syms.iter_mut().enumerate() {
            s.prev = if i == 0 { NONE } else { i - 1 };
            s.next = if i + 1 == n { NONE } else { i + 1 };
        }
        if n > 1 && !self.merges.is_empty() {
            // Heap of candidate merges (rank, left position); stale entries are skipped on pop.
            let mut heap: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::with_capacity(n);
            for i in 0..n - 1 {
                if let Some(&(rank, new)) = self.merges.get(&(syms[i].id, syms[i + 1].id)) {
                    heap.push(Reverse((rank, i, new)));
                }
            }
            while let Some(Reverse((rank, i, new))) = heap.pop() {
                let s = syms[i];
                if !s.alive || s.next == NONE {
                    continue;
                }
                let j = s.next;
                match self.merges.get(&(s.id, syms[j].id)) {
                    Some(&(r, nw)) if r == rank && nw == new => {}
                    _ => continue,
                }
                syms[i].id = new;
                syms[i].next = syms[j].next;
                syms[j].alive = false;
                if syms[j].next != NONE {
                    let k = syms[j].next;
                    syms[k].prev = i;
                }
                if s.prev != NONE {
                    if let Some(&(r, nw)) = self.merges.get(&(syms[s.prev].id, new)) {
                        heap.push(Reverse((r, s.prev, nw)));
                    }
                }
                let k = syms[i].next;
                if k != NONE {
                    if let Some(&(r, nw)) = self.merges.get(&(new, syms[k].id)) {
                        heap.push(Reverse((r, i, nw)));
                    }
                }
            }
        }
        out.extend(syms.iter().filter(|s| s.alive).map(|s| s.id));
    }
}
