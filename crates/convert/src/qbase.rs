//! QLoRA from a float base: the layer matrices of a loaded model quantised in memory, with the
//! block type `smelt quantize` would give each in a GGUF file (`export::tensor_type`, e.g. Q4_K
//! as llama.cpp's Q4_K_M mix; `export::type_for` where a row is not whole blocks), so a LoRA
//! adapter trains on the base as a quantised deployment of it would run it. Rows are quantised
//! one by one, in the model's own row order (no GGUF permutation), so any architecture works.
//! The embedding, the head, norms and biases stay f32.

use anyhow::{bail, Result};
use smelt_core::quant::{GgmlType, QTensor};
use smelt_core::{DType, Tensor};
use smelt_model::{params, Model};

/// The block types a base can be quantised to for training an adapter on it.
pub const TYPES: &[GgmlType] =
    &[GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q4_0, GgmlType::Q4_1];

/// Parses a `--quantize` value (q8_0, q4_k, …) and checks it is one of `TYPES`.
pub fn parse_type(name: &str) -> Result<GgmlType> {
    let names: Vec<&str> = TYPES.iter().map(|t| t.name()).collect();
    let ty = GgmlType::parse(name)
        .map_err(|_| anyhow::anyhow!("--quantize {name}: not a block type; one of {}", names.join(", ")))?;
    if !TYPES.contains(&ty) {
        bail!("--quantize {name}: the base can be kept as {} (float types need no quantising)", names.join(", "));
    }
    Ok(ty)
}

/// `model` with every layer matrix (q, k, v, o, gate, up, down) quantised to `ty` (per tensor as
/// `export::tensor_type` and `export::type_for` choose). The same model and type give the same
/// bytes every time, so a resumed run rebuilds the base it trained on.
pub fn quantize_base(model: &Model, ty: GgmlType) -> Result<Model> {
    if model.params.iter().any(|p| p.dtype() == DType::Quant) {
        bail!("--quantize: the base is already quantised (a GGUF file keeps its own block types: drop --quantize, or start from the float model)");
    }
    let c = &model.cfg;
    let params = model
        .params
        .iter()
        .zip(params::list(c))
        .map(|(p, def)| match (def.layer, p.shape()) {
            (Some(_), &[rows, cols]) => {
                let t = crate::export::type_for(crate::export::tensor_type(ty, &def.name, c, false), cols);
                let host = p.to_device(smelt_core::Device::Cpu)?;
                Ok(QTensor::quantize(t, &host.to_vec_f32()?, rows, cols)?.into_tensor())
            }
            _ => Ok(p.clone()),
        })
        .collect::<Result<Vec<Tensor>>>()?;
    model.with_params(params)
}
