//! Importance matrices, as llama.cpp's `llama-imatrix` computes them and `llama-quantize
//! --imatrix` uses them: for every weight matrix, the sum over calibration tokens of the
//! squared input activation of each input column (Σx², "in_sum2") and the number of tokens.
//! Divided, they are the mean x² per column: how much an error in that column of the weights
//! costs the matmul's output, the weights the imatrix quantisers (`quant::quantize_with`) put
//! on each element's rounding error.
//!
//! Files: llama.cpp's GGUF format (`general.type = "imatrix"`, `imatrix.datasets`,
//! `imatrix.chunk_count`, `imatrix.chunk_size`, and per matrix `<name>.in_sum2` (F32, one row
//! per expert) and `<name>.counts` (F32, one per expert)), read and written; and the legacy
//! `.dat` format (sums stored as mean·ncall), read and written. `collect` computes one on
//! smelt's CPU forward, as `llama-imatrix` does on llama.cpp's.

use crate::load::gguf_name;
use anyhow::{bail, Context, Result};
use smelt_core::quant::GgmlType;
use smelt_core::{Graph, Tensor};
use smelt_gguf::{GgufFile, GgufWriter, Value};
use smelt_model::{Logits, Model};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One weight matrix's statistics. `sums` has `counts.len()` rows (one per expert; one for a
/// dense matrix) of one value per input column.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub sums: Vec<f32>,
    pub counts: Vec<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    /// By llama.cpp tensor name (`blk.0.attn_q.weight`), sorted.
    pub entries: BTreeMap<String, Entry>,
    /// The calibration text files it was computed on.
    pub datasets: Vec<String>,
    /// Chunks (of `chunk_size` tokens) it was computed on.
    pub chunk_count: u32,
    pub chunk_size: u32,
    /// Read from a legacy .dat file: `sums` hold mean·ncall and `counts` {ncall}.
    pub legacy: bool,
}

const SUMS: &str = ".in_sum2";
const COUNTS: &str = ".counts";

impl Imatrix {
    /// Reads a GGUF imatrix, or a legacy .dat one (any file not starting with "GGUF").
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let m = if bytes.starts_with(b"GGUF") { Self::from_gguf(path) } else { Self::from_legacy(&bytes) }
            .with_context(|| format!("{}: not a valid imatrix file", path.display()))?;
        if m.entries.is_empty() {
            bail!("{}: the imatrix has no entries", path.display());
        }
        for (name, e) in &m.entries {
            if e.sums.iter().any(|v| !v.is_finite()) {
                bail!("{}: {name} holds non-finite values", path.display());
            }
        }
        Ok(m)
    }

    fn from_gguf(path: &Path) -> Result<Self> {
        let f = GgufFile::open(path)?;
        let mut m = Imatrix::default();
        if let Some(ds) = f.get("imatrix.datasets").and_then(Value::as_array) {
            m.datasets = ds.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        }
        let (count, size) = (f.get("imatrix.chunk_count"), f.get("imatrix.chunk_size"));
        if count.is_none() || size.is_none() || f.get("imatrix.datasets").is_none() {
            bail!("missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size), as llama-quantize requires");
        }
        m.chunk_count = count.and_then(Value::as_u64).context("imatrix.chunk_count is not an integer")? as u32;
        m.chunk_size = size.and_then(Value::as_u64).context("imatrix.chunk_size is not an integer")? as u32;
        // Per matrix name: (sums, counts), each found under its suffix.
        type Pair = (Option<Vec<f32>>, Option<Vec<f32>>);
        let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
        for t in &f.tensors {
            let (ty, b) = f.tensor_bytes(t)?;
            let (base, is_sums) = match (t.name.strip_suffix(SUMS), t.name.strip_suffix(COUNTS)) {
                (Some(b), _) => (b, true),
                (_, Some(b)) => (b, false),
                _ => continue,
            };
            if ty != GgmlType::F32 {
                bail!("{}: sums and counts must be F32, got {}", t.name, ty.name());
            }
            let v = smelt_core::quant::dequantize(ty, b, b.len() / 4)?;
            let p = pairs.entry(base.to_string()).or_default();
            if is_sums {
                p.0 = Some(v)
            } else {
                p.1 = Some(v)
            }
        }
        for (name, p) in pairs {
            let (Some(sums), Some(counts)) = p else { bail!("{name}: sums without counts or counts without sums") };
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                bail!("{name}: {} sums do not split into {} matrices", sums.len(), counts.len());
            }
            m.entries.insert(name, Entry { sums, counts: counts.iter().map(|&c| c.round() as i64).collect() });
        }
        Ok(m)
    }

    fn from_legacy(b: &[u8]) -> Result<Self> {
        let take = |pos: &mut usize, n: usize, what: &str| -> Result<&[u8]> {
            let s = b.get(*pos..*pos + n).with_context(|| format!("truncated at byte {} reading {what}", *pos))?;
            *pos += n;
            Ok(s)
        };
        let int = |pos: &mut usize, what: &str| -> Result<i32> {
            Ok(i32::from_le_bytes(take(pos, 4, what)?.try_into().unwrap()))
        };
        let mut pos = 0usize;
        let n = int(&mut pos, "the entry count")?;
        if n < 1 {
            bail!("no entries (count {n})");
        }
        let mut m = Imatrix { legacy: true, ..Default::default() };
        for e in 0..n {
            let len = int(&mut pos, "a name length")?;
            if !(0..=4096).contains(&len) {
                bail!("entry {e}: name length {len}");
            }
            let name = String::from_utf8(take(&mut pos, len as usize, "a name")?.to_vec())
                .with_context(|| format!("entry {e}: name is not UTF-8"))?;
            let ncall = int(&mut pos, "ncall")?;
            let nval = int(&mut pos, "the value count")?;
            if nval < 1 {
                bail!("{name}: {nval} values");
            }
            let v = take(&mut pos, nval as usize * 4, "values")?;
            let sums = v.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            m.entries.insert(name, Entry { sums, counts: vec![ncall as i64] });
        }
        // Optional trailer: the chunk count and the dataset name.
        if let Ok(c) = int(&mut pos, "the chunk count") {
            m.chunk_count = c.max(0) as u32;
            if let Ok(len) = int(&mut pos, "the dataset length") {
                if len > 0 {
                    if let Ok(d) = take(&mut pos, len as usize, "the dataset") {
                        m.datasets.push(String::from_utf8_lossy(d).into_owned());
                    }
                }
            }
        }
        Ok(m)
    }

    /// Writes llama.cpp's GGUF imatrix format (what `llama-imatrix` writes by default).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.legacy {
            bail!(
                "{}: this imatrix came from a legacy .dat file (means, not sums); save it with save_legacy",
                path.display()
            );
        }
        let mut w = GgufWriter::new();
        w.kv("general.type", Value::String("imatrix".into()));
        w.kv("imatrix.datasets", Value::Array(self.datasets.iter().map(|d| Value::String(d.clone())).collect()));
        w.kv("imatrix.chunk_count", Value::U32(self.chunk_count));
        w.kv("imatrix.chunk_size", Value::U32(self.chunk_size));
        let f32s = |v: &mut dyn Iterator<Item = f32>| v.flat_map(f32::to_le_bytes).collect::<Vec<u8>>();
        for (name, e) in &self.entries {
            // ggml writes [cols, nmat] and [1, nmat] without trailing 1-dimensions: a dense
            // matrix's entry is [cols] and [1].
            let nmat = e.counts.len();
            let (sums_shape, counts_shape) = if nmat == 1 {
                (vec![e.sums.len()], vec![1])
            } else {
                (vec![nmat, e.sums.len() / nmat], vec![nmat, 1])
            };
            w.tensor(&format!("{name}{SUMS}"), &sums_shape, GgmlType::F32, f32s(&mut e.sums.iter().copied()))?;
            w.tensor(
                &format!("{name}{COUNTS}"),
                &counts_shape,
                GgmlType::F32,
                f32s(&mut e.counts.iter().map(|&c| c as f32)),
            )?;
        }
        crate::write_gguf(&w, path)
    }

    /// Writes the legacy .dat format (`llama-imatrix --output-format dat`): per entry the mean
    /// times ncall = ⌈tokens / chunk_size⌉, then the chunk count and the first dataset's name.
    pub fn save_legacy(&self, path: &Path) -> Result<()> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.entries.len() as i32).to_le_bytes());
        let chunk = self.chunk_size.max(1) as i64;
        for (name, e) in &self.entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            let ncall = if self.legacy {
                e.counts[0]
            } else {
                (e.counts.iter().copied().max().unwrap_or(0) + chunk - 1) / chunk
            };
            b.extend_from_slice(&(ncall as i32).to_le_bytes());
            b.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            let per = e.sums.len() / e.counts.len();
            for (i, &v) in e.sums.iter().enumerate() {
                let out = if self.legacy {
                    v
                } else {
                    let c = e.counts[i / per] as f32;
                    let (v, c) = if c == 0.0 { (1.0, 1.0) } else { (v, c) };
                    v / c * ncall as f32
                };
                b.extend_from_slice(&out.to_le_bytes());
            }
        }
        b.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let ds = self.datasets.last().map_or("", String::as_str);
        b.extend_from_slice(&(ds.len() as i32).to_le_bytes());
        b.extend_from_slice(ds.as_bytes());
        smelt_files::write_atomic(path, b)
    }

    /// The importance weights of tensor `name` (one per input column, per expert): the mean
    /// x², as llama-quantize derives them (sums/count; 1 where a matrix saw no tokens; a
    /// legacy file's mean·ncall divided by ncall).
    pub fn weights(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let ncall = e.counts.first().copied().unwrap_or(0);
            return Some(if ncall > 0 { e.sums.iter().map(|v| v / ncall as f32).collect() } else { e.sums.clone() });
        }
        let per = e.sums.len() / e.counts.len();
        Some(
            e.sums
                .chunks(per)
                .zip(&e.counts)
                .flat_map(|(s, &c)| {
                    let c = c as f32;
                    s.iter().map(move |&v| if c > 0.0 { v / c } else { 1.0 })
                })
                .collect(),
        )
    }
}

/// What `collect` does with a model: llama-imatrix's defaults.
pub struct CollectOptions {
    /// Tokens per chunk (llama-imatrix's context, `-c`, default 512); each chunk is one
    /// independent forward.
    pub chunk_size: usize,
    /// Use at most this many chunks (`--chunks`); all whole chunks when None.
    pub max_chunks: Option<usize>,
    /// Also collect the output matrix (`--process-output`; an untied `output.weight` only, as
    /// llama.cpp names a tied head `token_embd.weight` and never collects it).
    pub process_output: bool,
    /// Recorded in the file as the dataset.
    pub dataset: String,
}

/// The activations of every `linear` whose weight is a model parameter, accumulated as
/// llama-imatrix's `collect_imatrix` does: per weight, Σx² per input column in f32 in token
/// order, and the token count; inputs of fewer than 16 rows are skipped, as there.
struct Collector {
    names: Vec<Option<String>>,
    entries: BTreeMap<String, Entry>,
    error: Option<String>,
}

impl Collector {
    fn add(&mut self, w: usize, x: &Tensor) {
        let Some(Some(name)) = self.names.get(w) else { return };
        let shape = x.shape();
        let (rows, cols) = (x.rows(), *shape.last().unwrap_or(&0));
        if rows < 16 || cols == 0 {
            return;
        }
        let v = match x.to_vec_f32() {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(format!("{name}: {e:#}"));
                return;
            }
        };
        let e = self.entries.entry(name.clone()).or_insert_with(|| Entry { sums: vec![0.0; cols], counts: vec![0] });
        if e.sums.len() != cols {
            self.error = Some(format!("{name}: inputs of {cols} columns after {}", e.sums.len()));
            return;
        }
        for row in v.chunks_exact(cols) {
            for (a, &x) in e.sums.iter_mut().zip(row) {
                *a += x * x;
            }
        }
        e.counts[0] += rows as i64;
        if e.sums.iter().any(|s| !s.is_finite()) {
            self.error = Some(format!("{name}: non-finite activations"));
        }
    }
}

/// Computes an importance matrix on the UTF-8 calibration text in the file `input`, tokenised
/// whole by `tok` (the model's tokenizer), recorded with the file's path as its dataset
/// (`smelt imatrix`, `smelt quantize --imatrix-text`). See [`collect`].
pub fn collect_text(
    model: &Model,
    tok: &smelt_tokenizer::Tokenizer,
    input: &Path,
    chunk_size: usize,
    max_chunks: Option<usize>,
    process_output: bool,
    progress: impl FnMut(usize, usize),
) -> Result<Imatrix> {
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not valid UTF-8 ({e})", input.display()))?;
    let ids = tok.encode(&text);
    let opts = CollectOptions { chunk_size, max_chunks, process_output, dataset: input.display().to_string() };
    collect(model, &ids, &opts, progress).with_context(|| format!("calibration text {}", input.display()))
}

/// Computes an importance matrix on `ids` (calibration tokens): whole chunks of
/// `opts.chunk_size` tokens, each run through the model's forward (all positions), with every
/// matmul's input squared and summed per column. At least two chunks are needed, as in
/// llama-imatrix. `progress(done, total)` is called after each chunk.
pub fn collect(
    model: &Model,
    ids: &[u32],
    opts: &CollectOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Imatrix> {
    let n = opts.chunk_size;
    if n < 16 {
        bail!("imatrix: chunks of {n} tokens are too short (llama.cpp ignores matmuls of fewer than 16 rows)");
    }
    if ids.len() < 2 * n {
        bail!(
            "imatrix: the calibration text has {} tokens; at least {} (two chunks of {n}) are needed",
            ids.len(),
            2 * n
        );
    }
    let chunks = (ids.len() / n).min(opts.max_chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        bail!("imatrix: no chunks to run");
    }
    // Parameter i of the model is graph leaf i; its llama.cpp name decides whether it is kept.
    let names = model
        .names
        .iter()
        .map(|hf| {
            let g = gguf_name(hf)?;
            (g.starts_with("blk.") || (opts.process_output && g == "output.weight")).then_some(g)
        })
        .collect();
    let col = Arc::new(Mutex::new(Collector { names, entries: BTreeMap::new(), error: None }));
    for c in 0..chunks {
        let mut g = Graph::inference();
        let p = model.param_vars(&mut g, false);
        let hook = col.clone();
        g.on_linear(move |w, x| hook.lock().unwrap().add(w.id(), x));
        let tokens = Tensor::from_u32(ids[c * n..(c + 1) * n].to_vec(), &[1, n])?;
        model.forward(&mut g, &p, &tokens, None, Logits::All, false)?;
        if let Some(e) = col.lock().unwrap().error.take() {
            bail!("imatrix: chunk {}: {e}", c + 1);
        }
        progress(c + 1, chunks);
    }
    let entries = std::mem::take(&mut col.lock().unwrap().entries);
    if entries.is_empty() {
        bail!("imatrix: the forward ran no matmul with a blk.* weight");
    }
    Ok(Imatrix {
        entries,
        datasets: vec![opts.dataset.clone()],
        chunk_count: chunks as u32,
        chunk_size: n as u32,
        legacy: false,
    })
}
