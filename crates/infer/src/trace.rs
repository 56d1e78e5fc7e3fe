//! The visible inference path: one forward on a tracing graph, every named intermediate
//! (llama.cpp's names: `attn_norm-0`, `Qcur-0`, … `result_output`) with its shape, the time of
//! the stage that produced it, and summary statistics.

use anyhow::Result;
use smelt_core::{Graph, Tensor};
use smelt_model::{KvCache, Logits, Model};

pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub min: f32,
    pub max: f32,
    /// NaN or infinite values.
    pub non_finite: usize,
}

impl Stats {
    pub fn of(v: &[f32]) -> Stats {
        let (mut s, mut s2, mut min, mut max, mut bad, mut n) =
            (0f64, 0f64, f32::INFINITY, f32::NEG_INFINITY, 0, 0usize);
        for &x in v {
            if !x.is_finite() {
                bad += 1;
                continue;
            }
            s += x as f64;
            s2 += (x as f64) * (x as f64);
            min = min.min(x);
            max = max.max(x);
            n += 1;
        }
        let mean = if n > 0 { s / n as f64 } else { 0.0 };
        let var = if n > 0 { (s2 / n as f64 - mean * mean).max(0.0) } else { 0.0 };
        Stats { mean, std: var.sqrt(), min, max, non_finite: bad }
    }
}

pub struct Stage {
    pub name: String,
    pub tensor: Tensor,
    pub seconds: f64,
    pub stats: Stats,
}

/// Runs `ids` (one sequence) through the model, keeping every named intermediate.
pub fn trace(model: &Model, ids: &[u32]) -> Result<Vec<Stage>> {
    let mut g = Graph::tracing();
    let p = model.param_vars(&mut g, false);
    let tokens = Tensor::from_u32(ids.to_vec(), &[1, ids.len()])?;
    model.forward(&mut g, &p, &tokens, None, Logits::All, false)?;
    g.take_trace()
        .into_iter()
        .map(|e| {
            let stats = Stats::of(&e.tensor.to_vec_f32()?);
            Ok(Stage { name: e.name, tensor: e.tensor, seconds: e.seconds, stats })
        })
        .collect()
}

/// The generation path step by step: the prompt through a KV cache (logits of the last
/// position only, as `generate` runs it), then `n_decode` greedy single-token steps. Returns
/// every step's named intermediates (step 0: the prompt) and the greedy tokens.
pub fn trace_decode(model: &Model, ids: &[u32], n_decode: usize) -> Result<(Vec<Vec<Stage>>, Vec<u32>)> {
    let mut cache = KvCache::new_on(&model.cfg, 1, ids.len() + n_decode + 1, model.device())?;
    let (mut steps, mut out) = (vec![], vec![]);
    let mut input = ids.to_vec();
    for _ in 0..=n_decode {
        let mut g = Graph::tracing();
        let p = model.param_vars(&mut g, false);
        let tokens = Tensor::from_u32(input.clone(), &[1, input.len()])?;
        let logits =
            model.forward(&mut g, &p, &tokens, Some(&mut cache), Logits::Last, false)?.tensor().to_vec_f32()?;
        let next =
            logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32;
        steps.push(
            g.take_trace()
                .into_iter()
                .map(|e| {
                    let stats = Stats::of(&e.tensor.to_vec_f32()?);
                    Ok(Stage { name: e.name, tensor: e.tensor, seconds: e.seconds, stats })
                })
                .collect::<Result<_>>()?,
        );
        out.push(next);
        input = vec![next];
    }
    Ok((steps, out))
}
