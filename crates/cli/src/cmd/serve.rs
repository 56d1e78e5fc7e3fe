//! `smelt serve`: an OpenAI-compatible HTTP server over one model (smelt-serve; docs/SERVE.md).

use anyhow::{Context, Result};
use clap::Args;
use smelt_serve::{Loaded, Options};
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model folder (config.json, model.safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors) to
    /// serve on top of --model: folded into the weights at load (W + s·B·A, PEFT's
    /// merge_and_unload; quantised projections it adapts become f32), so every request,
    /// batched or not, runs base + adapter.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// The model's name in requests and /v1/models (default: the file or folder name).
    #[arg(long)]
    alias: Option<String>,
    /// Address to listen on (loopback by default: give 0.0.0.0 to be reachable from others).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the start line names it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 request (default: the SMELT_API_KEY
    /// environment variable, else no key).
    #[arg(long, env = "SMELT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Positions in the KV cache pool, shared by all requests as they grow (blocks of 16 from
    /// one pool, not a per-request split); one request may use up to the model's context
    /// (default: the model's context).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    ctx_size: Option<u64>,
    /// Requests generating together at most (continuous batching: each step is one forward
    /// over all of them, on the CPU and on CUDA).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    parallel: u64,
    /// How the KV pool stores keys and values: f32 (exact: greedy output equals `smelt
    /// generate`), or f16, bf16, q8_0 to hold 2× / 2× / 3.8× the positions in the same memory
    /// (rounded when written; llama.cpp's default is f16; q8_0 on the CPU only). auto: f32 on
    /// the CPU, the activation dtype on CUDA (bf16, or f32 under SMELT_CUDA_MATMUL=f32: what
    /// `smelt generate --device cuda`'s cache holds).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16", "q8_0"])]
    kv_cache_type: String,
    /// Prompt tokens one step computes at most, over all requests (chunked prefill): a longer
    /// prompt is computed a chunk a step, so the requests already generating keep getting
    /// tokens meanwhile instead of waiting for the whole prompt. 0: no limit (a prompt is one
    /// step's work); else at least 16.
    #[arg(long, default_value_t = smelt_serve::engine::DEFAULT_PREFILL_CHUNK, value_name = "N")]
    prefill_chunk: usize,
    /// Requests (choices) that may wait for a place in the batch; more get a 429.
    #[arg(long, default_value_t = 64)]
    queue_size: usize,
    /// Largest request body in bytes; larger ones get a 413.
    #[arg(long, default_value_t = 8 << 20)]
    max_body: usize,
    /// cpu, cuda[:N] or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let min = smelt_serve::engine::MIN_PREFILL_CHUNK;
    if a.prefill_chunk != 0 && a.prefill_chunk < min {
        anyhow::bail!("--prefill-chunk {}: give 0 (no limit) or at least {min} tokens", a.prefill_chunk);
    }
    // Either would start a server that refuses every request.
    if a.max_body == 0 {
        anyhow::bail!("--max-body 0: every request would get a 413; give the largest body in bytes");
    }
    if a.alias.as_deref().is_some_and(|n| n.trim().is_empty()) {
        anyhow::bail!("--alias is empty: requests name the model by it");
    }
    let device = super::device::resolve(&a.device)?;
    let name = a.model.file_name().map(|n| n.to_string_lossy().into_owned());
    let listener = std::net::TcpListener::bind((a.host.as_str(), a.port))
        .with_context(|| format!("--host {} --port {}: cannot listen there", a.host, a.port))?;
    let opts = Options {
        api_key: a.api_key.filter(|k| !k.is_empty()),
        ctx_size: a.ctx_size.map(|n| n as usize),
        model_id: a.alias.or(name).unwrap_or_else(|| a.model.display().to_string()),
        model_path: a.model.display().to_string(),
        body_limit: a.max_body,
        max_queue: a.queue_size,
        prefill_chunk: a.prefill_chunk,
        parallel: a.parallel as usize,
        kv_type: match a.kv_cache_type.as_str() {
            "auto" if device.activation_dtype() == smelt_core::DType::BF16 => smelt_model::KvType::BF16,
            "auto" => smelt_model::KvType::F32,
            t => smelt_model::KvType::parse(t)?,
        },
    };
    let (path, adapter) = (a.model, a.adapter);
    let ctx_size = opts.ctx_size;
    smelt_serve::run(listener, opts, move || {
        let mut model = super::lora::load_model_adapted(&path, adapter.as_deref())?;
        if model.adapter.is_some() {
            model = model.merged()?;
        }
        model.to_device(device)?;
        // The KV pool is --ctx-size positions: refuse one that cannot fit.
        super::limits::new_tokens(&model, 0, ctx_size.unwrap_or(model.cfg.max_pos), "--ctx-size")?;
        let tokenizer = Tokenizer::from_file(&path)?;
        let template = if path.extension().is_some_and(|e| e == "gguf") {
            ChatTemplate::from_gguf(&path)
        } else {
            ChatTemplate::from_tokenizer_config(&path)
        };
        let stop_ids = smelt_infer::stop_ids(&model, &tokenizer, &path)?;
        Ok(Loaded { model, tokenizer, template: template.map_err(|e| format!("{e:#}")), stop_ids })
    })
}
