//! Test helpers shared by every op: finite-difference gradient checks in f64.

use crate::rng::Rng;

pub fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}

/// Checks `bwd` against central finite differences of L = Σ dy·f(inputs) for a random dy.
/// `bwd(inputs, dy)` returns one gradient per input (same lengths).
pub fn gradcheck(
    inputs: &[Vec<f64>],
    f: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    bwd: impl Fn(&[Vec<f64>], &[f64]) -> Vec<Vec<f64>>,
) {
    let y = f(inputs);
    let dy = rand_vec(y.len(), 99);
    let grads = bwd(inputs, &dy);
    assert_eq!(grads.len(), inputs.len());
    let loss = |v: &[Vec<f64>]| -> f64 { f(v).iter().zip(&dy).map(|(a, b)| a * b).sum() };
    let eps = 1e-6;
    for (i, inp) in inputs.iter().enumerate() {
        assert_eq!(grads[i].len(), inp.len(), "gradient {i} has the wrong length");
        let mut v = inputs.to_vec();
        let mut max_err = 0f64;
        let mut max_g = 1e-3f64;
        for j in 0..inp.len() {
            v[i][j] = inp[j] + eps;
            let lp = loss(&v);
            v[i][j] = inp[j] - eps;
            let lm = loss(&v);
            v[i][j] = inp[j];
            let num = (lp - lm) / (2.0 * eps);
            max_err = max_err.max((num - grads[i][j]).abs());
            max_g = max_g.max(num.abs());
        }
        assert!(max_err / max_g < 1e-6, "input {i}: max |analytic - numeric| = {max_err:e} (scale {max_g:e})");
    }
}
