//! Model configuration: one struct for every supported family (they differ by data, not by
//! code), read from and written as Hugging Face `config.json`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use smelt_core::ops::rope::{freqs, RopeLayout, RopeTable};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    /// NTK-aware base stretching (static).
    Ntk {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_max_pos: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        truncate: bool,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_pos: f64,
    },
}

/// The normalisation every norm tensor of the table applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// x / rms(x) · w (every supported family).
    Rms,
}

/// The feed-forward's gated activation: act(gate) · up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) · up.
    Silu,
}

impl Activation {
    /// Hugging Face's `hidden_act` value.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
        }
    }
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "silu" => Some(Activation::Silu),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub max_pos: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_embeddings: bool,
    /// Bias on the q/k/v projections (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm on each head of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub sliding_window: Option<usize>,
    /// Which layers the sliding window applies to (`None`: every layer). Per-layer variation as
    /// data, as Qwen2's `max_window_layers` / transformers' `layer_types` describe it; not read
    /// from or written to config.json yet (no transformers parity fixture for it here).
    pub sliding_layers: Option<Vec<bool>>,
    pub norm: NormKind,
    pub act: Activation,
    /// Softmax scale of the attention scores; `None` is 1/√head_dim (every supported family:
    /// none of their config.json files has a field for it, so it is not written there).
    pub attn_scale: Option<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// A Llama-architecture config from the shape numbers (head_dim = dim / heads).
    pub fn llama(
        vocab_size: usize,
        dim: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        ffn_hidden: usize,
    ) -> Self {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size,
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads.max(1),
            ffn_hidden,
            max_pos: 2048,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            tie_embeddings: true,
            qkv_bias: false,
            qk_norm: false,
            sliding_window: None,
            sliding_layers: None,
            norm: NormKind::Rms,
            act: Activation::Silu,
            attn_scale: None,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.n_layers == 0 || self.n_heads == 0 || self.vocab_size == 0 || self.ffn_hidden == 0 {
            bail!("model config: dim, layers, heads, vocab size and ffn hidden must all be positive");
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!("model config: {} heads is not a multiple of {} KV heads", self.n_heads, self.n_kv_heads);
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!("model config: head dim {} must be even and positive for RoPE", self.head_dim);
        }
        // No position fits: generate would say "nothing is generated" and exit 0.
        if self.max_pos == 0 {
            bail!("model config: a context length (max_position_embeddings) of 0");
        }
        if let Some(s) = self.attn_scale.filter(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("model config: attention scale {s} must be a positive number");
        }
        // Either would run and give NaN everywhere (and a perplexity of NaN with exit code 0).
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("model config: rope_theta {} must be a finite number > 0", self.rope_theta);
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            bail!("model config: rms_norm_eps {} must be a finite number >= 0", self.norm_eps);
        }
        if let Some(v) = &self.sliding_layers {
            if v.len() != self.n_layers {
                bail!("model config: sliding_layers has {} entries for {} layers", v.len(), self.n_layers);
            }
            if self.sliding_window.is_none() && v.iter().any(|&s| s) {
                bail!("model config: sliding_layers marks layers but there is no sliding_window");
            }
        }
        Ok(())
    }

    /// The softmax scale of the attention scores: `attn_scale`, or 1/√head_dim computed in f32.
    pub fn attention_scale(&self) -> f32 {
        self.attn_scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    /// The sliding window of layer `layer`'s attention: `sliding_window` on the layers
    /// `sliding_layers` marks (all of them when it is `None`), full attention elsewhere.
    pub fn window(&self, layer: usize) -> Option<usize> {
        let slides = self.sliding_layers.as_ref().is_none_or(|v| v.get(layer).copied().unwrap_or(false));
        self.sliding_window.filter(|_| slides)
    }

    pub fn rope_table(&self, layout: RopeLayout) -> RopeTable {
        let (t, d) = (self.rope_theta, self.head_dim);
        let (inv_freq, attention_factor) = match &self.rope_scaling {
            RopeScaling::None => (freqs::default_inv_freq(t, d), 1.0),
            RopeScaling::Linear { factor } => (freqs::linear_inv_freq(t, d, *factor), 1.0),
            RopeScaling::Ntk { factor } => (freqs::ntk_inv_freq(t, d, *factor), 1.0),
            RopeScaling::Yarn { factor, original_max_pos, beta_fast, beta_slow, attention_factor, truncate } => {
                freqs::yarn_inv_freq(
                    t,
                    d,
                    *factor,
                    *original_max_pos,
                    *beta_fast,
                    *beta_slow,
                    *attention_factor,
                    *truncate,
                )
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_pos } => {
                (freqs::llama3_inv_freq(t, d, *factor, *low_freq_factor, *high_freq_factor, *original_max_pos), 1.0)
            }
        };
        RopeTable::new(inv_freq, attention_factor, layout)
    }

    /// Parses a Hugging Face `config.json` (both the `rope_theta`/`torch_dtype` style and
    /// transformers 5's `rope_parameters`/`dtype`). Anything it cannot honour is an error.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        Self::from_hf_json(&v).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let arch_name = v["architectures"].get(0).and_then(|a| a.as_str()).unwrap_or("");
        let arch = match (arch_name, v["model_type"].as_str().unwrap_or("")) {
            ("LlamaForCausalLM", _) | ("", "llama") => Arch::Llama,
            ("MistralForCausalLM", _) | ("", "mistral") => Arch::Mistral,
            ("Qwen2ForCausalLM", _) | ("", "qwen2") => Arch::Qwen2,
            ("Qwen3ForCausalLM", _) | ("", "qwen3") => Arch::Qwen3,
            (a, t) => bail!("unsupported architecture {a:?} (model_type {t:?}); smelt runs LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM"),
        };
        let u = |k: &str| -> Result<usize> {
            v[k].as_u64().map(|x| x as usize).with_context(|| format!("config field {k:?} missing or not an integer"))
        };
        // An optional field of the wrong type would be read below as absent, i.e. as its default
        // (a rope_theta of "1e6" would run at 10000 without a word): refuse it by name.
        let is_ids = |x: &Value| x.is_u64() || x.as_array().is_some_and(|a| a.iter().all(Value::is_u64));
        // (field, what it must be, the test)
        type Typed<'a> = (&'a str, &'a str, fn(&Value) -> bool);
        let typed: [Typed; 16] = [
            ("num_key_value_heads", "an integer", Value::is_u64),
            ("head_dim", "an integer", Value::is_u64),
            ("max_position_embeddings", "an integer", Value::is_u64),
            ("sliding_window", "an integer", Value::is_u64),
            ("bos_token_id", "an integer", Value::is_u64),
            ("eos_token_id", "an integer or a list of integers", is_ids),
            ("rope_theta", "a number", Value::is_number),
            ("rms_norm_eps", "a number", Value::is_number),
            ("partial_rotary_factor", "a number", Value::is_number),
            ("hidden_act", "a string", Value::is_string),
            ("tie_word_embeddings", "true or false", Value::is_boolean),
            ("attention_bias", "true or false", Value::is_boolean),
            ("mlp_bias", "true or false", Value::is_boolean),
            ("use_sliding_window", "true or false", Value::is_boolean),
            ("rope_scaling", "an object", Value::is_object),
            ("rope_parameters", "an object", Value::is_object),
        ];
        for (k, want, is) in typed {
            if let Some(x) = v.get(k).filter(|x| !x.is_null() && !is(x)) {
                bail!("config field {k:?} is {x}, expected {want}");
            }
        }
        let dim = u("hidden_size")?;
        let n_heads = u("num_attention_heads")?;
        let n_kv_heads = v["num_key_value_heads"].as_u64().map(|x| x as usize).unwrap_or(n_heads);
        let head_dim = v["head_dim"].as_u64().map(|x| x as usize).unwrap_or(dim / n_heads.max(1));
        let act = match v["hidden_act"].as_str() {
            None => Activation::Silu,
            Some(a) => Activation::from_hf(a)
                .with_context(|| format!("hidden_act {a:?} is not supported (only silu / SwiGLU)"))?,
        };
        if v["mlp_bias"].as_bool() == Some(true) {
            bail!("mlp_bias = true is not supported");
        }
        // Llama, Mistral and Qwen3 put `attention_bias` on o_proj too; only Qwen2's q/k/v-only bias is supported.
        if arch != Arch::Qwen2 && v["attention_bias"].as_bool() == Some(true) {
            bail!("attention_bias = true is not supported for {} (it also biases o_proj)", arch.hf_name());
        }
        if let Some(types) = v["layer_types"].as_array() {
            if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                bail!("layer_types contains {t}: only full_attention layers are supported (Mistral's sliding_window applies to all layers)");
            }
        }
        // transformers 5 moved rope settings into `rope_parameters`.
        let rp = if v["rope_parameters"].is_object() { &v["rope_parameters"] } else { &v["rope_scaling"] };
        let rope_theta =
            v["rope_theta"].as_f64().or_else(|| v["rope_parameters"]["rope_theta"].as_f64()).unwrap_or(10000.0);
        let partial =
            v["partial_rotary_factor"].as_f64().or_else(|| rp["partial_rotary_factor"].as_f64()).unwrap_or(1.0);
        if partial != 1.0 {
            bail!("partial_rotary_factor = {partial} is not supported (RoPE over the whole head only)");
        }
        // transformers' per-family defaults (they matter: YaRN and llama3 fall back to them).
        let default_max_pos = match arch {
            Arch::Llama => 2048,
            Arch::Mistral => 4096 * 32,
            Arch::Qwen2 | Arch::Qwen3 => 32768,
        };
        let max_pos = v["max_position_embeddings"].as_u64().unwrap_or(default_max_pos) as usize;
        let rope_scaling = parse_rope_scaling(rp, max_pos)?;
        let ids = |x: &Value| -> Vec<u32> {
            match x {
                Value::Array(a) => a.iter().filter_map(|i| i.as_u64()).map(|i| i as u32).collect(),
                Value::Number(n) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
                _ => vec![],
            }
        };
        let sliding_window = match arch {
            Arch::Mistral => v["sliding_window"].as_u64().map(|w| w as usize),
            Arch::Qwen2 | Arch::Qwen3 if v["use_sliding_window"].as_bool() == Some(true) => {
                bail!("use_sliding_window = true is not supported for {}", arch.hf_name())
            }
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: u("vocab_size")?,
            dim,
            n_layers: u("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_hidden: u("intermediate_size")?,
            max_pos,
            norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: match arch {
                Arch::Qwen2 => true,
                _ => v["attention_bias"].as_bool().unwrap_or(false),
            },
            qk_norm: arch == Arch::Qwen3,
            sliding_window,
            sliding_layers: None,
            norm: NormKind::Rms,
            act,
            attn_scale: None,
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_ids: ids(&v["eos_token_id"]),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.arch.hf_name()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.ffn_hidden,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.act.hf_name(),
            "max_position_embeddings": self.max_pos,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": self.qkv_bias,
            "mlp_bias": false,
            "torch_dtype": "float32",
            "initializer_range": 0.02,
            "use_cache": true,
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => v["eos_token_id"] = json!(e),
            many => v["eos_token_id"] = json!(many),
        }
        // Written even when absent: transformers' Mistral defaults to a 4096 window, Qwen's to off.
        match self.arch {
            Arch::Mistral => v["sliding_window"] = json!(self.sliding_window),
            Arch::Qwen2 | Arch::Qwen3 => v["use_sliding_window"] = json!(false),
            Arch::Llama => {}
        }
        // transformers validates these as integers.
        let int = |x: &f64| if x.fract() == 0.0 && *x >= 0.0 { json!(*x as u64) } else { json!(x) };
        v["rope_scaling"] = match &self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Ntk { factor } => json!({"rope_type": "ntk", "factor": factor}),
            RopeScaling::Yarn { factor, original_max_pos, beta_fast, beta_slow, attention_factor, truncate } => json!({
                "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": int(original_max_pos),
                "beta_fast": beta_fast, "beta_slow": beta_slow, "attention_factor": attention_factor, "truncate": truncate}),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_pos } => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": int(original_max_pos)}),
        };
        v
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        crate::params::layout(self).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Refuses a config that claims more than the weights at hand hold, before anything is
    /// built from it (a `num_hidden_layers` of 10⁹ would otherwise allocate for its layout):
    /// `names` are the tensor names present, `what` names their file in the error.
    pub fn check_claims<'a>(&self, names: impl Iterator<Item = &'a str>, layer_prefix: &str, what: &str) -> Result<()> {
        let layers = names
            .filter_map(|n| n.strip_prefix(layer_prefix)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        if self.n_layers > layers {
            bail!("{what}: the config claims {} layers, but the weights hold tensors for {layers} ({layer_prefix}{layers}.* are missing)", self.n_layers);
        }
        Ok(())
    }
}

fn parse_rope_scaling(rp: &Value, max_pos: usize) -> Result<RopeScaling> {
    if !rp.is_object() {
        return Ok(RopeScaling::None);
    }
    let kind = match rp["rope_type"].as_str().or_else(|| rp["type"].as_str()) {
        Some(k) => k,
        // transformers 5 nests per-layer-type parameters ({"full_attention": {...}, ...}).
        None if rp.as_object().is_some_and(|o| o.values().any(|x| x.is_object())) => {
            bail!("per-layer-type rope parameters are not supported: {rp}")
        }
        None => "default",
    };
    let f = |k: &str, d: f64| rp[k].as_f64().unwrap_or(d);
    let factor = || rp["factor"].as_f64().with_context(|| format!("rope scaling {kind:?} needs a factor"));
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "ntk" => RopeScaling::Ntk { factor: factor()? },
        "yarn" => {
            // As transformers' `_compute_yarn_parameters`: DeepSeek-style mscale/mscale_all_dim
            // set the attention factor when it is not given.
            let original_max_pos = f("original_max_position_embeddings", max_pos as f64);
            let factor = factor()?;
            let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
            let attention_factor = match (rp["attention_factor"].as_f64(), rp["mscale"].as_f64(), rp["mscale_all_dim"].as_f64()) {
                (Some(a), _, _) => Some(a),
                (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => Some(mscale(m) / mscale(ma)),
                _ => None,
            };
            RopeScaling::Yarn {
                factor,
                original_max_pos,
                // `or 32` / `or 1` in transformers: 0 or null mean the default.
                beta_fast: rp["beta_fast"].as_f64().filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: rp["beta_slow"].as_f64().filter(|&b| b != 0.0).unwrap_or(1.0),
                attention_factor,
                truncate: rp["truncate"].as_bool().unwrap_or(true),
            }
        }
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: rp["low_freq_factor"].as_f64().context("rope scaling \"llama3\" needs low_freq_factor")?,
            high_freq_factor: rp["high_freq_factor"].as_f64().context("rope scaling \"llama3\" needs high_freq_factor")?,
            // transformers falls back to max_position_embeddings.
            original_max_pos: f("original_max_position_embeddings", max_pos as f64),
        },
        other => bail!("rope scaling type {other:?} is not supported (default, linear, yarn, llama3 are; dynamic and longrope are not)"),
    })
}
