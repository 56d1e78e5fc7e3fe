//! The transformer: embed → blocks (attention with KV cache, SwiGLU) → norm → logits.
//! One forward serves training (recording graph, full sequences) and inference (inference
//! graph, KV cache). Intermediates are named as llama.cpp names them (attn_norm, ffn_out, …).
//!
//! The residual add and the next RMSNorm are fused: every block ends with
//! `(x, h) = add_rmsnorm(x, out, next_norm)`, where `next_norm` is the following layer's
//! `input_layernorm` (or the final `model.norm`), so the stream is read once per add.

use crate::config::{Activation, ModelConfig, NormKind};
use crate::params::{self, Index, Role};
use anyhow::{bail, Context, Result};
use smelt_core::autograd::BlockFn;
use smelt_core::ops::rope::{RopeLayout, RopeTable};
use smelt_core::{Device, Graph, Tensor, Var};
use std::path::Path;
use std::sync::Arc;

pub struct Model {
    pub cfg: ModelConfig,
    pub params: Vec<Tensor>,
    pub names: Vec<String>,
    pub idx: Index,
    pub rope: Arc<RopeTable>,
}

/// Keys and values of past positions, per layer: (B, capacity, KVH, D), stored in the
/// device's activation dtype (bf16 on a GPU under mixed precision, f32 otherwise).
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    cap: usize,
    batch: usize,
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
        }
    }
    /// A cache on `device` (keys and values stay there; only new rows are written), in the
    /// dtype the device's activations have now (`Device::activation_dtype`).
    pub fn new_on(cfg: &ModelConfig, batch: usize, cap: usize, device: Device) -> Result<Self> {
        let shape = [batch, cap, cfg.n_kv_heads, cfg.head_dim];
        let dtype = device.activation_dtype();
        let mk = || (0..cfg.n_layers).map(|_| Tensor::zeros_typed(&shape, device, dtype)).collect::<Result<Vec<_>>>();
        Ok(KvCache { k: mk()?, v: mk()?, len: 0, cap, batch })
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
    /// Forget positions from `n` on (e.g. rejected speculative tokens).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.numel() * t.dtype().size_in_bytes()).sum()
    }
}

/// Logits computed at once by `Model::loss` (64 MiB of f32)...
const LOSS_CHUNK_ELEMS: usize = 1 << 24;
/// ...in slices of at most this many vocabulary ids (so rows per chunk stay ≥ 512 for any V).
const LOSS_VOCAB_CHUNK: usize = 1 << 15;

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    /// Only the last position of each sequence (generation).
    Last,
}

/// One layer's inputs to `block`: its tensors by role (every one but `AttnNorm`, which the
/// previous block applies, fused with its residual add), and the norm that ends it.
struct LayerVars<'a> {
    by_role: [Option<&'a Var>; Role::COUNT],
    next_norm: &'a Var,
}

impl<'a> LayerVars<'a> {
    /// `vars`: `next_norm`, then one tensor per entry of `roles`, as `Model::layer_inputs` lists them.
    fn new(roles: &[Role], vars: &'a [Var]) -> Self {
        let mut by_role = [None; Role::COUNT];
        for (r, v) in roles.iter().zip(&vars[1..]) {
            by_role[*r as usize] = Some(v);
        }
        LayerVars { by_role, next_norm: &vars[0] }
    }
    /// The layer's `role` tensor, if it has one.
    fn get(&self, role: Role) -> Option<&'a Var> {
        self.by_role[role as usize]
    }
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

/// KV cache slot for one layer during a cached forward.
pub(crate) struct CacheSlot<'a> {
    k: &'a mut Tensor,
    v: &'a mut Tensor,
    pos0: usize,
}

/// Writes new rows (B, T, KVH, D) into a cache tensor (B, cap, KVH, D) at position `pos0`.
fn cache_write(cache: &mut Tensor, new: &Tensor, pos0: usize) -> Result<()> {
    let s = cache.shape().to_vec();
    let (b, cap, row) = (s[0], s[1], s[2] * s[3]);
    let t = new.shape()[1];
    if !cache.device().is_cpu() {
        // Device copies, one per sequence (batch 1 for generation: one copy). The rows must
        // already have the cache's dtype (`write_at` says so if not).
        if b == 1 {
            return cache.write_at(pos0 * row, new);
        }
        let seqs = new.reshape(&[b, t * row])?;
        for bi in 0..b {
            cache.write_at((bi * cap + pos0) * row, &seqs.narrow_rows(bi, 1)?)?;
        }
        return Ok(());
    }
    let src = new.as_f32()?;
    let dst = cache.f32_mut()?;
    for bi in 0..b {
        dst[(bi * cap + pos0) * row..(bi * cap + pos0 + t) * row]
            .copy_from_slice(&src[bi * t * row..(bi + 1) * t * row]);
    }
    Ok(())
}

/// x (N, K) · wᵀ + bias. With `seqs` (the batched forward: rows of sequences of these
/// lengths, one after another), every row comes out as it does for its sequence alone: a
/// sequence's prompt rows in a call of their own (as `smelt generate`'s prefill), the decode
/// rows of all sequences together through `linear_rows_alone` (each as a one-row matvec).
fn linear(g: &mut Graph, x: &Var, w: &Var, bias: Option<&Var>, seqs: Option<&[usize]>) -> Result<Var> {
    use smelt_core::ops::matmul::{linear as lin, linear_rows_alone};
    let Some(seqs) = seqs else { return g.linear(x, w, bias) };
    let (xt, wt, bt) = (x.tensor(), w.tensor(), bias.map(|b| b.tensor()));
    if seqs.len() == 1 {
        return Ok(g.constant(if seqs[0] == 1 { linear_rows_alone(xt, wt, bt)? } else { lin(xt, wt, bt)? }));
    }
    if seqs.iter().all(|&t| t == 1) {
        return Ok(g.constant(linear_rows_alone(xt, wt, bt)?));
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
    Ok(g.constant(Tensor::from_f32(out, &[n, m])?))
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

/// One transformer block. x: residual stream (B·T, C); h: rmsnorm(x)·attn_norm.
/// Returns the new (x, h) with h normalised by `next_norm`.
#[allow(clippy::too_many_arguments)]
fn block(
    g: &mut Graph,
    c: &ModelConfig,
    rope: &Arc<RopeTable>,
    bt: (usize, usize),
    l: usize,
    x: &Var,
    h: &Var,
    w: &LayerVars,
    cache: Kv,
) -> Result<(Var, Var)> {
    let (b, t) = bt;
    let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
    // The batched forward's matmuls keep each sequence's rows as they are alone.
    let per_seq: Option<Vec<usize>> = match &cache {
        Kv::Paged(s) => Some(s.seqs.iter().map(|&(_, t, _)| t).collect()),
        _ => None,
    };
    let seqs = per_seq.as_deref();
    g.name(h, || format!("attn_norm-{l}"));
    let q = linear(g, h, &w[Role::Wq], w.get(Role::Bq), seqs)?;
    g.name(&q, || format!("Qcur-{l}"));
    let k = linear(g, h, &w[Role::Wk], w.get(Role::Bk), seqs)?;
    g.name(&k, || format!("Kcur-{l}"));
    let v = linear(g, h, &w[Role::Wv], w.get(Role::Bv), seqs)?;
    g.name(&v, || format!("Vcur-{l}"));
    let mut q = g.reshape(&q, &[b, t, nh, hd])?;
    let mut k = g.reshape(&k, &[b, t, nkv, hd])?;
    let v = g.reshape(&v, &[b, t, nkv, hd])?;
    if let (Some(qn), Some(kn)) = (w.get(Role::QNorm), w.get(Role::KNorm)) {
        q = norm(g, c, &q, qn)?;
        k = norm(g, c, &k, kn)?;
    }
    let (window, scale) = (c.window(l), c.attention_scale());
    let (q, k, cache) = match cache {
        Kv::Paged(slot) => {
            // Each sequence's rows at its own positions.
            let q = g.constant(slot.rope(q.tensor(), rope)?);
            let k = g.constant(slot.rope(k.tensor(), rope)?);
            (q, k, Kv::Paged(slot))
        }
        other => {
            let pos0 = match &other {
                Kv::Cache(s) => s.pos0,
                _ => 0,
            };
            (g.rope(&q, rope, pos0)?, g.rope(&k, rope, pos0)?, other)
        }
    };
    g.name(&q, || format!("Qcur_rope-{l}"));
    g.name(&k, || format!("Kcur_rope-{l}"));
    let attn = match cache {
        Kv::None if g.is_recording() => g.attention(&q, &k, &v, t, window, scale)?,
        // Inference without a cache (perplexity, trace, bench's forward) takes the cached
        // path's attention, with this window's K/V as the cache: one inference arithmetic,
        // llama.cpp's on the CPU, so quantised GGUF models score what llama.cpp scores.
        Kv::None => g.constant(smelt_core::ops::attention::attention_infer(
            q.tensor(),
            k.tensor(),
            v.tensor(),
            t,
            window,
            scale,
        )?),
        Kv::Cache(slot) => {
            if g.is_recording() {
                bail!("the KV cache is for inference only");
            }
            let pos0 = slot.pos0;
            cache_write(slot.k, k.tensor(), pos0)?;
            cache_write(slot.v, v.tensor(), pos0)?;
            let o = smelt_core::ops::attention::attention_infer(q.tensor(), slot.k, slot.v, pos0 + t, window, scale)?;
            g.constant(o)
        }
        Kv::Paged(mut slot) => {
            if g.is_recording() {
                bail!("the paged KV cache is for inference only");
            }
            let heads = smelt_core::ops::attention::Heads { h: nh, kvh: nkv, d: hd, window };
            g.constant(slot.attend(q.tensor(), k.tensor(), v.tensor(), heads, scale)?)
        }
    };
    let attn = g.reshape(&attn, &[b * t, nh * hd])?;
    g.name(&attn, || format!("kqv_out-{l}"));
    let attn_out = linear(g, &attn, &w[Role::Wo], None, seqs)?;
    g.name(&attn_out, || format!("attn_out-{l}"));
    let (x, h) = add_norm(g, c, x, &attn_out, &w[Role::FfnNorm])?;
    g.name(&x, || format!("ffn_inp-{l}"));
    g.name(&h, || format!("ffn_norm-{l}"));
    let gate = linear(g, &h, &w[Role::WGate], None, seqs)?;
    g.name(&gate, || format!("ffn_gate-{l}"));
    let up = linear(g, &h, &w[Role::WUp], None, seqs)?;
    g.name(&up, || format!("ffn_up-{l}"));
    let act = match c.act {
        Activation::Silu => g.swiglu(&gate, &up)?,
    };
    g.name(&act, || format!("ffn_swiglu-{l}"));
    let ffn_out = linear(g, &act, &w[Role::WDown], None, seqs)?;
    g.name(&ffn_out, || format!("ffn_out-{l}"));
    let (x, h) = add_norm(g, c, &x, &ffn_out, w.next_norm)?;
    g.name(&x, || format!("l_out-{l}"));
    Ok((x, h))
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
        Ok(Model { names: layout.into_iter().map(|(n, _)| n).collect(), params, idx, rope, cfg })
    }

    /// The same model with other parameters (same names and shapes), keeping everything else
    /// it was built with, the RoPE table included (a GGUF model keeps llama.cpp's Q/K order and
    /// angles: `Model::new` would give it the Hugging Face table).
    pub fn with_params(&self, params: Vec<Tensor>) -> Result<Self> {
        let mut m = Model::new(self.cfg.clone(), params)?;
        m.rope = self.rope.clone();
        Ok(m)
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

    /// Moves every parameter to `device` (f32 master weights stay f32).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for p in &mut self.params {
            *p = p.to_device(device)?;
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

    /// The parameters as graph leaves (ids 0..P in a fresh graph).
    pub fn param_vars(&self, g: &mut Graph, requires_grad: bool) -> Vec<Var> {
        self.params.iter().map(|p| g.leaf(p.clone(), requires_grad)).collect()
    }

    /// Block `l`'s inputs as `LayerVars::new` takes them: the roles of the layer's tensors but
    /// `AttnNorm` (applied before the block), and `next_norm` (the next layer's `AttnNorm`, or the
    /// output norm after the last layer) followed by those tensors.
    fn layer_inputs(&self, l: usize, p: &[Var]) -> (Vec<Role>, Vec<Var>) {
        let next_norm = match self.idx.layers.get(l + 1) {
            Some(next) => next[Role::AttnNorm],
            None => self.idx.norm,
        };
        let (roles, ids): (Vec<Role>, Vec<usize>) =
            self.idx.layers[l].present().filter(|(r, _)| *r != Role::AttnNorm).unzip();
        (roles, std::iter::once(next_norm).chain(ids).map(|i| p[i].clone()).collect())
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
        let h = self.hidden(g, p, tokens, cache, logits, checkpoint)?;
        let out = g.linear(&h, &p[self.idx.head], None)?;
        g.name(&out, || "result_output".into());
        Ok(out)
    }

    /// The final normalised hidden states (B·T, C), or (B, C) for `Logits::Last`: everything
    /// `forward` does before the head.
    fn hidden(
        &self,
        g: &mut Graph,
        p: &[Var],
        tokens: &Tensor,
        mut cache: Option<&mut KvCache>,
        logits: Logits,
        checkpoint: bool,
    ) -> Result<Var> {
        let (b, t) = match tokens.shape() {
            [b, t] => (*b, *t),
            s => bail!("forward: tokens must be (B, T), got {s:?}"),
        };
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
        let pos0 = cache.as_deref().map_or(0, |kv| kv.len);
        let ckpt = checkpoint && g.is_recording() && cache.is_none();
        let h = match cache.as_deref_mut() {
            Some(kv) => {
                let slots = kv.k.iter_mut().zip(kv.v.iter_mut()).map(|(k, v)| Kv::Cache(CacheSlot { k, v, pos0 }));
                self.hidden_with(g, p, tokens, ckpt, slots)?
            }
            None => self.hidden_with(g, p, tokens, ckpt, std::iter::repeat_with(|| Kv::None))?,
        };
        if let Some(kv) = cache {
            kv.len += t;
        }
        g.name(&h, || "result_norm".into());
        Ok(match logits {
            Logits::All => h,
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
        let (mut x, mut h) = (x, h0);
        for l in 0..c.n_layers {
            let (roles, inputs) = self.layer_inputs(l, p);
            let slot = kv.next().context("forward: a KV slot per layer")?;
            if checkpoint {
                let (cfg, rope) = (Arc::new(c.clone()), self.rope.clone());
                let f: BlockFn = Arc::new(move |g: &mut Graph, v: &[Var]| {
                    let w = LayerVars::new(&roles, &v[2..]);
                    let (x, h) = block(g, &cfg, &rope, (b, t), l, &v[0], &v[1], &w, Kv::None)?;
                    Ok(vec![x, h])
                });
                let mut all = vec![x.clone(), h.clone()];
                all.extend(inputs);
                let mut out = g.checkpoint(&all, f)?;
                h = out.pop().unwrap();
                x = out.pop().unwrap();
            } else {
                let w = LayerVars::new(&roles, &inputs);
                (x, h) = block(g, c, &self.rope, (b, t), l, &x, &h, &w, slot)?;
            }
        }
        Ok(h)
    }

    /// Mean next-token loss of (B, T) inputs against (B, T) targets.
    pub fn loss(&self, g: &mut Graph, p: &[Var], inputs: &Tensor, targets: &Tensor, checkpoint: bool) -> Result<Var> {
        self.loss_in_chunks(g, p, inputs, targets, checkpoint, LOSS_CHUNK_ELEMS, LOSS_VOCAB_CHUNK)
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
        let h = self.hidden(g, p, inputs, None, Logits::All, checkpoint)?;
        let vocab = vocab.clamp(1, self.cfg.vocab_size.max(1));
        g.linear_cross_entropy(&h, &p[self.idx.head], targets, (elems / vocab).max(1), vocab)
    }

    /// Inference: logits for `tokens` (B, T) continuing `cache`.
    pub fn logits(&self, tokens: &Tensor, cache: Option<&mut KvCache>, mode: Logits) -> Result<Tensor> {
        let mut g = Graph::inference();
        let p = self.param_vars(&mut g, false);
        Ok(self.forward(&mut g, &p, tokens, cache, mode, false)?.tensor().clone())
    }
}
