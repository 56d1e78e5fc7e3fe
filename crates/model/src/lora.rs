//! LoRA adapters in PEFT's format: y = W·x + s·B·(A·dropout(x)) on chosen projections, with
//! s = alpha/r (or alpha/√r under rsLoRA), A (r, in) and B (out, r), the base W frozen.
//!
//! What this file owns: the adapter's settings (`LoraConfig`, read from and written to PEFT's
//! `adapter_config.json`), its tensors (`Adapter`: PEFT's init, `adapter_model.safetensors`
//! with PEFT's names, shape checks against a base), and folding it into the base (`merged`).
//! The forward's use of it is `model.rs` (`block`'s projections); which projections can carry
//! one comes from the parameter table (`params::LAYER_TENSORS`: its 2-D rows), not a list here.
//!
//! PEFT's names: the base parameter `model.layers.3.self_attn.q_proj.weight` has
//! `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` and `….lora_B.weight`.

use crate::config::ModelConfig;
use crate::params::{self, Dim, Role, TensorDef, LAYER_TENSORS};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use smelt_core::rng::Rng;
use smelt_core::Tensor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// PEFT's file names inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts before a base parameter's name (`PeftModel` → `LoraModel` → the model).
const PREFIX: &str = "base_model.model.";

/// The rows of the parameter table LoRA can adapt: every layer matrix (q, k, v, o, gate, up,
/// down), in table order.
pub fn targetable() -> impl Iterator<Item = &'static TensorDef> {
    LAYER_TENSORS.iter().filter(|d| d.shape.len() == 2)
}

/// PEFT's module name of a table row: `q_proj` for `self_attn.q_proj.weight`.
pub fn module_name(d: &TensorDef) -> &'static str {
    let path = d.hf.strip_suffix(".weight").unwrap_or(d.hf);
    path.rsplit('.').next().unwrap_or(path)
}

fn def_of(role: Role) -> &'static TensorDef {
    LAYER_TENSORS.iter().find(|d| d.role == role).expect("every role has a row")
}

/// The settings of an adapter (PEFT's `LoraConfig`, the fields smelt supports).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT's `target_modules`: module names (`q_proj`, …: that projection in every layer) or
    /// full module paths (`model.layers.3.self_attn.q_proj`: in that layer only), as PEFT
    /// matches them (`adapts`). smelt writes module names, in table order.
    pub targets: Vec<String>,
    /// Scale by alpha/√r instead of alpha/r.
    pub use_rslora: bool,
    /// `base_model_name_or_path` (where the base came from; informational in PEFT too).
    pub base_model: Option<String>,
}

impl LoraConfig {
    /// Checks the settings (named as `smelt`'s flags name them).
    pub fn new(r: usize, alpha: f64, dropout: f64, targets: &[Role], use_rslora: bool) -> Result<Self> {
        let targets = targets.iter().map(|&r| module_name(def_of(r)).to_string()).collect();
        let c = LoraConfig { r, alpha, dropout, targets, use_rslora, base_model: None };
        c.validate("--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets")?;
        Ok(c)
    }

    fn validate(&self, r: &str, alpha: &str, dropout: &str, targets: &str) -> Result<()> {
        if self.r == 0 {
            bail!("{r} 0: the rank must be at least 1");
        }
        if !self.alpha.is_finite() {
            bail!("{alpha} {}: must be a finite number", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("{dropout} {}: must be in [0, 1)", self.dropout);
        }
        if self.targets.is_empty() {
            bail!("{targets}: no projection to adapt");
        }
        Ok(())
    }

    /// Parses `all-linear` or a comma list of projections: `q,k,v,o,gate,up,down`, or PEFT's
    /// module names (`q_proj`, …). The result is in table order, without repeats.
    pub fn parse_targets(s: &str) -> Result<Vec<Role>> {
        let names: Vec<&str> = s.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
        Self::targets_from(&names, "--lora-targets")
    }

    fn targets_from(names: &[&str], what: &str) -> Result<Vec<Role>> {
        let mut want = Vec::new();
        for &n in names {
            if n == "all-linear" {
                want.extend(targetable().map(|d| d.role));
                continue;
            }
            want.push(role_of(n, what)?);
        }
        Ok(targetable().map(|d| d.role).filter(|r| want.contains(r)).collect())
    }

    /// Whether layer `l`'s `role` projection is adapted, by PEFT's rule: a target equal to the
    /// module's path or ending it after a dot (`q_proj`, `self_attn.q_proj`,
    /// `model.layers.0.self_attn.q_proj`), or `all-linear`.
    pub fn adapts(&self, l: usize, role: Role) -> bool {
        self.targets.iter().any(|t| target_matches(t, l, role))
    }

    /// How many numbers the adapter holds on a base of config `c`: r·(in + out) per adapted
    /// projection.
    pub fn n_params(&self, c: &ModelConfig) -> usize {
        (0..c.n_layers)
            .flat_map(|l| targetable().filter(move |d| self.adapts(l, d.role)))
            .map(|d| {
                let (out, inp) = out_in(c, d.role);
                self.r * (out + inp)
            })
            .sum()
    }

    /// The factor of B·A: alpha/r, or alpha/√r under rsLoRA (PEFT's `scaling`).
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// `adapter_config.json` as PEFT writes it for these settings.
    pub fn to_peft_json(&self) -> Value {
        let targets = &self.targets;
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            // An integer where it is one, as PEFT's files have it (`lora_alpha: 16`).
            "lora_alpha": if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 { json!(self.alpha as i64) } else { json!(self.alpha) },
            "lora_bias": false,
            "lora_dropout": self.dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "target_parameters": null,
            "task_type": "CAUSAL_LM",
            "trainable_token_indices": null,
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }

    /// Reads PEFT's `adapter_config.json` (`path` names it in errors), refusing what smelt
    /// would otherwise silently get wrong: another adapter type or task, trained biases, DoRA,
    /// per-module ranks, extra trained modules, a subset of layers, transposed weights.
    pub fn from_peft_json(v: &Value, path: &Path) -> Result<Self> {
        let p = path.display();
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let s = |k: &str| field(k).and_then(Value::as_str);
        match s("peft_type") {
            Some("LORA") => {}
            other => bail!("{p}: peft_type is {other:?}; smelt reads LORA adapters only"),
        }
        if let Some(t) = s("task_type").filter(|t| *t != "CAUSAL_LM") {
            bail!("{p}: task_type {t:?}; smelt's models are CAUSAL_LM");
        }
        let r =
            field("r").and_then(Value::as_u64).with_context(|| format!("{p}: field r is missing or not a count"))?;
        let alpha = field("lora_alpha")
            .and_then(Value::as_f64)
            .with_context(|| format!("{p}: field lora_alpha is missing or not a number"))?;
        let dropout = match field("lora_dropout") {
            None => 0.0,
            Some(x) => x.as_f64().with_context(|| format!("{p}: field lora_dropout is not a number"))?,
        };
        let flag = |k: &str| -> Result<bool> {
            match field(k) {
                None => Ok(false),
                Some(x) => x.as_bool().with_context(|| format!("{p}: field {k} is not true or false")),
            }
        };
        let use_rslora = flag("use_rslora")?;
        for k in ["fan_in_fan_out", "use_dora", "lora_bias", "use_qalora"] {
            if flag(k)? {
                bail!("{p}: {k} is true; smelt supports plain LoRA only ({k} false)");
            }
        }
        if let Some(b) = s("bias").filter(|b| *b != "none") {
            bail!("{p}: bias {b:?}: the adapter trains biases; smelt supports bias \"none\" only");
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if field(k).and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
                bail!("{p}: {k} is set (per-module ranks or alphas); smelt supports one r and lora_alpha");
            }
        }
        for k in [
            "modules_to_save",
            "layers_to_transform",
            "layer_replication",
            "exclude_modules",
            "target_parameters",
            "trainable_token_indices",
            "alora_invocation_tokens",
        ] {
            let set = match field(k) {
                None => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            };
            if set {
                bail!("{p}: {k} is set; smelt does not support it (only target_modules on every layer)");
            }
        }
        let targets: Vec<String> = match field("target_modules") {
            Some(Value::String(one)) if one == "all-linear" || targetable().any(|d| module_name(d) == one) => {
                vec![one.clone()]
            }
            Some(Value::String(re)) => {
                bail!("{p}: target_modules {re:?} is a regular expression; smelt reads a list of module names")
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .with_context(|| format!("{p}: target_modules holds {x}, not a module name"))
                })
                .collect::<Result<_>>()?,
            _ => bail!("{p}: field target_modules is missing"),
        };
        // Each name must end in a projection smelt adapts (full paths are checked against the
        // base's layers when the weights load).
        for t in targets.iter().filter(|t| *t != "all-linear") {
            role_of(t.rsplit('.').next().unwrap_or(t), &format!("{p}: target_modules"))?;
        }
        let c = LoraConfig {
            r: r as usize,
            alpha,
            dropout,
            targets,
            use_rslora,
            base_model: s("base_model_name_or_path").map(String::from),
        };
        let at = |k: &str| format!("{p}: {k}");
        c.validate(&at("r"), &at("lora_alpha"), &at("lora_dropout"), &at("target_modules"))?;
        Ok(c)
    }
}

/// PEFT's match of one `target_modules` entry against layer `l`'s `role` projection.
fn target_matches(t: &str, l: usize, role: Role) -> bool {
    let d = def_of(role);
    let path = format!("model.layers.{l}.{}", d.hf.strip_suffix(".weight").unwrap_or(d.hf));
    t == "all-linear" || t == path || (path.ends_with(t) && path[..path.len() - t.len()].ends_with('.'))
}

/// The projection a module name (`q_proj`) or short name (`q`) stands for.
fn role_of(n: &str, what: &str) -> Result<Role> {
    let d = targetable()
        .find(|d| module_name(d) == n || module_name(d).strip_suffix("_proj") == Some(n))
        .with_context(|| {
            let known: Vec<&str> = targetable().map(module_name).collect();
            format!("{what}: unknown module {n:?} (smelt adapts all-linear or any of {})", known.join(", "))
        })?;
    Ok(d.role)
}

/// Which of the two factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    A,
    B,
}

/// A LoRA adapter for one base shape: an (A, B) pair per adapted projection of every layer.
pub struct Adapter {
    pub cfg: LoraConfig,
    /// (layer, role) of each adapted projection, layer by layer in table order.
    pub slots: Vec<(usize, Role)>,
    /// A then B of each slot, in `slots` order: A (r, in), B (out, r). On a base loaded from
    /// GGUF, B's q/k rows are in llama.cpp's interleaved order (`interleaved`).
    pub params: Vec<Tensor>,
    /// B's q/k rows are permuted as a GGUF base's (set by `Model::attach`, undone on save).
    pub interleaved: bool,
    by_layer: Vec<[Option<usize>; Role::COUNT]>,
    /// The dropout seed of the current training step and the forwards run in it (`dropout_seed`).
    step_seed: AtomicU64,
    calls: AtomicU64,
}

impl Clone for Adapter {
    fn clone(&self) -> Self {
        Adapter {
            cfg: self.cfg.clone(),
            slots: self.slots.clone(),
            params: self.params.clone(),
            interleaved: self.interleaved,
            by_layer: self.by_layer.clone(),
            step_seed: AtomicU64::new(self.step_seed.load(Ordering::Relaxed)),
            calls: AtomicU64::new(self.calls.load(Ordering::Relaxed)),
        }
    }
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter").field("cfg", &self.cfg).field("slots", &self.slots.len()).finish()
    }
}

/// (out, in) of a projection for config `c`.
fn out_in(c: &ModelConfig, role: Role) -> (usize, usize) {
    let d = def_of(role);
    let dims: Vec<usize> = d.shape.iter().map(|x: &Dim| x.of(c)).collect();
    (dims[0], dims[1])
}

impl Adapter {
    fn with(c: &ModelConfig, cfg: LoraConfig, params: Vec<Tensor>) -> Self {
        let slots: Vec<(usize, Role)> = (0..c.n_layers)
            .flat_map(|l| targetable().map(move |d| (l, d.role)))
            .filter(|&(l, r)| cfg.adapts(l, r))
            .collect();
        let mut by_layer = vec![[None; Role::COUNT]; c.n_layers];
        for (i, &(l, r)) in slots.iter().enumerate() {
            by_layer[l][r as usize] = Some(i);
        }
        Adapter {
            cfg,
            slots,
            params,
            interleaved: false,
            by_layer,
            step_seed: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// A fresh adapter as PEFT initialises one (`init_lora_weights=True`): A from
    /// kaiming_uniform(a=√5), i.e. U(−1/√in, 1/√in), B zeros, so the adapted model starts as
    /// the base.
    pub fn init(c: &ModelConfig, cfg: LoraConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        for l in 0..c.n_layers {
            for role in targetable().map(|d| d.role).filter(|&r| cfg.adapts(l, r)) {
                let (out, inp) = out_in(c, role);
                let bound = 1.0 / (inp as f64).sqrt();
                let a = (0..cfg.r * inp).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect();
                params.push(Tensor::from_f32(a, &[cfg.r, inp]).expect("shape matches data"));
                params.push(Tensor::zeros(&[out, cfg.r]));
            }
        }
        Self::with(c, cfg, params)
    }

    /// The (A, B) positions in `params` of layer `l`'s `role` projection, if adapted.
    pub fn slot(&self, l: usize, role: Role) -> Option<(usize, usize)> {
        let i = self.by_layer.get(l)?[role as usize]?;
        Some((2 * i, 2 * i + 1))
    }

    /// PEFT's name of a factor: `base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight`.
    pub fn tensor_name(l: usize, role: Role, f: Factor) -> String {
        let path = def_of(role).hf.strip_suffix(".weight").unwrap_or(def_of(role).hf);
        let f = match f {
            Factor::A => "lora_A",
            Factor::B => "lora_B",
        };
        format!("{PREFIX}model.layers.{l}.{path}.{f}.weight")
    }

    /// PEFT's names of `params`, in order.
    pub fn names(&self) -> Vec<String> {
        self.slots
            .iter()
            .flat_map(|&(l, r)| [Self::tensor_name(l, r, Factor::A), Self::tensor_name(l, r, Factor::B)])
            .collect()
    }

    /// The factor s of B·A (`LoraConfig::scaling`).
    pub fn scaling(&self) -> f32 {
        self.cfg.scaling() as f32
    }

    /// The seed of this step's dropout masks: a training loop calls it before each update
    /// (with the run's seed and the step), so masks are a pure function of (seed, step,
    /// micro-batch) and `--resume` draws the same ones.
    pub fn begin_step(&self, seed: u64, step: u64) {
        let mut x = seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
        self.step_seed.store(smelt_core::rng::splitmix64(&mut x), Ordering::Relaxed);
        self.calls.store(0, Ordering::Relaxed);
    }

    /// A fresh seed for one training forward's masks (the n-th forward of the step gets the
    /// n-th); each projection's mask then mixes in its layer and role.
    pub fn dropout_seed(&self) -> u64 {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut x = self.step_seed.load(Ordering::Relaxed) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        smelt_core::rng::splitmix64(&mut x)
    }

    /// Reads `DIR/adapter_config.json` and `DIR/adapter_model.safetensors` for a base of config
    /// `c`; every tensor must be there with the base's shapes, and nothing else.
    pub fn load(dir: &Path, c: &ModelConfig) -> Result<Self> {
        let cp = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cp)
            .with_context(|| format!("reading {} (is {} a PEFT adapter folder?)", cp.display(), dir.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", cp.display()))?;
        let cfg = LoraConfig::from_peft_json(&v, &cp)?;
        let wp = dir.join(WEIGHTS_FILE);
        if !wp.exists() && dir.join("adapter_model.bin").exists() {
            bail!(
                "{}: adapter_model.bin is a pickle; smelt reads adapter_model.safetensors (PEFT's default since 0.6)",
                dir.display()
            );
        }
        let mut w = crate::io::read_safetensors(&wp)?;
        let mut params = Vec::new();
        let mut matched = vec![false; cfg.targets.len()];
        for l in 0..c.n_layers {
            for role in targetable().map(|d| d.role).filter(|&r| cfg.adapts(l, r)) {
                for (i, t) in cfg.targets.iter().enumerate() {
                    matched[i] |= target_matches(t, l, role);
                }
                let (out, inp) = out_in(c, role);
                for (f, shape) in [(Factor::A, [cfg.r, inp]), (Factor::B, [out, cfg.r])] {
                    let name = Self::tensor_name(l, role, f);
                    let t = w.remove(&name).with_context(|| {
                        format!("{}: tensor {name} is missing (target_modules and r say it exists)", wp.display())
                    })?;
                    if t.shape() != shape {
                        bail!(
                            "{}: tensor {name} has shape {:?}; r {} on this base ({} layers, dim {}) needs {shape:?}",
                            wp.display(),
                            t.shape(),
                            cfg.r,
                            c.n_layers,
                            c.dim
                        );
                    }
                    params.push(t.to_dtype(smelt_core::DType::F32)?);
                }
            }
        }
        if let Some(i) = matched.iter().position(|m| !m) {
            bail!(
                "{}: target_modules names {:?}, which is no module of this {}-layer base",
                cp.display(),
                cfg.targets[i],
                c.n_layers
            );
        }
        if let Some(extra) = w.keys().min() {
            bail!(
                "{}: unexpected tensor {extra} (and {} more): not a LoRA factor of this {}-layer base with target_modules {:?}",
                wp.display(),
                w.len() - 1,
                c.n_layers,
                cfg.targets
            );
        }
        Ok(Self::with(c, cfg, params))
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into the existing
    /// folder `dir`, each staged and renamed into place.
    pub fn save(&self, dir: &Path, hd: usize) -> Result<()> {
        let cfg = serde_json::to_string_pretty(&self.cfg.to_peft_json())?;
        smelt_files::write_atomic(&dir.join(CONFIG_FILE), cfg)?;
        let mut named: Vec<(String, Tensor)> = self.names().into_iter().zip(self.params.iter().cloned()).collect();
        if self.interleaved {
            for (i, &(_, role)) in self.slots.iter().enumerate() {
                if matches!(role, Role::Wq | Role::Wk) {
                    named[2 * i + 1].1 = permute_rows(&named[2 * i + 1].1, hd, false)?;
                }
            }
        }
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        crate::io::write_safetensors(&dir.join(WEIGHTS_FILE), &named, smelt_core::DType::F32, Some(meta))
    }

    /// The base `params` (of a model with index `idx`) with s·B·A added to each adapted
    /// projection: an ordinary model that computes what base + adapter computes (PEFT's
    /// `merge_and_unload`). Quantised projections are dequantised first.
    pub fn merged(&self, base: &[Tensor], idx: &params::Index) -> Result<Vec<Tensor>> {
        let mut out = base.to_vec();
        let s = self.scaling();
        for (i, &(l, role)) in self.slots.iter().enumerate() {
            let at = idx.layers[l][role];
            let w = &base[at];
            let (a, b) = (self.params[2 * i].to_vec_f32()?, self.params[2 * i + 1].to_vec_f32()?);
            let (rows, cols, r) = (w.rows(), w.cols(), self.cfg.r);
            let mut m = w.to_vec_f32()?;
            for o in 0..rows {
                let bo = &b[o * r..(o + 1) * r];
                let mo = &mut m[o * cols..(o + 1) * cols];
                for (k, &bk) in bo.iter().enumerate() {
                    let f = s * bk;
                    if f != 0.0 {
                        for (x, &ak) in mo.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                            *x += f * ak;
                        }
                    }
                }
            }
            out[at] = Tensor::from_f32(m, w.shape())?.to_device(w.device())?;
        }
        Ok(out)
    }

    /// Checks this adapter against a base of config `c` (tensors built or loaded for another
    /// base are refused, naming the first that does not fit).
    pub fn check(&self, c: &ModelConfig) -> Result<()> {
        if self.by_layer.len() != c.n_layers {
            bail!("the adapter is for {} layers; the base has {}", self.by_layer.len(), c.n_layers);
        }
        for (i, &(l, role)) in self.slots.iter().enumerate() {
            let (out, inp) = out_in(c, role);
            for (f, want, t) in [
                (Factor::A, [self.cfg.r, inp], &self.params[2 * i]),
                (Factor::B, [out, self.cfg.r], &self.params[2 * i + 1]),
            ] {
                if t.shape() != want {
                    bail!(
                        "adapter tensor {} has shape {:?}; this base needs {want:?}",
                        Self::tensor_name(l, role, f),
                        t.shape()
                    );
                }
            }
        }
        Ok(())
    }

    /// Permutes B's q/k rows into a GGUF base's interleaved order (see `Model::attach`).
    pub(crate) fn interleave(&mut self, hd: usize) -> Result<()> {
        if self.interleaved {
            return Ok(());
        }
        for (i, &(_, role)) in self.slots.iter().enumerate() {
            if matches!(role, Role::Wq | Role::Wk) {
                self.params[2 * i + 1] = permute_rows(&self.params[2 * i + 1], hd, true)?;
            }
        }
        self.interleaved = true;
        Ok(())
    }
}

/// Rows of a q/k projection's output between Hugging Face's half-split RoPE order and GGUF's
/// interleaved one (per head of `hd` rows: GGUF row 2i+s is HF row s·hd/2+i), either way.
fn permute_rows(t: &Tensor, hd: usize, to_gguf: bool) -> Result<Tensor> {
    let (rows, cols) = (t.rows(), t.cols());
    let src = t.to_vec_f32()?;
    let mut dst = vec![0f32; src.len()];
    for r in 0..rows {
        let (h, e) = (r / hd, r % hd);
        let hf = h * hd + (e % 2) * (hd / 2) + e / 2;
        let (from, to) = if to_gguf { (hf, r) } else { (r, hf) };
        dst[to * cols..(to + 1) * cols].copy_from_slice(&src[from * cols..(from + 1) * cols]);
    }
    Tensor::from_f32(dst, t.shape())?.to_device(t.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_table() {
        let all = LoraConfig::parse_targets("all-linear").unwrap();
        assert_eq!(all, [Role::Wq, Role::Wk, Role::Wv, Role::Wo, Role::WGate, Role::WUp, Role::WDown]);
        assert_eq!(LoraConfig::parse_targets("v,q_proj, down").unwrap(), [Role::Wq, Role::Wv, Role::WDown]);
        let e = LoraConfig::parse_targets("q,lm_head").unwrap_err().to_string();
        assert!(e.contains("\"lm_head\"") && e.contains("gate_proj"), "{e}");
        assert_eq!(
            Adapter::tensor_name(3, Role::WUp, Factor::B),
            "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"
        );
    }

    #[test]
    fn config_round_trips_and_refuses_what_it_cannot_do() {
        let mut c = LoraConfig::new(8, 16.0, 0.05, &[Role::Wq, Role::Wv], true).unwrap();
        assert_eq!(c.targets, ["q_proj", "v_proj"]);
        assert!(c.adapts(5, Role::Wq) && !c.adapts(5, Role::Wk));
        let one =
            LoraConfig { targets: vec!["model.layers.1.mlp.up_proj".into(), "self_attn.k_proj".into()], ..c.clone() };
        assert!(one.adapts(1, Role::WUp) && !one.adapts(0, Role::WUp) && !one.adapts(11, Role::WUp));
        assert!(one.adapts(0, Role::Wk) && one.adapts(7, Role::Wk));
        c.base_model = Some("HuggingFaceTB/SmolLM2-135M".into());
        let p = Path::new("x/adapter_config.json");
        assert_eq!(LoraConfig::from_peft_json(&c.to_peft_json(), p).unwrap(), c);
        assert!((c.scaling() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
        for (k, v, want) in [
            ("peft_type", json!("IA3"), "peft_type"),
            ("use_dora", json!(true), "use_dora"),
            ("bias", json!("all"), "bias"),
            ("rank_pattern", json!({"q_proj": 4}), "rank_pattern"),
            ("modules_to_save", json!(["lm_head"]), "modules_to_save"),
            ("target_modules", json!(".*q_proj"), "regular expression"),
            ("target_modules", json!(["q_proj", "embed_tokens"]), "embed_tokens"),
            ("r", json!(0), "r 0"),
            ("lora_dropout", json!(1.5), "lora_dropout"),
            ("fan_in_fan_out", json!(true), "fan_in_fan_out"),
        ] {
            let mut j = c.to_peft_json();
            j[k] = v;
            let e = format!("{:#}", LoraConfig::from_peft_json(&j, p).unwrap_err());
            assert!(e.contains(want) && e.contains("adapter_config.json"), "{k}: {e}");
        }
        assert!(LoraConfig::new(4, 8.0, 1.0, &[Role::Wq], false).is_err());
        assert!(LoraConfig::new(0, 8.0, 0.0, &[Role::Wq], false).is_err());
    }

    #[test]
    fn init_is_peft_s_and_merge_adds_s_b_a() {
        let c = ModelConfig::llama(16, 8, 2, 2, 1, 12);
        let cfg = LoraConfig::new(2, 4.0, 0.0, &LoraConfig::parse_targets("all-linear").unwrap(), false).unwrap();
        let mut a = Adapter::init(&c, cfg, 1);
        assert_eq!(a.params.len(), 2 * 2 * 7);
        assert_eq!(a.cfg.n_params(&c), a.params.iter().map(Tensor::numel).sum::<usize>());
        a.check(&c).unwrap();
        for (i, t) in a.params.iter().enumerate() {
            let v = t.as_f32().unwrap();
            if i % 2 == 1 {
                assert!(v.iter().all(|&x| x == 0.0), "B starts at zero");
            } else {
                let bound = 1.0 / (t.cols() as f32).sqrt();
                assert!(v.iter().all(|&x| x.abs() <= bound) && v.iter().any(|&x| x != 0.0));
            }
        }
        let base = params::init(&c, 2);
        let idx = params::index(&c);
        assert_eq!(
            a.merged(&base, &idx).unwrap().iter().map(|t| t.as_f32().unwrap().to_vec()).collect::<Vec<_>>(),
            base.iter().map(|t| t.as_f32().unwrap().to_vec()).collect::<Vec<_>>(),
            "B = 0 merges to the base"
        );
        // One nonzero B entry: ΔW[o][j] = s·B[o][k]·A[k][j].
        let (ai, bi) = a.slot(1, Role::WUp).unwrap();
        a.params[bi].f32_mut().unwrap()[3 * 2 + 1] = 0.5; // B[3][1]
        let m = a.merged(&base, &idx).unwrap();
        let at = idx.layers[1][Role::WUp];
        let (w0, w1, av) = (base[at].as_f32().unwrap(), m[at].as_f32().unwrap(), a.params[ai].as_f32().unwrap());
        for j in 0..8 {
            assert!((w1[3 * 8 + j] - w0[3 * 8 + j] - 2.0 * 0.5 * av[8 + j]).abs() < 1e-7);
        }
        let mut other = c.clone();
        other.ffn_hidden = 16;
        let e = a.check(&other).unwrap_err().to_string();
        assert!(e.contains("model.layers.0.mlp.gate_proj.lora_B.weight"), "{e}");
    }

    #[test]
    fn q_k_rows_interleave_and_back() {
        let t = Tensor::from_f32((0..24).map(|i| i as f32).collect(), &[8, 3]).unwrap();
        let g = permute_rows(&t, 4, true).unwrap();
        // Head 0 rows (HF 0,1 | 2,3) → GGUF 0,2,1,3.
        assert_eq!(&g.as_f32().unwrap()[..12], &[0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]);
        assert_eq!(permute_rows(&g, 4, false).unwrap().as_f32().unwrap(), t.as_f32().unwrap());
    }
}
