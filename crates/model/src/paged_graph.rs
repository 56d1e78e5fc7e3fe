//! The server's batched decode step on a GPU, captured once per batch size as a CUDA graph and
//! replayed (docs/SERVE.md "On CUDA").
//!
//! A step in which every sequence brings one new token runs the same ~10 launches per layer
//! whatever the batch, so a small model spends it launching kernels from the host. As vLLM does,
//! `PagedDecoder` pads such a step to a bucket of sequences (1, 2, 4, 8, … up to `--parallel`),
//! keeps per bucket persistent device buffers for what changes from step to step (the token ids,
//! positions, pool rows and block tables, these at a fixed stride of `max_blocks` per sequence,
//! enough for a whole context), uploads them in one copy into a staging buffer, and replays the
//! bucket's graph, which starts by copying the staging buffer into those buffers (device to
//! device, inside the graph) and ends by writing the logits into the bucket's output buffer.
//!
//! Each bucket's first step runs launched (it loads every kernel, sizes the rotary table and
//! makes any bf16 weight copies, none of which a capture may do), then its graph is captured;
//! later steps of that bucket replay it. The launched and the replayed step run the same kernels
//! with the same arguments, so they give the same logits bit for bit (the GPU suite checks it).
//! Each bucket has a graph per key class (`key_classes`: 256 keys, ×4, … a whole context): a
//! step takes the smallest class holding its longest row, so a short conversation's attention
//! runs one split and no combine kernel instead of a whole context's splits. A row's numbers do
//! not depend on the class (a split with no keys adds exact zeros in the combine). Padded rows (token 0 at position 0) write
//! and read only the pool's scratch block (`KvPool::scratch_block`); their logits rows are
//! garbage for the caller to ignore. `SMELT_CUDA_GRAPH=0` (the single-sequence decoder's switch,
//! `decode::capture_enabled`) turns capture off; `with_capture(.., false)` runs the same padded
//! step launched every time (what the replayed one is compared against).
//!
//! A captured graph holds the addresses of the model's weights, the pool and the rotary table:
//! the decoder is tied to one model and one pool (checked), and the model's weights must not be
//! replaced while it lives.

use crate::decode::capture_enabled;
use crate::model::Model;
use crate::paged::{KvPool, SeqStep};
use anyhow::{bail, Context, Result};
use smelt_core::ops::attention::PagedRows;
use smelt_core::replay::Replay;
use smelt_core::{DType, Graph, Tensor};

/// One bucket's persistent buffers (all u32 on the device) and, once captured, its graph.
struct Bucket {
    /// Sequences (rows) in the step, real and padded.
    size: usize,
    /// [tokens (size) | positions (size) | pool rows (size) | tables (size · max_blocks)]:
    /// the step's one upload.
    staging: Tensor,
    /// (1, size): the forward's token ids.
    tok: Tensor,
    /// Where the rows go; `toff` is fixed (row r's table at r · max_blocks).
    rows: PagedRows,
    /// The captured step and the logits (size, V) it writes.
    graph: Option<(Replay, Tensor)>,
}

/// Captured batched decode steps over one model and one pool (see the module docs).
pub struct PagedDecoder<'m> {
    model: &'m Model,
    capture: bool,
    /// Batch sizes a step is padded to, ascending; the last is `parallel`.
    buckets: Vec<usize>,
    /// Key counts a step's attention splits for (`key_classes`), ascending; the last a whole context's.
    classes: Vec<usize>,
    /// [bucket][class].
    slots: Vec<Vec<Option<Bucket>>>,
    /// Whether a step has run launched for a whole context (which sizes the rotary table once
    /// for every graph captured after it).
    table_sized: bool,
    /// Block-table entries per sequence in the buffers (a whole context's).
    max_blocks: usize,
    block_size: usize,
    scratch: u32,
    pool_id: u64,
    pool_blocks: usize,
    replayed: u64,
}

/// The batch sizes steps are padded to: powers of two below `parallel`, then `parallel`.
pub fn buckets(parallel: usize) -> Vec<usize> {
    let parallel = parallel.max(1);
    let mut out: Vec<usize> =
        std::iter::successors(Some(1usize), |b| Some(b * 2)).take_while(|&b| b < parallel).collect();
    out.push(parallel);
    out
}

impl<'m> PagedDecoder<'m> {
    /// Captured steps for `model` over `pool` (a GPU pool) for batches of up to `parallel`
    /// sequences; None on the CPU or when `SMELT_CUDA_GRAPH=0`.
    pub fn new(model: &'m Model, pool: &KvPool, parallel: usize) -> Result<Option<Self>> {
        if model.device().is_cpu() || !capture_enabled() {
            return Ok(None);
        }
        Self::with_capture(model, pool, parallel, true).map(Some)
    }

    /// `capture`: replay captured graphs, or launch the same padded step every time.
    pub fn with_capture(model: &'m Model, pool: &KvPool, parallel: usize, capture: bool) -> Result<Self> {
        if model.device().is_cpu() {
            bail!("PagedDecoder: replayed decode steps are for a GPU; the CPU runs Model::logits_paged");
        }
        let scratch =
            pool.scratch_block().context("PagedDecoder: the KV pool has no scratch block (it is not on a GPU)")?;
        let bs = pool.block_size();
        // A sequence holds at most the model's context, and never more than the pool.
        let max_blocks = model.cfg.max_pos.min(pool.blocks() * bs).div_ceil(bs).max(1);
        let buckets = buckets(parallel);
        let classes = key_classes(max_blocks * bs);
        Ok(PagedDecoder {
            model,
            capture,
            slots: buckets.iter().map(|_| classes.iter().map(|_| None).collect()).collect(),
            buckets,
            classes,
            table_sized: false,
            max_blocks,
            block_size: bs,
            scratch,
            pool_id: pool.id(),
            pool_blocks: pool.blocks(),
            replayed: 0,
        })
    }

    /// The batch sizes steps are padded to.
    pub fn buckets(&self) -> &[usize] {
        &self.buckets
    }

    /// The buckets whose step has been captured (for any key class).
    pub fn captured(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> =
            self.slots.iter().flatten().flatten().filter(|b| b.graph.is_some()).map(|b| b.size).collect();
        sizes.dedup();
        sizes
    }

    /// The key counts the captured steps split their attention for.
    pub fn key_classes(&self) -> &[usize] {
        &self.classes
    }

    /// Steps replayed from a captured graph so far.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Whether `steps` is a step this decoder takes: one new token per sequence, no more
    /// sequences than the largest bucket.
    pub fn takes(&self, steps: &[SeqStep]) -> bool {
        !steps.is_empty()
            && steps.len() <= *self.buckets.last().expect("at least one bucket")
            && steps.iter().all(|s| s.tokens.len() == 1)
    }

    /// One decode step (each sequence's one new token at its position, its K/V through its
    /// table) → the logits of the padded batch, (bucket, V): row i is `steps[i]`'s, rows from
    /// `steps.len()` on are padding. The tensor is a buffer the bucket's next step overwrites:
    /// read it before calling `step` again.
    pub fn step(&mut self, steps: &[SeqStep], pool: &mut KvPool) -> Result<Tensor> {
        if pool.id() != self.pool_id {
            bail!("PagedDecoder: a step over another KV pool than the one it was made for");
        }
        if !self.takes(steps) {
            bail!(
                "PagedDecoder: a decode step takes one token for each of 1..={} sequences, got {:?} tokens",
                self.buckets.last().expect("at least one bucket"),
                steps.iter().map(|s| s.tokens.len()).collect::<Vec<_>>()
            );
        }
        let n = steps.len();
        let at = self.buckets.iter().position(|&b| b >= n).expect("takes() checked the size");
        let size = self.buckets[at];
        let keys = steps.iter().map(|s| s.pos0 + 1).max().unwrap_or(1);
        let ci = self.classes.iter().position(|&c| c >= keys).unwrap_or(self.classes.len() - 1);
        let host = self.host_inputs(steps, size)?;
        let device = self.model.device();
        let model = self.model;
        if self.slots[at][ci].is_none() {
            self.slots[at][ci] = Some(self.bucket(size, self.classes[ci])?);
        }
        let b = self.slots[at][ci].as_mut().expect("made above");
        b.staging.write_at(0, &host)?;
        if let Some((replay, out)) = &b.graph {
            replay.launch()?;
            self.replayed += 1;
            return Ok(out.clone());
        }
        // The decoder's first step runs for a whole context, which sizes the rotary table for
        // it: a table grown later would move under the graphs captured before.
        let class_keys = b.rows.max_keys;
        if !self.table_sized {
            b.rows.max_keys = self.max_blocks * self.block_size;
        }
        // What this launched step allocates bounds what the captured one will (the same bucket,
        // and a class no wider): the capture's arena, so its graph has no memory nodes.
        let (logits, arena) = Replay::measure(device, || run(model, b, pool));
        b.rows.max_keys = class_keys;
        let logits = logits?;
        self.table_sized = true;
        if self.capture {
            let mut out = Tensor::zeros_typed(logits.shape(), device, logits.dtype())?;
            let captured = Replay::capture(device, arena, || {
                let l = run(model, b, pool)?;
                out.write_at(0, &l)
            });
            match captured {
                Ok(Some(replay)) => b.graph = Some((replay, out)),
                Ok(None) => {}
                Err(e) => {
                    // Serve on, launched: slower, the same logits.
                    eprintln!(
                        "smelt: capturing the batched decode step of {size} failed, launching it from now on: {e:#}"
                    );
                    self.capture = false;
                }
            }
        }
        Ok(logits)
    }

    /// The step's upload: [tokens | positions | pool rows | tables], padded rows at position 0
    /// of the scratch block (checked: positions within the context and the tables, blocks
    /// within the pool).
    fn host_inputs(&self, steps: &[SeqStep], size: usize) -> Result<Tensor> {
        let (bs, mb) = (self.block_size, self.max_blocks);
        let mut v = vec![0u32; size * (3 + mb)];
        let (tok, rest) = v.split_at_mut(size);
        let (pos, rest) = rest.split_at_mut(size);
        let (dst, tables) = rest.split_at_mut(size);
        tables.fill(self.scratch);
        dst.fill(self.scratch * bs as u32);
        for (r, s) in steps.iter().enumerate() {
            let p = s.pos0;
            let need = p / bs + 1;
            if p + 1 > self.model.cfg.max_pos || need > mb {
                bail!(
                    "PagedDecoder: sequence {r} at position {p} is past the context of {} (or {mb} blocks of {bs})",
                    self.model.cfg.max_pos
                );
            }
            if need > s.table.len() {
                bail!("KV pool: {} positions need {need} blocks, sequence {r}'s table has {}", p + 1, s.table.len());
            }
            let table = &s.table[..need];
            if let Some(b) = table.iter().find(|&&b| b as usize >= self.pool_blocks) {
                bail!("KV pool: block {b} of sequence {r} is outside the pool of {} blocks", self.pool_blocks);
            }
            tok[r] = s.tokens[0];
            pos[r] = p as u32;
            dst[r] = table[p / bs] * bs as u32 + (p % bs) as u32;
            tables[r * mb..r * mb + need].copy_from_slice(table);
        }
        let len = v.len();
        Tensor::from_u32(v, &[len])
    }

    /// A bucket's buffers on the device, its attention split for `keys` keys.
    fn bucket(&self, size: usize, keys: usize) -> Result<Bucket> {
        let device = self.model.device();
        let mb = self.max_blocks;
        let zeros = |n: usize| Tensor::zeros_typed(&[n], device, DType::U32);
        let toff = Tensor::from_u32((0..size).map(|r| (r * mb) as u32).collect(), &[size])?.to_device(device)?;
        let rows = PagedRows {
            pos: zeros(size)?,
            dst: zeros(size)?,
            toff,
            tables: zeros(size * mb)?,
            block_size: self.block_size,
            // The step's attention splits every row's keys as for `keys` (its class).
            max_keys: keys,
        };
        Ok(Bucket {
            size,
            staging: zeros(size * (3 + mb))?,
            tok: Tensor::zeros_typed(&[1, size], device, DType::U32)?,
            rows,
            graph: None,
        })
    }
}

/// The key counts a captured step's attention is split for: 256 (one split of the decode
/// attention's 256-key chunks, no combine kernel), then ×4 up to `whole` (a whole context).
/// A step takes the smallest class that holds its longest row. A row's numbers do not depend
/// on the class: the splits past its keys are empty, and an empty split adds exact zeros in the
/// combine, whose sum over one non-empty split equals the one-split kernel's own normalisation
/// (the GPU suite's replayed-equals-launched test runs rows on both sides of 256 keys).
fn key_classes(whole: usize) -> Vec<usize> {
    const FIRST: usize = 256;
    let whole = whole.max(1);
    let mut out: Vec<usize> = std::iter::successors(Some(FIRST), |c| Some(c * 4)).take_while(|&c| c < whole).collect();
    out.push(whole);
    out
}

/// The step's body, launched or captured: the staging buffer into the step's inputs (device
/// copies), then the forward over the pool and the head → (size, V).
fn run(model: &Model, b: &mut Bucket, pool: &mut KvPool) -> Result<Tensor> {
    let s = b.size;
    b.tok.write_range(0, &b.staging, 0, s)?;
    b.rows.pos.write_range(0, &b.staging, s, s)?;
    b.rows.dst.write_range(0, &b.staging, 2 * s, s)?;
    let nt = b.rows.tables.numel();
    b.rows.tables.write_range(0, &b.staging, 3 * s, nt)?;
    let mut g = Graph::inference();
    let p = model.param_vars(&mut g, false);
    let h = model.paged_hidden_device(&mut g, &p, &b.tok, &b.rows, pool)?;
    g.name(&h, || "result_norm".into());
    let out = g.linear(&h, &p[model.idx.head], None)?;
    g.name(&out, || "result_output".into());
    Ok(out.tensor().clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_are_powers_of_two_up_to_parallel() {
        assert_eq!(super::buckets(1), vec![1]);
        assert_eq!(super::buckets(8), vec![1, 2, 4, 8]);
        assert_eq!(super::buckets(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(super::buckets(64), vec![1, 2, 4, 8, 16, 32, 64]);
    }

    #[test]
    fn key_classes_grow_by_four_up_to_the_context() {
        assert_eq!(super::key_classes(64), vec![64]);
        assert_eq!(super::key_classes(256), vec![256]);
        assert_eq!(super::key_classes(1024), vec![256, 1024]);
        assert_eq!(super::key_classes(8192), vec![256, 1024, 4096, 8192]);
    }
}
