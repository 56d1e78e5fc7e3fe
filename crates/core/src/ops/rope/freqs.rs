//! RoPE inverse-frequency tables, following Hugging Face's `modeling_rope_utils` so that
//! scaled checkpoints load with the same numbers.

use std::f64::consts::PI;

/// inv_freq[i] = 1 / theta^(2i / d)
pub fn default_inv_freq(theta: f64, d: usize) -> Vec<f64> {
    (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64)).collect()
}

/// Position interpolation: every frequency divided by `factor`.
pub fn linear_inv_freq(theta: f64, d: usize, factor: f64) -> Vec<f64> {
    default_inv_freq(theta, d).into_iter().map(|f| f / factor).collect()
}

/// NTK-aware scaling: stretch the base so the lowest frequency is interpolated by `factor`
/// while the highest is left nearly untouched: theta' = theta · factor^(d / (d − 2)).
pub fn ntk_inv_freq(theta: f64, d: usize, factor: f64) -> Vec<f64> {
    default_inv_freq(theta * factor.powf(d as f64 / (d as f64 - 2.0)), d)
}

/// YaRN: blend interpolated and extrapolated frequencies with a linear ramp between the
/// correction dimensions, and scale attention by `attention_factor` (default 0.1·ln(factor) + 1).
/// Returns (inv_freq, attention_factor).
pub fn yarn_inv_freq(
    theta: f64,
    d: usize,
    factor: f64,
    original_max_pos: f64,
    beta_fast: f64,
    beta_slow: f64,
    attention_factor: Option<f64>,
    truncate: bool,
) -> (Vec<f64>, f64) {
    let mscale = if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 };
    let attn = attention_factor.unwrap_or(mscale);
    let corr_dim = |rot: f64| (d as f64 * (original_max_pos / (rot * 2.0 * PI)).ln()) / (2.0 * theta.ln());
    let (mut low, mut high) = (corr_dim(beta_fast), corr_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let (low, mut high) = (low.max(0.0), high.min(d as f64 - 1.0));
    if low == high {
        high += 0.001;
    }
    let inv = (0..d / 2)
        .map(|i| {
            let pos_freq = theta.powf((2 * i) as f64 / d as f64);
            let (extra, inter) = (1.0 / pos_freq, 1.0 / (factor * pos_freq));
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extra_factor = 1.0 - ramp;
            inter * (1.0 - extra_factor) + extra * extra_factor
        })
        .collect();
    (inv, attn)
}

/// Llama-3.1 scaling: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
pub fn llama3_inv_freq(
    theta: f64,
    d: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_max_pos: f64,
) -> Vec<f64> {
    let low_wavelen = original_max_pos / low_freq_factor;
    let high_wavelen = original_max_pos / high_freq_factor;
    default_inv_freq(theta, d)
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (original_max_pos / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yarn_interpolates_low_and_keeps_high_frequencies() {
        let d = 64;
        let base = default_inv_freq(10000.0, d);
        let (y, attn) = yarn_inv_freq(10000.0, d, 4.0, 2048.0, 32.0, 1.0, None, true);
        assert!((y[0] - base[0]).abs() < 1e-12, "highest frequency extrapolated as is");
        assert!((y[d / 2 - 1] - base[d / 2 - 1] / 4.0).abs() < 1e-12, "lowest interpolated");
        assert!((attn - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        let n = ntk_inv_freq(10000.0, d, 4.0);
        assert!((n[0] - 1.0).abs() < 1e-12 && n[d / 2 - 1] < base[d / 2 - 1]);
    }
}
