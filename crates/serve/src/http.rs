//! The HTTP side: axum routes on a tokio runtime. Handlers check the key and the body, render
//! and tokenise the prompt (on tokio's blocking pool, off the I/O loop), queue a [`Job`] for the
//! engine thread and turn its [`Event`]s into OpenAI's responses: one JSON object, or
//! Server-Sent Events (`data: {chunk}\n\n` …, `data: [DONE]`).

use crate::api::{self, ApiError, Prompt};
use crate::engine::{Event, Finish, Job, TokenLogprob};
use crate::metrics::Stats;
use crate::structured::{Constraint, Format, Grammars};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What the handlers share.
pub struct Shared {
    /// The model's name in requests and `/v1/models`.
    pub model_id: String,
    /// `--model` as given (requests may name the model by it too).
    pub model_path: String,
    pub api_key: Option<String>,
    /// Unix seconds at start (`created` of the model object).
    pub created: u64,
    /// Set once the model is loaded: until then `/health` is 503 and requests are refused.
    pub text: OnceLock<Arc<TextSide>>,
    pub jobs: std::sync::mpsc::Sender<Job>,
    /// Counters shared with the engine (queue depth, tokens), and how many jobs may wait.
    pub stats: Arc<Stats>,
    pub max_queue: usize,
}

/// The tokenizer side of the loaded model, used by the handlers.
pub struct TextSide {
    pub tok: Tokenizer,
    /// The chat template, or why there is none.
    pub template: Result<ChatTemplate, String>,
    /// Positions a request may use (prompt + new tokens): `--ctx-size`, at most the model's.
    pub ctx: usize,
    pub vocab: usize,
    /// Ids that end generation (the grammar allows them once complete).
    pub stop_ids: Vec<u32>,
    /// The grammar compiler for `response_format`, or why this model cannot have one: built
    /// by the first request that asks (the token trie of a 50k vocabulary takes a second or
    /// two, which a server that never sees `response_format` should not pay at start).
    pub grammars: OnceLock<Result<Grammars, String>>,
}

impl TextSide {
    fn tokenize(&self, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
        match prompt {
            Prompt::Text(t) => Ok(self.tok.encode(&t)),
            Prompt::Ids(ids) => match ids.iter().find(|&&id| id as usize >= self.vocab) {
                Some(id) => {
                    Err(ApiError::field("prompt", format!("token id {id} is outside the vocabulary ({})", self.vocab)))
                }
                None => Ok(ids),
            },
            Prompt::Chat(msgs) => {
                let tmpl = self.template.as_ref().map_err(|e| {
                    ApiError::field("messages", format!("this model has no chat template ({e}); use /v1/completions"))
                })?;
                let text = tmpl.render(&msgs, true).map_err(|e| ApiError::field("messages", format!("{e:#}")))?;
                // The template writes its own special tokens (as `smelt generate --chat`).
                Ok(self.tok.encode_with(&text, false))
            }
        }
    }

    /// The request's `response_format` compiled for this model (None for text); a schema
    /// llguidance cannot use is a 400 naming `response_format`.
    fn constrain(&self, format: Option<Format>) -> Result<Option<Constraint>, ApiError> {
        let Some(format) = format else { return Ok(None) };
        let grammars = self.grammars.get_or_init(|| {
            let t = std::time::Instant::now();
            let g = Grammars::new(&self.tok, self.vocab, &self.stop_ids).map_err(|e| format!("{e:#}"));
            match &g {
                Ok(_) => eprintln!(
                    "smelt serve: structured output ready (llguidance's token trie of {} ids in {:.0} ms)",
                    self.vocab,
                    t.elapsed().as_secs_f64() * 1e3
                ),
                Err(e) => eprintln!("smelt serve: no structured output for this model: {e}"),
            }
            g
        });
        let grammars = grammars.as_ref().map_err(|e| {
            ApiError::field("response_format", format!("structured output is not available for this model: {e}"))
        })?;
        let c = grammars
            .compile(&format)
            .map_err(|e| ApiError::field("response_format", format!("the JSON schema cannot be used: {e}")))?;
        Ok(Some(c))
    }
}

pub fn router(shared: Arc<Shared>, body_limit: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown route").code("not_found")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared)
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    match s.text.get() {
        Some(_) => api::json_response(StatusCode::OK, &json!({"status": "ok"})),
        None => api::json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "loading"})),
    }
}

fn authorize(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.map(str::trim) == Some(key.as_str()) {
        return Ok(());
    }
    let msg =
        if given.is_some() { "incorrect API key provided" } else { "missing API key (Authorization: Bearer KEY)" };
    Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", msg).code("invalid_api_key"))
}

fn model_object(s: &Shared) -> Value {
    json!({"id": s.model_id, "object": "model", "created": s.created, "owned_by": "smelt"})
}

fn unknown_model(s: &Shared, name: &str) -> ApiError {
    let msg = format!("the model `{name}` does not exist; this server has `{}`", s.model_id);
    ApiError { param: Some("model".into()), ..ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", msg) }
        .code("model_not_found")
}

async fn models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    api::json_response(StatusCode::OK, &json!({"object": "list", "data": [model_object(&s)]}))
}

async fn model(State(s): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    if id != s.model_id {
        return unknown_model(&s, &id).into_response();
    }
    api::json_response(StatusCode::OK, &model_object(&s))
}

async fn completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(s, headers, body, false).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(s, headers, body, true).await.unwrap_or_else(IntoResponse::into_response)
}

/// Prometheus text: request and token counters, queue depth, KV blocks, and the time to
/// first token and inter-token latency histograms (`metrics::Stats::render`).
async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let headers = [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (StatusCode::OK, headers, s.stats.render()).into_response()
}

/// The key, the body (413 over the limit, 400 unreadable) and the loaded tokenizer side (503
/// while loading): what every model route checks first.
fn checked(
    s: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Arc<TextSide>, Bytes), ApiError> {
    authorize(s, headers)?;
    let body = body.map_err(|e| {
        ApiError::new(e.status(), "invalid_request_error", format!("reading the body: {}", e.body_text()))
    })?;
    let text = s
        .text
        .get()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the model is still loading"))?;
    Ok((text.clone(), body))
}

/// [`checked`], with the body as a JSON object.
fn text_request(
    s: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Arc<TextSide>, serde_json::Map<String, Value>), ApiError> {
    let (text, body) = checked(s, headers, body)?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) => Ok((text, o)),
        Ok(_) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "the body must be a JSON object")),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// llama-server's `POST /tokenize`: `{"content": text, "add_special": false}` → `{"tokens": [ids]}`.
async fn tokenize(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let (text, o) = text_request(&s, &headers, body)?;
        let content = o.get("content").and_then(Value::as_str).map(str::to_string);
        let content = content.ok_or_else(|| ApiError::field("content", "`content` must be a string"))?;
        let add_special = match o.get("add_special") {
            None | Some(Value::Null) => false,
            Some(v) => {
                v.as_bool().ok_or_else(|| ApiError::field("add_special", "`add_special` must be true or false"))?
            }
        };
        let ids =
            tokio::task::spawn_blocking(move || text.tok.encode_with(&content, add_special)).await.map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("tokenising: {e}"))
            })?;
        Ok::<_, ApiError>(api::json_response(StatusCode::OK, &json!({"tokens": ids})))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// llama-server's `POST /detokenize`: `{"tokens": [ids]}` → `{"content": text}` (special tokens kept).
async fn detokenize(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let run = || {
        let (text, o) = text_request(&s, &headers, body)?;
        let ids = o.get("tokens").and_then(Value::as_array).and_then(|a| {
            a.iter().map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect::<Option<Vec<u32>>>()
        });
        let ids = ids.ok_or_else(|| ApiError::field("tokens", "`tokens` must be a list of token ids"))?;
        if let Some(id) = ids.iter().find(|&&id| id as usize >= text.vocab) {
            return Err(ApiError::field("tokens", format!("token id {id} is outside the vocabulary ({})", text.vocab)));
        }
        Ok(api::json_response(StatusCode::OK, &json!({"content": text.tok.decode_with(&ids, false)})))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// What every chunk or response of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    include_usage: bool,
    n: usize,
    /// For the log-probabilities' token strings.
    text: Arc<TextSide>,
}

async fn complete(
    s: Arc<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    chat: bool,
) -> Result<Response, ApiError> {
    let (text, body) = checked(&s, &headers, body)?;
    let req = api::parse(&body, chat)?;
    if req.model != s.model_id && req.model != s.model_path {
        return Err(unknown_model(&s, &req.model));
    }
    let side = text.clone();
    let format = req.format.clone();
    // Tokenising and compiling a schema (which can take milliseconds) run off the I/O loop.
    let (prompt, constraint) =
        tokio::task::spawn_blocking(move || Ok::<_, ApiError>((side.tokenize(req.prompt)?, side.constrain(format)?)))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("tokenising: {e}"))
            })??;
    let param = if chat { "messages" } else { "prompt" };
    if prompt.is_empty() {
        return Err(ApiError::field(param, "the prompt is empty after tokenisation"));
    }
    if prompt.len() >= text.ctx {
        let msg = format!(
            "this server's context is {} tokens, and the prompt alone takes {} (no room for an answer)",
            text.ctx,
            prompt.len()
        );
        return Err(ApiError::field(param, msg).code("context_length_exceeded"));
    }
    let room = text.ctx - prompt.len();
    let max_tokens = req.max_tokens.unwrap_or(if chat { room } else { 16 }).min(room);
    if Stats::get(&s.stats.waiting) + req.n as u64 > s.max_queue as u64 {
        let msg = format!("the queue is full ({} requests wait); retry later", s.max_queue);
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", msg).code("queue_full"));
    }
    let meta = Meta {
        id: format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, req.sampling.seed ^ nanos()),
        created: unix_seconds(),
        model: s.model_id.clone(),
        chat,
        include_usage: req.include_usage,
        n: req.n,
        text: text.clone(),
    };
    let (events, rx) = unbounded_channel();
    let queued = std::time::Instant::now();
    for index in 0..req.n {
        // Choice i draws with seed + i: n different answers, each reproducible.
        let mut sampling = req.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(index as u64);
        let job = Job {
            prompt: prompt.clone(),
            max_tokens,
            sampling,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logprobs: req.logprobs,
            stop: req.stop.clone(),
            constraint: constraint.clone(),
            ignore_eos: req.ignore_eos,
            index,
            events: events.clone(),
            queued,
        };
        s.stats.waiting.fetch_add(1, Ordering::Relaxed);
        if s.jobs.send(job).is_err() {
            s.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the engine has stopped"));
        }
    }
    drop(events);
    if req.stream {
        Ok(stream(meta, rx))
    } else {
        collect(meta, rx).await
    }
}

/// OpenAI's `usage`; `cached_tokens` is the prompt tokens the prefix cache supplied.
fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens,
           "prompt_tokens_details": {"cached_tokens": cached_tokens}})
}

fn engine_gone() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine dropped the request")
}

/// A token as a string and its UTF-8 bytes (a token may hold part of a character).
fn token_text(text: &TextSide, id: u32) -> (String, Vec<u8>) {
    let bytes = text.tok.decode_bytes(&[id], false);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Log-probabilities in OpenAI's shape: chat `{"content": [{token, logprob, bytes,
/// top_logprobs}], "refusal": null}`; completions `{tokens, token_logprobs, top_logprobs,
/// text_offset}` (`offset`: the choice's text length before these tokens).
fn logprobs_json(meta: &Meta, lps: &[TokenLogprob], offset: usize) -> Value {
    let t = &meta.text;
    if meta.chat {
        let entry = |id: u32, lp: f32| {
            let (token, bytes) = token_text(t, id);
            json!({"token": token, "logprob": lp, "bytes": bytes})
        };
        let content: Vec<Value> = lps
            .iter()
            .map(|l| {
                let mut e = entry(l.id, l.logprob);
                e["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                e
            })
            .collect();
        json!({"content": content, "refusal": null})
    } else {
        let mut at = offset;
        let mut offsets = Vec::new();
        let mut tokens = Vec::new();
        for l in lps {
            let (tok, _) = token_text(t, l.id);
            offsets.push(at);
            at += tok.len();
            tokens.push(tok);
        }
        let tops: Vec<Value> = lps
            .iter()
            .map(|l| {
                let m: serde_json::Map<String, Value> =
                    l.top.iter().map(|&(id, lp)| (token_text(t, id).0, json!(lp))).collect();
                Value::Object(m)
            })
            .collect();
        json!({"tokens": tokens, "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
               "top_logprobs": tops, "text_offset": offsets})
    }
}

/// One choice as it is collected.
#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    done: Option<(Finish, usize, usize, usize)>,
}

async fn collect(meta: Meta, mut rx: UnboundedReceiver<(usize, Event)>) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..meta.n).map(|_| Choice::default()).collect();
    while choices.iter().any(|c| c.done.is_none()) {
        let (i, ev) = rx.recv().await.ok_or_else(engine_gone)?;
        let c = &mut choices[i];
        match ev {
            Event::Text(t, lp) => {
                c.text += &t;
                c.logprobs.extend(lp);
            }
            Event::Failed(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)),
            Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                c.done = Some((finish, prompt_tokens, completion_tokens, cached_tokens))
            }
        }
    }
    let (mut prompt_tokens, mut completion_tokens, mut cached) = (0, 0, 0);
    let mut out = Vec::new();
    for (i, c) in choices.into_iter().enumerate() {
        let (finish, p, n, k) = c.done.expect("every choice is done");
        // The prompt counts once; its cached tokens are the first choice's.
        if i == 0 {
            (prompt_tokens, cached) = (p, k);
        }
        completion_tokens += n;
        let lp = if !c.logprobs.is_empty() { logprobs_json(&meta, &c.logprobs, 0) } else { Value::Null };
        out.push(if meta.chat {
            json!({"index": i, "message": {"role": "assistant", "content": c.text, "refusal": null}, "logprobs": lp, "finish_reason": finish.as_str()})
        } else {
            json!({"index": i, "text": c.text, "logprobs": lp, "finish_reason": finish.as_str()})
        });
    }
    let object = if meta.chat { "chat.completion" } else { "text_completion" };
    let body = json!({
        "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
        "choices": out, "usage": usage(prompt_tokens, completion_tokens, cached),
    });
    Ok(api::json_response(StatusCode::OK, &body))
}

/// The stream's state: the engine's events, and SSE events made from them not yet sent.
struct Streaming {
    meta: Meta,
    rx: UnboundedReceiver<(usize, Event)>,
    pending: VecDeque<sse::Event>,
    /// Per choice: text length so far (completions' `text_offset`) and whether it is done.
    sent: Vec<usize>,
    left: usize,
    /// Usage summed over the choices (the prompt once).
    usage: (usize, usize, usize),
    done: bool,
}

impl Streaming {
    /// One chunk of choice `i`: a chat delta or a completion's text, with `finish_reason` on the last.
    fn chunk(&self, i: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        let m = &self.meta;
        let mut c = if m.chat {
            json!({"id": m.id, "object": "chat.completion.chunk", "created": m.created, "model": m.model,
                   "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})
        } else {
            json!({"id": m.id, "object": "text_completion", "created": m.created, "model": m.model,
                   "choices": [{"index": i, "text": delta, "logprobs": logprobs, "finish_reason": finish}]})
        };
        if m.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn send(&mut self, v: Value) {
        self.pending.push_back(sse::Event::default().data(v.to_string()));
    }

    fn on(&mut self, ev: Option<(usize, Event)>) {
        match ev {
            Some((i, Event::Text(t, lp))) => {
                let lpv = if lp.is_empty() { Value::Null } else { logprobs_json(&self.meta, &lp, self.sent[i]) };
                self.sent[i] += t.len();
                let delta = if self.meta.chat { json!({"content": t}) } else { json!(t) };
                let c = self.chunk(i, delta, lpv, None);
                self.send(c);
            }
            Some((i, Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens })) => {
                let empty = if self.meta.chat { json!({}) } else { json!("") };
                let c = self.chunk(i, empty, Value::Null, Some(finish.as_str()));
                self.send(c);
                if i == 0 {
                    (self.usage.0, self.usage.2) = (prompt_tokens, cached_tokens);
                }
                self.usage.1 += completion_tokens;
                self.left -= 1;
                if self.left > 0 {
                    return;
                }
                if self.meta.include_usage {
                    let m = &self.meta;
                    let u = json!({"id": m.id, "object": if m.chat { "chat.completion.chunk" } else { "text_completion" },
                                   "created": m.created, "model": m.model, "choices": [],
                                   "usage": usage(self.usage.0, self.usage.1, self.usage.2)});
                    self.send(u);
                }
                self.finish();
            }
            Some((_, Event::Failed(e))) => {
                self.send(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e).body());
                self.finish();
            }
            None => {
                self.send(engine_gone().body());
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        self.pending.push_back(sse::Event::default().data("[DONE]"));
        self.done = true;
    }
}

fn stream(meta: Meta, rx: UnboundedReceiver<(usize, Event)>) -> Response {
    let n = meta.n;
    let mut st =
        Streaming { meta, rx, pending: VecDeque::new(), sent: vec![0; n], left: n, usage: (0, 0, 0), done: false };
    if st.meta.chat {
        // The first delta of each choice carries the role.
        for i in 0..n {
            let c = st.chunk(i, json!({"role": "assistant", "content": ""}), Value::Null, None);
            st.send(c);
        }
    }
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            let ev = st.rx.recv().await;
            st.on(ev);
        }
    });
    // Comment lines while a request waits in the queue keep proxies from closing the stream.
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
