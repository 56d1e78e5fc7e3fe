//! safetensors reading and writing, single-file or sharded (`model.safetensors.index.json`).
//! Tensors load as f32 whatever their stored dtype (F32, BF16, F16).

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use smelt_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Reads every tensor of one safetensors file, converted to f32.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only mapping of a file smelt never modifies in place (writes go to a
    // temporary file that is renamed over the old one).
    let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    parse_safetensors(&map, path)
}

/// Every tensor of a safetensors file held in memory (`path` only names it in errors).
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<HashMap<String, Tensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {e:?}", path.display())
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let b = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::from_f32(
                b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                &shape,
            )?,
            Dtype::BF16 => {
                Tensor::from_bf16(b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect(), &shape)?
                    .to_dtype(DType::F32)?
            }
            Dtype::F16 => {
                Tensor::from_f16(b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect(), &shape)?
                    .to_dtype(DType::F32)?
            }
            Dtype::I32 => Tensor::from_i32(
                b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect(),
                &shape,
            )?,
            Dtype::I64 => Tensor::from_i32(
                b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32).collect(),
                &shape,
            )?,
            Dtype::U32 => Tensor::from_u32(
                b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
                &shape,
            )?,
            d => bail!("{}: tensor {name:?} has dtype {d:?}, which smelt does not read", path.display()),
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// Reads a model folder's weights: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_model_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return read_safetensors(&single);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?)
            .with_context(|| format!("{}: invalid JSON", index.display()))?;
    let map = v["weight_map"].as_object().with_context(|| format!("{}: no weight_map", index.display()))?;
    let mut shards: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
    shards.sort();
    shards.dedup();
    // A shard is a file of this folder: an absolute path or one with `..` would read elsewhere.
    if let Some(bad) = shards.iter().find(|s| {
        let p = Path::new(s);
        p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
    }) {
        bail!("{}: weight_map names shard {bad:?}, which is not a file name inside the model folder", index.display());
    }
    let mut out = HashMap::new();
    for s in shards {
        out.extend(read_safetensors(&dir.join(s))?);
    }
    Ok(out)
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        // Quantised weights are dequantised before writing (see write_safetensors).
        DType::F32 | DType::Quant => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
    }
}

/// Writes tensors to `path` atomically (temporary file, then rename), in the given dtype for
/// floating-point tensors.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    dtype: DType,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bufs: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            // Device tensors (a GPU run's weights) are copied to the host here, so the file is
            // the same whichever device trained it.
            let t = t.to_device(smelt_core::Device::Cpu).with_context(|| format!("{n}: copying to the host"))?;
            let t = if matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16 | DType::Quant) {
                t.to_dtype(dtype)?
            } else {
                t.clone()
            };
            Ok((n.clone(), t.shape().to_vec(), st_dtype(t.dtype()), t.to_le_bytes()?))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, s, d, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(|e| anyhow::anyhow!("{n}: {e:?}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let tmp = smelt_files::Temp::new(path);
    safetensors::serialize_to_file(views, &metadata, tmp.path())
        .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))?;
    tmp.commit(path)
}

#[cfg(test)]
mod shard_tests {
    /// An index naming a shard outside the folder (`..`, an absolute path) is refused, naming
    /// the shard, before anything is read.
    #[test]
    fn shards_outside_the_model_folder_are_refused() {
        let d = std::env::temp_dir().join(format!("smelt-shards-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for shard in ["../outside.safetensors", "/etc/passwd", "a/../../b.safetensors"] {
            let index = serde_json::json!({ "weight_map": { "w": shard } });
            std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
            let e = format!("{:#}", super::read_model_weights(&d).unwrap_err());
            assert!(e.contains(shard) && e.contains("not a file name inside the model folder"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
