//! Named model sizes. Parameter counts in the comments are at vocabulary 8192, tied head.

use crate::config::ModelConfig;
use anyhow::{bail, Result};

/// (name, dim, layers, heads, kv_heads, ffn_hidden)
pub const PRESETS: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("tiny", 128, 4, 4, 4, 512),       // ~2.1M
    ("small", 256, 6, 4, 4, 768),      // ~7.2M
    ("medium", 512, 12, 8, 8, 1536),   // ~45.1M
    ("large", 1024, 16, 16, 16, 2816), // ~211M
    ("xl", 1536, 21, 12, 12, 4096),    // ~607M
    ("max", 2048, 24, 16, 16, 5632),   // ~1.25B
    ("3b", 3072, 26, 24, 8, 8192),     // ~2.8B
    ("6.5b", 4096, 32, 32, 32, 11008), // ~6.5B
];

pub fn preset(name: &str, vocab_size: usize) -> Result<ModelConfig> {
    match PRESETS.iter().find(|p| p.0 == name) {
        Some(&(_, dim, layers, heads, kv, ffn)) => Ok(ModelConfig::llama(vocab_size, dim, layers, heads, kv, ffn)),
        None => bail!(
            "unknown size {name:?}; choose one of {} or `custom` with --dim --layers --heads --kv-heads --ffn-hidden",
            PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn preset_sizes_match_their_names() {
        let n = |s| super::preset(s, 8192).unwrap().n_params() as f64 / 1e6;
        assert!((n("tiny") - 2.1).abs() < 0.1, "{}", n("tiny"));
        assert!((n("small") - 7.2).abs() < 0.1, "{}", n("small"));
        assert!((n("medium") - 45.1).abs() < 0.1, "{}", n("medium"));
        assert!((n("6.5b") / 1000.0 - 6.5).abs() < 0.1);
    }
}
