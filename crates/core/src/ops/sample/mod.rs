//! Sampling helpers over one row of logits: argmax and top-k selection.

/// Index of the largest value (the first one on ties, as torch.argmax does).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Indices of the k largest values, largest first (ties: lower index first).
pub fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(x.len());
    let mut idx: Vec<usize> = (0..x.len()).collect();
    let cmp = |a: &usize, b: &usize| x[*b].partial_cmp(&x[*a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b));
    if k < x.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    #[test]
    fn argmax_and_top_k() {
        let x = [0.1, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(super::argmax(&x), 1);
        assert_eq!(super::top_k(&x, 3), vec![1, 3, 4]);
    }
}
