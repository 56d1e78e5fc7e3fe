//! The paged KV cache and the batched forward over it (the server's engine, docs/SERVE.md).
//!
//! [`KvPool`] holds every layer's keys and values in fixed-size blocks of positions; which
//! blocks a sequence owns (its block table) is the caller's business (smelt-serve's block
//! manager allocates, shares and frees them). [`Model::logits_paged`] runs one forward over
//! several sequences at once, each bringing its new tokens (a whole prompt, or one decode
//! token) at its own position with its own block table: the rows of every sequence share the
//! matmuls, and attention reads each sequence's K/V through its table
//! (`smelt_core::ops::attention::attn_ggml_seqs`). Each sequence's logits are bit for bit what
//! the contiguous [`crate::KvCache`] path gives it alone, where the matmul kernels are
//! row-independent (tests/paged.rs checks it).
//!
//! Keys and values are stored as f32 (read in place through the block table) or, to hold more
//! positions in the same memory, as f16, bf16 or q8_0 (llama.cpp's `--cache-type-k/v`): those
//! rows are rounded when written and widened to f32 for each step's attention (an f16 pool's
//! decoding rows in registers, by the attention kernels themselves: `attn_decode_packed`).
//!
//! On a GPU the pool is one device tensor per layer for keys and one for values, (P, KVH, D) in
//! f32, bf16 or f16 (q8_0 stays CPU-only); each forward uploads where its rows go once
//! (`PagedRows`), the linear layers run once over the stacked rows of every sequence, and per
//! layer one launch rotates q and k and writes k and v into their blocks
//! (`attention::paged_rope_kv`) and one attends each row over its own sequence's keys through
//! its block table (`attention::paged_attention`). No host round trip per layer.

use crate::model::{Kv, Model};
use anyhow::{bail, Result};
use smelt_core::ops::attention::{attn_ggml_seqs, paged_attention, paged_rope_kv, Heads, PagedRows, SeqAttn};
use smelt_core::quant::{dequantize_row, quantize_row, GgmlType};
use smelt_core::{DType, Device, Graph, Tensor};

/// How the pool stores keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl KvType {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "bf16" => KvType::BF16,
            "q8_0" => KvType::Q8_0,
            _ => bail!("KV cache type `{s}`: expected f32, f16, bf16 or q8_0"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::BF16 => "bf16",
            KvType::Q8_0 => "q8_0",
        }
    }
    fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::BF16 => GgmlType::BF16,
            KvType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// One layer's keys or values: f32 rows, or rows of another type's bytes, on the CPU; or a
/// (positions, KVH, D) tensor on a GPU.
pub(crate) enum Store {
    F32(Vec<f32>),
    Packed { ty: GgmlType, bytes: Vec<u8>, row_bytes: usize },
    Device(Tensor),
}

impl Store {
    fn new(kind: KvType, positions: usize, row: usize) -> Result<Self> {
        if kind == KvType::F32 {
            let mut v = vec![0f32; positions * row];
            touch(&mut v);
            return Ok(Store::F32(v));
        }
        let ty = kind.ggml();
        let row_bytes = ty.row_bytes(row).map_err(|e| {
            anyhow::anyhow!(
                "--kv-cache-type {}: a row of {row} values (KV heads × head dim) does not fit: {e}",
                kind.name()
            )
        })?;
        let mut bytes = vec![0u8; positions * row_bytes];
        touch(&mut bytes);
        Ok(Store::Packed { ty, bytes, row_bytes })
    }
    fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => v.len() * 4,
            Store::Packed { bytes, .. } => bytes.len(),
            Store::Device(t) => t.numel() * t.dtype().size_in_bytes(),
        }
    }
}

/// Writes the pool's zeros once, on `par`'s threads, so that its pages are mapped now rather
/// than on first touch: a fresh block's first keys and values were written by the step's serial
/// part, and every new page then cost a fault and the kernel's zeroing there (~210 faults a
/// step at 32 clients, `clear_page_erms` ~3% of a server's samples, while the other thread
/// waited). llama-server allocates and clears its KV buffer at start the same way.
fn touch<T: Copy + Default + Send>(v: &mut [T]) {
    smelt_core::par::chunks_mut(v, (1 << 20) / std::mem::size_of::<T>().max(1), |_, c| c.fill(T::default()));
}

/// Keys and values of every layer in `blocks` blocks of `block_size` positions, f32 on the
/// CPU: layer l's K is (blocks · block_size, KVH, D), and position p of a sequence lives in
/// row `table[p / block_size] · block_size + p % block_size`.
pub struct KvPool {
    k: Vec<Store>,
    v: Vec<Store>,
    block_size: usize,
    blocks: usize,
    /// KVH · D: values per position per layer.
    row: usize,
    kind: KvType,
    /// On a GPU, one block past `blocks` that no sequence owns: the padded rows of a replayed
    /// decode step (`PagedDecoder`) write and read it.
    scratch: Option<u32>,
    /// Tells pools apart (a captured step holds one pool's addresses).
    id: u64,
}

/// Pool ids (`KvPool::id`).
static POOL_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
fn next_pool_id() -> u64 {
    POOL_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl KvPool {
    /// A pool of at least `positions` positions for `model`, in blocks of `block_size`, f32.
    pub fn new(model: &Model, positions: usize, block_size: usize) -> Result<Self> {
        Self::with_type(model, positions, block_size, KvType::F32)
    }

    /// [`KvPool::new`] storing keys and values as `kind`.
    pub fn with_type(model: &Model, positions: usize, block_size: usize, kind: KvType) -> Result<Self> {
        if block_size == 0 {
            bail!("KV pool: the block size must be at least 1");
        }
        let c = &model.cfg;
        let blocks = positions.div_ceil(block_size);
        let row = c.n_kv_heads * c.head_dim;
        let device = model.device();
        if !device.is_cpu() {
            let dtype = match kind {
                KvType::F32 => DType::F32,
                KvType::BF16 => DType::BF16,
                KvType::F16 => DType::F16,
                KvType::Q8_0 => bail!(
                    "--kv-cache-type q8_0 is CPU-only for now; on {device} the paged KV cache holds f32, bf16 or f16"
                ),
            };
            // One more block than asked for: the scratch block.
            let shape = [(blocks + 1) * block_size, c.n_kv_heads, c.head_dim];
            let mk = || {
                (0..c.n_layers)
                    .map(|_| Tensor::zeros_typed(&shape, device, dtype).map(Store::Device))
                    .collect::<Result<Vec<_>>>()
            };
            let (k, v, scratch) = (mk()?, mk()?, Some(blocks as u32));
            return Ok(KvPool { k, v, block_size, blocks, row, kind, scratch, id: next_pool_id() });
        }
        let mk = || (0..c.n_layers).map(|_| Store::new(kind, blocks * block_size, row)).collect::<Result<Vec<_>>>();
        Ok(KvPool { k: mk()?, v: mk()?, block_size, blocks, row, kind, scratch: None, id: next_pool_id() })
    }
    /// A pool of no blocks, on any device (for a caller that keeps its own contiguous caches
    /// where the paged forward does not run yet).
    pub fn new_empty(model: &Model, block_size: usize) -> Result<Self> {
        let c = &model.cfg;
        let row = c.n_kv_heads * c.head_dim;
        Ok(KvPool {
            k: Vec::new(),
            v: Vec::new(),
            block_size: block_size.max(1),
            blocks: 0,
            row,
            kind: KvType::F32,
            scratch: None,
            id: next_pool_id(),
        })
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// The blocks sequences may own (a GPU pool holds one more, its scratch block).
    pub fn blocks(&self) -> usize {
        self.blocks
    }
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Store::bytes).sum()
    }
    pub fn kind(&self) -> KvType {
        self.kind
    }
    /// The block no sequence owns (GPU pools only), index `blocks()`.
    pub fn scratch_block(&self) -> Option<u32> {
        self.scratch
    }
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
    /// Row offsets (in values) of positions 0..n of a sequence with block table `table`.
    fn rows(&self, table: &[u32], n: usize) -> Result<Vec<usize>> {
        if n > table.len() * self.block_size {
            bail!("KV pool: {n} positions need {} blocks, the table has {}", n.div_ceil(self.block_size), table.len());
        }
        if let Some(b) = table.iter().find(|&&b| b as usize >= self.blocks) {
            bail!("KV pool: block {b} is outside the pool of {} blocks", self.blocks);
        }
        let bs = self.block_size;
        Ok((0..n).map(|p| (table[p / bs] as usize * bs + p % bs) * self.row).collect())
    }
}

/// One sequence's part of a batched step.
pub struct SeqStep<'a> {
    /// The new tokens (a prompt, or its uncached rest, or one decode token).
    pub tokens: &'a [u32],
    /// Positions already in the cache; the tokens go to pos0, pos0 + 1, …
    pub pos0: usize,
    /// The sequence's blocks, covering at least pos0 + tokens.len() positions.
    pub table: &'a [u32],
}

/// One layer's view of the pool during a batched forward.
pub(crate) struct PagedSlot<'a> {
    pub k: &'a mut Store,
    pub v: &'a mut Store,
    /// Per sequence: (pos0, new tokens, offsets of positions 0..pos0 + new; on a GPU empty).
    pub seqs: &'a [(usize, usize, Vec<usize>)],
    /// On a GPU: where the step's rows go and which keys each reads, on the device.
    pub dev: Option<&'a PagedRows>,
}

impl PagedSlot<'_> {
    /// Rotates q or k (1, N, heads, D), each sequence's rows at its own positions: one call
    /// over all rows (each row's arithmetic is `rope`'s at its position, so the same bits as
    /// one call per sequence, which for a step of 32 decode rows was 32 serial calls a layer).
    pub fn rope(&self, x: &Tensor, table: &smelt_core::ops::rope::RopeTable) -> Result<Tensor> {
        let positions: Vec<u32> =
            self.seqs.iter().flat_map(|&(pos0, t, _)| (pos0..pos0 + t).map(|p| p as u32)).collect();
        smelt_core::ops::rope::rope_positions(x, table, &positions)
    }

    /// On a GPU: q and k (1, N, heads, D) rotated and k, v written into the pool in one launch,
    /// then q attended over each sequence's positions through its block table → (1, N, H, D).
    pub fn attend_device(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &smelt_core::ops::rope::RopeTable,
        heads: Heads,
        scale: f32,
    ) -> Result<Tensor> {
        let (Some(rows), Store::Device(kp), Store::Device(vp)) = (self.dev, &mut *self.k, &mut *self.v) else {
            bail!("KV pool: the device path needs a device pool and its rows");
        };
        let n = rows.rows();
        let q3 = q.reshape(&[n, heads.h, heads.d])?;
        let (k3, v3) = (k.reshape(&[n, heads.kvh, heads.d])?, v.reshape(&[n, heads.kvh, heads.d])?);
        let qr = paged_rope_kv(&q3, &k3, &v3, rope, kp, vp, rows)?;
        paged_attention(&qr, kp, vp, rows, heads, scale)?.reshape(q.shape())
    }

    /// Writes k, v (1, N, KVH, D) into the pool and attends q (1, N, H, D) over each
    /// sequence's cached and new positions → (1, N, H, D).
    pub fn attend(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, heads: Heads, scale: f32) -> Result<Tensor> {
        let row = heads.kvh * heads.d;
        let (kn, vn) = (k.as_f32()?, v.as_f32()?);
        let mut at = 0;
        for (pos0, t, rows) in self.seqs {
            for i in 0..*t {
                let dst = rows[pos0 + i];
                write_row(self.k, dst, row, &kn[(at + i) * row..][..row])?;
                write_row(self.v, dst, row, &vn[(at + i) * row..][..row])?;
            }
            at += t;
        }
        let qd = q.as_f32()?;
        let qrow = heads.h * heads.d;
        // A step of decoding rows over a packed pool: each (sequence, KV head) widens its own
        // keys and values in cache (`attn_decode_packed`), the same bits as widening the pool.
        if let (
            Store::Packed { ty: kt, bytes: kb, row_bytes: kr },
            Store::Packed { ty: vt, bytes: vb, row_bytes: vr },
        ) = (&*self.k, &*self.v)
        {
            let whole_blocks = heads.d.is_multiple_of(kt.block_size()) && heads.d.is_multiple_of(vt.block_size());
            if whole_blocks && self.seqs.iter().all(|&(_, t, _)| t == 1) {
                use smelt_core::ops::attention::{attn_decode_packed, PackedKv};
                let seqs: Vec<SeqAttn> = self
                    .seqs
                    .iter()
                    .enumerate()
                    .map(|(si, (pos0, _, rows))| SeqAttn {
                        q: &qd[si * qrow..(si + 1) * qrow],
                        tq: 1,
                        rows: &rows[..pos0 + 1],
                    })
                    .collect();
                let (k, v) =
                    (PackedKv { ty: *kt, bytes: kb, row_bytes: *kr }, PackedKv { ty: *vt, bytes: vb, row_bytes: *vr });
                return Tensor::from_f32(attn_decode_packed(&seqs, k, v, heads, scale)?, q.shape());
            }
        }
        // Packed rows are widened into one f32 scratch per call, each sequence's positions in
        // order; f32 rows are read where they are.
        let (gathered, contiguous): (Option<Widened>, Vec<Vec<usize>>) = match (&*self.k, &*self.v) {
            (Store::F32(_), Store::F32(_)) => (None, Vec::new()),
            (ks, vs) => {
                // Every sequence's positions in order, widened in parallel (one pass reads
                // the packed pool once: half the bytes of an f32 pool at f16).
                let srcs: Vec<usize> =
                    self.seqs.iter().flat_map(|(pos0, t, rows)| rows[..pos0 + t].iter().copied()).collect();
                let (kf, vf) = widen_rows([ks, vs], &srcs, row)?;
                let mut offs = Vec::with_capacity(self.seqs.len());
                let mut n = 0;
                for (pos0, t, _) in self.seqs {
                    offs.push((n..n + pos0 + t).map(|j| j * row).collect());
                    n += pos0 + t;
                }
                (Some((kf, vf)), offs)
            }
        };
        let mut at = 0;
        let seqs: Vec<SeqAttn> = self
            .seqs
            .iter()
            .enumerate()
            .map(|(si, (pos0, t, rows))| {
                let rows = if gathered.is_some() { &contiguous[si][..] } else { &rows[..pos0 + t] };
                let s = SeqAttn { q: &qd[at * qrow..(at + t) * qrow], tq: *t, rows };
                at += t;
                s
            })
            .collect();
        let out = match (&gathered, &*self.k, &*self.v) {
            (Some((kf, vf)), ..) => attn_ggml_seqs(&seqs, kf, vf, heads, scale),
            (None, Store::F32(k), Store::F32(v)) => attn_ggml_seqs(&seqs, k, v, heads, scale),
            _ => bail!("KV pool: keys and values stored differently"),
        };
        Tensor::from_f32(out, q.shape())
    }
}

/// Packed keys and values widened to f32 for one step (K, V).
type Widened = (Vec<f32>, Vec<f32>);

/// The rows at value offsets `srcs` of the packed keys and values as f32, one after another,
/// both in one parallel pass.
fn widen_rows(stores: [&Store; 2], srcs: &[usize], row: usize) -> Result<Widened> {
    let mut packed = Vec::with_capacity(2);
    for store in stores {
        let Store::Packed { ty, bytes, row_bytes } = store else {
            bail!("KV pool: widen_rows reads a packed pool");
        };
        packed.push((*ty, &bytes[..], *row_bytes));
    }
    let (mut kf, mut vf) = (vec![0f32; srcs.len() * row], vec![0f32; srcs.len() * row]);
    // 16 rows a task (a few KB of output each).
    const ROWS: usize = 16;
    let (kp, vp) =
        (smelt_core::par::Pieces::new(&mut kf, ROWS * row), smelt_core::par::Pieces::new(&mut vf, ROWS * row));
    smelt_core::par::for_each(kp.count(), |ci| {
        // SAFETY: task ci takes piece ci of each output, and only it.
        let outs = unsafe { [kp.take(ci), vp.take(ci)] };
        for ((ty, bytes, rb), out) in packed.iter().zip(outs) {
            for (ri, o) in out.chunks_exact_mut(row).enumerate() {
                let r = srcs[ci * ROWS + ri] / row;
                dequantize_row(*ty, &bytes[r * rb..(r + 1) * rb], o);
            }
        }
    });
    Ok((kf, vf))
}

/// Writes one position's row (`row` values, starting at value offset `at`) into `store`.
fn write_row(store: &mut Store, at: usize, row: usize, x: &[f32]) -> Result<()> {
    match store {
        Store::F32(v) => v[at..at + row].copy_from_slice(x),
        Store::Device(_) => bail!("KV pool: a device pool's rows are written by paged_rope_kv"),
        Store::Packed { ty, bytes, row_bytes } => {
            let mut b = Vec::with_capacity(*row_bytes);
            quantize_row(*ty, x, &mut b);
            let r = at / row;
            bytes[r * *row_bytes..(r + 1) * *row_bytes].copy_from_slice(&b);
        }
    }
    Ok(())
}

impl Model {
    /// One forward over several sequences (each its new tokens at its own positions, its K/V
    /// in `pool` through its block table) → the logits of each sequence's last new token,
    /// (sequences, V). The new tokens' K/V are written into the pool.
    pub fn logits_paged(&self, steps: &[SeqStep], pool: &mut KvPool) -> Result<Tensor> {
        if steps.is_empty() || steps.iter().any(|s| s.tokens.is_empty()) {
            bail!("logits_paged: every sequence needs at least one new token");
        }
        let device = self.device();
        let pool_on_device = pool.k.iter().chain(&pool.v).any(|s| matches!(s, Store::Device(_)));
        if pool_on_device == device.is_cpu() || pool.k.len() != self.cfg.n_layers {
            bail!(
                "logits_paged: the KV pool ({} layers, {}) does not belong to this model ({} layers on {device})",
                pool.k.len(),
                if pool_on_device { "on a GPU" } else { "on the CPU" },
                self.cfg.n_layers
            );
        }
        if !device.is_cpu() {
            return self.logits_paged_device(steps, pool, device);
        }
        let mut seqs = Vec::with_capacity(steps.len());
        for s in steps {
            let n = s.pos0 + s.tokens.len();
            if n > self.cfg.max_pos {
                bail!("logits_paged: {n} positions exceed the model's context of {}", self.cfg.max_pos);
            }
            seqs.push((s.pos0, s.tokens.len(), pool.rows(s.table, n)?));
        }
        let tokens: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let n = tokens.len();
        let mut g = Graph::inference();
        let p = self.param_vars(&mut g, false);
        let KvPool { k, v, .. } = pool;
        let slots = k.iter_mut().zip(v.iter_mut()).map(|(k, v)| Kv::Paged(PagedSlot { k, v, seqs: &seqs, dev: None }));
        let h = self.hidden_with(&mut g, &p, &Tensor::from_u32(tokens, &[1, n])?, false, slots, None)?;
        // The last new row of each sequence: an embedding lookup into h (N, C).
        let mut end = 0;
        let last: Vec<u32> = steps
            .iter()
            .map(|s| {
                end += s.tokens.len();
                (end - 1) as u32
            })
            .collect();
        let last = Tensor::from_u32(last, &[steps.len()])?;
        let h = g.constant(smelt_core::ops::embedding::embedding(h.tensor(), &last)?);
        g.name(&h, || "result_norm".into());
        // Each row as `Logits::Last` of its sequence alone: a one-row product.
        let w = p[self.idx.head].tensor();
        smelt_core::profile::timed("paged_head", || smelt_core::ops::matmul::linear_rows_alone(h.tensor(), w, None))
    }

    /// `logits_paged` on a GPU: where the rows go (positions, pool rows, block tables) is
    /// uploaded once; every layer's matmuls run once over the stacked rows of all sequences,
    /// and attention reads each row's keys through its table (`PagedSlot::attend_device`).
    fn logits_paged_device(&self, steps: &[SeqStep], pool: &mut KvPool, device: Device) -> Result<Tensor> {
        let bs = pool.block_size;
        let (mut pos, mut dst, mut toff, mut tables) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in steps {
            let n = s.pos0 + s.tokens.len();
            if n > self.cfg.max_pos {
                bail!("logits_paged: {n} positions exceed the model's context of {}", self.cfg.max_pos);
            }
            let blocks = n.div_ceil(bs);
            if blocks > s.table.len() {
                bail!("KV pool: {n} positions need {blocks} blocks, the table has {}", s.table.len());
            }
            let at = tables.len() as u32;
            tables.extend_from_slice(&s.table[..blocks]);
            for p in s.pos0..n {
                pos.push(p as u32);
                dst.push(s.table[p / bs] * bs as u32 + (p % bs) as u32);
                toff.push(at);
            }
        }
        let rows = PagedRows::new(pos, dst, toff, tables, bs, pool.blocks, device)?;
        let tokens: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let n = tokens.len();
        let mut g = Graph::inference();
        let p = self.param_vars(&mut g, false);
        let h = self.paged_hidden_device(&mut g, &p, &Tensor::from_u32(tokens, &[1, n])?, &rows, pool)?;
        // The last new row of each sequence (a gather on the device), then the head over them.
        let mut end = 0;
        let last: Vec<u32> = steps
            .iter()
            .map(|s| {
                end += s.tokens.len();
                (end - 1) as u32
            })
            .collect();
        let last = Tensor::from_u32(last, &[steps.len()])?;
        let h = g.constant(smelt_core::ops::embedding::embedding(h.tensor(), &last)?);
        g.name(&h, || "result_norm".into());
        let out = g.linear(&h, &p[self.idx.head], None)?;
        g.name(&out, || "result_output".into());
        Ok(out.tensor().clone())
    }

    /// On a GPU: embed → blocks over the pool → the final normalised hidden states (N, C) of a
    /// step's stacked rows, tokens (1, N) u32 on the host or the device, `rows` saying where
    /// each goes and which keys it reads. No host round trip: what a captured step runs.
    pub(crate) fn paged_hidden_device(
        &self,
        g: &mut Graph,
        p: &[smelt_core::Var],
        tokens: &Tensor,
        rows: &PagedRows,
        pool: &mut KvPool,
    ) -> Result<smelt_core::Var> {
        let KvPool { k, v, .. } = pool;
        // The device path reads the rows' layout from `rows`; `seqs` is the CPU's.
        let slots =
            k.iter_mut().zip(v.iter_mut()).map(|(k, v)| Kv::Paged(PagedSlot { k, v, seqs: &[], dev: Some(rows) }));
        self.hidden_with(g, p, tokens, false, slots, None)
    }
}
