//! Activation smoothing before quantisation (SmoothQuant, Xiao et al. 2022, arXiv:2211.10438),
//! folded into the RMSNorm weights so that the file stays a plain `llama` GGUF.
//!
//! llama.cpp quantises every matmul's input too (to Q8_0 / Q8_1 / Q8_K blocks of 32 or 256
//! values with one scale each), and after an RMSNorm a few channels carry most of the
//! magnitude: one outlier sets the scale of its block and the other 31 values lose their low
//! bits. On SmolLM2-135M that input rounding, not the weights', is most of what Q8_0 costs
//! (docs/GGUF.md). A norm feeds its matrices through one diagonal: `W (γ ⊙ x̂) = (W diag(s))
//! ((γ / s) ⊙ x̂)` for any positive `s`, so dividing γ by `s` and multiplying the matrices'
//! columns by it gives the same function with flatter activations and a little more spread in the
//! weights. With `a_j` the root mean square of input column j over calibration text (from the
//! importance matrix) and `w_j` the largest |weight| in column j over the matrices the norm
//! feeds, `s_j = a_j^α / w_j^(1-α)`, normalised to a geometric mean of 1; α = 0.5 splits the
//! range evenly between the two.
//!
//! Smoothed here: `attn_norm` into q/k/v and `ffn_norm` into gate/up, in every layer. The
//! returned importance matrix is the one the smoothed model would collect (Σx² / s²), so
//! imatrix-weighted quantisers weigh the new columns correctly.

use crate::imatrix::Imatrix;
use crate::load::gguf_name;
use anyhow::{bail, Context, Result};
use smelt_core::Tensor;
use smelt_model::params::Role::{AttnNorm, FfnNorm, WGate, WUp, Wk, Wq, Wv};
use smelt_model::Model;

/// What `smooth` did: per smoothed group (norm and the matrices it feeds), the range of `s`.
#[derive(Debug, Default)]
pub struct SmoothReport {
    pub groups: usize,
    /// Groups left as they were: no column had both activations and weights.
    pub skipped: usize,
    /// Smallest and largest scale over all groups.
    pub min_scale: f32,
    pub max_scale: f32,
}

fn read(model: &Model, params: &[Tensor], i: usize) -> Result<Vec<f32>> {
    params[i].to_vec_f32().with_context(|| format!("smoothing: reading {}", model.names[i]))
}

fn name_of(model: &Model, i: usize) -> Result<String> {
    gguf_name(&model.names[i]).with_context(|| format!("smoothing: no GGUF name for {}", model.names[i]))
}

/// Scales are kept within this factor of 1 either way, so a dead channel (a_j ≈ 0) or an
/// all-zero weight column cannot blow up γ or the weights.
const MAX_SCALE: f32 = 1e3;

/// The model with every layer's attn_norm / ffn_norm folded against its matrices (module
/// docs), and the importance matrix as it would be for the new model.
pub fn smooth(model: &Model, im: &Imatrix, alpha: f32) -> Result<(Model, Imatrix, SmoothReport)> {
    if !(alpha > 0.0 && alpha < 1.0) {
        bail!("smoothing: alpha must lie strictly between 0 and 1 (got {alpha})");
    }
    let c = &model.cfg;
    let mut params = model.params.clone();
    let mut out = im.clone();
    let mut report = SmoothReport { min_scale: f32::INFINITY, max_scale: 0.0, ..Default::default() };
    for l in &model.idx.layers {
        for (norm, mats) in [(l[AttnNorm], vec![l[Wq], l[Wk], l[Wv]]), (l[FfnNorm], vec![l[WGate], l[WUp]])] {
            let n = c.dim;
            // Every matrix of the group saw the same input; take the first one's statistics.
            let first = name_of(model, mats[0])?;
            let Some(a2) = im.weights(&first) else {
                bail!("smoothing: the importance matrix has no entry for {first}")
            };
            // `weights` stands in 1 for a matrix that saw no tokens: no statistics to smooth by.
            if im.entries[&first].counts.iter().all(|&c| c == 0) {
                bail!("smoothing: the importance matrix saw no tokens for {first}");
            }
            if a2.len() != n {
                bail!("smoothing: {first} has {} importance weights, the model {n} columns (an imatrix of another model?)", a2.len());
            }
            let ws: Vec<Vec<f32>> = mats.iter().map(|&i| read(model, &params, i)).collect::<Result<_>>()?;
            let mut wmax = vec![0f32; n];
            for w in &ws {
                for row in w.chunks_exact(n) {
                    for (m, x) in wmax.iter_mut().zip(row) {
                        *m = m.max(x.abs());
                    }
                }
            }
            let raw: Vec<f32> = (0..n)
                .map(|j| {
                    let (a, w) = (a2[j].max(0.0).sqrt(), wmax[j]);
                    if a > 0.0 && w > 0.0 {
                        a.powf(alpha) / w.powf(1.0 - alpha)
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            let finite: Vec<f64> = raw.iter().filter(|v| v.is_finite()).map(|&v| (v as f64).ln()).collect();
            if finite.is_empty() {
                // No column with both activations and weights: nothing to balance.
                report.skipped += 1;
                continue;
            }
            let gmean = (finite.iter().sum::<f64>() / finite.len() as f64).exp() as f32;
            let s: Vec<f32> = raw
                .iter()
                .map(|&v| if v.is_finite() { (v / gmean).clamp(1.0 / MAX_SCALE, MAX_SCALE) } else { 1.0 })
                .collect();
            let gamma: Vec<f32> = read(model, &params, norm)?.iter().zip(&s).map(|(g, s)| g / s).collect();
            params[norm] = Tensor::from_f32(gamma, &[n])?;
            for (&i, mut w) in mats.iter().zip(ws) {
                for row in w.chunks_exact_mut(n) {
                    for (x, s) in row.iter_mut().zip(&s) {
                        *x *= s;
                    }
                }
                let shape = params[i].shape().to_vec();
                params[i] = Tensor::from_f32(w, &shape)?;
                let name = name_of(model, i)?;
                if let Some(e) = out.entries.get_mut(&name) {
                    if e.sums.len() != n {
                        bail!("smoothing: {name} has {} importance sums, the model {n} columns", e.sums.len());
                    }
                    for (v, s) in e.sums.iter_mut().zip(&s) {
                        *v /= s * s;
                    }
                }
            }
            report.groups += 1;
            for &v in &s {
                report.min_scale = report.min_scale.min(v);
                report.max_scale = report.max_scale.max(v);
            }
        }
    }
    if report.groups == 0 {
        bail!("smoothing: no norm could be smoothed ({} groups without usable statistics)", report.skipped);
    }
    let m = model.with_params(params).context("smoothing")?;
    Ok((m, out, report))
}
