//! `smelt bench`: forward, batch-1 decode and training throughput, and peak memory, for a
//! preset, a model folder or a GGUF file. Numbers for docs/PERF.md; compare with bench/torch_cpu.py (CPU)
//! and bench/torch_gpu.py (CUDA). On a GPU every timed region ends with a device sync, and
//! peak_mem_bytes is the most device memory held in tensors at once.

use super::generate::Format;
use anyhow::{bail, Result};
use clap::Args;
use smelt_core::ops::adamw::AdamW;
use smelt_core::rng::Rng;
use smelt_core::{Device, Tensor};
use smelt_model::{presets, Decoder, KvCache, Logits, Model};
use smelt_train::captured::{self, CapturedStep};
use smelt_train::optim::{AdamWState, Hyper, Optimizer};
use smelt_train::Layout;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Preset size (ignored with --model).
    #[arg(long, default_value = "small")]
    size: String,
    /// Benchmark this model folder or .gguf file instead of a fresh preset (a GGUF's weights stay
    /// quantised, on the GPU too; training is then timed only with --adapter: QLoRA).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A LoRA adapter folder (PEFT's format) on --model: forward and decode run through it, and
    /// the timed training step trains only it.
    #[arg(long, value_name = "DIR", requires = "model")]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 8192, value_parser = super::checks::vocab_size)]
    vocab_size: usize,
    #[arg(long, default_value_t = 4, value_parser = super::checks::count)]
    batch_size: usize,
    #[arg(long, default_value_t = 128, value_parser = super::checks::count)]
    seq_len: usize,
    /// Timed iterations per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = super::checks::count)]
    iters: usize,
    /// Time the training step with activation checkpointing (each layer's activations
    /// recomputed in backward, as `train --grad-checkpoint`): less memory at long sequences.
    #[arg(long)]
    grad_checkpoint: bool,
    /// Tokens decoded one at a time (batch 1, KV cache) after a 16-token prompt; only they are
    /// timed, not the prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Also time batched decode steps through the server's paged KV cache: one step of N
    /// sequences, each one token, after a `--paged-prompt`-token prompt each, for every N listed (e.g.
    /// 1,8,32,64). On a GPU the step is replayed from a captured graph, as `smelt serve` runs it
    /// (launched under SMELT_CUDA_GRAPH=0), and each step waits for the device.
    #[arg(long, value_delimiter = ',')]
    paged_batch: Vec<usize>,
    /// The prompt length of each `--paged-batch` sequence (a served chat request's context is
    /// longer than the default's, and its decode attention costs more).
    #[arg(long, default_value_t = 16)]
    paged_prompt: usize,
    /// The `--paged-batch` pool's key/value storage, as `smelt serve --kv-cache-type` (auto: the
    /// activation dtype, the server's default).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16", "q8_0"])]
    paged_kv_type: String,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Skip the forward of every position's logits (time prefill and decode only): a
    /// comparison with llama.cpp's prompt processing needs only the prefill, and on the CPU the
    /// forward's 49k-wide head over every position costs as much again.
    #[arg(long)]
    no_forward: bool,
    /// Skip the timed training step (a prefill/decode comparison with an inference engine,
    /// e.g. bench/hf_prefill_vs_torch.py, needs none of it)
    #[arg(long)]
    no_train: bool,
}

/// CPU time this process's threads have run, in seconds (the sum of /proc/self/task/*/schedstat;
/// NaN where that is not readable). On a machine shared with other work, a one-thread run's CPU
/// time is steadier than its wall time, which counts the time other processes held the core.
pub fn cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ns as f64 * 1e-9
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn median_secs(iters: usize, device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up (and, on a GPU, kernel compilation and loading)
    Tensor::synchronize(device)?;
    profile_reset(); // the profile shows the steady state, not the one-time loading
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        f()?;
        Tensor::synchronize(device)?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(t[t.len() / 2])
}

/// The median of CPU times taken in `median_secs`' runs, the warm-up's (the first) left out.
fn median_after_warmup(mut secs: Vec<f64>) -> f64 {
    let mut timed = secs.split_off(1.min(secs.len()));
    timed.sort_by(|x, y| x.partial_cmp(y).unwrap());
    timed.get(timed.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prints and clears the per-op totals: CPU ops (`SMELT_PROFILE=1`) and, in CUDA builds,
/// kernels (`SMELT_CUDA_PROFILE=1`).
fn profile_report(title: &str) {
    let p = smelt_core::profile::take();
    if !p.is_empty() {
        let total: f64 = p.iter().map(|x| x.1).sum();
        eprintln!("SMELT_PROFILE {title} (all timed iterations):");
        for (n, s, c) in p {
            eprintln!("  {n:<18} {:>8.1} ms {:>5.1}% {c:>7} calls", s * 1e3, 100.0 * s / total);
        }
    }
    #[cfg(feature = "cuda")]
    {
        smelt_core::cuda::profile::report(title);
        smelt_core::cuda::profile::reset();
    }
    let _ = title;
}

fn profile_reset() {
    smelt_core::profile::take();
    #[cfg(feature = "cuda")]
    smelt_core::cuda::profile::reset();
}

/// Refuses a benchmark whose estimated memory (the training step's, or the weights and the
/// forward's when larger, plus the decode KV cache; the weights only when `fresh`, as a loaded
/// model already holds them) exceeds what `device` has: `smelt sizes` for the figures.
fn fits(c: &smelt_model::ModelConfig, a: &BenchArgs, device: Device, fresh: bool) -> Result<()> {
    use smelt_model::memory;
    let (tokens, seq) = (a.batch_size as f64 * a.seq_len as f64, a.seq_len as f64);
    let weights = 4.0 * memory::params(c);
    let step = memory::training_bytes(c, tokens, false).max(weights + memory::forward_bytes(c, tokens, seq));
    let kv = memory::kv_cache_bytes(c, 1.0, 16.0 + a.decode_tokens as f64, 4.0) + 4.0 * a.decode_tokens as f64;
    let need = step + kv - if fresh { 0.0 } else { weights };
    let what = format!(
        "bench (--batch-size {} --seq-len {} --decode-tokens {}, {:.0} parameters)",
        a.batch_size,
        a.seq_len,
        a.decode_tokens,
        memory::params(c)
    );
    smelt_core::mem::ensure_fits(device, need, &what)
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = super::device::resolve(&a.device)?;
    if !a.no_train {
        // The timed step is a training step: its products choose their algorithms as `train`'s
        // do (the forward and prefill timed before it share those choices where shapes agree).
        smelt_core::ops::matmul::tune_for_training();
    }
    let mut model = match &a.model {
        Some(dir) => {
            let m = super::lora::load_model_adapted(dir, a.adapter.as_deref())?;
            fits(&m.cfg, &a, device, false)?;
            m
        }
        None => {
            let cfg = presets::preset(&a.size, a.vocab_size)?;
            fits(&cfg, &a, device, true)?;
            Model::init(cfg, 1)?
        }
    };
    model.to_device(device)?;
    let (b, t, v) = (a.batch_size, a.seq_len, model.cfg.vocab_size as u64);
    let mut rng = Rng::new(7);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(v) as u32).collect() };
    let xs = ids(b * t);
    let x = Tensor::from_u32(xs.clone(), &[b, t])?;
    let y = Tensor::from_u32(ids(b * t), &[b, t])?;
    let prompt = Tensor::from_u32(ids(16), &[1, 16])?;
    let decode_ids = ids(a.decode_tokens);

    profile_reset();
    let fwd = if a.no_forward {
        f64::NAN
    } else {
        median_secs(a.iters, device, || model.logits(&x, None, Logits::All).map(|_| ()))?
    };
    profile_report("forward");
    // Prefill as llama.cpp's `eval` does it: the first sequence's t tokens into an empty KV
    // cache, logits of the last position only (the forward above computes every position's).
    let first = Tensor::from_u32(xs[..t].to_vec(), &[1, t])?;
    let mut pre_cpu = Vec::new();
    let pre = median_secs(a.iters, device, || {
        let c0 = cpu_secs();
        let mut cache = KvCache::new_on(&model.cfg, 1, t, device)?;
        model.logits(&first, Some(&mut cache), Logits::Last)?;
        pre_cpu.push(cpu_secs() - c0);
        Ok(())
    })?;
    let pre_cpu = median_after_warmup(pre_cpu);
    profile_report("prefill");
    // The decoded tokens alone are timed (as llama.cpp's peers time theirs), not the 16-token
    // prompt before them.
    let mut step_secs = Vec::new();
    median_secs(a.iters.min(3), device, || {
        // As `generate` decodes: on a GPU the step is captured once (each run captures afresh,
        // and that time is counted) and replayed.
        let cache = KvCache::new_on(&model.cfg, 1, 16 + decode_ids.len(), device)?;
        let mut dec = Decoder::new(&model, cache);
        dec.prefill(&prompt)?;
        Tensor::synchronize(device)?;
        let s = Instant::now();
        for &id in &decode_ids {
            dec.step(&Tensor::from_u32(vec![id], &[1, 1])?)?;
        }
        Tensor::synchronize(device)?;
        step_secs.push(s.elapsed().as_secs_f64());
        Ok(())
    })?;
    let dec = median_after_warmup(step_secs);
    profile_report("decode");
    let mut paged = Vec::new();
    for &n in &a.paged_batch {
        let secs = paged_decode(&model, n.max(1), a.paged_prompt.max(1), &a.paged_kv_type, &decode_ids, &mut ids)?;
        profile_report(&format!("paged decode x{n}, decode steps only"));
        paged.push(serde_json::json!({"batch": n, "prompt": a.paged_prompt.max(1), "kv_type": a.paged_kv_type, "step_ms": secs * 1e3, "tok_s": n as f64 / secs}));
    }
    // Quantised (GGUF) weights are not trained; an adapter on them is (QLoRA).
    let quantised = model.params.iter().any(|p| p.dtype() == smelt_core::DType::Quant) && model.adapter.is_none();
    let mut train_cpu = Vec::new();
    let mut train_captured = false;
    let train = if quantised || a.no_train {
        f64::NAN
    } else {
        let mut opt = AdamWState::new(model.trainable());
        opt.to_device(device)?;
        let hp = AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let batch = [(x.clone(), y.clone())];
        // SMELT_CUDA_GRAPH_STEP=1: the update captured as a CUDA graph, as `smelt train` runs
        // it then; its uncaptured first updates run before the timing (they are warm-up).
        let mut cap = None;
        let mut o = Optimizer::from_adamw(opt);
        let hyper = Hyper { adamw: hp, muon: None };
        if captured::wanted() && !device.is_cpu() {
            match captured::unsupported(&model, &o, &Layout::default(), None) {
                Some(why) => eprintln!("note: SMELT_CUDA_GRAPH_STEP=1, but the timed update is not captured: {why}"),
                None => {
                    let mut c = CapturedStep::new(device, &batch, &hyper, 1.0, a.grad_checkpoint)?;
                    while !c.is_settled() {
                        c.step(&mut model, &mut o, &hyper, &batch, 1.0, a.grad_checkpoint)?;
                    }
                    cap = Some(c);
                }
            }
        }
        train_captured = cap.as_ref().is_some_and(CapturedStep::is_captured);
        let t = median_secs(a.iters, device, || {
            let c0 = cpu_secs();
            match cap.as_mut() {
                Some(c) => c.step(&mut model, &mut o, &hyper, &batch, 1.0, a.grad_checkpoint).map(|_| ())?,
                None => smelt_train::step_with(
                    &mut model,
                    &mut o,
                    &hyper,
                    &batch,
                    &Layout::default(),
                    1.0,
                    a.grad_checkpoint,
                )
                .map(|_| ())?,
            }
            train_cpu.push(cpu_secs() - c0);
            Ok(())
        })?;
        profile_report("train");
        t
    };

    let peak = match device {
        Device::Cpu => peak_rss(),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => smelt_core::cuda::mem_stats().1 as u64,
    };
    // What the CUDA figures were measured under: mixed precision (bf16 activations, the
    // default) or f32 (SMELT_CUDA_MATMUL=f32).
    let precision = match device.activation_dtype() {
        smelt_core::DType::BF16 => "bf16",
        _ => "f32",
    };
    let r = serde_json::json!({
        "device": device.to_string(),
        "precision": precision,
        "threads": rayon::current_num_threads(),
        "params": model.cfg.n_params(),
        "batch_size": b, "seq_len": t,
        "forward_tok_s": (b * t) as f64 / fwd,
        "prefill_tok_s": t as f64 / pre,
        "prefill_cpu_s": pre_cpu,
        "decode_tok_s": decode_ids.len() as f64 / dec,
        "train_tok_s": (b * t) as f64 / train,
        // CPU seconds of all threads per step (a loaded machine's wall clock says little).
        "train_cpu_s": median_after_warmup(train_cpu),
        "peak_mem_bytes": peak,
        "grad_checkpoint": a.grad_checkpoint,
        "paged_decode": paged,
        // Whether decode ran every layer in the persistent kernel (SMELT_CUDA_PERSIST=1), so an
        // A/B cannot time the launched kernels twice without saying so.
        "decode_persistent": smelt_core::ops::decode_layers::launches() > 0,
        // Whether the timed training update was replayed from a captured CUDA graph
        // (SMELT_CUDA_GRAPH_STEP=1).
        "train_captured": train_captured,
    });
    match a.format {
        Format::Json => println!("{r}"),
        Format::Text => {
            println!(
                "device {device} ({precision} activations), {} threads, {} parameters, batch {b} × seq {t}",
                r["threads"], r["params"]
            );
            if let Some(f) = r["forward_tok_s"].as_f64() {
                println!("forward  {f:>10.0} tok/s (every position's logits)");
            }
            println!(
                "prefill  {:>10.0} tok/s (batch 1, {t} tokens into a KV cache, last logits)",
                r["prefill_tok_s"].as_f64().unwrap()
            );
            println!("decode   {:>10.1} tok/s (batch 1, KV cache)", r["decode_tok_s"].as_f64().unwrap());
            match r["train_tok_s"].as_f64() {
                Some(t) => println!("train    {t:>10.0} tok/s (forward + backward + AdamW)"),
                None if a.no_train => println!("train         n/a (--no-train)"),
                None => println!("train         n/a (quantised weights train only under an adapter: --adapter)"),
            }
            println!("peak mem {:>10.1} MiB", r["peak_mem_bytes"].as_u64().unwrap() as f64 / (1 << 20) as f64);
            for p in r["paged_decode"].as_array().into_iter().flatten() {
                println!(
                    "paged decode, {:>3} sequences: {:>8.1} ms a step, {:>8.1} tok/s",
                    p["batch"],
                    p["step_ms"].as_f64().unwrap(),
                    p["tok_s"].as_f64().unwrap()
                );
            }
        }
    }
    Ok(())
}

/// Median seconds of one batched decode step of `n` sequences through the paged KV pool
/// (what `smelt serve` runs: `Model::logits_paged`; on a GPU `PagedDecoder`'s replayed step),
/// each sequence after a `prompt`-token prompt.
fn paged_decode(
    model: &Model,
    n: usize,
    prompt: usize,
    kv_type: &str,
    decode_ids: &[u32],
    ids: &mut impl FnMut(usize) -> Vec<u32>,
) -> Result<f64> {
    use smelt_model::{KvPool, KvType, PagedDecoder, SeqStep};
    let steps = decode_ids.len().clamp(1, 32);
    if prompt + steps > model.cfg.max_pos {
        bail!("--paged-prompt {prompt} + {steps} decode steps exceed the model's context of {}", model.cfg.max_pos);
    }
    let per_seq = (prompt + steps + 1).div_ceil(16);
    let device = model.device();
    // auto: the server's default pool type, the activation dtype.
    let kind = match kv_type {
        "auto" if device.activation_dtype() == smelt_core::DType::BF16 => KvType::BF16,
        "auto" => KvType::F32,
        t => KvType::parse(t)?,
    };
    let mut pool = KvPool::with_type(model, n * per_seq * 16, 16, kind)?;
    let mut graphs = PagedDecoder::new(model, &pool, n)?;
    let tables: Vec<Vec<u32>> = (0..n).map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect()).collect();
    let prompts: Vec<Vec<u32>> = (0..n).map(|_| ids(prompt)).collect();
    let prefill: Vec<SeqStep> = (0..n).map(|i| SeqStep { tokens: &prompts[i], pos0: 0, table: &tables[i] }).collect();
    model.logits_paged(&prefill, &mut pool)?;
    // The prompts' ops are not the steps': the profile reports the decode steps only.
    let _ = smelt_core::profile::take();
    let mut times = Vec::with_capacity(steps);
    for (s, &id) in decode_ids.iter().take(steps).enumerate() {
        let tok = [id];
        let batch: Vec<SeqStep> =
            (0..n).map(|i| SeqStep { tokens: &tok, pos0: prompt + s, table: &tables[i] }).collect();
        Tensor::synchronize(device)?;
        let t = Instant::now();
        match graphs.as_mut() {
            Some(g) => g.step(&batch, &mut pool)?,
            None => model.logits_paged(&batch, &mut pool)?,
        };
        Tensor::synchronize(device)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
