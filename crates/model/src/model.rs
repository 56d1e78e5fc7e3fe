//! The transformer: embed → blocks (attention with KV cache, SwiGLU) → norm → logits.
//! One forward serves training (recording graph, full sequences) and inference (inference
//! graph, KV cache). Intermediates are named as llama.cpp names them (attn_norm, ffn_out, …).
//!
//! The residual add and the next RMSNorm are fused: every block ends with
//! `(x, h) = add_rmsnorm(x, out, next_norm)`, where `next_norm` is the following layer's
//! `input_layernorm` (or the final `model.norm`), so the stream is read once per add.

use crate::config::{Activation, ModelConfig, NormKind};
use crate::lora::Adapter;
use crate::params::{self, Index, Role};
use anyhow::{bail, Context, Result};
use smelt_core::autograd::BlockFn;
use smelt_core::ops::attention::Segments;
use smelt_core::ops::matmul::prefetch_next;
use smelt_core::ops::rope::{RopeLayout, RopeTable};
use smelt_core::ops::Pos;
use smelt_core::profile::timed;
use smelt_core::{Device, Graph, Tensor, Var};
use std::path::Path;
use std::sync::Arc;

pub struct Model {
    pub cfg: ModelConfig,
    pub params: Vec<Tensor>,
    pub names: Vec<String>,
    pub idx: Index,
    pub rope: Arc<RopeTable>,
    /// A LoRA adapter on the projections (`attach`): applied by every forward, and, when
    /// present, the only thing training updates (the base frozen: `trainable`).
    pub adapter: Option<Adapter>,
}

/// Keys and values of past positions, per layer: (B, capacity, KVH, D), stored in the
/// device's activation dtype (bf16 on a GPU under mixed precision, f32 otherwise).
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    cap: usize,
    batch: usize,
    /// The position held on the cache's device too (u32 [1], = `len`), once
    /// `hold_position_on_device` asked for it: steps then read it there and move it on
    /// themselves, so a captured decode step replays at every position.
    dpos: Option<Tensor>,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, batch: usize, cap: usize) -> Self {
        let shape = [batch, cap, cfg.n_kv_heads, cfg.head_dim];
        KvCache {
            k: (0..cfg.n_layers).map(|_| Tensor::zeros(&shape)).collect(),
            v: (0..cfg.n_layers).map(|_| Tensor::zeros(&shape)).collect(),
            len: 0,
            cap,
            batch,
            dpos: None,
        }
    }
    /// A cache on `device` (keys and values stay there; only new rows are written), in the
    /// dtype the device's activations have now (`Device::activation_dtype`).
    pub fn new_on(cfg: &ModelConfig, batch: usize, cap: usize, device: Device) -> Result<Self> {
        let shape = [batch, cap, cfg.n_kv_heads, cfg.head_dim];
        let dtype = device.activation_dtype();
        let mk = || (0..cfg.n_layers).map(|_| Tensor::zeros_typed(&shape, device, dtype)).collect::<Result<Vec<_>>>();
        Ok(KvCache { k: mk()?, v: mk()?, len: 0, cap, batch, dpos: None })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Back to a host-only position (a step of several tokens needs one).
    pub fn release_device_position(&mut self) {
        self.dpos = None;
    }
    /// A replayed step moved the device's position on by `n`: the host's count follows.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// A captured step counted positions that it did not write: back to `len`.
    pub(crate) fn rewind_host_count(&mut self, len: usize) {
        self.len = len;
    }
    /// Forget positions from `n` on (e.g. rejected speculative tokens).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.len = self.len.min(n);
        if self.dpos.is_some() {
            self.hold_position_on_device()?;
        }
        Ok(())
    }
    /// From now on keep the position on the cache's device as well (see `dpos`): what a
    /// captured decode step needs. Calling it again re-uploads the host's count.
    pub fn hold_position_on_device(&mut self) -> Result<()> {
        let device = self.k.first().map_or(Device::Cpu, |t| t.device());
        self.dpos = Some(Tensor::from_u32(vec![self.len as u32], &[1])?.to_device(device)?);
        Ok(())
    }
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.numel() * t.dtype().size_in_bytes()).sum()
    }
}

/// Logits computed at once by `Model::loss` on the CPU (64 MiB of f32)...
const LOSS_CHUNK_ELEMS: usize = 1 << 24;
/// ...and on a GPU (128 MiB of bf16): 2,048 rows at V 32000, where 512-row chunks left the
/// head's products small (H200, 2026-12-04, one call: 124M 413k → 436k tok/s, 1B 67.3k → 69.8k,
/// 1 << 27 no better; +167 MiB peak at 124M, none at 1B; docs/PERF.md).
const LOSS_CHUNK_ELEMS_GPU: usize = 1 << 26;

/// Vocabulary slices of at most this many ids where one slice of the whole vocabulary would
/// leave fewer than 256 rows a chunk (`loss_vocab_chunk`).
const LOSS_VOCAB_CHUNK: usize = 1 << 15;

/// The chunk for the head's device, or `SMELT_LOSS_CHUNK_ELEMS` when set (to measure it).
fn loss_chunk_elems(device: Device) -> usize {
    static E: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let env =
        *E.get_or_init(|| std::env::var("SMELT_LOSS_CHUNK_ELEMS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0));
    env.unwrap_or(if matches!(device, Device::Cpu) { LOSS_CHUNK_ELEMS } else { LOSS_CHUNK_ELEMS_GPU })
}

/// (rows, vocabulary ids) of a loss chunk on `device` for a vocabulary of `vocab`: the whole
/// vocabulary in one slice while that leaves at least 256 rows a chunk (SmolLM2's 49,152 ids
/// on the CPU: 341 rows; Qwen's 151,936 on a GPU: 441), else slices of `LOSS_VOCAB_CHUNK`. One
/// slice lets a training step compute the head's gradients in its forward
/// (`Graph::expect_loss_gradient`): a row's logsumexp is final once its chunk is done.
fn loss_chunks(device: Device, vocab: usize) -> (usize, usize) {
    let (elems, vocab) = (loss_chunk_elems(device), vocab.max(1));
    let slice = if elems / vocab >= 256 { vocab } else { LOSS_VOCAB_CHUNK.min(vocab) };
    ((elems / slice).max(1), slice)
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    /// Only the last position of each sequence (generation).
    Last,
}

/// How a forward applies the adapter: its factor s, and the dropout of this forward (p 0 when
/// not training) with the seed its masks derive from.
#[derive(Clone, Copy, Debug)]
struct LoraRun {
    scaling: f32,
    dropout: f32,
    seed: u64,
}

/// Which tensors a layer's block gets (`Model::layer_inputs`): the roles of its base tensors
/// and of its adapted projections.
#[derive(Clone)]
struct LayerPlan {
    roles: Vec<Role>,
    lora: Vec<Role>,
    run: Option<LoraRun>,
}

/// One layer's inputs to `block`: its tensors by role (every one but `AttnNorm`, which the
/// previous block applies, fused with its residual add), the (A, B) of each adapted
/// projection, and the norm that ends it.
struct LayerVars<'a> {
    by_role: [Option<&'a Var>; Role::COUNT],
    lora: [Option<(&'a Var, &'a Var)>; Role::COUNT],
    run: Option<LoraRun>,
    next_norm: &'a Var,
    /// A decode row on a GPU: its matvecs prefetch the weights read after them into L2
    /// (`ops::matmul::prefetch_next`): o during q/k/v, part of gate/up during o, and during the
    /// down product `next_qkv`, the next layer's q/k/v weights (empty for the last layer).
    prefetch: bool,
    next_qkv: Vec<Tensor>,
}

impl<'a> LayerVars<'a> {
    /// `vars`: `next_norm`, one tensor per entry of `plan.roles`, then A and B per entry of
    /// `plan.lora`, as `Model::layer_inputs` lists them.
    fn new(plan: &LayerPlan, vars: &'a [Var]) -> Self {
        let mut by_role = [None; Role::COUNT];
        for (r, v) in plan.roles.iter().zip(&vars[1..]) {
            by_role[*r as usize] = Some(v);
        }
        let mut lora = [None; Role::COUNT];
        for (r, ab) in plan.lora.iter().zip(vars[1 + plan.roles.len()..].chunks_exact(2)) {
            lora[*r as usize] = Some((&ab[0], &ab[1]));
        }
        LayerVars { by_role, lora, run: plan.run, next_norm: &vars[0], prefetch: false, next_qkv: Vec::new() }
    }
    /// The layer's `role` tensor, if it has one.
    fn get(&self, role: Role) -> Option<&'a Var> {
        self.by_role[role as usize]
    }
    /// Whether the adapter has a pair on any of `roles` (fused inference paths skip `proj`).
    fn adapted(&self, roles: &[Role]) -> bool {
        self.run.is_some() && roles.iter().any(|r| self.lora[*r as usize].is_some())
    }
}

/// Layer `l`'s `role` projection of x, with its bias if any, plus the adapter's
/// s·B·(A·dropout(x)) where it adapts that projection (PEFT's `lora.Linear.forward`).
/// The adapter's side first, then the base product reading it (`linear_add`: on CUDA one
/// product, no pass for the sum).
fn proj(g: &mut Graph, l: usize, w: &LayerVars, role: Role, x: &Var, bias: Option<&Var>) -> Result<Var> {
    let (Some((a, b)), Some(run)) = (w.lora[role as usize], w.run) else {
        return g.linear(x, &w[role], bias);
    };
    // The one-product form (as `down_proj_lora`): x's gradient one product [dy | s·dy·B]·[W; A]
    // instead of a second, K = r product through x's sum; x is at hand for A's gradient.
    if bias.is_none() && lora_remade_applies(g, &w[role], a, x, run) {
        let xt = x.tensor().clone();
        return g.linear_lora_remade(x, &w[role], a, b, run.scaling, Box::new(move || Ok(xt)));
    }
    let down = lora_down(g, x, a, run, dropout_seed(run, l, role))?;
    let up = g.linear(&down, b, None)?; // (N, out)
    g.linear_add(x, &w[role], bias, &up)
}

/// The projections `roles` (weight, bias) of one input x — q, k and v; gate and up — each as
/// `proj` makes it. Where two or more of them carry an adapter and no dropout is drawn (with
/// dropout each would get its own mask, so its own input), their A matrices are stacked for one
/// product over x: one read of x in the forward and one for the A gradients, and one dx product
/// into x's gradient sum instead of one each. Each projection then takes its r columns of that
/// product through a 0/1 selection product (one 1.0 a row: the same values). `SMELT_LORA_FUSE=0`
/// keeps one A product each (to compare).
fn proj_group(g: &mut Graph, l: usize, w: &LayerVars, roles: &[(Role, Option<Role>)], x: &Var) -> Result<Vec<Var>> {
    let adapted: Vec<usize> = (0..roles.len()).filter(|&i| w.lora[roles[i].0 as usize].is_some()).collect();
    let a_parts: Vec<&Var> = adapted.iter().filter_map(|&i| w.lora[roles[i].0 as usize].map(|(a, _)| a)).collect();
    let rank = a_parts.first().map_or(0, |a| a.shape()[0]);
    let fuse = adapted.len() >= 2
        && a_parts.iter().all(|a| a.shape()[0] == rank)
        && w.run.is_some_and(|run| run.dropout == 0.0)
        && lora_fuse_on();
    let (Some(run), true) = (w.run, fuse) else {
        return roles.iter().map(|&(r, b)| proj(g, l, w, r, x, b.and_then(|b| w.get(b)))).collect();
    };
    let a_cat = g.concat_rows(&a_parts)?;
    let down_cat = lora_down(g, x, &a_cat, run, 0)?; // (N, n·r); no dropout, so no seed
    let mut out = Vec::with_capacity(roles.len());
    // Training on a GPU: each projection one product over [x | down_cat] (`Graph::linear_side`):
    // no (N, out) adapter output written and read back, no selection products, and in the
    // backward one product gives x's and down_cat's gradients.
    let frozen_dense = roles.iter().all(|&(r, b)| {
        let base = &w[r];
        !base.requires_grad()
            && base.tensor().dtype() != smelt_core::DType::Quant
            && b.and_then(|b| w.get(b)).is_none_or(|b| !b.requires_grad())
    });
    // x wanting a gradient (not the first layer's, from a frozen embedding: there the separate
    // products skip x's gradient, which [x | down_cat]'s would compute) and 16-byte rows.
    let aligned = (x.tensor().cols() + down_cat.tensor().cols()).is_multiple_of(8);
    if g.is_recording() && frozen_dense && x.requires_grad() && aligned && lora_side_on(x.tensor().device()) {
        let xe = g.concat_cols(&[x, &down_cat])?;
        let side = down_cat.tensor().clone();
        for (i, &(role, bias)) in roles.iter().enumerate() {
            let bias = bias.and_then(|b| w.get(b));
            out.push(match (adapted.iter().position(|&j| j == i), w.lora[role as usize]) {
                (Some(slot), Some((_, b))) => g.linear_side(&xe, &side, &w[role], b, slot * rank, bias)?,
                _ => g.linear(x, &w[role], bias)?,
            });
        }
        return Ok(out);
    }
    for (i, &(role, bias)) in roles.iter().enumerate() {
        let bias = bias.and_then(|b| w.get(b));
        let (Some(slot), Some((_, b))) = (adapted.iter().position(|&j| j == i), w.lora[role as usize]) else {
            out.push(g.linear(x, &w[role], bias)?);
            continue;
        };
        let sel = g.constant(lora_selection(x.tensor().device(), rank, adapted.len(), slot)?);
        let down = g.linear(&down_cat, &sel, None)?; // (N, r): this projection's columns
        let up = g.linear(&down, b, None)?;
        out.push(g.linear_add(x, &w[role], bias, &up)?);
    }
    Ok(out)
}

/// Whether one adapted projection of x by the frozen w takes `Graph::linear_lora_remade`: with the
/// one-product LoRA form on (`lora_side_on`), a training graph, no dropout (its mask would sit
/// between x and A), a dense frozen w, x (N, in), and [dy | s·dy·B] rows of 16 bytes.
fn lora_remade_applies(g: &Graph, w: &Var, a: &Var, x: &Var, run: LoraRun) -> bool {
    g.is_recording()
        && run.dropout == 0.0
        && !w.requires_grad()
        && w.tensor().dtype() != smelt_core::DType::Quant
        && x.tensor().shape().len() == 2
        && (w.tensor().rows() + a.shape()[0]).is_multiple_of(8)
        && lora_side_on(x.tensor().device())
}

/// Whether a LoRA group's projections take the one-product form (`Graph::linear_side`): on a GPU,
/// unless `SMELT_LORA_SIDE=0` (the separate products, to compare); on the CPU the separate
/// products (its GEMMs gain nothing from the wider K), unless a test asks (`force_lora_side`).
fn lora_side_on(device: Device) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(f) = FORCE_SIDE.with(|f| f.get()) {
        return f;
    }
    !device.is_cpu() && *ON.get_or_init(|| std::env::var("SMELT_LORA_SIDE").map_or(true, |v| v != "0"))
}

thread_local! {
    static FORCE_SIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Forces (`Some`) or releases (`None`) the one-product LoRA form on this thread: the tests
/// compare it with the separate products on the CPU.
#[doc(hidden)]
pub fn force_lora_side(on: Option<bool>) {
    FORCE_SIDE.with(|f| f.set(on));
}

fn lora_fuse_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_LORA_FUSE").map_or(true, |v| v != "0"))
}

/// The (r, n·r) matrix whose row i has its one 1.0 at column slot·r + i: `linear(y, it)` takes
/// columns slot·r .. slot·r + r of y. Made once per device and shape (a captured decode step
/// must not upload it).
fn lora_selection(device: Device, r: usize, n: usize, slot: usize) -> Result<Tensor> {
    type Key = (Device, usize, usize, usize);
    static MADE: std::sync::Mutex<Vec<(Key, Tensor)>> = std::sync::Mutex::new(Vec::new());
    let key = (device, r, n, slot);
    let mut made = MADE.lock().map_err(|_| anyhow::anyhow!("LoRA selection cache poisoned"))?;
    if let Some((_, t)) = made.iter().find(|(k, _)| *k == key) {
        return Ok(t.clone());
    }
    let mut v = vec![0f32; r * n * r];
    for i in 0..r {
        v[i * n * r + slot * r + i] = 1.0;
    }
    let t = Tensor::from_f32(v, &[r, n * r])?.to_device(device)?;
    made.push((key, t.clone()));
    Ok(t)
}

/// The seed of one projection's dropout mask in a forward: one mask per (forward, layer,
/// projection), as PEFT's one nn.Dropout per module.
fn dropout_seed(run: LoraRun, l: usize, role: Role) -> u64 {
    let mut s = run.seed ^ ((l as u64) << 8 | role as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    smelt_core::rng::splitmix64(&mut s)
}

/// The adapter's down side s·(A·dropout(x)), (N, r). s is applied on the r-wide side:
/// s·B·(A·x) = B·(s·A·x), without a pass over (N, out) in the forward and another in the backward.
fn lora_down(g: &mut Graph, x: &Var, a: &Var, run: LoraRun, seed: u64) -> Result<Var> {
    let xd = g.dropout(x, run.dropout, seed)?;
    let down = g.linear(&xd, a, None)?;
    g.scale(&down, run.scaling)
}

/// The FFN's down projection of act = swiglu(gate, up), with its adapter, on a training graph.
/// In the one-product LoRA form (below: `Graph::linear_lora_remade`) act's gradient is one product
/// and the adapter keeps its (N, r) down product. Otherwise:
/// the frozen product keeps no input, and the adapter's branch is a checkpoint over (act, A)
/// that keeps neither: act, the (N, ffn) widest activation of a layer, is remade from gate and
/// up in the backward for A's gradient (SwiGLU's own backward keeps those). Its forward is taken
/// from the act at hand, and its gradient for act joins the base product's in act's sum, so
/// SwiGLU's backward runs once on the total (`Graph::checkpoint_given`). The numbers of `proj`
/// up to the order of two sums (dact summed before SwiGLU's backward instead of after).
fn down_proj_lora(g: &mut Graph, l: usize, w: &LayerVars, gate: &Var, up: &Var, act: &Var) -> Result<Var> {
    let (Some((a, b)), Some(run)) = (w.lora[Role::WDown as usize], w.run) else {
        return g.linear(act, &w[Role::WDown], None);
    };
    let wd = &w[Role::WDown];
    // With the one-product LoRA form: `Graph::linear_lora_remade`, the same forward keeping only
    // the (N, r) down product, act remade from gate and up for A's gradient, and act's gradient
    // one product [dy | s·dy·B]·[W; A] (no K = r product reading and writing act's (N, ffn) sum
    // again, no re-run of A·act).
    if lora_remade_applies(g, wd, a, act, run) {
        let (gt, ut) = (gate.tensor().clone(), up.tensor().clone());
        let remake: smelt_core::autograd::Remake = Box::new(move || smelt_core::ops::swiglu::swiglu(&gt, &ut));
        return g.linear_lora_remade(act, wd, a, b, run.scaling, remake);
    }
    let seed = dropout_seed(run, l, Role::WDown);
    let branch: BlockFn = Arc::new(move |g: &mut Graph, v: &[Var]| Ok(vec![lora_down(g, &v[0], &v[1], run, seed)?]));
    // The branch's forward from the act at hand, untaped as `checkpoint` runs it.
    let fwd = {
        let mut sub = Graph::training();
        let (act_c, a_c) = (sub.constant(act.tensor().clone()), sub.constant(a.tensor().clone()));
        lora_down(&mut sub, &act_c, &a_c, run, seed)?.tensor().clone()
    };
    // act again in the backward, from gate and up: the kernel that made it, the same bits.
    let (gt, ut) = (gate.tensor().clone(), up.tensor().clone());
    let remake_act: smelt_core::autograd::Remake = Box::new(move || smelt_core::ops::swiglu::swiglu(&gt, &ut));
    let down =
        g.checkpoint_given(&[act.clone(), a.clone()], vec![fwd], vec![Some(remake_act), None], branch)?.remove(0);
    let up = g.linear(&down, b, None)?;
    g.linear_add(act, wd, None, &up)
}

impl<'a> std::ops::Index<Role> for LayerVars<'a> {
    type Output = Var;
    fn index(&self, role: Role) -> &Var {
        self.by_role[role as usize].unwrap_or_else(|| panic!("block: the layer has no {role:?} tensor"))
    }
}

/// Where one layer's attention finds past keys and values.
pub(crate) enum Kv<'a> {
    /// None: the tokens are the whole sequence.
    None,
    /// A contiguous cache (B, capacity, KVH, D).
    Cache(CacheSlot<'a>),
    /// The paged pool, several sequences at their own positions (`paged.rs`).
    Paged(crate::paged::PagedSlot<'a>),
}

/// KV cache slot for one layer during a cached forward: where its keys and values go, and
/// the position (on the host, or the cache's device copy of it).
pub(crate) struct CacheSlot<'a> {
    k: &'a mut Tensor,
    v: &'a mut Tensor,
    pos: Pos<'a>,
}

/// x (N, K) · wᵀ + bias. With `seqs` (the batched forward: rows of sequences of these
/// lengths, one after another), every row comes out as it does for its sequence alone: a
/// sequence's prompt rows in a call of their own (as `smelt generate`'s prefill), the decode
/// rows of all sequences together through `linear_rows_alone` (each as a one-row matvec) —
/// or all rows in one product where the weight's kernels keep rows apart by themselves.
fn linear(g: &mut Graph, x: &Var, w: &Var, bias: Option<&Var>, seqs: Option<&[usize]>) -> Result<Var> {
    let Some(seqs) = seqs else { return g.linear(x, w, bias) };
    let y = timed("paged_linear", || linear_seqs(x.tensor(), w.tensor(), bias.map(|b| b.tensor()), seqs))?;
    Ok(g.constant(y))
}

/// The batched forward's products of x by several weights in one call (`linear_many`: the
/// activations quantised once, one parallel job), where every weight keeps rows apart by
/// itself (`rows_independent`) and none of `biases` is present; None: one `linear` each.
fn linear_rows_many<const N: usize>(
    x: &Var,
    ws: [&Var; N],
    layer: &LayerVars,
    biases: &[Role],
) -> Result<Option<[Tensor; N]>> {
    use smelt_core::ops::matmul::{linear_many, rows_independent};
    if biases.iter().any(|&r| layer.get(r).is_some()) || !ws.iter().all(|w| rows_independent(w.tensor())) {
        return Ok(None);
    }
    let pairs: Vec<(&Tensor, Option<&Tensor>)> = ws.iter().map(|w| (w.tensor(), None)).collect();
    let ys = timed("paged_linear", || linear_many(x.tensor(), &pairs))?;
    Ok(ys.try_into().ok())
}

/// `linear`'s batched forward (see there).
fn linear_seqs(xt: &Tensor, wt: &Tensor, bt: Option<&Tensor>, seqs: &[usize]) -> Result<Tensor> {
    use smelt_core::ops::matmul::{linear as lin, linear_rows_alone, rows_independent};
    if rows_independent(wt) {
        // Every row comes out as it would alone whatever else is in the product: one product
        // for all sequences (each weight read from memory once a step, not once a sequence).
        return lin(xt, wt, bt);
    }
    if seqs.len() == 1 {
        return if seqs[0] == 1 { linear_rows_alone(xt, wt, bt) } else { lin(xt, wt, bt) };
    }
    if seqs.iter().all(|&t| t == 1) {
        return linear_rows_alone(xt, wt, bt);
    }
    let (n, k) = (xt.rows(), xt.cols());
    let xs = xt.as_f32()?;
    let mut parts = Vec::with_capacity(seqs.len());
    let mut decode = Vec::new();
    let mut at = 0;
    for &t in seqs {
        if t == 1 {
            decode.extend_from_slice(&xs[at * k..(at + 1) * k]);
        } else {
            parts.push(lin(&xt.narrow_rows(at, t)?, wt, bt)?);
        }
        at += t;
    }
    let decoded = if decode.is_empty() {
        None
    } else {
        let rows = decode.len() / k;
        Some(linear_rows_alone(&Tensor::from_f32(decode, &[rows, k])?, wt, bt)?)
    };
    let m = parts.first().or(decoded.as_ref()).map_or(0, |y| y.cols());
    let mut out = Vec::with_capacity(n * m);
    let (mut pi, mut di) = (0, 0);
    let dy = match &decoded {
        Some(d) => d.as_f32()?,
        None => &[],
    };
    for &t in seqs {
        if t == 1 {
            out.extend_from_slice(&dy[di * m..(di + 1) * m]);
            di += 1;
        } else {
            out.extend_from_slice(parts[pi].as_f32()?);
            pi += 1;
        }
    }
    Tensor::from_f32(out, &[n, m])
}

/// The config's norm of x with gain w.
fn norm(g: &mut Graph, c: &ModelConfig, x: &Var, w: &Var) -> Result<Var> {
    match c.norm {
        NormKind::Rms => g.rmsnorm(x, w, c.norm_eps),
    }
}

/// The residual add x + y and the config's norm of the sum with gain w: (x + y, norm(x + y)·w).
fn add_norm(g: &mut Graph, c: &ModelConfig, x: &Var, y: &Var, w: &Var) -> Result<(Var, Var)> {
    match c.norm {
        NormKind::Rms => g.add_rmsnorm(x, y, w, c.norm_eps),
    }
}

/// What a block hands the next besides the residual stream x: x normalised by the next block's
/// norm, or (a decode step's one row on a GPU) the block's output not yet added to x, with that
/// norm, so that the next block's q/k/v launch makes the add and the norm itself
/// (`qmatmul::add_rmsnorm_linear_many`: the same bits as `add_rmsnorm` then the products).
#[derive(Clone)]
pub(crate) enum Next {
    Normed(Var),
    Pending { out: Var, norm: Var },
}

impl Next {
    /// (x, h): the stream with any pending output added, and its normalised form (x the stream
    /// the pending output was not yet added to).
    fn normed(self, g: &mut Graph, c: &ModelConfig, x: &Var) -> Result<(Var, Var)> {
        match self {
            Next::Normed(h) => Ok((x.clone(), h)),
            Next::Pending { out, norm } => add_norm(g, c, x, &out, &norm),
        }
    }
}

/// One transformer block. x: residual stream (B·T, C); h: rmsnorm(x)·attn_norm, or the previous
/// block's output still to be added and normalised (`Next`). Returns the new x and what the next
/// block takes: h normalised by `next_norm`, or the output pending.
#[allow(clippy::too_many_arguments)]
fn block(
    g: &mut Graph,
    c: &ModelConfig,
    rope: &Arc<RopeTable>,
    bt: (usize, usize),
    l: usize,
    x: &Var,
    h: &Next,
    w: &LayerVars,
    cache: Kv,
    seg: Option<&Arc<Segments>>,
) -> Result<(Var, Next)> {
    let (b, t) = bt;
    let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
    // The batched forward's matmuls keep each sequence's rows as they are alone.
    // (On a GPU they run once over the stacked rows of every sequence.)
    let per_seq: Option<Vec<usize>> = match &cache {
        Kv::Paged(s) if s.dev.is_none() => Some(s.seqs.iter().map(|&(_, t, _)| t).collect()),
        _ => None,
    };
    let seqs = per_seq.as_deref();
    // A decode row on a GPU: o's weights into L2 while q/k/v and the attention run (the q/k/v
    // launch, fused below or not, takes the hint; it is dropped once they are made).
    let pf_o = w.prefetch.then(|| prefetch_next(&[w[Role::Wo].tensor()], usize::MAX));
    // The previous block's add and this block's norm: inside the q/k/v launch where it can be
    // (one row of a decode step on a GPU), else here.
    let mut fused_qkv = None;
    let (x, h) = match h {
        Next::Normed(h) => (x.clone(), Some(h.clone())),
        Next::Pending { out, norm } => {
            let fused = if seqs.is_none()
                && g.may_fuse()
                && matches!(c.norm, NormKind::Rms)
                && !w.adapted(&[Role::Wq, Role::Wk, Role::Wv])
            {
                let bias = |r: Role| w.get(r).map(|b| b.tensor());
                let ws = [
                    (w[Role::Wq].tensor(), bias(Role::Bq)),
                    (w[Role::Wk].tensor(), bias(Role::Bk)),
                    (w[Role::Wv].tensor(), bias(Role::Bv)),
                ];
                timed("add_rmsnorm_linear_many", || {
                    smelt_core::ops::matmul::add_rmsnorm_linear_many(
                        x.tensor(),
                        out.tensor(),
                        norm.tensor(),
                        c.norm_eps,
                        &ws,
                    )
                })?
            } else {
                None
            };
            match fused {
                Some((xn, ys)) => {
                    fused_qkv = Some(ys);
                    (g.constant(xn), None)
                }
                None => {
                    let (xn, hn) = add_norm(g, c, x, out, norm)?;
                    (xn, Some(hn))
                }
            }
        }
    };
    if let Some(h) = &h {
        g.name(h, || format!("attn_norm-{l}"));
    }
    let (q, k, v) = if let Some(ys) = fused_qkv {
        let mut ys = ys.into_iter().map(|t| g.constant(t));
        match (ys.next(), ys.next(), ys.next()) {
            (Some(q), Some(k), Some(v)) => (q, k, v),
            _ => bail!("add_rmsnorm_linear_many returned fewer than three products"),
        }
    } else if let Some(seqs) = seqs {
        let h = h.as_ref().context("block: no normalised input")?;
        // The batched forward (the server): each sequence's rows as they are alone; where the
        // three weights keep rows apart by themselves, one call for the three products.
        if let Some([q, k, v]) =
            linear_rows_many(h, [&w[Role::Wq], &w[Role::Wk], &w[Role::Wv]], w, &[Role::Bq, Role::Bk, Role::Bv])?
        {
            (g.constant(q), g.constant(k), g.constant(v))
        } else {
            let q = linear(g, h, &w[Role::Wq], w.get(Role::Bq), Some(seqs))?;
            let k = linear(g, h, &w[Role::Wk], w.get(Role::Bk), Some(seqs))?;
            let v = linear(g, h, &w[Role::Wv], w.get(Role::Bv), Some(seqs))?;
            (q, k, v)
        }
    } else if g.may_fuse() && !w.adapted(&[Role::Wq, Role::Wk, Role::Wv]) {
        let h = h.as_ref().context("block: no normalised input")?;
        // One launch for the three products on a GPU at decode sizes (`linear_many`).
        let bias = |r: Role| w.get(r).map(|b| b.tensor());
        let ws = [
            (w[Role::Wq].tensor(), bias(Role::Bq)),
            (w[Role::Wk].tensor(), bias(Role::Bk)),
            (w[Role::Wv].tensor(), bias(Role::Bv)),
        ];
        let mut qkv = timed("linear_many", || smelt_core::ops::matmul::linear_many(h.tensor(), &ws))?
            .into_iter()
            .map(|t| g.constant(t));
        match (qkv.next(), qkv.next(), qkv.next()) {
            (Some(q), Some(k), Some(v)) => (q, k, v),
            _ => bail!("linear_many returned fewer than three products"),
        }
    } else {
        let h = h.as_ref().context("block: no normalised input")?;
        let roles = [(Role::Wq, Some(Role::Bq)), (Role::Wk, Some(Role::Bk)), (Role::Wv, Some(Role::Bv))];
        let mut qkv = proj_group(g, l, w, &roles, h)?.into_iter();
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            bail!("block: q, k and v projections missing");
        };
        g.name(&q, || format!("Qcur-{l}"));
        g.name(&k, || format!("Kcur-{l}"));
        g.name(&v, || format!("Vcur-{l}"));
        (q, k, v)
    };
    if let Some(p) = pf_o {
        p.end();
    }
    let mut q = g.reshape(&q, &[b, t, nh, hd])?;
    let mut k = g.reshape(&k, &[b, t, nkv, hd])?;
    let v = g.reshape(&v, &[b, t, nkv, hd])?;
    if let (Some(qn), Some(kn)) = (w.get(Role::QNorm), w.get(Role::KNorm)) {
        q = norm(g, c, &q, qn)?;
        k = norm(g, c, &k, kn)?;
    }
    let (window, scale) = (c.window(l), c.attention_scale());
    let attn = match cache {
        // Packed rows: positions restart at each example, attention stays inside it.
        Kv::None if seg.is_some() => {
            if !g.is_recording() {
                bail!("packed rows are for the training graph only");
            }
            let seg = seg.expect("checked");
            let q = g.rope_packed(&q, rope, seg)?;
            g.name(&q, || format!("Qcur_rope-{l}"));
            let k = g.rope_packed(&k, rope, seg)?;
            g.name(&k, || format!("Kcur_rope-{l}"));
            g.attention_packed(&q, &k, &v, window, scale, seg)?
        }
        Kv::Cache(slot) => {
            if g.is_recording() {
                bail!("the KV cache is for inference only");
            }
            use smelt_core::ops::attention::{attention_decode, attention_infer, kv_write, rope_attention_decode};
            use smelt_core::ops::rope::{rope_at, rope_into_cache};
            if g.may_fuse() && t == 1 && matches!(slot.pos, Pos::Device { .. }) {
                // A decode step's row: rotation, cache write and attention in one launch on a
                // GPU (the same numbers as the three below).
                let o = rope_attention_decode(
                    q.tensor(),
                    k.tensor(),
                    v.tensor(),
                    rope,
                    slot.k,
                    slot.v,
                    slot.pos,
                    window,
                    scale,
                )?;
                g.constant(o)
            } else {
                let q = if g.may_fuse() {
                    // q rotated, k rotated into the key cache, v into the value cache: one launch
                    // on a GPU.
                    rope_into_cache(q.tensor(), k.tensor(), v.tensor(), rope, slot.k, slot.v, slot.pos)?
                } else {
                    let q = g.constant(rope_at(q.tensor(), rope, slot.pos)?);
                    g.name(&q, || format!("Qcur_rope-{l}"));
                    let k = g.constant(rope_at(k.tensor(), rope, slot.pos)?);
                    g.name(&k, || format!("Kcur_rope-{l}"));
                    kv_write(slot.k, k.tensor(), slot.pos)?;
                    kv_write(slot.v, v.tensor(), slot.pos)?;
                    q.tensor().clone()
                };
                let o = match slot.pos {
                    Pos::Device { .. } => attention_decode(&q, slot.k, slot.v, slot.pos, window, scale)?,
                    Pos::Host(p) => attention_infer(&q, slot.k, slot.v, p + t, window, scale)?,
                };
                g.constant(o)
            }
        }
        Kv::Paged(mut slot) => {
            if g.is_recording() {
                bail!("the paged KV cache is for inference only");
            }
            let heads = smelt_core::ops::attention::Heads { h: nh, kvh: nkv, d: hd, window };
            if slot.dev.is_some() {
                // On a GPU: rotation, the pool write and attention through the block tables,
                // two launches.
                g.constant(slot.attend_device(q.tensor(), k.tensor(), v.tensor(), rope, heads, scale)?)
            } else {
                // Each sequence's rows at its own positions.
                let q = g.constant(timed("paged_rope", || slot.rope(q.tensor(), rope))?);
                g.name(&q, || format!("Qcur_rope-{l}"));
                let k = g.constant(timed("paged_rope", || slot.rope(k.tensor(), rope))?);
                g.name(&k, || format!("Kcur_rope-{l}"));
                g.constant(timed("paged_attend", || slot.attend(q.tensor(), k.tensor(), v.tensor(), heads, scale))?)
            }
        }
        Kv::None => {
            let q = g.rope(&q, rope, 0)?;
            g.name(&q, || format!("Qcur_rope-{l}"));
            let k = g.rope(&k, rope, 0)?;
            g.name(&k, || format!("Kcur_rope-{l}"));
            if g.is_recording() {
                g.attention(&q, &k, &v, t, window, scale)?
            } else {
                // Inference without a cache (perplexity, trace, bench's forward) takes the cached
                // path's attention, with this window's K/V as the cache: one inference arithmetic,
                // llama.cpp's on the CPU, so quantised GGUF models score what llama.cpp scores.
                g.constant(smelt_core::ops::attention::attention_infer(
                    q.tensor(),
                    k.tensor(),
                    v.tensor(),
                    t,
                    window,
                    scale,
                )?)
            }
        }
    };
    let attn = g.reshape(&attn, &[b * t, nh * hd])?;
    g.name(&attn, || format!("kqv_out-{l}"));
    let attn_out = match seqs {
        Some(seqs) => linear(g, &attn, &w[Role::Wo], None, Some(seqs))?,
        None => {
            // A decode row: the first 12 MiB of gate's and up's weights into L2 while o runs,
            // the DRAM otherwise idle.
            let gate_up: Vec<&Tensor> =
                [Role::WGate, Role::WUp].iter().filter_map(|&r| w.get(r)).map(|v| v.tensor()).collect();
            let _pf = w.prefetch.then(|| prefetch_next(&gate_up, smelt_core::ops::matmul::GATE_UP_PREFETCH_BYTES));
            proj(g, l, w, Role::Wo, &attn, None)?
        }
    };
    g.name(&attn_out, || format!("attn_out-{l}"));
    // A decode step's one row on a GPU: the residual add and the norm inside the gate/up launch
    // (`add_rmsnorm_swiglu`: the same bits as the two ops).
    let fused = match seqs {
        None if g.may_fuse()
            && matches!(c.act, Activation::Silu)
            && matches!(c.norm, NormKind::Rms)
            && !w.adapted(&[Role::WGate, Role::WUp]) =>
        {
            timed("add_rmsnorm_swiglu", || {
                smelt_core::ops::matmul::add_rmsnorm_swiglu(
                    x.tensor(),
                    attn_out.tensor(),
                    w[Role::FfnNorm].tensor(),
                    c.norm_eps,
                    w[Role::WGate].tensor(),
                    w[Role::WUp].tensor(),
                )
            })?
        }
        _ => None,
    };
    // (gate, up) of the training path: the adapter of the down projection recomputes its input
    // from them (`down_proj_lora`).
    let mut gate_up = None;
    let (x, act) = if let Some((xn, a)) = fused {
        (g.constant(xn), g.constant(a))
    } else {
        let (x, h) = add_norm(g, c, &x, &attn_out, &w[Role::FfnNorm])?;
        g.name(&x, || format!("ffn_inp-{l}"));
        g.name(&h, || format!("ffn_norm-{l}"));
        let act = match c.act {
            // The batched forward (the server): each sequence's rows as they are alone.
            Activation::Silu if seqs.is_some() => {
                let (gate, up) = match linear_rows_many(&h, [&w[Role::WGate], &w[Role::WUp]], w, &[])? {
                    Some([gate, up]) => (g.constant(gate), g.constant(up)),
                    None => (linear(g, &h, &w[Role::WGate], None, seqs)?, linear(g, &h, &w[Role::WUp], None, seqs)?),
                };
                g.name(&gate, || format!("ffn_gate-{l}"));
                g.name(&up, || format!("ffn_up-{l}"));
                g.swiglu(&gate, &up)?
            }
            // One launch for both products and the gate on a GPU at decode sizes.
            Activation::Silu if g.may_fuse() && !w.adapted(&[Role::WGate, Role::WUp]) => g
                .constant(timed("linear_swiglu", || {
                    smelt_core::ops::matmul::linear_swiglu(h.tensor(), w[Role::WGate].tensor(), w[Role::WUp].tensor())
                })?),
            Activation::Silu => {
                let mut gu = proj_group(g, l, w, &[(Role::WGate, None), (Role::WUp, None)], &h)?.into_iter();
                let (Some(gate), Some(up)) = (gu.next(), gu.next()) else {
                    bail!("block: gate and up projections missing");
                };
                g.name(&gate, || format!("ffn_gate-{l}"));
                g.name(&up, || format!("ffn_up-{l}"));
                gate_up = Some((gate.clone(), up.clone()));
                g.swiglu(&gate, &up)?
            }
        };
        (x, act)
    };
    g.name(&act, || format!("ffn_swiglu-{l}"));
    let ffn_out = match (seqs, &gate_up) {
        (Some(seqs), _) => linear(g, &act, &w[Role::WDown], None, Some(seqs))?,
        (None, Some((gate, up))) if g.is_recording() && w.adapted(&[Role::WDown]) => {
            down_proj_lora(g, l, w, gate, up, &act)?
        }
        (None, _) => {
            // The next layer's q/k/v into L2 while this down product streams its weights.
            let _pf = w.prefetch.then(|| prefetch_next(&w.next_qkv.iter().collect::<Vec<_>>(), usize::MAX));
            proj(g, l, w, Role::WDown, &act, None)?
        }
    };
    g.name(&ffn_out, || format!("ffn_out-{l}"));
    // A decode step's one row on a GPU: the add and the next norm left to the next block's q/k/v
    // launch (or to `Next::normed` after the last block).
    if seqs.is_none() && g.may_fuse() && b * t == 1 && matches!(c.norm, NormKind::Rms) && !x.tensor().device().is_cpu()
    {
        return Ok((x, Next::Pending { out: ffn_out, norm: w.next_norm.clone() }));
    }
    let (x, h) = add_norm(g, c, &x, &ffn_out, w.next_norm)?;
    g.name(&x, || format!("l_out-{l}"));
    Ok((x, Next::Normed(h)))
}

impl Model {
    pub fn new(cfg: ModelConfig, params: Vec<Tensor>) -> Result<Self> {
        cfg.validate()?;
        let layout = params::layout(&cfg);
        if layout.len() != params.len() {
            bail!("model has {} parameter tensors, config needs {}", params.len(), layout.len());
        }
        for ((name, shape), p) in layout.iter().zip(&params) {
            if p.shape() != shape.as_slice() {
                bail!("parameter {name}: shape {:?}, config needs {shape:?}", p.shape());
            }
        }
        let rope = Arc::new(cfg.rope_table(RopeLayout::HalfSplit));
        let idx = params::index(&cfg);
        Ok(Model { names: layout.into_iter().map(|(n, _)| n).collect(), params, idx, rope, cfg, adapter: None })
    }

    /// The same model with other parameters (same names and shapes), keeping everything else
    /// it was built with, the RoPE table included (a GGUF model keeps llama.cpp's Q/K order and
    /// angles: `Model::new` would give it the Hugging Face table).
    pub fn with_params(&self, params: Vec<Tensor>) -> Result<Self> {
        let mut m = Model::new(self.cfg.clone(), params)?;
        m.rope = self.rope.clone();
        m.adapter = self.adapter.clone();
        Ok(m)
    }

    /// Puts a LoRA adapter on the model (replacing any): checked against the base's shapes,
    /// moved to the base's device, and on a base loaded from GGUF its q/k rows put in that
    /// base's order. From then on every forward applies it and training updates only it.
    pub fn attach(&mut self, mut adapter: Adapter) -> Result<()> {
        adapter.check(&self.cfg)?;
        if self.rope.layout == RopeLayout::Interleaved {
            adapter.interleave(self.cfg.head_dim)?;
        }
        let device = self.device();
        for p in &mut adapter.params {
            *p = p.to_device(device)?;
        }
        self.adapter = Some(adapter);
        Ok(())
    }

    /// Loads the PEFT adapter folder `dir` (`lora::Adapter::load`) and attaches it.
    pub fn attach_dir(&mut self, dir: &Path) -> Result<()> {
        let a = Adapter::load(dir, &self.cfg)?;
        self.attach(a).with_context(|| format!("attaching {}", dir.display()))
    }

    /// The model with its adapter folded into the weights (W + s·B·A), and no adapter: an
    /// ordinary checkpoint (PEFT's `merge_and_unload`). Without an adapter, a copy.
    pub fn merged(&self) -> Result<Self> {
        let Some(a) = &self.adapter else {
            return self.with_params(self.params.clone());
        };
        let mut m = self.with_params(a.merged(&self.params, &self.idx)?)?;
        m.adapter = None;
        Ok(m)
    }

    /// The tensors training updates: the adapter's when one is attached (the base frozen:
    /// no gradient, no optimizer state), else every parameter.
    pub fn trainable(&self) -> &[Tensor] {
        match &self.adapter {
            Some(a) => &a.params,
            None => &self.params,
        }
    }

    pub fn trainable_mut(&mut self) -> &mut Vec<Tensor> {
        match &mut self.adapter {
            Some(a) => &mut a.params,
            None => &mut self.params,
        }
    }

    /// The names of `trainable` (PEFT's for an adapter).
    pub fn trainable_names(&self) -> Vec<String> {
        match &self.adapter {
            Some(a) => a.names(),
            None => self.names.clone(),
        }
    }

    /// Whether weight decay applies to each of `trainable` (to every LoRA factor, as
    /// transformers' Trainer decays every non-bias, non-norm parameter).
    pub fn trainable_decays(&self) -> Vec<bool> {
        match &self.adapter {
            Some(a) => vec![true; a.params.len()],
            None => params::decays(&self.cfg),
        }
    }

    /// Whether each of `trainable` is a hidden weight matrix (a layer's 2-D projection, or a
    /// LoRA factor): what Muon updates. The embedding, the head, norm gains and biases are not.
    pub fn trainable_matrices(&self) -> Vec<bool> {
        match &self.adapter {
            Some(a) => vec![true; a.params.len()],
            None => params::list(&self.cfg).iter().map(|p| p.layer.is_some() && p.shape.len() == 2).collect(),
        }
    }

    /// The graph variables of `trainable` among `param_vars`' output.
    pub fn trainable_vars<'a>(&self, p: &'a [Var]) -> &'a [Var] {
        match &self.adapter {
            Some(_) => &p[self.params.len()..],
            None => &p[..self.params.len()],
        }
    }

    /// The same model with every quantised matrix dequantised to plain f32 (on the host).
    pub fn dequantized(&self) -> Result<Self> {
        let params = self
            .params
            .iter()
            .map(|p| {
                if p.dtype() == smelt_core::DType::Quant {
                    Tensor::from_f32(p.to_vec_f32()?, p.shape())
                } else {
                    Ok(p.clone())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.with_params(params)
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.params.first().map_or(Device::Cpu, |p| p.device())
    }

    /// Moves every parameter to `device`. Master weights stay f32, but for a frozen base: with
    /// an adapter attached, on a device whose activations are bf16 (a GPU under mixed
    /// precision), the base's layer matrices are kept as bf16 only (rounded on the host, as
    /// the bf16 copy every matmul reads would be: the same products, half the bytes, and no f32
    /// copy of weights that are never updated). Moved back to the host they are f32 again (with
    /// bf16's precision). The embedding, norms and biases stay f32 (the residual stream starts
    /// in f32 from the embedding).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        use smelt_core::DType;
        let bf16_base = self.adapter.is_some() && device.activation_dtype() == DType::BF16;
        for (p, def) in self.params.iter_mut().zip(params::list(&self.cfg)) {
            let matrix = def.layer.is_some() && def.shape.len() == 2;
            *p = match p.dtype() {
                DType::F32 if bf16_base && matrix => p.to_dtype(DType::BF16)?.to_device(device)?,
                DType::BF16 if device.is_cpu() => p.to_device(device)?.to_dtype(DType::F32)?,
                _ => p.to_device(device)?,
            };
        }
        if let Some(a) = &mut self.adapter {
            for p in &mut a.params {
                *p = p.to_device(device)?;
            }
        }
        Ok(())
    }

    /// Fresh random weights.
    pub fn init(cfg: ModelConfig, seed: u64) -> Result<Self> {
        let p = params::init(&cfg, seed);
        Self::new(cfg, p)
    }

    /// Loads a Hugging Face-layout folder (config.json + safetensors).
    pub fn load(dir: &Path) -> Result<Self> {
        if dir.is_file() {
            // Formats are told apart by name (`.gguf`); say so rather than "Not a directory".
            let gguf = smelt_files::starts_with(dir, b"GGUF");
            bail!(
                "{}: a file, not a model folder (config.json + model.safetensors){}",
                dir.display(),
                if gguf { "; it is a GGUF file: give it a name ending in .gguf" } else { " or a .gguf file" }
            );
        }
        if !dir.exists() {
            bail!("{}: no such model folder or file", dir.display());
        }
        let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let mut w = crate::io::read_model_weights(dir)?;
        cfg.check_claims(
            w.keys().map(String::as_str),
            "model.layers.",
            &dir.join("config.json").display().to_string(),
        )?;
        let mut params = Vec::new();
        for (name, shape) in params::layout(&cfg) {
            let t = w.remove(&name).with_context(|| format!("{}: tensor {name} is missing", dir.display()))?;
            if t.shape() != shape.as_slice() {
                bail!("{}: tensor {name} has shape {:?}, config.json implies {shape:?}", dir.display(), t.shape());
            }
            params.push(t.to_dtype(smelt_core::DType::F32)?);
        }
        // Tied checkpoints sometimes also store the head; rotary tables are derived, not weights.
        w.retain(|n, _| (n != "lm_head.weight" || !cfg.tie_embeddings) && !n.ends_with("rotary_emb.inv_freq"));
        if let Some(extra) = w.keys().min() {
            bail!(
                "{}: unexpected tensor {extra} (and {} more): not part of a {} model as configured",
                dir.display(),
                w.len() - 1,
                cfg.arch.hf_name()
            );
        }
        Self::new(cfg, params)
    }

    /// Writes config.json and model.safetensors (f32) into an existing folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_as(dir, smelt_core::DType::F32)
    }

    /// Writes config.json and model.safetensors with weights stored as `dtype` (F32, BF16, F16).
    pub fn save_as(&self, dir: &Path, dtype: smelt_core::DType) -> Result<()> {
        if self.cfg.sliding_layers.is_some() {
            bail!(
                "{}: per-layer sliding windows cannot be written to config.json yet (transformers' layer_types is not parity-tested here)",
                dir.display()
            );
        }
        let mut hf = self.cfg.to_hf_json();
        hf["torch_dtype"] = serde_json::json!(match dtype {
            smelt_core::DType::BF16 => "bfloat16",
            smelt_core::DType::F16 => "float16",
            _ => "float32",
        });
        let cfg = serde_json::to_string_pretty(&hf)?;
        std::fs::write(dir.join("config.json"), cfg)
            .with_context(|| format!("writing {}/config.json", dir.display()))?;
        let mut named: Vec<(String, Tensor)> = self.names.iter().cloned().zip(self.params.iter().cloned()).collect();
        if self.rope.layout == RopeLayout::Interleaved {
            // Loaded from GGUF: Hugging Face's q/k rows are half-split (the inverse of
            // convert_hf_to_gguf.py's permute).
            let hd = self.cfg.head_dim;
            for ((_, t), p) in named.iter_mut().zip(params::list(&self.cfg)) {
                if matches!(p.def.role, Role::Wq | Role::Wk) {
                    let cols = t.cols();
                    let src = t.to_vec_f32()?;
                    let mut dst = vec![0f32; src.len()];
                    for r in 0..t.rows() {
                        let (h, e) = (r / hd, r % hd);
                        let hf = h * hd + (e % 2) * (hd / 2) + e / 2; // GGUF row 2i+s is HF row s·D/2+i
                        dst[hf * cols..(hf + 1) * cols].copy_from_slice(&src[r * cols..(r + 1) * cols]);
                    }
                    *t = Tensor::from_f32(dst, t.shape())?;
                }
            }
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        crate::io::write_safetensors(&dir.join("model.safetensors"), &named, dtype, Some(meta))
    }

    /// The parameters as graph leaves (ids 0..P in a fresh graph), then the adapter's tensors
    /// if one is attached; `requires_grad` asks for the gradients of `trainable` (with an
    /// adapter the base's leaves never need one).
    pub fn param_vars(&self, g: &mut Graph, requires_grad: bool) -> Vec<Var> {
        let base = requires_grad && self.adapter.is_none();
        let mut v: Vec<Var> = self.params.iter().map(|p| g.leaf(p.clone(), base)).collect();
        if let Some(a) = &self.adapter {
            v.extend(a.params.iter().map(|p| g.leaf(p.clone(), requires_grad)));
        }
        v
    }

    /// Block `l`'s inputs as `LayerVars::new` takes them: the roles of the layer's tensors but
    /// `AttnNorm` (applied before the block) and of its adapted projections, and `next_norm`
    /// (the next layer's `AttnNorm`, or the output norm after the last layer) followed by those
    /// tensors, then each adapted projection's A and B.
    fn layer_inputs(&self, l: usize, p: &[Var], run: Option<LoraRun>) -> (LayerPlan, Vec<Var>) {
        let next_norm = match self.idx.layers.get(l + 1) {
            Some(next) => next[Role::AttnNorm],
            None => self.idx.norm,
        };
        let (roles, mut ids): (Vec<Role>, Vec<usize>) =
            self.idx.layers[l].present().filter(|(r, _)| *r != Role::AttnNorm).unzip();
        let mut lora = Vec::new();
        if let Some(a) = &self.adapter {
            for role in crate::lora::targetable().map(|d| d.role) {
                if let Some((ai, bi)) = a.slot(l, role) {
                    lora.push(role);
                    ids.extend([self.params.len() + ai, self.params.len() + bi]);
                }
            }
        }
        let vars = std::iter::once(next_norm).chain(ids).map(|i| p[i].clone()).collect();
        (LayerPlan { roles, lora, run }, vars)
    }

    /// How this forward applies the adapter (`None` without one): dropout only when its
    /// tensors want gradients (a training step, not validation or inference), with a fresh
    /// seed from the adapter (`Adapter::begin_step`).
    fn lora_run(&self, p: &[Var]) -> Result<Option<LoraRun>> {
        let Some(a) = &self.adapter else {
            return Ok(None);
        };
        if p.len() != self.params.len() + a.params.len() {
            bail!(
                "forward: {} inputs; the model has {} parameters and {} adapter tensors (use param_vars)",
                p.len(),
                self.params.len(),
                a.params.len()
            );
        }
        let training = a.cfg.dropout > 0.0 && p[self.params.len()..].iter().any(|v| v.requires_grad());
        Ok(Some(LoraRun {
            scaling: a.scaling(),
            dropout: if training { a.cfg.dropout as f32 } else { 0.0 },
            seed: if training { a.dropout_seed() } else { 0 },
        }))
    }

    /// tokens: (B, T) u32 → logits (B·T, V), or (B, V) for `Logits::Last`.
    /// With `cache`, the tokens continue the cached sequence(s) and are appended to it.
    /// `checkpoint` recomputes each block's activations in the backward pass.
    pub fn forward(
        &self,
        g: &mut Graph,
        p: &[Var],
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        logits: Logits,
        checkpoint: bool,
    ) -> Result<Var> {
        let h = self.hidden(g, p, tokens, cache, logits, checkpoint, None)?;
        let out = g.linear(&h, &p[self.idx.head], None)?;
        g.name(&out, || "result_output".into());
        Ok(out)
    }

    /// The final normalised hidden states (B·T, C), or (B, C) for `Logits::Last`: everything
    /// `forward` does before the head. `seg`: the tokens are packed examples (see `Segments`).
    #[allow(clippy::too_many_arguments)]
    fn hidden(
        &self,
        g: &mut Graph,
        p: &[Var],
        tokens: &Tensor,
        mut cache: Option<&mut KvCache>,
        logits: Logits,
        checkpoint: bool,
        seg: Option<&Arc<Segments>>,
    ) -> Result<Var> {
        let (b, t) = match tokens.shape() {
            [b, t] => (*b, *t),
            s => bail!("forward: tokens must be (B, T), got {s:?}"),
        };
        if let Some(sg) = seg {
            if (sg.b, sg.t) != (b, t) || cache.is_some() {
                bail!(
                    "forward: packed segments of {}×{} for tokens {b}×{t}{}",
                    sg.b,
                    sg.t,
                    if cache.is_some() { " with a KV cache" } else { "" }
                );
            }
        }
        if let Some(kv) = cache.as_deref() {
            if kv.batch != b || kv.len + t > kv.cap {
                bail!(
                    "KV cache holds {} of {} positions for batch {}; cannot add {t} for batch {b}",
                    kv.len,
                    kv.cap,
                    kv.batch
                );
            }
        }
        if cache.as_deref().is_some_and(|kv| kv.dpos.is_some()) && t != 1 {
            bail!("a KV cache whose position is held on the device takes one token per sequence per step, got {t}");
        }
        let ckpt = checkpoint && g.is_recording() && cache.is_none();
        let h = match cache.as_deref_mut() {
            Some(kv) => {
                let (cap, len) = (kv.cap, kv.len);
                let KvCache { k, v, dpos, .. } = kv;
                let dpos = dpos.as_ref();
                let slots = k.iter_mut().zip(v.iter_mut()).map(move |(k, v)| {
                    let pos = match dpos {
                        Some(at) => Pos::Device { at, cap },
                        None => Pos::Host(len),
                    };
                    Kv::Cache(CacheSlot { k, v, pos })
                });
                self.hidden_with(g, p, tokens, ckpt, slots, seg)?
            }
            None => self.hidden_with(g, p, tokens, ckpt, std::iter::repeat_with(|| Kv::None), seg)?,
        };
        if let Some(kv) = cache {
            kv.len += t;
            if let Some(at) = kv.dpos.as_mut() {
                smelt_core::ops::attention::pos_add(at, t)?;
            }
        }
        g.name(&h, || "result_norm".into());
        Ok(match logits {
            // One token per sequence: every row is a last one (and a captured decode step
            // must not upload the gather's indices).
            Logits::All => h,
            Logits::Last if t == 1 => h,
            Logits::Last => {
                // Gather row (bi+1)·t − 1 of each sequence: an embedding lookup into h (B·T, C),
                // which runs wherever h lives.
                let last = Tensor::from_u32((0..b).map(|bi| ((bi + 1) * t - 1) as u32).collect(), &[b])?;
                g.constant(smelt_core::ops::embedding::embedding(h.tensor(), &last)?)
            }
        })
    }

    /// embed → blocks, layer l's attention over `kv`'s l-th slot → the final normalised
    /// hidden states (B·T, C). `checkpoint` (training, no cache) recomputes each block's
    /// activations in the backward pass.
    pub(crate) fn hidden_with<'s>(
        &self,
        g: &mut Graph,
        p: &[Var],
        tokens: &Tensor,
        checkpoint: bool,
        mut kv: impl Iterator<Item = Kv<'s>>,
        seg: Option<&Arc<Segments>>,
    ) -> Result<Var> {
        let c = &self.cfg;
        let (b, t) = match tokens.shape() {
            [b, t] => (*b, *t),
            s => bail!("forward: tokens must be (B, T), got {s:?}"),
        };
        let flat = tokens.reshape(&[b * t])?;
        let x = g.embedding(&p[self.idx.embed], &flat)?;
        g.name(&x, || "inp_embd".into());
        let h0 = norm(g, c, &x, &p[self.idx.layers[0][Role::AttnNorm]])?;
        let run = self.lora_run(p)?;
        // A decode row on a GPU: every layer in one persistent launch where it applies
        // (`SMELT_CUDA_PERSIST=1`; the numbers of the layers' own launches below).
        let mut slots: Vec<Kv<'s>> = Vec::new();
        if b * t == 1
            && !checkpoint
            && seg.is_none()
            && run.is_none()
            && g.may_fuse()
            && smelt_core::ops::decode_layers::enabled()
            && !x.tensor().device().is_cpu()
            && matches!(c.norm, NormKind::Rms)
            && matches!(c.act, Activation::Silu)
        {
            slots = kv.by_ref().take(c.n_layers).collect();
            if let Some((xl, rl)) = timed("decode_layers", || self.decode_layers(p, &x, &h0, &mut slots))? {
                let (xl, rl) = (g.constant(xl), g.constant(rl));
                return Ok(add_norm(g, c, &xl, &rl, &p[self.idx.norm])?.1);
            }
        }
        let mut kv = slots.into_iter().chain(kv);
        // One decode row on a GPU, launched through the fused matvecs: L2 prefetch hints.
        let decode_row = b * t == 1 && !checkpoint && g.may_fuse() && !x.tensor().device().is_cpu();
        let (mut x, mut h) = (x, Next::Normed(h0));
        for l in 0..c.n_layers {
            let (plan, inputs) = self.layer_inputs(l, p, run);
            let slot = kv.next().context("forward: a KV slot per layer")?;
            if checkpoint {
                let (cfg, rope, seg) = (Arc::new(c.clone()), self.rope.clone(), seg.cloned());
                let f: BlockFn = Arc::new(move |g: &mut Graph, v: &[Var]| {
                    let w = LayerVars::new(&plan, &v[2..]);
                    let h = Next::Normed(v[1].clone());
                    let (x, h) = block(g, &cfg, &rope, (b, t), l, &v[0], &h, &w, Kv::None, seg.as_ref())?;
                    let (x, h) = h.normed(g, &cfg, &x)?;
                    Ok(vec![x, h])
                });
                let (x0, h0) = h.normed(g, c, &x)?;
                let mut all = vec![x0, h0];
                all.extend(inputs);
                let mut out = g.checkpoint(&all, f)?;
                h = Next::Normed(out.pop().unwrap());
                x = out.pop().unwrap();
            } else {
                let mut w = LayerVars::new(&plan, &inputs);
                // Not with an adapter: its A product launches before each base product and
                // would take the hint meant for the base's (large) matvec.
                w.prefetch = decode_row && run.is_none();
                if w.prefetch && l + 1 < c.n_layers {
                    let next = &self.idx.layers[l + 1];
                    w.next_qkv = [Role::Wq, Role::Wk, Role::Wv]
                        .iter()
                        .filter_map(|&r| next.get(r).map(|i| p[i].tensor().clone()))
                        .collect();
                }
                (x, h) = block(g, c, &self.rope, (b, t), l, &x, &h, &w, slot, seg)?;
            }
        }
        Ok(h.normed(g, c, &x)?.1)
    }

    /// Every layer of one decode row in one launch (`ops::decode_layers`): (the stream, the last
    /// down product) for the final add + norm, or None (nothing run) where it does not apply:
    /// a slot that is not a cache with its position on the device, q/k norms, a missing tensor.
    fn decode_layers(&self, p: &[Var], x: &Var, h0: &Var, slots: &mut [Kv]) -> Result<Option<(Tensor, Tensor)>> {
        use smelt_core::ops::decode_layers::{decode_layers, Dims, Layer};
        let c = &self.cfg;
        if slots.len() != c.n_layers {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(slots.len());
        let mut pos = None;
        for (l, slot) in slots.iter_mut().enumerate() {
            let Kv::Cache(s) = slot else { return Ok(None) };
            if !matches!(s.pos, Pos::Device { .. }) {
                return Ok(None);
            }
            pos = Some(s.pos);
            let ix = &self.idx.layers[l];
            if ix.get(Role::QNorm).is_some() || ix.get(Role::KNorm).is_some() {
                return Ok(None);
            }
            let t = |r: Role| ix.get(r).map(|i| p[i].tensor());
            let (Some(wq), Some(wk), Some(wv), Some(o), Some(gate), Some(up), Some(down), Some(an), Some(fnw)) = (
                t(Role::Wq),
                t(Role::Wk),
                t(Role::Wv),
                t(Role::Wo),
                t(Role::WGate),
                t(Role::WUp),
                t(Role::WDown),
                t(Role::AttnNorm),
                t(Role::FfnNorm),
            ) else {
                return Ok(None);
            };
            layers.push(Layer {
                qkv: [(wq, t(Role::Bq)), (wk, t(Role::Bk)), (wv, t(Role::Bv))],
                o,
                gate,
                up,
                down,
                attn_norm: an,
                ffn_norm: fnw,
                k_cache: &mut *s.k,
                v_cache: &mut *s.v,
                window: c.window(l),
            });
        }
        let Some(pos) = pos else { return Ok(None) };
        let dims = Dims {
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            eps: c.norm_eps,
            scale: c.attention_scale(),
        };
        decode_layers(x.tensor(), h0.tensor(), &mut layers, &self.rope, pos, dims)
    }

    /// Mean next-token loss of (B, T) inputs against (B, T) targets.
    pub fn loss(&self, g: &mut Graph, p: &[Var], inputs: &Tensor, targets: &Tensor, checkpoint: bool) -> Result<Var> {
        let (rows, vocab) = loss_chunks(p[self.idx.head].tensor().device(), self.cfg.vocab_size);
        self.loss_in_chunks(g, p, inputs, targets, checkpoint, rows * vocab, vocab)
    }

    /// `loss` over rows of packed examples when `seg` is given (SFT `--packing`): each example
    /// sees only itself, at positions from 0. Targets `IGNORE` are left out of the mean.
    pub fn loss_packed(
        &self,
        g: &mut Graph,
        p: &[Var],
        inputs: &Tensor,
        targets: &Tensor,
        seg: Option<&Arc<Segments>>,
        checkpoint: bool,
    ) -> Result<Var> {
        let h = self.hidden(g, p, inputs, None, Logits::All, checkpoint, seg)?;
        let head = self.loss_head(g, p)?;
        let (rows, vocab) = loss_chunks(head.tensor().device(), self.cfg.vocab_size);
        g.linear_cross_entropy(&h, &head, targets, rows, vocab)
    }

    /// All logits (B·T, V) of (B, T) `inputs`, over packed examples when `seg` is given: what
    /// distillation compares (the student's on a training graph, the teacher's on one whose
    /// parameters need no gradient).
    pub fn logits_packed(
        &self,
        g: &mut Graph,
        p: &[Var],
        inputs: &Tensor,
        seg: Option<&Arc<Segments>>,
        checkpoint: bool,
    ) -> Result<Var> {
        let h = self.hidden(g, p, inputs, None, Logits::All, checkpoint, seg)?;
        let out = g.linear(&h, &p[self.idx.head], None)?;
        g.name(&out, || "result_output".into());
        Ok(out)
    }

    /// Each row's mean next-token loss over its own targets (`IGNORE` left out): (B, T) inputs
    /// and targets → B one-element variables. One forward for the batch, then the head and the
    /// loss per row (`Graph::split_rows`), so the backward can weigh each row on its own: DPO's
    /// summed completion log-probability of a row is −(its target count) · its loss.
    pub fn row_losses(
        &self,
        g: &mut Graph,
        p: &[Var],
        inputs: &Tensor,
        targets: &Tensor,
        checkpoint: bool,
    ) -> Result<Vec<Var>> {
        let (b, t) = match inputs.shape() {
            [b, t] => (*b, *t),
            s => bail!("row_losses: inputs must be (B, T), got {s:?}"),
        };
        if targets.shape() != [b, t] {
            bail!("row_losses: targets {:?} for inputs {:?}", targets.shape(), inputs.shape());
        }
        let h = self.hidden(g, p, inputs, None, Logits::All, checkpoint, None)?;
        let rows = g.split_rows(&h, &vec![t; b])?;
        let vocab = LOSS_VOCAB_CHUNK.clamp(1, self.cfg.vocab_size.max(1));
        let head = self.loss_head(g, p)?;
        let chunk_rows = (loss_chunk_elems(head.tensor().device()) / vocab).max(1);
        rows.iter()
            .enumerate()
            .map(|(r, h)| {
                let y = targets.narrow_rows(r, 1)?;
                g.linear_cross_entropy(h, &head, &y, chunk_rows, vocab)
            })
            .collect()
    }

    /// `loss` with the head and the loss computed `elems` logits at a time, in slices of
    /// `vocab` vocabulary ids, so the full (B·T, V) f32 logits never exist (they dominate memory
    /// at large vocabularies). Tests force small chunks through it.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_in_chunks(
        &self,
        g: &mut Graph,
        p: &[Var],
        inputs: &Tensor,
        targets: &Tensor,
        checkpoint: bool,
        elems: usize,
        vocab: usize,
    ) -> Result<Var> {
        let h = self.hidden(g, p, inputs, None, Logits::All, checkpoint, None)?;
        let vocab = vocab.clamp(1, self.cfg.vocab_size.max(1));
        let head = self.loss_head(g, p)?;
        g.linear_cross_entropy(&h, &head, targets, (elems / vocab).max(1), vocab)
    }

    /// The head the chunked loss multiplies by: the parameter, or for a frozen quantised head
    /// (QLoRA on a GGUF base) a dequantised copy for this forward only (the loss slices rows
    /// of plain matrices).
    fn loss_head(&self, g: &mut Graph, p: &[Var]) -> Result<Var> {
        let head = &p[self.idx.head];
        if head.tensor().dtype() == smelt_core::DType::Quant && !head.requires_grad() {
            // Dequantised on its device, in the matmuls' operand type (bf16 on a GPU under
            // mixed precision).
            let t = head.tensor();
            return Ok(g.constant(smelt_core::ops::qmatmul::dequantize(t, t.device().activation_dtype())?));
        }
        Ok(head.clone())
    }

    /// Inference: logits for `tokens` (B, T) continuing `cache`.
    pub fn logits(&self, tokens: &Tensor, cache: Option<&mut KvCache>, mode: Logits) -> Result<Tensor> {
        let mut g = Graph::inference();
        let p = self.param_vars(&mut g, false);
        Ok(self.forward(&mut g, &p, tokens, cache, mode, false)?.tensor().clone())
    }
}
