//! The two operands in the layouts the tile kernel reads: a weight matrix repacked once into
//! AMX's VNNI layout ([`Packed`], the B operand), and the activation rows of one matmul, already
//! quantised to Q8_0/Q8_1 blocks, regrouped sixteen rows at a time ([`Acts`], the A operand).
//!
//! Weights: the rows in groups of 16 (the last zero-padded), and for each group and 32-element
//! block one chunk (64-byte aligned, so a tile load never splits a line it could fill):
//!
//! | format | quants | then |
//! |---|---|---|
//! | Q8_0 | the B tile, 8 rows × 64 bytes: row k holds, for output n, its elements 4k..4k+4 at bytes 4n..4n+4 | d of the 16 rows (f16) |
//! | Q4_0, Q4_1 | that tile's 4-bit values (as stored: Q4_0's q + 8), two tile rows a byte: byte j of row pair p is tile row 2p's byte j (low nibble) and row 2p + 1's (high) | d (f16), Q4_1 also m (f16) |
//!
//! Q4_0/Q4_1 take the same bytes as in the file (ggml packs them the same way,
//! `amx/mmq.cpp` `pack_qs`), unpacked to a tile per block as they are used.

use super::super::act::{quantize_q8, BlockQ8};
use super::super::{q4_0, q4_1, q8_0};

/// The formats: `tile512`'s numbering.
pub(crate) const Q8_0: u8 = super::super::tile512::Q8_0;
pub(crate) const Q4_0: u8 = super::super::tile512::Q4_0;
pub(crate) const Q4_1: u8 = super::super::tile512::Q4_1;
/// Not a `tile512` format: its own layout (`q6k.rs`).
pub(crate) const Q6_K: u8 = 0x66;

/// 64 bytes on a 64-byte boundary: what the packed buffers are made of.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub(super) [u8; 64]);

/// Bytes of a chunk's quants: the whole B tile, or its nibbles.
pub(super) const fn quant_bytes(k: u8) -> usize {
    if k == Q8_0 {
        512
    } else {
        256
    }
}

/// Bytes of one (group, block) chunk: quants, 16 f16 d, for Q4_1 16 f16 m, up to a whole line.
pub(super) const fn chunk_bytes(k: u8) -> usize {
    if k == Q6_K {
        return super::q6k::CHUNK;
    }
    (quant_bytes(k) + 32 + if k == Q4_1 { 32 } else { 0 }).next_multiple_of(64)
}

/// The file's block bytes of format `k`.
const fn block_bytes(k: u8) -> usize {
    match k {
        Q8_0 => q8_0::BYTES,
        Q4_0 => q4_0::BYTES,
        _ => q4_1::BYTES,
    }
}

/// A weight matrix [rows, cols] of Q8_0, Q4_0 or Q4_1 in the chunks above.
#[derive(Clone)]
pub(crate) struct Packed {
    pub(super) kind: u8,
    pub(super) rows: usize,
    pub(super) groups: usize,
    /// 32-element blocks per row.
    pub(super) nb: usize,
    data: Vec<Line>,
}

impl Packed {
    /// Repacks `w` (rows × the file's row bytes). Groups in parallel.
    pub(crate) fn new(kind: u8, w: &[u8], rows: usize, cols: usize) -> Packed {
        if kind == Q6_K {
            return super::q6k::pack(w, rows, cols);
        }
        assert!(cols.is_multiple_of(32) && matches!(kind, Q8_0 | Q4_0 | Q4_1), "amx: format {kind}, {cols} columns");
        let (nb, bb) = (cols / 32, block_bytes(kind));
        assert_eq!(w.len(), rows * nb * bb, "amx: {rows} rows of {nb} blocks");
        let groups = rows.div_ceil(16);
        let lines = chunk_bytes(kind) / 64;
        let mut data = vec![Line([0; 64]); groups * nb * lines];
        crate::par::chunks_mut(&mut data, nb * lines, |g, lines_g| {
            // SAFETY: Line is 64 plain bytes.
            let out = unsafe { std::slice::from_raw_parts_mut(lines_g.as_mut_ptr() as *mut u8, lines_g.len() * 64) };
            for b in 0..nb {
                let chunk = &mut out[b * chunk_bytes(kind)..(b + 1) * chunk_bytes(kind)];
                let mut tile = [[0u8; 64]; 8];
                for n in 0..16 {
                    let r = g * 16 + n;
                    if r >= rows {
                        continue;
                    }
                    let blk = &w[(r * nb + b) * bb..(r * nb + b + 1) * bb];
                    let q = quant_bytes(kind);
                    chunk[q + 2 * n..q + 2 * n + 2].copy_from_slice(&blk[..2]);
                    if kind == Q4_1 {
                        chunk[q + 32 + 2 * n..q + 32 + 2 * n + 2].copy_from_slice(&blk[2..4]);
                    }
                    for e in 0..32 {
                        let v = match kind {
                            Q8_0 => blk[2 + e],
                            _ => {
                                let qs = &blk[bb - 16..];
                                if e < 16 {
                                    qs[e] & 0xF
                                } else {
                                    qs[e - 16] >> 4
                                }
                            }
                        };
                        tile[e / 4][4 * n + e % 4] = v;
                    }
                }
                if kind == Q8_0 {
                    for k in 0..8 {
                        chunk[64 * k..64 * (k + 1)].copy_from_slice(&tile[k]);
                    }
                } else {
                    for p in 0..4 {
                        for j in 0..64 {
                            chunk[64 * p + j] = tile[2 * p][j] | tile[2 * p + 1][j] << 4;
                        }
                    }
                }
            }
        });
        Packed { kind, rows, groups, nb, data }
    }

    /// A packing made elsewhere (`q6k::pack`).
    pub(super) fn from_parts(kind: u8, rows: usize, groups: usize, nb: usize, data: Vec<Line>) -> Packed {
        assert_eq!(data.len() * 64, groups * nb * chunk_bytes(kind), "amx: packed bytes");
        Packed { kind, rows, groups, nb, data }
    }

    /// The chunk of group g, block b.
    #[inline(always)]
    pub(super) fn chunk(&self, g: usize, b: usize) -> *const u8 {
        debug_assert!(g < self.groups && b < self.nb);
        // SAFETY: inside `data` (asserted in debug builds; callers keep g, b in range).
        unsafe { (self.data.as_ptr() as *const u8).add((g * self.nb + b) * chunk_bytes(self.kind)) }
    }
}

/// n activation rows (Q8_0 or Q8_1 blocks, all of one length) in groups of 16 rows, the last
/// zero-padded: per (group, block) the A tile (16 rows × 32 bytes, the rows' quants of that
/// block) and the 16 rows' d, s (Q8_1's d·Σq) and Σq.
pub(crate) struct Acts {
    pub(super) n: usize,
    pub(super) groups: usize,
    pub(super) nb: usize,
    /// Rows a (group, block) holds: 16 (the tiles' layout), or n for `quantize_few`'s, which
    /// only the one-to-four-row kernel (`kernel::few`) reads.
    pub(super) rows: usize,
    qs: Vec<Line>,
    d: Vec<f32>,
    s: Vec<f32>,
    sum: Vec<i32>,
}

impl Acts {
    /// The rows of `rows` (Q8_0/Q8_1 blocks, all of one length) regrouped.
    pub(crate) fn new(rows: &[&[BlockQ8]]) -> Acts {
        let nb = rows.first().map_or(0, |r| r.len());
        assert!(rows.iter().all(|r| r.len() == nb), "amx: activation rows of different lengths");
        Acts::build(rows.len(), nb, |i| std::borrow::Cow::Borrowed(rows[i]))
    }

    /// The n rows of x (n × k) quantised to Q8_0/Q8_1 blocks (`act::quantize_q8`, the blocks
    /// `QTensor` makes) straight into the groups, a group a task.
    pub(crate) fn quantize(x: &[f32], n: usize, k: usize) -> Acts {
        assert!(k.is_multiple_of(32) && x.len() >= n * k, "amx: {n} rows of {k} in {} values", x.len());
        Acts::build(n, k / 32, |i| std::borrow::Cow::Owned(quantize_q8(&x[i * k..(i + 1) * k])))
    }

    /// Every element written by the group tasks (padding rows zero): no serial zeroing first.
    fn build<'a>(n: usize, nb: usize, row: impl Fn(usize) -> std::borrow::Cow<'a, [BlockQ8]> + Sync) -> Acts {
        use crate::par::{assume_init, uninit, Pieces};
        let groups = n.div_ceil(16);
        let (mut qs, mut d, mut s, mut sum) = (
            uninit::<Line>(groups * nb * 8),
            uninit(groups * nb * 16),
            uninit(groups * nb * 16),
            uninit(groups * nb * 16),
        );
        {
            let (pq, pd, ps, pm) = (
                Pieces::new(&mut qs, nb * 8),
                Pieces::new(&mut d, nb * 16),
                Pieces::new(&mut s, nb * 16),
                Pieces::new(&mut sum, nb * 16),
            );
            crate::par::for_each(groups, |g| {
                // SAFETY: task g alone takes piece g of each.
                let (q, d, s, sum) = unsafe { (pq.take(g), pd.take(g), ps.take(g), pm.take(g)) };
                let mut tile = [[0u8; 32]; 16];
                let rows: Vec<_> = (g * 16..(g * 16 + 16).min(n)).map(&row).collect();
                for b in 0..nb {
                    for m in 0..16 {
                        let (isum, dm, sm) = match rows.get(m) {
                            Some(r) => {
                                let blk = &r[b];
                                for (o, &v) in tile[m].iter_mut().zip(&blk.qs) {
                                    *o = v as u8;
                                }
                                (blk.qs.iter().map(|&v| v as i32).sum(), blk.d, blk.s)
                            }
                            None => {
                                tile[m] = [0; 32];
                                (0, 0.0, 0.0)
                            }
                        };
                        d[b * 16 + m].write(dm);
                        s[b * 16 + m].write(sm);
                        sum[b * 16 + m].write(isum);
                    }
                    for l in 0..8 {
                        let mut line = [0u8; 64];
                        line[..32].copy_from_slice(&tile[2 * l]);
                        line[32..].copy_from_slice(&tile[2 * l + 1]);
                        q[b * 8 + l].write(Line(line));
                    }
                }
            });
        }
        // SAFETY: every task wrote all of its pieces (every block, all 16 rows).
        unsafe {
            Acts {
                n,
                groups,
                nb,
                rows: 16,
                qs: assume_init(qs),
                d: assume_init(d),
                s: assume_init(s),
                sum: assume_init(sum),
            }
        }
    }

    /// One to four rows of x (n × k) for `kernel::few` only: the same blocks, scales and sums as
    /// `quantize`, but a (block)'s n rows without the tile's 16-row padding, written on the
    /// calling thread (a decode row's 16-row tile was ~16× the bytes to write, before every
    /// matvec of the step).
    pub(crate) fn quantize_few(x: &[f32], n: usize, k: usize) -> Acts {
        assert!(
            (1..=4).contains(&n) && k.is_multiple_of(32) && x.len() >= n * k,
            "amx: {n} rows of {k} in {} values",
            x.len()
        );
        Acts::few_from((0..n).map(|i| quantize_q8(&x[i * k..(i + 1) * k])).collect())
    }

    /// `quantize` for the format `kind`'s activations: Q8_K rows in 32-element chunks for Q6_K
    /// (`q6k::chunks_of`), Q8_0/Q8_1 blocks for the others.
    pub(crate) fn quantize_for(kind: u8, x: &[f32], n: usize, k: usize) -> Acts {
        if kind != Q6_K {
            return Acts::quantize(x, n, k);
        }
        assert!(k.is_multiple_of(256) && x.len() >= n * k, "amx: {n} Q8_K rows of {k} in {} values", x.len());
        let rows = super::q6k::rows_q8k(x, n, k);
        Acts::build(n, k / 32, |i| std::borrow::Cow::Borrowed(&rows[i][..]))
    }

    /// `quantize_few` for the format `kind`'s activations (as `quantize_for`).
    pub(crate) fn quantize_few_for(kind: u8, x: &[f32], n: usize, k: usize) -> Acts {
        if kind != Q6_K {
            return Acts::quantize_few(x, n, k);
        }
        assert!(
            (1..=4).contains(&n) && k.is_multiple_of(256) && x.len() >= n * k,
            "amx: {n} Q8_K rows of {k} in {} values",
            x.len()
        );
        Acts::few_from(super::q6k::rows_q8k(x, n, k))
    }

    /// `quantize_few`'s layout of one to four rows of blocks.
    fn few_from(rows: Vec<Vec<BlockQ8>>) -> Acts {
        let (n, nb) = (rows.len(), rows.first().map_or(0, |r| r.len()));
        let mut bytes = vec![0u8; nb * n * 32];
        let (mut d, mut s, mut sum) = (vec![0f32; nb * n], vec![0f32; nb * n], vec![0i32; nb * n]);
        for b in 0..nb {
            for (m, r) in rows.iter().enumerate() {
                let blk = &r[b];
                for (o, &v) in bytes[(b * n + m) * 32..][..32].iter_mut().zip(&blk.qs) {
                    *o = v as u8;
                }
                d[b * n + m] = blk.d;
                s[b * n + m] = blk.s;
                sum[b * n + m] = blk.qs.iter().map(|&v| v as i32).sum();
            }
        }
        let qs = bytes
            .chunks(64)
            .map(|c| {
                let mut line = [0u8; 64];
                line[..c.len()].copy_from_slice(c);
                Line(line)
            })
            .collect();
        Acts { n, groups: 1, nb, rows: n, qs, d, s, sum }
    }

    /// The A tile of group g, block b: `rows` rows (16 but for `quantize_few`) of 32 bytes, 32
    /// apart.
    #[inline(always)]
    pub(super) fn tile(&self, g: usize, b: usize) -> *const u8 {
        debug_assert!(g < self.groups && b < self.nb);
        // SAFETY: inside `qs` (callers keep g, b in range).
        unsafe { (self.qs.as_ptr() as *const u8).add((g * self.nb + b) * self.rows * 32) }
    }

    /// The rows' d, s and Σq at group g, block b.
    #[inline(always)]
    pub(super) fn scales(&self, g: usize, b: usize) -> (*const f32, *const f32, *const i32) {
        let at = (g * self.nb + b) * self.rows;
        debug_assert!(at + self.rows <= self.d.len());
        // SAFETY: inside the three vectors (callers keep g, b in range).
        unsafe { (self.d.as_ptr().add(at), self.s.as_ptr().add(at), self.sum.as_ptr().add(at)) }
    }
}
