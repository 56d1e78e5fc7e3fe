//! llama.cpp's SentencePiece (SPM) tokenizer for `tokenizer.ggml.model = llama` vocabularies:
//! spaces become `▁`, adjacent symbols are merged greedily by the highest score of the merged
//! piece (leftmost on ties), and pieces not in the vocab fall back to `<0xNN>` byte tokens.

use rustc_hash::FxHashMap;
use std::collections::BinaryHeap;

#[derive(Clone, Debug)]
pub struct Spm {
    pub scores: Vec<f32>,
    pub unk: Option<u32>,
    pub byte_tokens: Option<Box<[u32; 256]>>,
    pub add_space_prefix: bool,
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}
const NONE: usize = usize::MAX;

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    // Max-heap on score; on equal scores the leftmost pair wins (llama.cpp's comparator).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

impl Spm {
    /// Encode one raw text fragment; `prefix_space` adds the leading space llama.cpp adds at the
    /// start of the input and after special tokens.
    pub fn encode(&self, text: &str, prefix_space: bool, ids: &FxHashMap<String, u32>, out: &mut Vec<u32>) {
        let mut t = String::with_capacity(text.len() + 3);
        if prefix_space && self.add_space_prefix {
            t.push(' ');
        }
        t.push_str(text);
        let t = t.replace(' ', "\u{2581}");
        let mut syms: Vec<Sym> = Vec::with_capacity(t.len());
        for (i, c) in t.char_indices() {
            let n = syms.len();
            syms.push(Sym { start: i, len: c.len_utf8(), prev: n.wrapping_sub(1), next: n + 1 });
        }
        if let Some(l) = syms.last_mut() {
            l.next = NONE;
        }
        if let Some(f) = syms.first_mut() {
            f.prev = NONE;
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: usize, r: usize| {
            if l == NONE || r == NONE {
                return;
            }
            let s = &t[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = ids.get(s) {
                let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                heap.push(Bigram { score, left: l, right: r, size: s.len() });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            // Stale: one side was merged since this bigram was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if syms[r].next != NONE {
                let k = syms[r].next;
                syms[k].prev = l;
            }
            let (p, nx) = (syms[l].prev, syms[l].next);
            try_add(&mut heap, &syms, p, l);
            try_add(&mut heap, &syms, l, nx);
        }
        // Symbols only merge into vocab pieces, so a final symbol is a token or a single char
        // missing from the vocab, which falls back to byte tokens (or unk).
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            let piece = &t[s.start..s.start + s.len];
            if let Some(&id) = ids.get(piece) {
                out.push(id);
            } else {
                for &b in piece.as_bytes() {
                    match (&self.byte_tokens, self.unk) {
                        (Some(bt), _) => out.push(bt[b as usize]),
                        (None, Some(u)) => out.push(u),
                        (None, None) => {}
                    }
                }
            }
            i = s.next;
        }
    }
}
