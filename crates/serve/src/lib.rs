//! smelt-serve: `smelt serve`, an OpenAI-compatible HTTP server over one model.
//!
//! Two sides, one channel between them (docs/SERVE.md):
//! - `http`: axum on a tokio runtime on its own thread: routes, the API key, request checks
//!   (`api`), prompt rendering and tokenisation, OpenAI's responses and Server-Sent Events;
//! - `engine`: the thread that owns the model (the caller's: the CLI's rayon worker): a
//!   scheduler that batches every running request into one forward per step (continuous
//!   batching) over a paged KV pool (`blocks`: allocation and the prefix cache);
//! - `metrics`: the counters and histograms `/metrics` reports;
//! - `structured`: `response_format` through llguidance (the token trie, a request's
//!   constraint, each step's mask).
//!
//! The model loads after the port is bound, so `/health` answers 503 while it loads.

pub mod api;
pub mod blocks;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod structured;

use anyhow::{Context, Result};
use smelt_model::Model;
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};

/// What the server accepts.
pub struct Options {
    pub api_key: Option<String>,
    /// Positions in the KV pool, shared by all requests (one request may use them all, up to
    /// the model's context); None: the model's context.
    pub ctx_size: Option<usize>,
    /// Requests in the running batch at most.
    pub parallel: usize,
    /// How the KV pool stores keys and values.
    pub kv_type: smelt_model::KvType,
    /// The model's name in requests and `/v1/models`.
    pub model_id: String,
    /// `--model` as given; requests may name the model by it too.
    pub model_path: String,
    /// Largest request body, in bytes (413 past it).
    pub body_limit: usize,
    /// Choices that may wait for a place in the batch (429 past it).
    pub max_queue: usize,
    /// Prompt tokens one step computes at most, over all sequences (0: no limit):
    /// `engine::DEFAULT_PREFILL_CHUNK` unless asked.
    pub prefill_chunk: usize,
}

/// A loaded model and what goes with it.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The chat template, or why there is none (then `/v1/chat/completions` is a 400).
    pub template: Result<ChatTemplate, String>,
    /// Ids that end generation (`smelt_infer::stop_ids`).
    pub stop_ids: Vec<u32>,
}

/// Starts the HTTP thread on `listener` (bound by the caller, so the port is known and taken
/// before anything loads), loads the model with `load` (on this thread, which then runs the
/// engine) and serves until the HTTP side ends.
pub fn run(listener: TcpListener, opts: Options, load: impl FnOnce() -> Result<Loaded>) -> Result<()> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (jobs, queue) = std::sync::mpsc::channel();
    let stats = Arc::new(metrics::Stats::default());
    let shared = Arc::new(http::Shared {
        model_id: opts.model_id,
        model_path: opts.model_path,
        api_key: opts.api_key,
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        text: OnceLock::new(),
        jobs,
        stats: stats.clone(),
        max_queue: opts.max_queue,
    });
    let app = http::router(shared.clone(), opts.body_limit);
    let server = std::thread::Builder::new().name("smelt-http".into()).spawn(move || -> Result<()> {
        // One thread for all I/O: the work is the model's, on the engine thread.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app).await
        })
        .context("serving HTTP")
    })?;
    eprintln!("smelt serve: listening on http://{addr} (loading the model)");
    let loaded = load()?;
    let pool_tokens = opts.ctx_size.unwrap_or(loaded.model.cfg.max_pos);
    let ctx = pool_tokens.min(loaded.model.cfg.max_pos);
    let device = loaded.model.device();
    let cfg = engine::EngineConfig::new(&loaded.model, opts.parallel, pool_tokens, opts.kv_type)?
        .with_prefill_chunk(opts.prefill_chunk)?;
    let side = http::TextSide {
        tok: loaded.tokenizer.clone(),
        template: loaded.template,
        ctx,
        vocab: loaded.model.cfg.vocab_size,
        stop_ids: loaded.stop_ids.clone(),
        grammars: OnceLock::new(),
    };
    let _ = shared.text.set(Arc::new(side));
    drop(shared);
    let chunk = match opts.prefill_chunk {
        0 => "prompts in one step".to_string(),
        n => format!("prompts in chunks of up to {n} tokens"),
    };
    let graphs = if !device.is_cpu() && smelt_model::decode::capture_enabled() {
        ", decode steps replayed from CUDA graphs"
    } else if !device.is_cpu() {
        ", decode steps launched (SMELT_CUDA_GRAPH=0)"
    } else {
        ""
    };
    eprintln!(
        "smelt serve: ready on http://{addr} on {device} (KV pool {pool_tokens} tokens of {} in blocks of {}, up to {} requests batched, {ctx} tokens per request, {chunk}{graphs})",
        opts.kv_type.name(),
        blocks::BLOCK_SIZE,
        opts.parallel
    );
    engine::run(&loaded.model, &loaded.tokenizer, &loaded.stop_ids, queue, &stats, cfg);
    match server.join() {
        Ok(r) => r,
        Err(_) => anyhow::bail!("the HTTP thread panicked"),
    }
}
