//! Tape-based reverse-mode autograd.
//!
//! A `Graph` runs ops eagerly. When it records (training), each op whose inputs need gradients
//! pushes a node holding what its backward needs; `backward` walks the tape in reverse, feeding
//! each node the gradients of its outputs and accumulating the gradients of its inputs. An
//! inference graph records nothing and pays nothing: the same model code runs under both.
//!
//! `checkpoint` runs a sub-computation without keeping its activations and re-runs it during
//! the backward pass (gradient checkpointing).

use crate::ops::{self, rope::RopeTable};
use crate::profile::timed;
use crate::Tensor;
use anyhow::{bail, Result};
use std::sync::Arc;

/// A tensor flowing through a graph, with the id its gradient is filed under.
#[derive(Clone, Debug)]
pub struct Var {
    id: usize,
    requires_grad: bool,
    t: Tensor,
}

impl Var {
    pub fn tensor(&self) -> &Tensor {
        &self.t
    }
    pub fn shape(&self) -> &[usize] {
        self.t.shape()
    }
    pub fn id(&self) -> usize {
        self.id
    }
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }
}

type BackwardFn = Box<dyn FnOnce(&[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> + Send>;
/// A backward that adds into its inputs' gradient sums itself (`slots[i]`: input i's sum so far,
/// None for one that needs no gradient or has none yet): a product that accumulates
/// (`linear`'s dx by cuBLASLt's beta = 1) saves the pass a separate add makes.
type SlotsFn = Box<dyn FnOnce(&[Option<Tensor>], &mut [Option<Tensor>]) -> Result<()> + Send>;

enum Backward {
    /// Returns each input's gradient; the pass adds it to the input's sum.
    Grads(BackwardFn),
    Slots(SlotsFn),
}

struct Node {
    inputs: Vec<(usize, bool)>,
    outputs: Vec<usize>,
    backward: Backward,
}

/// A sub-computation that `checkpoint` can re-run.
pub type BlockFn = Arc<dyn Fn(&mut Graph, &[Var]) -> Result<Vec<Var>> + Send + Sync>;
/// How `checkpoint_given` makes an input's value again in the backward instead of keeping it.
pub type Remake = Box<dyn FnOnce() -> Result<Tensor> + Send>;

pub struct Graph {
    record: bool,
    next_id: usize,
    nodes: Vec<Node>,
    trace: Option<Trace>,
    linear_hook: Option<LinearHook>,
    /// The gradient the next `linear_cross_entropy` will receive in the backward, when the
    /// caller knows it before the forward (`expect_loss_gradient`).
    loss_seed: Option<f32>,
    /// The scored-target count of the next `linear_cross_entropy`, for targets on a device
    /// (`expect_scored`).
    scored: Option<usize>,
}

/// Called with the weight and the input of every `linear` a graph runs (see `on_linear`).
pub type LinearHook = Box<dyn FnMut(&Var, &Tensor) + Send>;

/// Named intermediates of an inference graph, for `smelt trace`: each with the wall time since
/// the previous named point (the stage that produced it).
pub struct Trace {
    pub entries: Vec<TraceEntry>,
    last: std::time::Instant,
}

pub struct TraceEntry {
    pub name: String,
    pub tensor: Tensor,
    pub seconds: f64,
}

/// Gradients by variable id.
pub struct Grads(Vec<Option<Tensor>>);

impl Grads {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(v.id).and_then(|g| g.as_ref())
    }
    pub fn take(&mut self, v: &Var) -> Option<Tensor> {
        self.0.get_mut(v.id).and_then(|g| g.take())
    }
}

impl Graph {
    /// A graph that records a tape for `backward`. It tapes only ops whose inputs need
    /// gradients, so with no such input it keeps nothing yet still runs the training
    /// arithmetic (`is_recording`: the model's flash-style attention, not llama.cpp's):
    /// validation loss and a checkpointed block's forward run that way.
    pub fn training() -> Self {
        Graph {
            record: true,
            next_id: 0,
            nodes: Vec::new(),
            trace: None,
            linear_hook: None,
            loss_seed: None,
            scored: None,
        }
    }
    /// A graph that records nothing.
    pub fn inference() -> Self {
        Graph { record: false, ..Self::training() }
    }
    /// An inference graph that keeps every intermediate the model names (see `name`).
    pub fn tracing() -> Self {
        Graph { trace: Some(Trace { entries: vec![], last: std::time::Instant::now() }), ..Self::inference() }
    }
    /// Says that the next loss this graph builds through `linear_cross_entropy` will be given
    /// `seed` as its gradient in the backward (a training step knows its seed, the micro-batch's
    /// weight, before the forward). That op then computes its gradients in the forward, while
    /// each chunk's logits are at hand, instead of computing the logits a second time in the
    /// backward: one of the head's three products a step fewer, the same numbers (the same
    /// kernels on the same values in the same order). A backward that brings another gradient
    /// still gets the right one: the op recomputes then.
    pub fn expect_loss_gradient(&mut self, seed: f32) {
        self.loss_seed = Some(seed);
    }
    /// Says how many targets of the next `linear_cross_entropy` are scored (not `IGNORE`). A
    /// caller whose targets are already on the device (a captured training step, whose batch
    /// lives in a device buffer) must say it, counted on the host from the batch it wrote:
    /// the op would otherwise read the targets back (a wait a captured step cannot hold) for
    /// the count, and it leaves the range check of device targets to that caller. With host
    /// targets the op counts them itself and checks the two agree.
    pub fn expect_scored(&mut self, count: usize) {
        self.scored = Some(count);
    }
    /// Files `v` under a name (llama.cpp's: `attn_norm-3`) when tracing; otherwise nothing.
    pub fn name(&mut self, v: &Var, name: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let now = std::time::Instant::now();
            t.entries.push(TraceEntry { name: name(), tensor: v.t.clone(), seconds: (now - t.last).as_secs_f64() });
            t.last = now;
        }
    }
    /// Calls `f(w, x)` before every `linear` with its weight `w` and its input `x` (rows × in
    /// features): how the importance-matrix collector sees every matmul's activations, as
    /// llama.cpp's imatrix tool does with its graph-evaluation callback.
    pub fn on_linear(&mut self, f: impl FnMut(&Var, &Tensor) + Send + 'static) {
        self.linear_hook = Some(Box::new(f));
    }
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        self.trace.as_mut().map(|t| std::mem::take(&mut t.entries)).unwrap_or_default()
    }
    pub fn is_recording(&self) -> bool {
        self.record
    }

    /// Plain inference: no tape, no trace, no linear hook. Nobody sees the intermediates, so a
    /// model may run fused ops that skip some of them (q, k and v in one launch; the gate and up
    /// products inside the SwiGLU) without changing what it computes.
    pub fn may_fuse(&self) -> bool {
        !self.record && self.trace.is_none() && self.linear_hook.is_none()
    }

    fn var(&mut self, t: Tensor, requires_grad: bool) -> Var {
        let id = self.next_id;
        self.next_id += 1;
        Var { id, requires_grad: requires_grad && self.record, t }
    }

    /// An input whose gradient is wanted (a parameter) or not.
    pub fn leaf(&mut self, t: Tensor, requires_grad: bool) -> Var {
        self.var(t, requires_grad)
    }
    pub fn constant(&mut self, t: Tensor) -> Var {
        self.var(t, false)
    }

    /// Records `outputs = op(inputs)`; `backward` maps output gradients to input gradients.
    fn push(
        &mut self,
        inputs: &[&Var],
        outs: Vec<Tensor>,
        backward: impl FnOnce(&[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Vec<Var> {
        let rg = self.record && inputs.iter().any(|v| v.requires_grad);
        let vars: Vec<Var> = outs.into_iter().map(|t| self.var(t, rg)).collect();
        if rg {
            self.nodes.push(Node {
                inputs: inputs.iter().map(|v| (v.id, v.requires_grad)).collect(),
                outputs: vars.iter().map(|v| v.id).collect(),
                backward: Backward::Grads(Box::new(backward)),
            });
        }
        vars
    }

    /// One output whose backward adds into its inputs' gradient sums itself (`SlotsFn`).
    fn push_slots(
        &mut self,
        inputs: &[&Var],
        out: Tensor,
        backward: impl FnOnce(&Tensor, &mut [Option<Tensor>]) -> Result<()> + Send + 'static,
    ) -> Var {
        let rg = self.record && inputs.iter().any(|v| v.requires_grad);
        let var = self.var(out, rg);
        if rg {
            self.nodes.push(Node {
                inputs: inputs.iter().map(|v| (v.id, v.requires_grad)).collect(),
                outputs: vec![var.id],
                backward: Backward::Slots(Box::new(move |g, slots| match &g[0] {
                    Some(g) => backward(g, slots),
                    None => Ok(()),
                })),
            });
        }
        var
    }

    fn push1(
        &mut self,
        inputs: &[&Var],
        out: Tensor,
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Var {
        self.push(inputs, vec![out], move |g| match &g[0] {
            Some(g) => backward(g),
            None => Ok(vec![]),
        })
        .pop()
        .unwrap()
    }

    /// Same data, new shape.
    pub fn reshape(&mut self, x: &Var, shape: &[usize]) -> Result<Var> {
        let y = x.t.reshape(shape)?;
        let in_shape = x.t.shape().to_vec();
        Ok(self.push1(&[x], y, move |g| Ok(vec![Some(g.reshape(&in_shape)?)])))
    }

    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = timed("add", || ops::elementwise::add(&a.t, &b.t))?;
        Ok(self.push1(&[a, b], y, |g| Ok(vec![Some(g.clone()), Some(g.clone())])))
    }

    /// y = s·x.
    pub fn scale(&mut self, x: &Var, s: f32) -> Result<Var> {
        let y = timed("scale", || ops::elementwise::scale(&x.t, s))?;
        Ok(self.push1(&[x], y, move |g| Ok(vec![Some(ops::elementwise::scale(g, s)?)])))
    }

    /// Splits x (N, C) into consecutive row blocks of `sizes` rows (summing to N), each its own
    /// variable (copies). The backward writes each block's gradient back at its rows (zeros
    /// where a block got none), in one (N, C) tensor: what a loss per sequence of a batch needs.
    pub fn split_rows(&mut self, x: &Var, sizes: &[usize]) -> Result<Vec<Var>> {
        let (n, c) = (x.t.rows(), x.t.cols());
        if sizes.iter().sum::<usize>() != n {
            bail!("split_rows: blocks of {sizes:?} rows for a tensor of {n} rows");
        }
        let mut outs = Vec::with_capacity(sizes.len());
        let mut r0 = 0;
        for &m in sizes {
            outs.push(x.t.narrow_rows(r0, m)?);
            r0 += m;
        }
        let (xt, sizes) = (x.t.clone(), sizes.to_vec());
        Ok(self.push(&[x], outs, move |g| {
            let mut dx = xt.zeros_like()?;
            let mut r0 = 0;
            for (gi, m) in g.iter().zip(&sizes) {
                if let Some(gi) = gi {
                    dx.write_at(r0 * c, gi)?;
                }
                r0 += m;
            }
            Ok(vec![Some(dx)])
        }))
    }

    /// The row blocks `parts` (each (n_i, C), one dtype and device) stacked into one (Σ n_i, C)
    /// variable (copies); the backward hands each part its rows of the gradient. LoRA stacks
    /// the A matrices of projections that read one input, for one product.
    pub fn concat_rows(&mut self, parts: &[&Var]) -> Result<Var> {
        let ts: Vec<&Tensor> = parts.iter().map(|p| &p.t).collect();
        let y = ops::elementwise::concat_rows(&ts)?;
        let rows: Vec<usize> = parts.iter().map(|p| p.t.rows()).collect();
        let shapes: Vec<Vec<usize>> = parts.iter().map(|p| p.t.shape().to_vec()).collect();
        Ok(self.push1(parts, y, move |g| {
            let mut r0 = 0;
            let mut out = Vec::with_capacity(rows.len());
            for (m, shape) in rows.iter().zip(&shapes) {
                out.push(Some(g.narrow_rows(r0, *m)?.reshape(shape)?));
                r0 += m;
            }
            Ok(out)
        }))
    }

    /// The 2-D `parts` (one row count and dtype) side by side (copies); the backward hands each
    /// part its columns of the gradient. LoRA's input and its adapters' down products, for one
    /// product over both (`linear_side`).
    pub fn concat_cols(&mut self, parts: &[&Var]) -> Result<Var> {
        let ts: Vec<&Tensor> = parts.iter().map(|p| &p.t).collect();
        let y = timed("concat_cols", || ops::elementwise::concat_cols(&ts))?;
        // Each part's width, and whether it wants a gradient (a frozen part gets none: no copy).
        let widths: Vec<(usize, bool)> = parts.iter().map(|p| (p.t.cols(), p.requires_grad)).collect();
        Ok(self.push1(parts, y, move |g| {
            let mut c0 = 0;
            let mut out = Vec::with_capacity(widths.len());
            for &(w, wanted) in &widths {
                out.push(match wanted {
                    true => Some(timed("concat_cols.bwd", || ops::elementwise::narrow_cols(g, c0, w))?),
                    false => None,
                });
                c0 += w;
            }
            Ok(out)
        }))
    }

    /// y = x_ext·[w | b placed at columns off]ᵀ + bias with x_ext = [x | side] (`concat_cols`):
    /// x·wᵀ + side[:, off .. off + r]·bᵀ + bias in one product over K = in + side's width — a
    /// frozen projection and its LoRA adapter's up product (b = B, (out, r); `side` the
    /// adapters' s·A·x, (N, side's width)) with no (N, out) adapter output written and read
    /// again, and in the backward x_ext's gradient from one product, which gives x's and the
    /// side's at once. `w` and `bias` must be frozen; b gets dyᵀ·side[:, off .. off + r]. The
    /// combined weight [w | 0 … b … 0] is made in the forward from w as the products read it
    /// (`weight_operand`) and again in the backward for x_ext's gradient (never kept).
    pub fn linear_side(
        &mut self,
        x_ext: &Var,
        side: &Tensor,
        w: &Var,
        b: &Var,
        off: usize,
        bias: Option<&Var>,
    ) -> Result<Var> {
        if w.requires_grad || bias.is_some_and(|bv| bv.requires_grad) {
            bail!("linear_side: the base weight {:?} (and its bias) must be frozen", w.t.shape());
        }
        let (k, side_w, r) = (w.t.cols(), side.cols(), b.t.cols());
        if x_ext.t.cols() != k + side_w || side.rows() != x_ext.t.rows() || off + r > side_w || b.t.rows() != w.t.rows()
        {
            bail!(
                "linear_side: want input columns = weight columns + side columns, side rows = input rows, \
                 off + rank ≤ side columns and B's rows = weight rows; got input {:?}, weight {:?}, side {:?}, \
                 B {:?} at column {off}",
                x_ext.t.shape(),
                w.t.shape(),
                side.shape(),
                b.t.shape()
            );
        }
        // [w | 0 … B … 0] in one pass (`extend_cols`: B cast to w's operand dtype on the way);
        // it had been a cast, up to two zero fills and five column copies a build, ~60 launches
        // a layer at issue 16's LoRA shape.
        let combined = {
            let (w, b, side_w) = (w.t.clone(), b.t.clone(), side_w);
            move || -> Result<Tensor> {
                let wo = ops::matmul::weight_operand(&w)?;
                ops::elementwise::extend_cols(&wo, &b, off, side_w)
            }
        };
        let w_ext = timed("linear_side.weights", &combined)?;
        let y = timed("linear", || ops::matmul::linear(&x_ext.t, &w_ext, bias.map(|b| &b.t)))?;
        drop(w_ext);
        let x_shape = x_ext.t.shape().to_vec();
        let (side, bt, need_dx, need_db) = (side.clone(), b.t.clone(), x_ext.requires_grad, b.requires_grad);
        let inputs: Vec<&Var> = [Some(x_ext), Some(w), Some(b), bias].into_iter().flatten().collect();
        Ok(self.push_slots(&inputs, y, move |g, slots| {
            if need_dx {
                let w_ext = timed("linear_side.weights", &combined)?;
                timed("linear.bwd", || ops::matmul::linear_dx_acc(g, &w_ext, &x_shape, &mut slots[0]))?;
            }
            if need_db {
                // dyᵀ·side[:, off .. off + r]: B's (m, r) gradient.
                let cols = ops::elementwise::narrow_cols(&side, off, r)?;
                let (db, _) = timed("linear.bwd", || ops::matmul::linear_backward_acc_dx(&cols, &bt, g, false, None))?;
                accumulate(&mut slots[2], &db)?;
            }
            Ok(())
        }))
    }

    /// y = x·wᵀ + (s·x·aᵀ)·bᵀ: a frozen projection `w` (out, in) with its LoRA adapter (a: (r, in),
    /// b: (out, r)), as `Graph::linear` of x by a, a scale, `linear` by b and `linear_add` by w
    /// compute it (the same forward), keeping only the adapter's (N, r) down product: x itself is
    /// not kept, `remake_x` makes it again in the backward for a's gradient. x's gradient is one
    /// product [dy | s·dy·b]·[w; a] over K = out + r, added into x's sum, instead of the base's dx
    /// product and then a K = r product that reads and writes the (N, in) sum a second time; the
    /// down product is not run again (a checkpoint of the branch would). LoRA's down projection,
    /// whose x (the SwiGLU activation, (N, ffn)) is the widest of a layer. `w` must be frozen.
    pub fn linear_lora_remade(&mut self, x: &Var, w: &Var, a: &Var, b: &Var, s: f32, remake_x: Remake) -> Result<Var> {
        if w.requires_grad {
            bail!("linear_lora_remade: the base weight {:?} must be frozen", w.t.shape());
        }
        let (out, inp, r) = (w.t.rows(), w.t.cols(), a.t.rows());
        if a.t.cols() != inp || b.t.rows() != out || b.t.cols() != r || x.t.cols() != inp {
            bail!(
                "linear_lora_remade: want x (N, in), w (out, in), a (r, in), b (out, r); got x {:?}, w {:?}, a {:?}, b {:?}",
                x.t.shape(),
                w.t.shape(),
                a.t.shape(),
                b.t.shape()
            );
        }
        if x.t.shape().len() != 2 {
            bail!("linear_lora_remade: x must be (N, in), got {:?}", x.t.shape());
        }
        let n = x.t.rows();
        let down = timed("linear", || ops::matmul::linear(&x.t, &a.t, None))?;
        let down = timed("scale", || ops::elementwise::scale(&down, s))?;
        let up = timed("linear", || ops::matmul::linear(&down, &b.t, None))?;
        let y = timed("linear", || ops::matmul::linear_add(&x.t, &w.t, None, &up))?;
        drop(up);
        let x_shape = x.t.shape().to_vec();
        let (wt, at, bt, need) =
            (w.t.clone(), a.t.clone(), b.t.clone(), [x.requires_grad, a.requires_grad, b.requires_grad]);
        Ok(self.push_slots(&[x, w, a, b], y, move |g, slots| {
            // d(down) = dy·b, (N, r), and b's gradient dyᵀ·down: the backward `linear` by b runs.
            let mut dd = None;
            let (db, _) =
                timed("linear.bwd", || ops::matmul::linear_backward_acc_dx(&down, &bt, g, false, Some(&mut dd)))?;
            if need[2] {
                accumulate(&mut slots[3], &db)?;
            }
            drop(down);
            let Some(dd) = dd else { bail!("linear_lora_remade: no gradient for the down product ({n} × {r})") };
            let v = timed("scale", || ops::elementwise::scale(&dd, s))?; // d(x·aᵀ) = s·d(down)
            drop(dd);
            if need[0] {
                // [dy | v]·[w; a] into x's sum: w as the products read it, a in its dtype.
                let wo = ops::matmul::weight_operand(&wt)?;
                let stacked = ops::elementwise::concat_rows(&[&wo, &at.to_dtype(wo.dtype())?])?;
                drop(wo);
                let ge = timed("concat_cols", || ops::elementwise::concat_cols(&[g, &v.to_dtype(g.dtype())?]))?;
                timed("linear.bwd", || ops::matmul::linear_dx_acc(&ge, &stacked, &x_shape, &mut slots[0]))?;
            }
            if need[1] {
                let xr = timed("remake", remake_x)?;
                let (da, _) = timed("linear.bwd", || ops::matmul::linear_backward_acc_dx(&xr, &at, &v, false, None))?;
                accumulate(&mut slots[2], &da)?;
            }
            Ok(())
        }))
    }

    /// Inverted dropout of x with probability `p`, its mask drawn from `seed` (`ops::dropout`);
    /// the identity for p = 0.
    pub fn dropout(&mut self, x: &Var, p: f32, seed: u64) -> Result<Var> {
        if p == 0.0 {
            return Ok(x.clone());
        }
        let y = timed("dropout", || ops::dropout::dropout(&x.t, p, seed))?;
        // dx = dy·mask: the same op on dy, the mask drawn again from the seed (none is kept).
        Ok(self.push1(&[x], y, move |g| Ok(vec![Some(ops::dropout::dropout(g, p, seed)?)])))
    }

    /// y = x·Wᵀ + b
    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        self.linear_then_add(x, w, b, None)
    }

    /// c + x·wᵀ + b (`ops::matmul::linear_add`: on CUDA the product reads c, no pass for the
    /// sum); c's gradient is the output's.
    pub fn linear_add(&mut self, x: &Var, w: &Var, b: Option<&Var>, c: &Var) -> Result<Var> {
        self.linear_then_add(x, w, b, Some(c))
    }

    fn linear_then_add(&mut self, x: &Var, w: &Var, b: Option<&Var>, c: Option<&Var>) -> Result<Var> {
        if let Some(f) = &mut self.linear_hook {
            f(w, &x.t);
        }
        let y = match c {
            None => timed("linear", || ops::matmul::linear(&x.t, &w.t, b.map(|b| &b.t)))?,
            Some(c) => timed("linear", || ops::matmul::linear_add(&x.t, &w.t, b.map(|b| &b.t), &c.t))?,
        };
        let (xt, wt, need_dx) = (x.t.clone(), w.t.clone(), x.requires_grad);
        let (has_bias, has_c) = (b.is_some(), c.is_some());
        // The inputs, and the backward's gradients in the same order: x, w, [b], [c].
        let inputs: Vec<&Var> = [Some(x), Some(w), b, c].into_iter().flatten().collect();
        let frozen = !w.requires_grad && !b.is_some_and(|b| b.requires_grad);
        if wt.dtype() == crate::DType::Quant && !frozen {
            bail!("linear: a quantised weight {:?} cannot be trained; freeze it (a LoRA adapter trains on top) or dequantise it", wt.shape());
        }
        // The sums of w, b and c: w's (a weight used twice, a tied one) and b's as any gradient,
        // c's the output's own. x's sum is taken by the dx product itself (`linear_dx_acc`).
        let finish = move |slots: &mut [Option<Tensor>], dw: Option<Tensor>, db: Option<Tensor>, g: &Tensor| {
            let mut i = 1;
            if let Some(dw) = dw {
                accumulate(&mut slots[i], &dw)?;
            }
            i += 1;
            if has_bias {
                if let Some(db) = db {
                    accumulate(&mut slots[i], &db)?;
                }
                i += 1;
            }
            if has_c {
                accumulate(&mut slots[i], g)?;
            }
            Ok(())
        };
        if frozen {
            // A frozen weight (a LoRA or QLoRA base): gradients flow to x only, no dW product
            // is computed to be dropped, and x is not kept.
            let x_shape = xt.shape().to_vec();
            drop(xt);
            return Ok(self.push_slots(&inputs, y, move |g, slots| {
                if need_dx {
                    timed("linear.bwd", || ops::matmul::linear_dx_acc(g, &wt, &x_shape, &mut slots[0]))?;
                }
                finish(slots, None, None, g)
            }));
        }
        Ok(self.push_slots(&inputs, y, move |g, slots| {
            let dx = if need_dx { Some(&mut slots[0]) } else { None };
            let (dw, db) = timed("linear.bwd", || ops::matmul::linear_backward_acc_dx(&xt, &wt, g, has_bias, dx))?;
            finish(slots, Some(dw), db, g)
        }))
    }

    /// Rows of `table` picked by `ids` (u32).
    pub fn embedding(&mut self, table: &Var, ids: &Tensor) -> Result<Var> {
        let y = timed("embedding", || ops::embedding::embedding(&table.t, ids))?;
        let (tt, it) = (table.t.clone(), ids.clone());
        Ok(self.push1(&[table], y, move |g| {
            Ok(vec![Some(timed("embedding.bwd", || ops::embedding::embedding_backward(&tt, &it, g))?)])
        }))
    }

    pub fn rmsnorm(&mut self, x: &Var, w: &Var, eps: f64) -> Result<Var> {
        let (y, rstd) = timed("rmsnorm", || ops::rmsnorm::rmsnorm(&x.t, &w.t, eps))?;
        let (xt, wt) = (x.t.clone(), w.t.clone());
        Ok(self.push1(&[x, w], y, move |g| {
            let (dx, dw) = timed("rmsnorm.bwd", || ops::rmsnorm::rmsnorm_backward(&xt, &wt, &rstd, g))?;
            Ok(vec![Some(dx), Some(dw)])
        }))
    }

    /// Fused residual add + RMSNorm: returns (h = x + r, rmsnorm(h)·w). Under mixed precision
    /// the stream x, h is f32 and the branch r bf16: r's gradient is dh cast to bf16.
    pub fn add_rmsnorm(&mut self, x: &Var, r: &Var, w: &Var, eps: f64) -> Result<(Var, Var)> {
        let (h, y, rstd) = timed("add_rmsnorm", || ops::rmsnorm::add_rmsnorm(&x.t, &r.t, &w.t, eps))?;
        let (ht, wt, r_dtype) = (h.clone(), w.t.clone(), r.t.dtype());
        let mut v = self.push(&[x, r, w], vec![h, y], move |g| {
            if let (Some(dy), Some(gh)) = (&g[1], &g[0]) {
                // The add and the cast in the backward's own pass where the backend fuses them.
                let (dh, dr, dw) =
                    timed("add_rmsnorm.bwd", || ops::rmsnorm::add_rmsnorm_backward(&ht, &wt, &rstd, dy, gh, r_dtype))?;
                return Ok(vec![Some(dh), Some(dr), Some(dw)]);
            }
            let (mut dh, dw) = match &g[1] {
                Some(dy) => {
                    let (dx, dw) = timed("add_rmsnorm.bwd", || ops::rmsnorm::rmsnorm_backward(&ht, &wt, &rstd, dy))?;
                    (dx, Some(dw))
                }
                None => (ht.zeros_like()?, None),
            };
            if let Some(gh) = &g[0] {
                ops::elementwise::add_assign(&mut dh, gh)?;
            }
            let dr = if r_dtype == dh.dtype() { dh.clone() } else { ops::elementwise::cast(&dh, r_dtype)? };
            Ok(vec![Some(dh), Some(dr), dw])
        });
        let y = v.pop().unwrap();
        Ok((v.pop().unwrap(), y))
    }

    /// x: (B, T, H, D) at positions pos0..pos0+T.
    pub fn rope(&mut self, x: &Var, table: &Arc<RopeTable>, pos0: usize) -> Result<Var> {
        let y = timed("rope", || ops::rope::rope(&x.t, table, pos0))?;
        let table = table.clone();
        Ok(self
            .push1(&[x], y, move |g| Ok(vec![Some(timed("rope.bwd", || ops::rope::rope_backward(g, &table, pos0))?)])))
    }

    /// x: (B, T, H, D), token (b, i) at the position `seg` gives it (restarting per packed example).
    pub fn rope_packed(&mut self, x: &Var, table: &Arc<RopeTable>, seg: &Arc<ops::attention::Segments>) -> Result<Var> {
        let positions = Arc::new(seg.positions());
        let y = timed("rope", || ops::rope::rope_positions(&x.t, table, &positions))?;
        let table = table.clone();
        Ok(self.push1(&[x], y, move |g| {
            Ok(vec![Some(timed("rope.bwd", || ops::rope::rope_positions_backward(g, &table, &positions))?)])
        }))
    }

    /// `attention` over packed rows: q, k, v (B, T, ·, D), no attention across `seg`'s examples.
    pub fn attention_packed(
        &mut self,
        q: &Var,
        k: &Var,
        v: &Var,
        window: Option<usize>,
        scale: f32,
        seg: &Arc<ops::attention::Segments>,
    ) -> Result<Var> {
        let (o, lse) = timed("attention", || ops::attention::attention_packed(&q.t, &k.t, &v.t, window, scale, seg))?;
        let (qt, kt, vt, ot, seg) = (q.t.clone(), k.t.clone(), v.t.clone(), o.clone(), seg.clone());
        Ok(self.push1(&[q, k, v], o, move |g| {
            let (dq, dk, dv) = timed("attention.bwd", || {
                ops::attention::attention_packed_backward(&qt, &kt, &vt, &ot, &lse, g, window, scale, &seg)
            })?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }))
    }

    /// Causal GQA attention with scores scaled by `scale`; k, v hold `tk` valid rows (see `ops::attention`).
    pub fn attention(
        &mut self,
        q: &Var,
        k: &Var,
        v: &Var,
        tk: usize,
        window: Option<usize>,
        scale: f32,
    ) -> Result<Var> {
        let (o, lse) = timed("attention", || ops::attention::attention(&q.t, &k.t, &v.t, tk, window, scale))?;
        if self.record && k.t.shape()[1] != tk {
            bail!("attention: a training graph needs k/v of exactly the valid length");
        }
        let (qt, kt, vt, ot) = (q.t.clone(), k.t.clone(), v.t.clone(), o.clone());
        Ok(self.push1(&[q, k, v], o, move |g| {
            let (dq, dk, dv) = timed("attention.bwd", || {
                ops::attention::attention_backward(&qt, &kt, &vt, &ot, &lse, g, window, scale)
            })?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }))
    }

    pub fn swiglu(&mut self, gate: &Var, up: &Var) -> Result<Var> {
        let y = timed("swiglu", || ops::swiglu::swiglu(&gate.t, &up.t))?;
        let (gt, ut) = (gate.t.clone(), up.t.clone());
        // Adds into gate's and up's gradient sums itself (a LoRA down projection's adapter
        // branch gives them a first gradient): no separate add pass on CUDA.
        Ok(self.push_slots(&[gate, up], y, move |g, slots| {
            let [sg, su] = slots else { anyhow::bail!("swiglu: two gradient slots expected, got {}", slots.len()) };
            timed("swiglu.bwd", || ops::swiglu::swiglu_backward_acc(&gt, &ut, g, sg, su))
        }))
    }

    /// Mean cross-entropy of `logits` (N, V) against u32 `targets` (N); a scalar.
    pub fn cross_entropy(&mut self, logits: &Var, targets: &Tensor) -> Result<Var> {
        let (loss, lse, count) = timed("cross_entropy", || ops::cross_entropy::cross_entropy(&logits.t, targets))?;
        let (lt, tt) = (logits.t.clone(), targets.clone());
        Ok(self.push1(&[logits], loss, move |g| {
            let d = g.as_f32()?[0];
            Ok(vec![Some(timed("cross_entropy.bwd", || {
                ops::cross_entropy::cross_entropy_backward(&lt, &tt, &lse, d, count)
            })?)])
        }))
    }

    /// The distillation loss of student `logits` (N, V) against `teacher` and u32 `targets`
    /// (N): τ²·KL(teacher ‖ student) + α·CE, each a mean over the rows in the loss
    /// (`ops::distill`). Returns the scalar loss and its two means [KL, CE] (for logging).
    pub fn distill_loss(
        &mut self,
        logits: &Var,
        teacher: &ops::distill::TeacherLogits,
        targets: &Tensor,
        o: &ops::distill::DistillLoss,
    ) -> Result<(Var, [f64; 2])> {
        let (loss, parts, saved) = timed("distill", || ops::distill::distill(&logits.t, teacher, targets, o))?;
        let (lt, tt, teacher, o) = (logits.t.clone(), targets.clone(), teacher.clone(), *o);
        let loss = self.push1(&[logits], loss, move |g| {
            let d = g.to_vec_f32()?[0];
            Ok(vec![Some(timed("distill.bwd", || ops::distill::distill_backward(&lt, &teacher, &tt, &o, &saved, d))?)])
        });
        Ok((loss, parts))
    }

    /// Mean cross-entropy of the logits h·Wᵀ (h: (N, C), w: (V, C)) against u32 `targets` (N),
    /// computed `rows` × `vocab` logits at a time, so the (N, V) logits never exist, forward
    /// or backward, whatever V is. Over the vocabulary the logsumexp is online: each slice of
    /// `vocab` ids updates a running max and Σexp per row and gives up the target's logit if it
    /// holds it (`ops::cross_entropy::lse_chunk`). The backward recomputes each slice's logits,
    /// turns them into softmax − onehot with the saved logsumexp, accumulates dh and writes the
    /// slice's rows of dW. With one chunk each way it computes exactly `linear` then
    /// `cross_entropy`. With the vocabulary in one slice and the backward's gradient announced
    /// (`expect_loss_gradient`), the forward does the backward's work chunk by chunk (a row's
    /// logsumexp is final once its chunk is done) and keeps dh and dW instead of the logits.
    pub fn linear_cross_entropy(
        &mut self,
        h: &Var,
        w: &Var,
        targets: &Tensor,
        rows: usize,
        vocab: usize,
    ) -> Result<Var> {
        let (n, v) = (h.t.rows(), w.t.rows());
        if targets.numel() != n {
            bail!("linear_cross_entropy: {} targets for {n} rows", targets.numel());
        }
        let targets = targets.reshape(&[n])?;
        let announced = self.scored.take();
        let count = match targets.device().is_cpu() {
            true => {
                if let Some(&t) =
                    targets.as_u32()?.iter().find(|&&t| t != ops::cross_entropy::IGNORE && t as usize >= v)
                {
                    bail!("linear_cross_entropy: target {t} out of range for vocabulary {v}");
                }
                let count = ops::cross_entropy::count_scored(&targets)?;
                if announced.is_some_and(|a| a != count) {
                    bail!("linear_cross_entropy: {count} scored targets, {announced:?} announced");
                }
                count
            }
            false => announced.ok_or_else(|| {
                anyhow::anyhow!(
                    "linear_cross_entropy: targets on {} need their scored count announced (Graph::expect_scored)",
                    targets.device()
                )
            })?,
        };
        let (rc, vc) = (rows.clamp(1, n.max(1)), vocab.clamp(1, v.max(1)));
        let device = h.t.device();
        let targets = targets.to_device(device)?; // uploaded once, read by every chunk
        let rows =
            move |t: &Tensor, r0: usize, m: usize| if m == t.rows() { Ok(t.clone()) } else { t.narrow_rows(r0, m) };
        let chunks = move || {
            (0..v).step_by(vc).map(move |v0| (v0, vc.min(v - v0))).flat_map(move |(v0, vn)| {
                (0..n).step_by(rc).enumerate().map(move |(i, r0)| (v0, vn, i, r0, rc.min(n - r0)))
            })
        };
        // With every row in one row chunk the logits are at most `rows` × V: kept from the
        // forward for the backward instead of computed again (the same products, so the same
        // numbers). With several row chunks (long batches, large vocabularies) they are not.
        let (need_dh, need_dw) = (h.requires_grad, w.requires_grad);
        let seed = self.loss_seed.take().filter(|_| self.record && (need_dh || need_dw) && vc >= v);
        let keep = self.record && (need_dh || need_dw) && rc >= n && seed.is_none();
        let mut kept = Vec::new();
        let mut state = ops::cross_entropy::lse_state(n, device)?;
        let mut wc = w.t.clone();
        // The gradients of the announced seed, when computed here: dh by row chunk, dW.
        let mut early_dh: Vec<Option<Tensor>> = Vec::new();
        let mut early_dw = None::<Tensor>;
        let seed_t = seed.map(|s| Tensor::full(&[1], s));
        for (v0, vn, _, r0, m) in chunks() {
            if r0 == 0 {
                wc = rows(&w.t, v0, vn)?;
            }
            let hc = rows(&h.t, r0, m)?;
            let z = timed("head", || ops::matmul::linear(&hc, &wc, None))?;
            timed("cross_entropy", || ops::cross_entropy::lse_chunk(&z, &targets, &mut state, r0, v0))?;
            if let Some(st) = &seed_t {
                // One vocabulary slice: rows r0..r0+m are final in `state`; the backward's
                // steps for this chunk, as it would take them with gradient `st`.
                let (_, lse) = ops::cross_entropy::lse_finish(&state, &targets)?;
                let dz = timed("cross_entropy.bwd", || {
                    ops::cross_entropy::cross_entropy_backward_chunk(&z, &targets, &lse, r0, v0, st, count)
                })?;
                drop(z);
                let dhc = if need_dw {
                    timed("head.bwd", || ops::matmul::linear_backward_acc(&hc, &wc, &dz, need_dh, &mut early_dw))?
                } else {
                    Some(timed("head.bwd", || ops::matmul::linear_dx(&dz, &wc, hc.shape()))?)
                };
                early_dh.push(dhc);
            } else if keep {
                kept.push(z);
            }
        }
        let (nll, lse) = ops::cross_entropy::lse_finish(&state, &targets)?;
        let loss = ops::cross_entropy::mean_nll(&nll, count)?;
        let (ht, wt) = (h.t.clone(), w.t.clone());
        let mut early = seed.map(|s| (s, early_dh, early_dw));
        Ok(self.push1(&[h, w], loss, move |g| {
            let c = ht.cols();
            // The gradients computed in the forward, if the backward brings the announced seed
            // (read only from a host tensor: a device one would cost a sync; then recompute).
            if let Some((s, edh, edw)) = early.take() {
                let same = g.device() == crate::Device::Cpu && g.numel() == 1 && g.as_f32().is_ok_and(|v| v[0] == s);
                if same {
                    let dh = if !need_dh { None } else { Some(join_row_chunks(&ht, edh, rc)?) };
                    return Ok(vec![dh, if need_dw { edw } else { None }]);
                }
            }
            let mut dh: Vec<Option<Tensor>> = vec![None; n.div_ceil(rc)];
            let mut dw = if need_dw && vc < v { Some(wt.zeros_like()?) } else { None };
            let (mut wc, mut dwc) = (wt.clone(), None::<Tensor>);
            let mut kept = kept.into_iter();
            for (v0, vn, i, r0, m) in chunks() {
                if r0 == 0 {
                    wc = rows(&wt, v0, vn)?;
                }
                let hc = rows(&ht, r0, m)?;
                let z = match kept.next() {
                    Some(z) => z,
                    None => timed("head", || ops::matmul::linear(&hc, &wc, None))?,
                };
                let dz = timed("cross_entropy.bwd", || {
                    ops::cross_entropy::cross_entropy_backward_chunk(&z, &targets, &lse, r0, v0, g, count)
                })?;
                drop(z);
                if !need_dw {
                    // A frozen head (a LoRA run's tied embedding): dh only.
                    if need_dh {
                        let dhc = timed("head.bwd", || ops::matmul::linear_dx(&dz, &wc, hc.shape()))?;
                        accumulate(&mut dh[i], &dhc)?;
                    }
                    continue;
                }
                // The slice's dW is summed over the row chunks by the product itself (cuBLASLt
                // accumulates into it: beta = 1), not by a separate pass per chunk.
                let dhc = timed("head.bwd", || ops::matmul::linear_backward_acc(&hc, &wc, &dz, need_dh, &mut dwc))?;
                if let Some(dhc) = dhc {
                    accumulate(&mut dh[i], &dhc)?;
                }
                if r0 + m == n {
                    // The slice's rows of dW are complete.
                    let part = dwc.take().ok_or_else(|| anyhow::anyhow!("linear_cross_entropy: no dW"))?;
                    match dw.as_mut() {
                        Some(dw) => dw.write_at(v0 * c, &part)?,
                        None => dw = Some(part),
                    }
                }
            }
            let dh = if !need_dh { None } else { Some(join_row_chunks(&ht, dh, rc)?) };
            Ok(vec![dh, dw])
        }))
    }

    /// Runs `f` on `inputs` without keeping its intermediate activations; the backward pass
    /// re-runs it on a recording graph. Pass every tensor `f` reads, parameters included, in
    /// `inputs`, so their gradients flow.
    pub fn checkpoint(&mut self, inputs: &[Var], f: BlockFn) -> Result<Vec<Var>> {
        // A training graph over constants: nothing is taped, and the forward runs the same
        // kernels as the re-run below (an inference graph would pick the inference attention,
        // and the gradients would belong to slightly different activations).
        let mut sub = Graph::training();
        let leaves: Vec<Var> = inputs.iter().map(|v| sub.constant(v.t.clone())).collect();
        let outs: Vec<Tensor> = f(&mut sub, &leaves)?.into_iter().map(|v| v.t).collect();
        let remake = inputs.iter().map(|_| None).collect();
        self.checkpoint_given(inputs, outs, remake, f)
    }

    /// `checkpoint` whose forward outputs the caller already has (`outs`: what `f` computes
    /// from `inputs`, bit for bit): only the backward re-runs f. An input with a `remake` is not
    /// kept either: the backward makes its value again (bit for bit) from what the closure holds
    /// (the LoRA down projection's adapter: its input act = swiglu(gate, up) is remade from gate
    /// and up, which SwiGLU's own backward keeps anyway; its gradient joins act's sum, so SwiGLU's
    /// backward runs once on the total).
    pub fn checkpoint_given(
        &mut self,
        inputs: &[Var],
        outs: Vec<Tensor>,
        remake: Vec<Option<Remake>>,
        f: BlockFn,
    ) -> Result<Vec<Var>> {
        if remake.len() != inputs.len() {
            bail!("checkpoint_given: {} remakes for {} inputs", remake.len(), inputs.len());
        }
        // Each input's value for the re-run: kept, or remade then.
        let saved: Vec<(Option<Tensor>, Option<Remake>, bool)> = inputs
            .iter()
            .zip(remake)
            .map(|(v, r)| (if r.is_some() { None } else { Some(v.t.clone()) }, r, v.requires_grad))
            .collect();
        let rg = self.record && inputs.iter().any(|v| v.requires_grad);
        let vars: Vec<Var> = outs.into_iter().map(|t| self.var(t, rg)).collect();
        if !rg {
            return Ok(vars);
        }
        // The re-run's backward adds into the inputs' gradient sums so far (`Backward::Slots`):
        // each leaf starts from its input's sum, so a product in the block that adds into its
        // input's sum (`linear_dx_acc`) adds into the outer one, with no pass to add the block's
        // gradient afterwards, and the sums run in the order the uncheckpointed graph's would.
        self.nodes.push(Node {
            inputs: inputs.iter().map(|v| (v.id, v.requires_grad)).collect(),
            outputs: vars.iter().map(|v| v.id).collect(),
            backward: Backward::Slots(Box::new(move |g, slots| {
                let mut sub = Graph::training();
                let mut leaves = Vec::with_capacity(saved.len());
                for (kept, remake, rg) in saved {
                    let t = match (kept, remake) {
                        (Some(t), _) => t,
                        (None, Some(remake)) => remake()?,
                        (None, None) => bail!("checkpoint_given: an input neither kept nor remade"),
                    };
                    leaves.push(sub.leaf(t, rg));
                }
                let outs = f(&mut sub, &leaves)?;
                let sums: Vec<(usize, Tensor)> =
                    leaves.iter().zip(slots.iter_mut()).filter_map(|(l, s)| Some((l.id, s.take()?))).collect();
                let mut grads = sub.backward_inner(&outs, g, sums, &[], &mut |_, _| Ok(()))?;
                for (l, s) in leaves.iter().zip(slots.iter_mut()) {
                    *s = grads.take(l);
                }
                Ok(())
            })),
        });
        Ok(vars)
    }

    /// Gradients of a scalar `loss` with respect to every recorded variable.
    pub fn backward(self, loss: &Var) -> Result<Grads> {
        if loss.t.numel() != 1 {
            bail!("backward needs a scalar loss, got shape {:?}", loss.t.shape());
        }
        self.backward_from(std::slice::from_ref(loss), &[Some(Tensor::full(loss.t.shape(), 1.0))])
    }

    /// Backward pass seeded with `seeds[i]` as the gradient of `outputs[i]`.
    pub fn backward_from(self, outputs: &[Var], seeds: &[Option<Tensor>]) -> Result<Grads> {
        self.backward_watching(outputs, seeds, &[], &mut |_, _| Ok(()))
    }

    /// `backward_from`, handing each variable of `watch` its gradient as soon as it is final
    /// (the last node of the pass that adds to it has run): `ready(i, grad)` for `watch[i]`,
    /// None for one that gets no gradient (after the pass). The gradients handed over are
    /// not in the returned `Grads`. Data parallel starts averaging a layer's gradients while
    /// the backward of the layers below still runs.
    pub fn backward_watching(
        self,
        outputs: &[Var],
        seeds: &[Option<Tensor>],
        watch: &[Var],
        ready: &mut dyn FnMut(usize, Option<Tensor>) -> Result<()>,
    ) -> Result<Grads> {
        self.backward_inner(outputs, seeds, Vec::new(), watch, ready)
    }

    /// `backward_watching` with some variables' gradient sums started at a tensor instead of
    /// none (`sums`: (variable id, its sum so far); a checkpoint's re-run takes its inputs' sums).
    fn backward_inner(
        self,
        outputs: &[Var],
        seeds: &[Option<Tensor>],
        sums: Vec<(usize, Tensor)>,
        watch: &[Var],
        ready: &mut dyn FnMut(usize, Option<Tensor>) -> Result<()>,
    ) -> Result<Grads> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.next_id];
        for (id, s) in sums {
            grads[id] = Some(s);
        }
        for (o, s) in outputs.iter().zip(seeds) {
            if let Some(s) = s {
                accumulate(&mut grads[o.id], s)?;
            }
        }
        // watched[id]: its place in `watch`; last[id]: the node whose backward adds to it last
        // (the earliest in recording order).
        let mut watched: Vec<Option<usize>> = vec![None; self.next_id];
        for (i, v) in watch.iter().enumerate() {
            watched[v.id] = Some(i);
        }
        let mut last: Vec<Option<usize>> = vec![None; self.next_id];
        if !watch.is_empty() {
            for (k, node) in self.nodes.iter().enumerate().rev() {
                for &(id, rg) in &node.inputs {
                    if rg {
                        last[id] = Some(k);
                    }
                }
            }
        }
        let mut handed = vec![false; watch.len()];
        for (k, node) in self.nodes.into_iter().enumerate().rev() {
            let gouts: Vec<Option<Tensor>> = node.outputs.iter().map(|&i| grads[i].take()).collect();
            if gouts.iter().any(|g| g.is_some()) {
                match node.backward {
                    Backward::Grads(f) => {
                        let gins = f(&gouts)?;
                        for ((id, rg), g) in node.inputs.iter().zip(gins) {
                            if let (true, Some(g)) = (*rg, g) {
                                accumulate(&mut grads[*id], &g)?;
                            }
                        }
                    }
                    Backward::Slots(f) => {
                        // Each input's sum so far goes to the node and comes back; an input that
                        // appears twice gets its sum once and an empty slot the second time, and
                        // what the two hold is added on the way back.
                        let mut slots: Vec<Option<Tensor>> =
                            node.inputs.iter().map(|&(id, rg)| if rg { grads[id].take() } else { None }).collect();
                        f(&gouts, &mut slots)?;
                        for (&(id, rg), slot) in node.inputs.iter().zip(slots) {
                            if let (true, Some(t)) = (rg, slot) {
                                match &mut grads[id] {
                                    None => grads[id] = Some(t),
                                    Some(acc) => timed("grad_accumulate", || ops::elementwise::add_assign(acc, &t))?,
                                }
                            }
                        }
                    }
                }
            }
            for &(id, _) in &node.inputs {
                if let (Some(i), Some(k_last)) = (watched[id], last[id]) {
                    if k_last == k && !handed[i] {
                        handed[i] = true;
                        ready(i, grads[id].take())?;
                    }
                }
            }
        }
        for (i, done) in handed.iter().enumerate() {
            if !done {
                ready(i, grads[watch[i].id].take())?;
            }
        }
        Ok(Grads(grads))
    }
}

/// dh of `linear_cross_entropy` from its row chunks (`rc` rows each, in order; a chunk no
/// slice gave a gradient stays zero), in `h`'s shape.
fn join_row_chunks(h: &Tensor, mut parts: Vec<Option<Tensor>>, rc: usize) -> Result<Tensor> {
    if parts.len() == 1 {
        if let Some(d) = parts.pop().flatten() {
            return d.reshape(h.shape());
        }
        return h.zeros_like();
    }
    let mut all = h.zeros_like()?;
    for (i, part) in parts.into_iter().enumerate() {
        if let Some(part) = part {
            all.write_at(i * rc * h.cols(), &part)?;
        }
    }
    Ok(all)
}

fn accumulate(slot: &mut Option<Tensor>, g: &Tensor) -> Result<()> {
    ops::elementwise::add_into(slot, g.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input read by several products (x into q, k and v and their adapters) gets the sum
    /// of their input gradients, added in the backward's order (the last consumer first) —
    /// frozen weights, a trained one with a bias, and `linear_add` alike — and the other inputs
    /// their own gradients: the products that add into the sum themselves (`linear_dx_acc`)
    /// compute what a product then an add computed.
    #[test]
    fn an_input_of_several_products_gets_the_sum_of_their_gradients() {
        let mut r = crate::rng::Rng::new(8);
        let mut rand = |shape: &[usize]| -> Tensor {
            let n = shape.iter().product();
            Tensor::from_f32((0..n).map(|_| r.normal() as f32).collect(), shape).unwrap()
        };
        let (x, w1, w2, b2, w3, c, dy) =
            (rand(&[4, 6]), rand(&[5, 6]), rand(&[5, 6]), rand(&[5]), rand(&[5, 6]), rand(&[4, 5]), rand(&[4, 5]));
        let mut g = Graph::training();
        let xv = g.leaf(x.clone(), true);
        let (w1v, w2v, b2v, w3v, cv) = (
            g.leaf(w1.clone(), false),
            g.leaf(w2.clone(), true),
            g.leaf(b2.clone(), true),
            g.leaf(w3.clone(), false),
            g.leaf(c.clone(), true),
        );
        let y1 = g.linear(&xv, &w1v, None).unwrap();
        let y2 = g.linear(&xv, &w2v, Some(&b2v)).unwrap();
        let y3 = g.linear_add(&xv, &w3v, None, &cv).unwrap();
        let s = g.add(&y1, &y2).unwrap();
        let s = g.add(&s, &y3).unwrap();
        let grads = g.backward_from(std::slice::from_ref(&s), &[Some(dy.clone())]).unwrap();
        // By hand: y3's product is the last recorded, so its dx starts the sum.
        let mut want = ops::matmul::linear_dx(&dy, &w3, x.shape()).unwrap();
        let (dx2, dw2, db2) = ops::matmul::linear_backward(&x, &w2, &dy, true, true).unwrap();
        ops::elementwise::add_assign(&mut want, &dx2.unwrap()).unwrap();
        ops::elementwise::add_assign(&mut want, &ops::matmul::linear_dx(&dy, &w1, x.shape()).unwrap()).unwrap();
        let v = |t: &Tensor| t.to_vec_f32().unwrap();
        assert_eq!(v(grads.get(&xv).unwrap()), v(&want), "x: the sum of the three products' gradients");
        assert_eq!(v(grads.get(&w2v).unwrap()), v(&dw2));
        assert_eq!(v(grads.get(&b2v).unwrap()), v(&db2.unwrap()));
        assert_eq!(v(grads.get(&cv).unwrap()), v(&dy), "c: the output's gradient");
        assert!(grads.get(&w1v).is_none() && grads.get(&w3v).is_none(), "frozen weights get no gradient");
    }

    /// `checkpoint_given` with a remade input (LoRA's down-projection adapter: act = swiglu(g, u)
    /// read by a frozen product and by the checkpointed branch, act remade from g and u in the
    /// backward) gives the gradients of the same graph without the checkpoint, bit for bit: the
    /// re-run's product adds into act's sum as the plain graph's does, and act's two gradients
    /// are summed before SwiGLU's backward in both.
    #[test]
    fn checkpoint_given_with_a_remade_input_equals_the_plain_graph() {
        let mut r = crate::rng::Rng::new(9);
        let mut rand = |shape: &[usize]| -> Tensor {
            let n = shape.iter().product();
            Tensor::from_f32((0..n).map(|_| r.normal() as f32).collect(), shape).unwrap()
        };
        let (g0, u0, w, a, dy) = (rand(&[5, 8]), rand(&[5, 8]), rand(&[3, 8]), rand(&[3, 8]), rand(&[5, 3]));
        let run = |checkpointed: bool| {
            let mut gr = Graph::training();
            let (gv, uv) = (gr.leaf(g0.clone(), true), gr.leaf(u0.clone(), true));
            let (wv, av) = (gr.leaf(w.clone(), false), gr.leaf(a.clone(), true));
            let act = gr.swiglu(&gv, &uv).unwrap();
            let side = if checkpointed {
                let f: BlockFn = Arc::new(|g: &mut Graph, v: &[Var]| Ok(vec![g.linear(&v[0], &v[1], None)?]));
                let fwd = ops::matmul::linear(act.tensor(), &a, None).unwrap();
                let (gt, ut) = (g0.clone(), u0.clone());
                let remake: Remake = Box::new(move || ops::swiglu::swiglu(&gt, &ut));
                gr.checkpoint_given(&[act.clone(), av.clone()], vec![fwd], vec![Some(remake), None], f)
                    .unwrap()
                    .remove(0)
            } else {
                gr.linear(&act, &av, None).unwrap()
            };
            let y = gr.linear_add(&act, &wv, None, &side).unwrap();
            let grads = gr.backward_from(std::slice::from_ref(&y), &[Some(dy.clone())]).unwrap();
            [&gv, &uv, &av].map(|v| grads.get(v).unwrap().to_vec_f32().unwrap())
        };
        let (plain, ck) = (run(false), run(true));
        for (i, what) in ["g", "u", "A"].iter().enumerate() {
            assert_eq!(plain[i], ck[i], "{what}: the re-run adds into act's sum in the plain graph's order");
        }
    }

    /// concat_rows stacks its parts and hands each its rows of the gradient.
    #[test]
    fn concat_rows_stacks_and_splits_the_gradient() {
        let a = Tensor::from_f32(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let b = Tensor::from_f32(vec![5.0, 6.0], &[1, 2]).unwrap();
        let mut g = Graph::training();
        let (av, bv) = (g.leaf(a, true), g.leaf(b, false));
        let y = g.concat_rows(&[&av, &bv]).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(y.tensor().to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let dy = Tensor::from_f32(vec![0.5, 1.5, 2.5, 3.5, 4.5, 5.5], &[3, 2]).unwrap();
        let grads = g.backward_from(std::slice::from_ref(&y), &[Some(dy)]).unwrap();
        assert_eq!(grads.get(&av).unwrap().to_vec_f32().unwrap(), vec![0.5, 1.5, 2.5, 3.5]);
        assert!(grads.get(&bv).is_none(), "a part that needs no gradient gets none");
        assert!(g_err(&[]).is_err() && g_err(&[vec![2, 2], vec![1, 3]]).is_err(), "no parts, or parts of two widths");
    }

    fn g_err(shapes: &[Vec<usize>]) -> Result<Var> {
        let mut g = Graph::training();
        let vs: Vec<Var> = shapes.iter().map(|s| g.leaf(Tensor::zeros(s), true)).collect();
        let refs: Vec<&Var> = vs.iter().collect();
        g.concat_rows(&refs)
    }

    #[test]
    fn watched_gradients_arrive_final_and_once() {
        let mut r = crate::rng::Rng::new(5);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| r.normal() as f32).collect() };
        let x = Tensor::from_f32(rand(6 * 4), &[6, 4]).unwrap();
        let (w1, w2) =
            (Tensor::from_f32(rand(4 * 4), &[4, 4]).unwrap(), Tensor::from_f32(rand(3 * 4), &[3, 4]).unwrap());
        let t = Tensor::from_u32(vec![0, 1, 2, 0, 1, 2], &[6]).unwrap();
        // w1 is used twice (a shared weight, as a tied embedding is), w2 once, `unused` never.
        let run = |watch: bool| {
            let mut g = Graph::training();
            let (xv, a, b, unused) = (
                g.leaf(x.clone(), false),
                g.leaf(w1.clone(), true),
                g.leaf(w2.clone(), true),
                g.leaf(w2.clone(), true),
            );
            let h = g.linear(&xv, &a, None).unwrap();
            let h = g.linear(&h, &a, None).unwrap();
            let logits = g.linear(&h, &b, None).unwrap();
            let loss = g.cross_entropy(&logits, &t).unwrap();
            let seed = Some(Tensor::full(&[1], 1.0));
            if !watch {
                let mut gr = g.backward_from(std::slice::from_ref(&loss), &[seed]).unwrap();
                return vec![gr.take(&a), gr.take(&b), gr.take(&unused)];
            }
            let mut got: Vec<Option<Option<Tensor>>> = vec![None; 3];
            let mut order = vec![];
            let watch = [a.clone(), b.clone(), unused.clone()];
            g.backward_watching(std::slice::from_ref(&loss), &[seed], &watch, &mut |i, t| {
                assert!(got[i].is_none(), "watched {i} handed twice");
                got[i] = Some(t);
                order.push(i);
                Ok(())
            })
            .unwrap();
            assert_eq!(order, vec![1, 0, 2], "the head's weight is final first, the unused one last");
            got.into_iter().map(|g| g.unwrap()).collect()
        };
        let (plain, watched) = (run(false), run(true));
        for (p, w) in plain.iter().zip(&watched) {
            assert_eq!(p.as_ref().map(|t| t.to_vec_f32().unwrap()), w.as_ref().map(|t| t.to_vec_f32().unwrap()));
        }
        assert!(watched[2].is_none());
    }

    #[test]
    fn chunked_linear_cross_entropy_matches_linear_then_cross_entropy() {
        let mut r = crate::rng::Rng::new(3);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| r.normal() as f32).collect() };
        let (n, c, v) = (23, 8, 11);
        let h = Tensor::from_f32(rand(n * c), &[n, c]).unwrap();
        let w = Tensor::from_f32(rand(v * c), &[v, c]).unwrap();
        let t = Tensor::from_u32(
            (0..n as u32).map(|i| if i == 4 { ops::cross_entropy::IGNORE } else { i * 7 % v as u32 }).collect(),
            &[n],
        )
        .unwrap();
        let run = |chunks: Option<(usize, usize)>| {
            let mut g = Graph::training();
            let (hv, wv) = (g.leaf(h.clone(), true), g.leaf(w.clone(), true));
            let loss = match chunks {
                Some((rows, vocab)) => g.linear_cross_entropy(&hv, &wv, &t, rows, vocab).unwrap(),
                None => {
                    let z = g.linear(&hv, &wv, None).unwrap();
                    g.cross_entropy(&z, &t).unwrap()
                }
            };
            let l = loss.tensor().to_vec_f32().unwrap()[0];
            let gr = g.backward(&loss).unwrap();
            (l, gr.get(&hv).unwrap().to_vec_f32().unwrap(), gr.get(&wv).unwrap().to_vec_f32().unwrap())
        };
        let base = run(None);
        assert_eq!(run(Some((100, 100))), base, "one chunk is the unchunked computation");
        // Rows only, vocabulary only (slices of 1, 3 and 4 ids: the target in the first, a middle
        // and the last, partial slice), and both.
        for ch in [(1, 11), (5, 11), (7, 11), (100, 1), (100, 3), (100, 4), (5, 3), (7, 4), (1, 1)] {
            let (l, dh, dw) = run(Some(ch));
            assert!((l - base.0).abs() < 1e-6 * base.0.abs(), "{ch:?}: loss {l} vs {}", base.0);
            // Small chunks take the CPU matmul's matrix-vector path: rounding-level differences.
            for (a, b) in dh.iter().zip(&base.1).chain(dw.iter().zip(&base.2)) {
                assert!((a - b).abs() < 1e-5, "{ch:?}: gradient {a} vs {b}");
            }
        }
    }

    /// A loss gradient announced before the forward (`expect_loss_gradient`): the head + loss
    /// computes its gradients in the forward, bit for bit those the backward computes (same
    /// kernels, values and order), for a trained and a frozen head, several row chunks and one;
    /// a backward that brings another gradient gets that one's (recomputed); several
    /// vocabulary slices ignore the announcement.
    #[test]
    fn gradients_computed_in_the_forward_equal_the_backwards() {
        let mut r = crate::rng::Rng::new(5);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| r.normal() as f32).collect() };
        let (n, c, v) = (37, 16, 29);
        let h = Tensor::from_f32(rand(n * c), &[n, c]).unwrap();
        let w = Tensor::from_f32(rand(v * c), &[v, c]).unwrap();
        let t = Tensor::from_u32(
            (0..n as u32).map(|i| if i % 9 == 4 { ops::cross_entropy::IGNORE } else { i * 5 % v as u32 }).collect(),
            &[n],
        )
        .unwrap();
        type Got = (Vec<u32>, Vec<u32>, Option<Vec<u32>>);
        let run = |announce: Option<f32>, seed: f32, rows: usize, vocab: usize, train_w: bool| -> Got {
            let mut g = Graph::training();
            let (hv, wv) = (g.leaf(h.clone(), true), g.leaf(w.clone(), train_w));
            if let Some(a) = announce {
                g.expect_loss_gradient(a);
            }
            let loss = g.linear_cross_entropy(&hv, &wv, &t, rows, vocab).unwrap();
            let l = loss.tensor().to_vec_f32().unwrap().iter().map(|x| x.to_bits()).collect();
            let gr = g.backward_from(std::slice::from_ref(&loss), &[Some(Tensor::full(&[1], seed))]).unwrap();
            let bits = |t: &Tensor| t.to_vec_f32().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            (l, bits(gr.get(&hv).unwrap()), gr.get(&wv).map(bits))
        };
        for train_w in [true, false] {
            for rows in [5, 8, 100] {
                let plain = run(None, 0.37, rows, v, train_w);
                assert_eq!(run(Some(0.37), 0.37, rows, v, train_w), plain, "rows {rows}, trained head {train_w}");
                assert_eq!(plain.2.is_some(), train_w);
                let other = run(None, 1.5, rows, v, train_w);
                assert_eq!(run(Some(0.37), 1.5, rows, v, train_w), other, "another gradient: recomputed");
                let sliced = run(None, 0.37, rows, 10, train_w);
                assert_eq!(run(Some(0.37), 0.37, rows, 10, train_w), sliced, "vocabulary slices");
            }
        }
    }

    /// A LoRA base: `linear` and the chunked loss skip the dW product for a weight that is not
    /// trained; dx must be what the full backward gives, bit for bit, and the frozen weights get
    /// no gradient.
    #[test]
    fn frozen_weights_give_the_same_input_gradient_and_no_weight_gradient() {
        let mut r = crate::rng::Rng::new(8);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| r.normal() as f32).collect() };
        let (n, c, f, v) = (37, 24, 40, 19);
        let x = Tensor::from_f32(rand(n * c), &[n, c]).unwrap();
        let w1 = Tensor::from_f32(rand(f * c), &[f, c]).unwrap();
        let head = Tensor::from_f32(rand(v * f), &[v, f]).unwrap();
        let t = Tensor::from_u32((0..n as u32).map(|i| i * 5 % v as u32).collect(), &[n]).unwrap();
        let run = |train_w: bool, chunks: (usize, usize)| {
            let mut g = Graph::training();
            let (xv, wv, hv) = (g.leaf(x.clone(), true), g.leaf(w1.clone(), train_w), g.leaf(head.clone(), train_w));
            let h = g.linear(&xv, &wv, None).unwrap();
            let loss = g.linear_cross_entropy(&h, &hv, &t, chunks.0, chunks.1).unwrap();
            let gr = g.backward(&loss).unwrap();
            let w_grads = [gr.get(&wv).is_some(), gr.get(&hv).is_some()];
            (loss.tensor().to_vec_f32().unwrap(), gr.get(&xv).unwrap().to_vec_f32().unwrap(), w_grads)
        };
        // One row chunk (the logits kept from the forward) and several (computed again).
        for chunks in [(100, 100), (100, 7), (10, 7)] {
            let (l, dx, trained) = run(true, chunks);
            let (lf, dxf, frozen) = run(false, chunks);
            assert_eq!((l, dx), (lf, dxf), "{chunks:?}");
            assert_eq!((trained, frozen), ([true, true], [false, false]), "{chunks:?}");
        }
    }

    /// `linear_side` over `concat_cols([x, side])` gives x·wᵀ + side's columns·bᵀ + bias and the
    /// gradients of x, side and b that the separate products give (f32, within rounding: one
    /// product sums over in + side's width in its own order), for B at the side's first, middle
    /// and last columns; the frozen weight and bias get none.
    #[test]
    fn linear_side_equals_the_base_product_plus_the_adapters() {
        let mut r = crate::rng::Rng::new(12);
        let mut rand = |shape: &[usize]| {
            Tensor::from_f32((0..shape.iter().product::<usize>()).map(|_| r.normal() as f32).collect(), shape).unwrap()
        };
        let (n, k, m, rank) = (23, 20, 17, 3);
        let (x, w, bias, side) = (rand(&[n, k]), rand(&[m, k]), rand(&[m]), rand(&[n, 3 * rank]));
        let b = rand(&[m, rank]);
        let dy = rand(&[n, m]);
        for off in [0, rank, 2 * rank] {
            // The separate products: x·wᵀ + bias + side[:, off..off+r]·bᵀ.
            let mut g = Graph::training();
            let (xv, sv, wv, biv, bv) = (
                g.leaf(x.clone(), true),
                g.leaf(side.clone(), true),
                g.leaf(w.clone(), false),
                g.leaf(bias.clone(), false),
                g.leaf(b.clone(), true),
            );
            // side's columns off .. off + r through a 0/1 selection product (as LoRA selects).
            let mut sel = vec![0f32; rank * 3 * rank];
            for i in 0..rank {
                sel[i * 3 * rank + off + i] = 1.0;
            }
            let selv = g.constant(Tensor::from_f32(sel, &[rank, 3 * rank]).unwrap());
            let cols = g.linear(&sv, &selv, None).unwrap();
            let up = g.linear(&cols, &bv, None).unwrap();
            let y0 = g.linear_add(&xv, &wv, Some(&biv), &up).unwrap();
            let g0 = g.backward_from(std::slice::from_ref(&y0), &[Some(dy.clone())]).unwrap();
            // One product over [x | side].
            let mut h = Graph::training();
            let (xv2, sv2, wv2, biv2, bv2) = (
                h.leaf(x.clone(), true),
                h.leaf(side.clone(), true),
                h.leaf(w.clone(), false),
                h.leaf(bias.clone(), false),
                h.leaf(b.clone(), true),
            );
            let xe = h.concat_cols(&[&xv2, &sv2]).unwrap();
            let y1 = h.linear_side(&xe, &side, &wv2, &bv2, off, Some(&biv2)).unwrap();
            let g1 = h.backward_from(std::slice::from_ref(&y1), &[Some(dy.clone())]).unwrap();
            let close = |what: &str, a: &Tensor, b: &Tensor| {
                let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
                let worst = a.iter().zip(b).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0f32, f32::max);
                assert!(worst < 1e-5, "off {off}: {what} differs by {worst}");
            };
            close("y", y1.tensor(), y0.tensor());
            close("dx", g1.get(&xv2).unwrap(), g0.get(&xv).unwrap());
            close("dside", g1.get(&sv2).unwrap(), g0.get(&sv).unwrap());
            close("dB", g1.get(&bv2).unwrap(), g0.get(&bv).unwrap());
            assert!(g1.get(&wv2).is_none() && g1.get(&biv2).is_none(), "frozen w and bias get no gradient");
        }
    }

    /// `linear_lora_remade` against the separate products it replaces (x·aᵀ, the scale, ·bᵀ,
    /// linear_add by w): the output, x's gradient added into a sum already there, a's and b's.
    #[test]
    fn linear_lora_remade_equals_the_separate_products() {
        let mut r = crate::rng::Rng::new(21);
        let mut rand = |shape: &[usize]| {
            Tensor::from_f32((0..shape.iter().product::<usize>()).map(|_| r.normal() as f32).collect(), shape).unwrap()
        };
        let (n, inp, out, rank, s) = (19, 24, 13, 3, 0.7f32);
        let (x, w, a, b, dy, prior) = (
            rand(&[n, inp]),
            rand(&[out, inp]),
            rand(&[rank, inp]),
            rand(&[out, rank]),
            rand(&[n, out]),
            rand(&[n, inp]),
        );
        // x feeds a second consumer (a product by `other`), so its sum holds a gradient before ours.
        let other = rand(&[inp, inp]);
        let run = |fused: bool| {
            let mut g = Graph::training();
            let (xv, wv, av, bv, ov) = (
                g.leaf(x.clone(), true),
                g.leaf(w.clone(), false),
                g.leaf(a.clone(), true),
                g.leaf(b.clone(), true),
                g.leaf(other.clone(), false),
            );
            let y = if fused {
                let xt = x.clone();
                g.linear_lora_remade(&xv, &wv, &av, &bv, s, Box::new(move || Ok(xt))).unwrap()
            } else {
                let down = g.linear(&xv, &av, None).unwrap();
                let down = g.scale(&down, s).unwrap();
                let up = g.linear(&down, &bv, None).unwrap();
                g.linear_add(&xv, &wv, None, &up).unwrap()
            };
            let z = g.linear(&xv, &ov, None).unwrap();
            let gr = g.backward_from(&[y.clone(), z], &[Some(dy.clone()), Some(prior.clone())]).unwrap();
            let get = |v: &Var| gr.get(v).unwrap().clone();
            (y.tensor().clone(), get(&xv), get(&av), get(&bv), gr.get(&wv).is_none())
        };
        let (y0, dx0, da0, db0, _) = run(false);
        let (y1, dx1, da1, db1, frozen) = run(true);
        let close = |what: &str, p: &Tensor, q: &Tensor| {
            let (p, q) = (p.as_f32().unwrap(), q.as_f32().unwrap());
            let worst = p.iter().zip(q).map(|(u, v)| (u - v).abs() / (1.0 + v.abs())).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{what} differs by {worst}");
        };
        assert_eq!(y1.as_f32().unwrap(), y0.as_f32().unwrap(), "the same forward products");
        close("dx", &dx1, &dx0);
        close("da", &da1, &da0);
        close("db", &db1, &db0);
        assert!(frozen, "the frozen base gets no gradient");
    }

    #[test]
    fn split_rows_passes_each_blocks_gradient_back_to_its_rows() {
        let x = Tensor::from_f32((0..12).map(|i| i as f32).collect(), &[6, 2]).unwrap();
        let mut g = Graph::training();
        let xv = g.leaf(x, true);
        let parts = g.split_rows(&xv, &[1, 3, 2]).unwrap();
        assert_eq!(parts[1].tensor().to_vec_f32().unwrap(), [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(parts[2].shape(), [2, 2]);
        // Seed the first and last blocks only: the middle rows get zeros.
        let seeds = [Some(Tensor::full(&[1, 2], 2.0)), None, Some(Tensor::full(&[2, 2], -1.0))];
        let gr = g.backward_from(&parts, &seeds).unwrap();
        let want = [2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0];
        assert_eq!(gr.get(&xv).unwrap().to_vec_f32().unwrap(), want);
        let mut g = Graph::training();
        let y = g.leaf(Tensor::zeros(&[3, 2]), true);
        assert!(g.split_rows(&y, &[1, 1]).is_err(), "blocks must cover the rows");
    }

    #[test]
    fn checkpoint_gives_the_same_gradients() {
        let w = Tensor::from_f32((0..12).map(|i| (i as f32 * 0.37).sin()).collect(), &[4, 3]).unwrap();
        let x = Tensor::from_f32((0..6).map(|i| (i as f32 * 0.71).cos()).collect(), &[2, 3]).unwrap();
        let n = Tensor::from_f32(vec![1.0, 0.5, 2.0, 1.5], &[4]).unwrap();
        let targets = Tensor::from_u32(vec![1, 3], &[2]).unwrap();
        let block: BlockFn = Arc::new(|g: &mut Graph, v: &[Var]| {
            let y = g.linear(&v[0], &v[1], None)?;
            let s = g.swiglu(&y, &y)?;
            Ok(vec![g.rmsnorm(&s, &v[2], 1e-5)?])
        });
        let run = |ckpt: bool| {
            let mut g = Graph::training();
            let (xv, wv, nv) = (g.leaf(x.clone(), true), g.leaf(w.clone(), true), g.leaf(n.clone(), true));
            let out = if ckpt {
                g.checkpoint(&[xv.clone(), wv.clone(), nv.clone()], block.clone()).unwrap().pop().unwrap()
            } else {
                block(&mut g, &[xv.clone(), wv.clone(), nv.clone()]).unwrap().pop().unwrap()
            };
            let loss = g.cross_entropy(&out, &targets).unwrap();
            let gr = g.backward(&loss).unwrap();
            [&xv, &wv, &nv].map(|v| gr.get(v).unwrap().to_vec_f32().unwrap())
        };
        assert_eq!(run(false), run(true));
    }
}
