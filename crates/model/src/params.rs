//! The parameter table: every tensor of the model, one row each, with its role, its Hugging Face
//! and llama.cpp names, its shape, when it exists, whether weight decay applies and how it starts.
//! Everything that lists parameters derives from the rows: `list`/`layout` (the order of the
//! parameter list everywhere: optimizer state, gradient norms, checkpoints, saving), `index`
//! (where each role sits), `init`, `decays`, `gguf_name`/`hf_name`, and through them loading,
//! export and the forward's inputs. Adding a tensor is a row here plus its use in `block()`.
//!
//! Names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`), so a smelt checkpoint
//! is a Hugging Face checkpoint.

use crate::config::ModelConfig;
use smelt_core::rng::Rng;
use smelt_core::Tensor;

/// What a tensor is for; the forward looks its inputs up by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Embed,
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    Bq,
    Bk,
    Bv,
    QNorm,
    KNorm,
    FfnNorm,
    WGate,
    WUp,
    WDown,
    OutputNorm,
    /// The output head (absent when tied to the embedding).
    Head,
}

impl Role {
    /// Number of roles (the size of a role-indexed array): `Head` stays the last variant.
    pub const COUNT: usize = Role::Head as usize + 1;
}

/// One axis of a tensor's shape, resolved against a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Vocab,
    /// The residual stream (hidden size).
    Model,
    /// All query heads: heads · head dim.
    QHeads,
    /// All key/value heads: KV heads · head dim.
    KvHeads,
    HeadDim,
    Ffn,
}

impl Dim {
    pub fn of(self, c: &ModelConfig) -> usize {
        match self {
            Dim::Vocab => c.vocab_size,
            Dim::Model => c.dim,
            Dim::QHeads => c.n_heads * c.head_dim,
            Dim::KvHeads => c.n_kv_heads * c.head_dim,
            Dim::HeadDim => c.head_dim,
            Dim::Ffn => c.ffn_hidden,
        }
    }
}

/// When a tensor exists. `holds` gets the layer, so a row may exist on some layers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// `qkv_bias` (Qwen2).
    QkvBias,
    /// `qk_norm` (Qwen3).
    QkNorm,
    /// `!tie_embeddings`.
    Untied,
}

impl When {
    pub fn holds(self, c: &ModelConfig, _layer: usize) -> bool {
        match self {
            When::Always => true,
            When::QkvBias => c.qkv_bias,
            When::QkNorm => c.qk_norm,
            When::Untied => !c.tie_embeddings,
        }
    }
}

/// How a fresh tensor starts (`init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// N(0, 0.02).
    Normal,
    /// N(0, 0.02/√(2·layers)): projections that write into the residual stream, as in GPT-2.
    Residual,
    Ones,
    Zeros,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorDef {
    pub role: Role,
    /// Hugging Face's name; a layer's comes after `model.layers.{l}.`.
    pub hf: &'static str,
    /// llama.cpp's name; a layer's comes after `blk.{l}.`.
    pub gguf: &'static str,
    pub shape: &'static [Dim],
    pub when: When,
    /// Whether the GGUF `llama` files smelt writes and reads hold it (q/k/v biases and q/k
    /// norms are other llama.cpp architectures' tensors).
    pub llama_gguf: bool,
    /// Whether weight decay applies (matrices and embeddings, not norm gains or biases).
    pub decays: bool,
    pub init: Init,
}

/// A row of the tables below, its columns in `TensorDef`'s order.
#[allow(clippy::too_many_arguments)]
const fn row(
    role: Role,
    hf: &'static str,
    gguf: &'static str,
    shape: &'static [Dim],
    when: When,
    llama_gguf: bool,
    decays: bool,
    init: Init,
) -> TensorDef {
    TensorDef { role, hf, gguf, shape, when, llama_gguf, decays, init }
}

use Dim::*;
use Init::*;
use When::*;

/// Before the layers.
#[rustfmt::skip]
pub const INPUT_TENSORS: &[TensorDef] = &[
    //  role              Hugging Face                       GGUF                  shape              when     llama  decays init
    row(Role::Embed,      "model.embed_tokens.weight",       "token_embd.weight",  &[Vocab, Model],   Always,  true,  true,  Normal),
];

/// Each layer's, in order.
#[rustfmt::skip]
pub const LAYER_TENSORS: &[TensorDef] = &[
    //  role              Hugging Face                       GGUF                  shape              when     llama  decays init
    row(Role::AttnNorm,   "input_layernorm.weight",          "attn_norm.weight",   &[Model],          Always,  true,  false, Ones),
    row(Role::Wq,         "self_attn.q_proj.weight",         "attn_q.weight",      &[QHeads, Model],  Always,  true,  true,  Normal),
    row(Role::Wk,         "self_attn.k_proj.weight",         "attn_k.weight",      &[KvHeads, Model], Always,  true,  true,  Normal),
    row(Role::Wv,         "self_attn.v_proj.weight",         "attn_v.weight",      &[KvHeads, Model], Always,  true,  true,  Normal),
    row(Role::Wo,         "self_attn.o_proj.weight",         "attn_output.weight", &[Model, QHeads],  Always,  true,  true,  Residual),
    row(Role::Bq,         "self_attn.q_proj.bias",           "attn_q.bias",        &[QHeads],         QkvBias, false, false, Zeros),
    row(Role::Bk,         "self_attn.k_proj.bias",           "attn_k.bias",        &[KvHeads],        QkvBias, false, false, Zeros),
    row(Role::Bv,         "self_attn.v_proj.bias",           "attn_v.bias",        &[KvHeads],        QkvBias, false, false, Zeros),
    row(Role::QNorm,      "self_attn.q_norm.weight",         "attn_q_norm.weight", &[HeadDim],        QkNorm,  false, false, Ones),
    row(Role::KNorm,      "self_attn.k_norm.weight",         "attn_k_norm.weight", &[HeadDim],        QkNorm,  false, false, Ones),
    row(Role::FfnNorm,    "post_attention_layernorm.weight", "ffn_norm.weight",    &[Model],          Always,  true,  false, Ones),
    row(Role::WGate,      "mlp.gate_proj.weight",            "ffn_gate.weight",    &[Ffn, Model],     Always,  true,  true,  Normal),
    row(Role::WUp,        "mlp.up_proj.weight",              "ffn_up.weight",      &[Ffn, Model],     Always,  true,  true,  Normal),
    row(Role::WDown,      "mlp.down_proj.weight",            "ffn_down.weight",    &[Model, Ffn],     Always,  true,  true,  Residual),
];

/// After the layers.
#[rustfmt::skip]
pub const OUTPUT_TENSORS: &[TensorDef] = &[
    //  role              Hugging Face                       GGUF                  shape              when     llama  decays init
    row(Role::OutputNorm, "model.norm.weight",               "output_norm.weight", &[Model],          Always,  true,  false, Ones),
    row(Role::Head,       "lm_head.weight",                  "output.weight",      &[Vocab, Model],   Untied,  true,  true,  Normal),
];

/// One parameter of a model: its row, its layer, and its names and shape for that config.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub def: &'static TensorDef,
    pub layer: Option<usize>,
    pub name: String,
    pub gguf: String,
    pub shape: Vec<usize>,
}

/// Every parameter of a model with config `c`, in order.
pub fn list(c: &ModelConfig) -> Vec<Param> {
    let shape = |d: &TensorDef| d.shape.iter().map(|x| x.of(c)).collect();
    let global =
        |d: &'static TensorDef| Param { def: d, layer: None, name: d.hf.into(), gguf: d.gguf.into(), shape: shape(d) };
    let mut v: Vec<Param> = INPUT_TENSORS.iter().filter(|d| d.when.holds(c, 0)).map(global).collect();
    for l in 0..c.n_layers {
        v.extend(LAYER_TENSORS.iter().filter(|d| d.when.holds(c, l)).map(|d| Param {
            def: d,
            layer: Some(l),
            name: format!("model.layers.{l}.{}", d.hf),
            gguf: format!("blk.{l}.{}", d.gguf),
            shape: shape(d),
        }));
    }
    v.extend(OUTPUT_TENSORS.iter().filter(|d| d.when.holds(c, 0)).map(global));
    v
}

/// (name, shape) of every parameter, in order.
pub fn layout(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    list(c).into_iter().map(|p| (p.name, p.shape)).collect()
}

/// Where one layer's parameters sit in the parameter list, by role.
#[derive(Clone, Debug, Default)]
pub struct LayerIdx {
    at: [Option<usize>; Role::COUNT],
}

impl LayerIdx {
    /// The position of this layer's `role` tensor, if the layer has one.
    pub fn get(&self, role: Role) -> Option<usize> {
        self.at[role as usize]
    }
    /// The layer's tensors present, as (role, position), in table order.
    pub fn present(&self) -> impl Iterator<Item = (Role, usize)> + '_ {
        LAYER_TENSORS.iter().filter_map(|d| Some((d.role, self.get(d.role)?)))
    }
}

impl std::ops::Index<Role> for LayerIdx {
    type Output = usize;
    /// Panics when the layer has no such tensor (use `get` for optional ones).
    fn index(&self, role: Role) -> &usize {
        self.at[role as usize].as_ref().unwrap_or_else(|| panic!("this layer has no {role:?} tensor"))
    }
}

#[derive(Clone, Debug)]
pub struct Index {
    pub embed: usize,
    pub layers: Vec<LayerIdx>,
    pub norm: usize,
    /// The output head; the embedding when tied.
    pub head: usize,
}

pub fn index(c: &ModelConfig) -> Index {
    let mut layers = vec![LayerIdx::default(); c.n_layers];
    let mut global = LayerIdx::default();
    for (i, p) in list(c).iter().enumerate() {
        match p.layer {
            Some(l) => layers[l].at[p.def.role as usize] = Some(i),
            None => global.at[p.def.role as usize] = Some(i),
        }
    }
    let embed = global[Role::Embed];
    Index { embed, layers, norm: global[Role::OutputNorm], head: global.get(Role::Head).unwrap_or(embed) }
}

/// Fresh weights, each tensor as its row's `Init` says (one random stream, in parameter order).
pub fn init(c: &ModelConfig, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    let resid_scale = 1.0 / (2.0 * c.n_layers as f64).sqrt();
    list(c)
        .into_iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let mut normal = |std: f64| (0..n).map(|_| (rng.normal() * std) as f32).collect();
            let data: Vec<f32> = match p.def.init {
                Ones => vec![1.0; n],
                Zeros => vec![0.0; n],
                Normal => normal(0.02),
                Residual => normal(0.02 * resid_scale),
            };
            Tensor::from_f32(data, &p.shape).expect("shape matches data")
        })
        .collect()
}

/// Whether weight decay applies to each parameter, in order.
pub fn decays(c: &ModelConfig) -> Vec<bool> {
    list(c).iter().map(|p| p.def.decays).collect()
}

/// llama.cpp's name for a Hugging Face parameter name (`None` for names that are no parameter).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some(d) = INPUT_TENSORS.iter().chain(OUTPUT_TENSORS).find(|d| d.hf == hf) {
        return Some(d.gguf.into());
    }
    let (l, part) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let d = LAYER_TENSORS.iter().find(|d| d.hf == part)?;
    Some(format!("blk.{l}.{}", d.gguf))
}

/// Hugging Face's name for a llama.cpp tensor name (`None` for names that are no parameter).
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some(d) = INPUT_TENSORS.iter().chain(OUTPUT_TENSORS).find(|d| d.gguf == gguf) {
        return Some(d.hf.into());
    }
    let (l, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let d = LAYER_TENSORS.iter().find(|d| d.gguf == part)?;
    Some(format!("model.layers.{l}.{}", d.hf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Qwen2-style layer with Qwen3's q/k norms and its own head: every optional row present.
    fn full() -> ModelConfig {
        let mut c = ModelConfig::llama(10, 8, 2, 4, 2, 12);
        c.qkv_bias = true;
        c.qk_norm = true;
        c.tie_embeddings = false;
        c.head_dim = 6;
        c
    }

    #[test]
    fn layout_is_the_hand_written_order() {
        let c = full();
        let mut want: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![10, 8])];
        for l in 0..2 {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            want.extend([
                (p("input_layernorm.weight"), vec![8]),
                (p("self_attn.q_proj.weight"), vec![24, 8]),
                (p("self_attn.k_proj.weight"), vec![12, 8]),
                (p("self_attn.v_proj.weight"), vec![12, 8]),
                (p("self_attn.o_proj.weight"), vec![8, 24]),
                (p("self_attn.q_proj.bias"), vec![24]),
                (p("self_attn.k_proj.bias"), vec![12]),
                (p("self_attn.v_proj.bias"), vec![12]),
                (p("self_attn.q_norm.weight"), vec![6]),
                (p("self_attn.k_norm.weight"), vec![6]),
                (p("post_attention_layernorm.weight"), vec![8]),
                (p("mlp.gate_proj.weight"), vec![12, 8]),
                (p("mlp.up_proj.weight"), vec![12, 8]),
                (p("mlp.down_proj.weight"), vec![8, 12]),
            ]);
        }
        want.push(("model.norm.weight".into(), vec![8]));
        want.push(("lm_head.weight".into(), vec![10, 8]));
        assert_eq!(layout(&c), want);

        // Without the optional rows: a tied Llama layer, the same order minus them.
        let mut plain = c.clone();
        (plain.qkv_bias, plain.qk_norm, plain.tie_embeddings) = (false, false, true);
        let kept: Vec<_> = want
            .into_iter()
            .filter(|(n, _)| !n.contains("bias") && !n.contains("_norm.") && n != "lm_head.weight")
            .collect();
        assert_eq!(layout(&plain), kept);
    }

    #[test]
    fn index_decays_and_init_follow_the_layout() {
        let c = full();
        let names: Vec<String> = layout(&c).into_iter().map(|(n, _)| n).collect();
        let idx = index(&c);
        assert_eq!((idx.embed, idx.norm, idx.head), (0, names.len() - 2, names.len() - 1));
        assert_eq!(names[idx.layers[1][Role::Wo]], "model.layers.1.self_attn.o_proj.weight");
        assert_eq!(names[idx.layers[0].get(Role::KNorm).unwrap()], "model.layers.0.self_attn.k_norm.weight");
        let every: Vec<usize> = idx.layers.iter().flat_map(|l| l.present().map(|(_, i)| i)).collect();
        assert_eq!(every, (1..names.len() - 2).collect::<Vec<_>>());
        let mut tied = c.clone();
        tied.tie_embeddings = true;
        assert_eq!(index(&tied).head, 0);

        // Decay: exactly the matrices and embeddings (the shape rule this table replaced).
        let shapes: Vec<Vec<usize>> = layout(&c).into_iter().map(|(_, s)| s).collect();
        assert_eq!(decays(&c), shapes.iter().map(|s| s.len() >= 2).collect::<Vec<_>>());
        let p = init(&c, 1);
        for ((name, t), d) in names.iter().zip(&p).zip(list(&c)) {
            let x = t.as_f32().unwrap();
            match d.def.init {
                Ones => assert!(x.iter().all(|&v| v == 1.0), "{name}"),
                Zeros => assert!(x.iter().all(|&v| v == 0.0), "{name}"),
                Normal | Residual => assert!(x.iter().any(|&v| v != 0.0), "{name}"),
            }
        }
    }

    #[test]
    fn gguf_names_round_trip() {
        let c = full();
        let got: Vec<String> = list(&c).into_iter().map(|p| p.gguf).collect();
        assert_eq!(
            &got[..6],
            [
                "token_embd.weight",
                "blk.0.attn_norm.weight",
                "blk.0.attn_q.weight",
                "blk.0.attn_k.weight",
                "blk.0.attn_v.weight",
                "blk.0.attn_output.weight"
            ]
        );
        assert_eq!(&got[got.len() - 2..], ["output_norm.weight", "output.weight"]);
        for p in list(&c) {
            assert_eq!(gguf_name(&p.name).as_deref(), Some(p.gguf.as_str()));
            assert_eq!(hf_name(&p.gguf).as_deref(), Some(p.name.as_str()));
        }
        assert_eq!(gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_name("model.layers.0.rotary_emb.inv_freq"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
