//! The server in process, over real HTTP on a free port: a small random model with the
//! byte-level tokenizer, driven by a minimal client (smelt_testing::http). What goes over the
//! wire is checked against OpenAI's format and against `smelt_infer::generate` run directly.
//! (crates/cli/tests/serve.rs starts the real binary; scripts/test_serve_openai.py drives it
//! with the official `openai` client.)

use serde_json::{json, Value};
use smelt_infer::{generate, GenerateConfig, SamplingConfig};
use smelt_model::{Model, ModelConfig};
use smelt_serve::{Loaded, Options};
use smelt_testing::http::{request, Response};
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::net::SocketAddr;
use std::sync::OnceLock;

const KEY: &str = "sk-test";
const TEMPLATE: &str = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>";
/// The model's context: what one request may use.
const CTX: usize = 256;
/// The shared server's KV pool (`--ctx-size`), room for several requests at once.
const POOL: usize = 1024;

fn model() -> Model {
    let mut cfg = ModelConfig::llama(257, 32, 2, 4, 2, 64);
    cfg.max_pos = CTX;
    Model::init(cfg, 7).unwrap()
}

/// A server of its own with `opts` over the test model (for tests that read its counters or
/// need its cache to themselves); waits until it is ready.
fn start(opts: Options) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        smelt_serve::run(listener, opts, || {
            Ok(Loaded {
                model: model(),
                tokenizer: Tokenizer::byte_level(),
                template: Ok(ChatTemplate::new(TEMPLATE, "", "")),
                stop_ids: vec![256],
            })
        })
        .unwrap()
    });
    let t0 = std::time::Instant::now();
    while request(addr, "GET", "/health", &[], b"").status != 200 {
        assert!(t0.elapsed().as_secs() < 30, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    addr
}

fn options(pool: usize, parallel: usize) -> Options {
    Options {
        api_key: None,
        ctx_size: Some(pool),
        model_id: "tiny".into(),
        model_path: "tiny".into(),
        body_limit: 1 << 16,
        max_queue: 8,
        prefill_chunk: smelt_serve::engine::DEFAULT_PREFILL_CHUNK,
        parallel,
        kv_type: smelt_model::KvType::F32,
    }
}

fn post_to(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let r = request(addr, "POST", path, &[], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

/// One server for the whole file (started on first use, never stopped).
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = Options {
            api_key: Some(KEY.into()),
            ctx_size: Some(POOL),
            model_id: "tiny".into(),
            model_path: "/models/tiny".into(),
            body_limit: 1 << 16,
            max_queue: 8,
            prefill_chunk: smelt_serve::engine::DEFAULT_PREFILL_CHUNK,
            parallel: 4,
            kv_type: smelt_model::KvType::F32,
        };
        std::thread::spawn(move || {
            smelt_serve::run(listener, opts, || {
                Ok(Loaded {
                    model: model(),
                    tokenizer: Tokenizer::byte_level(),
                    template: Ok(ChatTemplate::new(TEMPLATE, "", "")),
                    stop_ids: vec![256],
                })
            })
            .unwrap()
        });
        for _ in 0..200 {
            if request(addr, "GET", "/health", &[], b"").status == 200 {
                return addr;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the server did not become ready");
    })
}

fn get(path: &str) -> Response {
    request(server(), "GET", path, &[("Authorization", &format!("Bearer {KEY}"))], b"")
}

fn post(path: &str, body: &Value) -> Response {
    post_raw(path, body.to_string().as_bytes(), Some(KEY))
}

fn post_raw(path: &str, body: &[u8], key: Option<&str>) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(server(), "POST", path, &headers, body)
}

fn json_of(r: &Response) -> Value {
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// What `smelt_infer::generate` gives for `prompt` greedily: (text, ids generated, hit EOS).
fn direct(prompt: &[u32], max_tokens: usize) -> (String, usize, bool) {
    direct_sampled(prompt, max_tokens, SamplingConfig::default())
}

fn direct_sampled(prompt: &[u32], max_tokens: usize, sampling: SamplingConfig) -> (String, usize, bool) {
    let cfg = GenerateConfig { max_tokens, sampling, stop_ids: vec![256] };
    let g = generate(&model(), prompt, &cfg, |_| {}).unwrap();
    // Decoded piece by piece as the server streams it (random bytes are not always UTF-8, and
    // invalid ones come out as U+FFFD per piece).
    let tok = Tokenizer::byte_level();
    let mut d = smelt_tokenizer::StreamDecoder::new(&tok);
    let mut text: String = g.ids.iter().map(|&id| d.push(id)).collect();
    text += &d.finish();
    (text, g.ids.len(), g.stopped_on_eos)
}

/// An OpenAI error body with this status, and its `param`.
fn error(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    let v = json_of(r);
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()) && e["type"].is_string(), "{v}");
    assert!(e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code"), "{v}");
    e["param"].clone()
}

#[test]
fn completions_greedy_equals_generate_with_exact_usage() {
    let prompt = "The quick brown fox";
    let ids = Tokenizer::byte_level().encode(prompt);
    let (want, n, eos) = direct(&ids, 12);
    let r = post("/v1/completions", &json!({"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0}));
    assert_eq!(r.status, 200, "{r:?}");
    let v = json_of(&r);
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["text"], want);
    assert_eq!(v["choices"][0]["finish_reason"], if eos { "stop" } else { "length" });
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["usage"]["completion_tokens"], n);
    assert_eq!(v["usage"]["total_tokens"], ids.len() + n);
    assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().is_some(), "{v}");
    // A token-array prompt is the same request; the model may be named by its path too.
    let r =
        post("/v1/completions", &json!({"model": "/models/tiny", "prompt": ids, "max_tokens": 12, "temperature": 0}));
    assert_eq!(json_of(&r)["choices"][0]["text"], want);
    // The default is 16 tokens, as OpenAI's.
    let r = post("/v1/completions", &json!({"model": "tiny", "prompt": prompt, "temperature": 0}));
    let (_, n16, _) = direct(&ids, 16);
    assert_eq!(json_of(&r)["usage"]["completion_tokens"], n16);
}

#[test]
fn chat_goes_through_the_template_and_streams_as_openai() {
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]);
    let rendered = "<system>Be brief.\n<user>Hi\n<assistant>";
    let ids = Tokenizer::byte_level().encode_with(rendered, false);
    let (want, n, _) = direct(&ids, 10);
    let body = json!({"model": "tiny", "messages": msgs, "max_completion_tokens": 10, "temperature": 0});
    let v = json_of(&post("/v1/chat/completions", &body));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": want, "refusal": null}));
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    // Streaming: one id, the role first, text deltas, finish_reason last, the usage chunk, [DONE].
    let mut body = body.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"), "{r:?}");
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]", "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"), "{chunks:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let u = &usage["usage"];
    assert_eq!(
        (&u["prompt_tokens"], &u["completion_tokens"], &u["total_tokens"]),
        (&json!(ids.len()), &json!(n), &json!(ids.len() + n))
    );
    let (last, _) = rest.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], v["choices"][0]["finish_reason"]);
    assert!(rest[..rest.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    let text: String = rest.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want);
    // Completions stream too, without a role chunk and (not asked) without usage.
    let r = post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "ab", "max_tokens": 4, "temperature": 0, "stream": true}),
    );
    let data = r.sse_data();
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion" && c.get("usage").is_none()), "{chunks:?}");
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, direct(&Tokenizer::byte_level().encode("ab"), 4).0);
}

#[test]
fn stop_strings_end_the_text_and_are_never_emitted() {
    let prompt = "Once upon a time";
    let ids = Tokenizer::byte_level().encode(prompt);
    // Sampled with a seed (the same draws as generate's), for a text that does not repeat one byte.
    let (full, _, _) = direct_sampled(&ids, 24, SamplingConfig { temperature: 1.0, seed: 3, ..Default::default() });
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    // Two characters from the middle: matched wherever they first occur, possibly across tokens.
    let stop: String = chars[5..7].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    assert!(!want.is_empty(), "{full:?}");
    for stream in [false, true] {
        let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 1, "seed": 3, "stop": [stop, "\u{1}never"], "stream": stream});
        let r = post("/v1/completions", &body);
        let (text, finish) = if stream {
            let data = r.sse_data();
            let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
            let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
            (text, chunks.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let v = json_of(&r);
            (v["choices"][0]["text"].as_str().unwrap().to_string(), v["choices"][0]["finish_reason"].clone())
        };
        assert_eq!((text.as_str(), finish), (want, json!("stop")), "stream: {stream}");
    }
}

#[test]
fn errors_are_openai_bodies_with_the_right_status() {
    let addr = server();
    let ok = json!({"model": "tiny", "prompt": "x", "max_tokens": 1});
    // Keys: missing, wrong; /health needs none.
    assert_eq!(error(&post_raw("/v1/completions", ok.to_string().as_bytes(), None), 401), Value::Null);
    error(&post_raw("/v1/completions", ok.to_string().as_bytes(), Some("sk-wrong")), 401);
    error(&request(addr, "GET", "/v1/models", &[], b""), 401);
    assert_eq!(request(addr, "GET", "/health", &[], b"").status, 200);
    // Malformed JSON, a bad field (named), an unknown model and route, a body over the limit.
    error(&post_raw("/v1/completions", b"{\"model\": ", Some(KEY)), 400);
    assert_eq!(
        error(&post("/v1/completions", &json!({"model": "tiny", "prompt": "x", "temperature": -1})), 400),
        "temperature"
    );
    assert_eq!(error(&post("/v1/chat/completions", &json!({"model": "tiny", "messages": "hi"})), 400), "messages");
    assert_eq!(error(&post("/v1/completions", &json!({"model": "gpt-4", "prompt": "x"})), 404), "model");
    error(&post("/v1/nothing", &ok), 404);
    error(&request(addr, "DELETE", "/v1/completions", &[("Authorization", "Bearer sk-test")], b""), 405);
    let big = format!("{{\"model\": \"tiny\", \"prompt\": \"{}\"}}", "a".repeat(1 << 17));
    error(&post_raw("/v1/completions", big.as_bytes(), Some(KEY)), 413);
    // A prompt that fills the context is refused; max_tokens past it is capped ("length").
    let long = "a".repeat(CTX);
    assert_eq!(error(&post("/v1/completions", &json!({"model": "tiny", "prompt": long})), 400), "prompt");
    let near = "a".repeat(CTX - 3);
    let v = json_of(&post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": near, "max_tokens": 50, "temperature": 0}),
    ));
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n <= 3 && (n == 3) == (v["choices"][0]["finish_reason"] == "length"), "{v}");
    // Unknown fields are ignored; the server still answers after all of the above.
    let v = json_of(&post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "x", "max_tokens": 1, "user": "u", "x_extra": {"a": 1}}),
    ));
    assert_eq!(v["usage"]["prompt_tokens"], 1);
    let m = json_of(&get("/v1/models"));
    assert_eq!(m["data"][0]["id"], "tiny");
    assert_eq!(json_of(&get("/v1/models/tiny"))["object"], "model");
    assert_eq!(error(&get("/v1/models/other"), 404), "model");
}

#[test]
fn health_is_503_while_the_model_loads_and_requests_wait_for_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = Options {
        api_key: None,
        ctx_size: None,
        model_id: "tiny".into(),
        model_path: "tiny".into(),
        body_limit: 1 << 16,
        max_queue: 8,
        prefill_chunk: smelt_serve::engine::DEFAULT_PREFILL_CHUNK,
        parallel: 4,
        kv_type: smelt_model::KvType::F32,
    };
    let (loaded, gate) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        smelt_serve::run(listener, opts, move || {
            gate.recv().unwrap();
            Ok(Loaded {
                model: model(),
                tokenizer: Tokenizer::byte_level(),
                template: Err("none in this test".into()),
                stop_ids: vec![256],
            })
        })
        .unwrap()
    });
    let health = || request(addr, "GET", "/health", &[], b"");
    let r = health();
    assert_eq!((r.status, r.body.as_str()), (503, r#"{"status":"loading"}"#));
    let body = json!({"model": "tiny", "prompt": "x", "max_tokens": 1}).to_string();
    error(&request(addr, "POST", "/v1/completions", &[], body.as_bytes()), 503);
    loaded.send(()).unwrap();
    let t0 = std::time::Instant::now();
    while health().status != 200 {
        assert!(t0.elapsed().as_secs() < 30, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // No key configured: none needed. No chat template: chat is a 400 that says so.
    assert_eq!(request(addr, "POST", "/v1/completions", &[], body.as_bytes()).status, 200);
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}]}).to_string();
    let r = request(addr, "POST", "/v1/chat/completions", &[], chat.as_bytes());
    assert_eq!(error(&r, 400), "messages");
    assert!(r.body.contains("no chat template"), "{}", r.body);
}

#[test]
fn concurrent_clients_queue_and_each_gets_its_own_answer() {
    let prompts: Vec<String> = (0..6).map(|i| format!("client {i} says")).collect();
    let answers: Vec<(String, bool)> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                sc.spawn(move || {
                    let stream = i % 2 == 0;
                    let body = json!({"model": "tiny", "prompt": p, "max_tokens": 10, "temperature": 0.8, "seed": i, "stream": stream});
                    let r = post("/v1/completions", &body);
                    assert_eq!(r.status, 200, "{r:?}");
                    let text = if stream {
                        let data = r.sse_data();
                        assert_eq!(data.last().unwrap(), "[DONE]");
                        data[..data.len() - 1]
                            .iter()
                            .map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
                            .collect()
                    } else {
                        json_of(&r)["choices"][0]["text"].as_str().unwrap().to_string()
                    };
                    (text, stream)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (p, (got, _))) in prompts.iter().zip(&answers).enumerate() {
        let sampling = SamplingConfig { temperature: 0.8, seed: i as u64, ..Default::default() };
        let (want, _, _) = direct_sampled(&Tokenizer::byte_level().encode(p), 10, sampling);
        assert_eq!(got, &want, "client {i}");
    }
}

#[test]
fn tokenize_and_detokenize_as_llama_server() {
    let r = json_of(&post("/tokenize", &json!({"content": "héllo"})));
    let ids = Tokenizer::byte_level().encode_with("héllo", false);
    assert_eq!(r, json!({"tokens": ids}));
    let with = json_of(&post("/tokenize", &json!({"content": "a", "add_special": true})));
    assert_eq!(with["tokens"], json!(Tokenizer::byte_level().encode_with("a", true)));
    assert_eq!(json_of(&post("/detokenize", &json!({"tokens": ids}))), json!({"content": "héllo"}));
    assert_eq!(error(&post("/detokenize", &json!({"tokens": [9999]})), 400), "tokens");
    assert_eq!(error(&post("/tokenize", &json!({"text": "x"})), 400), "content");
    error(&post_raw("/tokenize", br#"{"content": "x"}"#, None), 401);
}

/// A value of `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let line = r.body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{}", r.body));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A gauge of `/metrics` once it reads `want`: the engine sends a request's last event a moment
/// before it returns the request's blocks and updates the gauges, so a client can ask first.
/// Fails if it never does (a leak, not a lag).
fn settles(addr: SocketAddr, name: &str, want: u64) {
    let t0 = std::time::Instant::now();
    while metric(addr, name) != want {
        assert!(t0.elapsed().as_secs() < 10, "{name} stays at {}, not {want}", metric(addr, name));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn a_client_that_leaves_mid_stream_ends_its_generation() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = Options {
        api_key: None,
        ctx_size: None,
        model_id: "tiny".into(),
        model_path: "tiny".into(),
        body_limit: 1 << 16,
        max_queue: 8,
        prefill_chunk: smelt_serve::engine::DEFAULT_PREFILL_CHUNK,
        parallel: 4,
        kv_type: smelt_model::KvType::F32,
    };
    std::thread::spawn(move || {
        smelt_serve::run(listener, opts, || {
            let mut cfg = ModelConfig::llama(257, 32, 2, 4, 2, 64);
            cfg.max_pos = 8192;
            // No stop ids: only max_tokens or the client leaving ends a request.
            let model = Model::init(cfg, 7)?;
            Ok(Loaded { model, tokenizer: Tokenizer::byte_level(), template: Err("none".into()), stop_ids: vec![] })
        })
        .unwrap()
    });
    let t0 = std::time::Instant::now();
    while request(addr, "GET", "/health", &[], b"").status != 200 {
        assert!(t0.elapsed().as_secs() < 30, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let max = 8000;
    let body = json!({"model": "tiny", "prompt": "x", "max_tokens": max, "temperature": 1, "seed": 1, "stream": true})
        .to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let t0 = std::time::Instant::now();
    while metric(addr, "smelt_requests_finished_total") < 1 {
        assert!(t0.elapsed().as_secs() < 120, "the request never ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let generated = metric(addr, "smelt_generated_tokens_total");
    assert!(generated < max as u64, "the engine generated all {generated} tokens for a client that had left");
    assert_eq!(metric(addr, "smelt_requests_running"), 0);
    // Its KV blocks went back to the pool.
    assert_eq!(metric(addr, "smelt_kv_blocks_used"), 0);
    // The server goes on serving.
    let ok = json!({"model": "tiny", "prompt": "x", "max_tokens": 2}).to_string();
    assert_eq!(request(addr, "POST", "/v1/completions", &[], ok.as_bytes()).status, 200);
    assert_eq!(metric(addr, "smelt_generated_tokens_total"), generated + 2);
    println!("the engine stopped after {generated} of {max} tokens");
}

/// `n`-th choice text of a completions body.
fn texts(v: &Value) -> Vec<String> {
    v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_seeded_request_gives_the_same_text_whatever_else_is_in_the_batch() {
    let addr = start(options(2048, 8));
    let body =
        json!({"model": "tiny", "prompt": "determinism, please", "max_tokens": 24, "temperature": 0.9, "seed": 42});
    let alone = texts(&post_to(addr, "/v1/completions", &body));
    let sampling = SamplingConfig { temperature: 0.9, seed: 42, ..Default::default() };
    let want = direct_sampled(&Tokenizer::byte_level().encode("determinism, please"), 24, sampling).0;
    assert_eq!(alone, vec![want.clone()]);
    // Again, with seven others of other lengths joining and leaving around it, several times.
    for round in 0..3 {
        let got = std::thread::scope(|sc| {
            let others: Vec<_> = (0..7)
                .map(|i| {
                    sc.spawn(move || {
                        let p = "other ".repeat(1 + i * (round + 1));
                        let b =
                            json!({"model": "tiny", "prompt": p, "max_tokens": 3 + 5 * i, "temperature": 1, "seed": i});
                        post_to(addr, "/v1/completions", &b)
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(2 * round as u64));
            let mine = texts(&post_to(addr, "/v1/completions", &body));
            for o in others {
                o.join().unwrap();
            }
            mine
        });
        assert_eq!(got, vec![want.clone()], "round {round}");
    }
    assert_eq!(metric(addr, "smelt_preemptions_total"), 0);
    let batch = metric(addr, "smelt_batch_size_max");
    assert!(batch >= 4, "the requests never shared a step (largest batch {batch})");
    println!("largest batch {batch}, {} steps", metric(addr, "smelt_engine_steps_total"));
}

#[test]
fn a_long_prompt_is_computed_in_chunks_beside_the_others_and_answers_the_same() {
    // At most 16 prompt tokens a step: a 180-token prompt takes a dozen steps, and the request
    // already generating gets a token in each of them.
    let addr = start(Options { prefill_chunk: 16, ..options(2048, 4) });
    let tok = Tokenizer::byte_level();
    let long: String = (0..180).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
    let sampled = SamplingConfig { temperature: 0.9, seed: 3, ..Default::default() };
    let (want_short, want_long, want_sampled) = (
        direct(&tok.encode("go on"), 200).0,
        direct(&tok.encode(&long), 12).0,
        direct_sampled(&tok.encode(&long[..70]), 12, sampled).0,
    );
    // The short request must still be decoding when the long one arrives 5 ms later; on a
    // loaded machine (the suite's tests in parallel) it may already be done, so the scenario
    // runs again (the answers are checked every time) until a step held both, at most 5 times.
    for _attempt in 0..5 {
        let (short, long_a, sampled_a) = std::thread::scope(|sc| {
            let short = sc.spawn(|| {
                texts(&post_to(
                    addr,
                    "/v1/completions",
                    &json!({"model": "tiny", "prompt": "go on", "max_tokens": 200, "temperature": 0}),
                ))
            });
            std::thread::sleep(std::time::Duration::from_millis(5));
            let long_a = sc.spawn(|| {
                texts(&post_to(
                    addr,
                    "/v1/completions",
                    &json!({"model": "tiny", "prompt": long, "max_tokens": 12, "temperature": 0}),
                ))
            });
            let body = json!({"model": "tiny", "prompt": &long[..70], "max_tokens": 12, "temperature": 0.9, "seed": 3});
            let sampled_a = sc.spawn(move || texts(&post_to(addr, "/v1/completions", &body)));
            (short.join().unwrap(), long_a.join().unwrap(), sampled_a.join().unwrap())
        });
        assert_eq!(short, vec![want_short.clone()], "the short request");
        assert_eq!(long_a, vec![want_long.clone()], "the long prompt, computed in chunks");
        assert_eq!(sampled_a, vec![want_sampled.clone()], "the seeded request, computed in chunks");
        if metric(addr, "smelt_batch_size_max") >= 2 {
            break;
        }
    }
    let chunks = metric(addr, "smelt_prefill_chunks_total");
    assert!(chunks >= 180 / 16, "the long prompt was not chunked ({chunks} chunks)");
    let batch = metric(addr, "smelt_batch_size_max");
    assert!(batch >= 2, "the chunks never shared a step with a decode row (largest batch {batch})");
    println!("{chunks} prompt chunks, largest batch {batch}, {} steps", metric(addr, "smelt_engine_steps_total"));
    settles(addr, "smelt_kv_blocks_used", 0);
}

#[test]
fn a_shared_prompt_prefix_is_served_from_the_cache_with_exact_cached_tokens() {
    // One server to this test: its cache holds only what the test puts there.
    let addr = start(options(1024, 4));
    let prompt: String = (0..40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let ids = Tokenizer::byte_level().encode(&prompt);
    let (want, _, _) = direct(&ids, 8);
    let body = |p: &str| json!({"model": "tiny", "prompt": p, "max_tokens": 8, "temperature": 0});
    let first = post_to(addr, "/v1/completions", &body(&prompt));
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(texts(&first), vec![want.clone()]);
    // The same prompt: every full block but the one holding its last 5 tokens comes from the
    // cache (blocks of 16; at least 5 tokens are always computed), and the answer is the same.
    let again = post_to(addr, "/v1/completions", &body(&prompt));
    let cached = (ids.len() - 5) / 16 * 16;
    assert!(cached > 0);
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], cached);
    assert_eq!(texts(&again), vec![want]);
    // A prompt that shares only the first block reuses just that one.
    let other = format!("{}{}", &prompt[..20], "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz");
    let v = post_to(addr, "/v1/completions", &body(&other));
    let shared = ids.iter().zip(Tokenizer::byte_level().encode(&other)).take_while(|(a, b)| **a == *b).count();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], shared / 16 * 16);
    assert_eq!(texts(&v), vec![direct(&Tokenizer::byte_level().encode(&other), 8).0]);
    assert_eq!(metric(addr, "smelt_prompt_tokens_cached_total"), (cached + shared / 16 * 16) as u64);
    settles(addr, "smelt_kv_blocks_used", 0);
}

#[test]
fn n_choices_logprobs_and_penalties() {
    let addr = start(options(2048, 8));
    let prompt = "choices";
    let ids = Tokenizer::byte_level().encode(prompt);
    // n = 3, seeded: choice i draws with seed + i.
    let v = post_to(
        addr,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 1, "seed": 9, "n": 3}),
    );
    let want: Vec<String> = (0..3)
        .map(|i| direct_sampled(&ids, 6, SamplingConfig { temperature: 1.0, seed: 9 + i, ..Default::default() }).0)
        .collect();
    assert_eq!(texts(&v), want);
    let idx: Vec<u64> = v["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![0, 1, 2]);
    let completion: usize = (0..3)
        .map(|i| direct_sampled(&ids, 6, SamplingConfig { temperature: 1.0, seed: 9 + i, ..Default::default() }).1)
        .sum();
    assert_eq!(v["usage"]["completion_tokens"], completion);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    // Log-probabilities: the chosen token's is log_softmax of the model's logits, greedy picks
    // the top one, and the alternatives come most likely first.
    let v = post_to(
        addr,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2}),
    );
    let lp = &v["choices"][0]["logprobs"];
    let m = model();
    let logits = m
        .logits(&smelt_core::Tensor::from_u32(ids.clone(), &[1, ids.len()]).unwrap(), None, smelt_model::Logits::Last)
        .unwrap();
    let row = logits.as_f32().unwrap();
    let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
    let first = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
    let got = lp["token_logprobs"][0].as_f64().unwrap();
    assert!((got - (row[first] as f64 - lse)).abs() < 1e-4, "{got} vs {}", row[first] as f64 - lse);
    let tops = lp["top_logprobs"][0].as_object().unwrap();
    assert_eq!(tops.len(), 2);
    assert!(tops.values().all(|x| x.as_f64().unwrap() <= got + 1e-6));
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["text_offset"], json!([0, 1, 2]));
    // Chat's shape: content entries with token, logprob, bytes, top_logprobs.
    let chat = post_to(
        addr,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "temperature": 0,
                "logprobs": true, "top_logprobs": 3}),
    );
    let c = &chat["choices"][0]["logprobs"]["content"];
    assert_eq!(c.as_array().unwrap().len(), chat["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    assert_eq!(c[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(c[0]["bytes"].is_array() && c[0]["token"].is_string(), "{c}");
    // A frequency penalty changes greedy output away from repeating itself.
    let plain = post_to(
        addr,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "aaaa", "max_tokens": 12, "temperature": 0}),
    );
    let pen = post_to(
        addr,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "aaaa", "max_tokens": 12, "temperature": 0, "frequency_penalty": 2.0, "presence_penalty": 2.0}),
    );
    let distinct = |t: &str| t.chars().collect::<std::collections::HashSet<_>>().len();
    let (a, b) = (texts(&plain)[0].clone(), texts(&pen)[0].clone());
    assert!(distinct(&b) >= distinct(&a), "penalised {b:?} repeats more than {a:?}");
    assert_ne!(a, b);
}

#[test]
fn a_full_queue_is_a_429() {
    let r = post("/v1/completions", &json!({"model": "tiny", "prompt": "x", "max_tokens": 1, "n": 9}));
    error(&r, 429);
}

#[test]
fn a_packed_kv_cache_serves_and_one_that_cannot_hold_the_rows_stops_the_start() {
    for kind in [smelt_model::KvType::F16, smelt_model::KvType::BF16] {
        let addr = start(Options { kv_type: kind, ..options(512, 4) });
        let v = post_to(
            addr,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "packed", "max_tokens": 5, "temperature": 0}),
        );
        assert_eq!(v["usage"]["prompt_tokens"], Tokenizer::byte_level().encode("packed").len());
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{v}");
        settles(addr, "smelt_kv_blocks_used", 0);
    }
    // q8_0 needs rows of whole 32-value blocks; this model's are 16 values: an error at start.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = Options { kv_type: smelt_model::KvType::Q8_0, ..options(512, 4) };
    let e = smelt_serve::run(listener, opts, || {
        Ok(Loaded {
            model: model(),
            tokenizer: Tokenizer::byte_level(),
            template: Err("none".into()),
            stop_ids: vec![],
        })
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("kv-cache-type q8_0"), "{e:#}");
}

/// The schema the structured-output tests ask for: every kind of field a client asks for.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "mood": {"enum": ["happy", "sad"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        },
        "required": ["name", "age", "mood", "tags"],
        "additionalProperties": false,
    })
}

/// `person_schema` checked by hand on a parsed answer.
fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["age", "mood", "name", "tags"], "{text}");
    assert!(o["name"].as_str().is_some_and(|s| s.chars().count() <= 12), "{text}");
    assert!(o["age"].as_u64().is_some_and(|a| a <= 150), "{text}");
    assert!(["happy", "sad"].contains(&o["mood"].as_str().unwrap_or("")), "{text}");
    let tags = o["tags"].as_array().unwrap_or_else(|| panic!("tags: {text}"));
    assert!(tags.len() <= 3 && tags.iter().all(|t| t.as_str().is_some_and(|s| s.chars().count() <= 6)), "{text}");
}

/// `response_format` constrains the output token by token on a random model (which left to
/// itself writes random bytes): greedy and sampled, `n` choices, streamed, in one batch with
/// an unconstrained request whose text stays `generate`'s; every answer ends as "stop" and
/// parses under the schema. A schema llguidance cannot use is a 400 naming `response_format`.
#[test]
fn response_format_constrains_every_choice_in_the_batch() {
    let addr = start(options(4096, 8));
    let rf =
        json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    let plain_prompt = "unconstrained";
    let (want, _, _) = direct(&Tokenizer::byte_level().encode(plain_prompt), 40);
    let (constrained, plain) = std::thread::scope(|sc| {
        let jobs: Vec<_> = [(0.0, 1, false), (1.0, 3, false), (0.7, 1, true)]
            .into_iter()
            .map(|(temperature, n, stream)| {
                let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "a person"}],
                    "response_format": rf, "temperature": temperature, "seed": 5, "n": n, "max_tokens": 400,
                    "stream": stream});
                sc.spawn(move || {
                    (stream, request(addr, "POST", "/v1/chat/completions", &[], body.to_string().as_bytes()))
                })
            })
            .collect();
        let plain = post_to(
            addr,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": plain_prompt, "max_tokens": 40, "temperature": 0}),
        );
        (jobs.into_iter().map(|j| j.join().unwrap()).collect::<Vec<_>>(), plain)
    });
    assert_eq!(texts(&plain), vec![want]);
    let mut answers = 0;
    for (stream, r) in constrained {
        assert_eq!(r.status, 200, "{r:?}");
        if stream {
            let mut text = String::new();
            let mut finish = Value::Null;
            for line in r.body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
                let chunk: Value = serde_json::from_str(line).unwrap();
                text += chunk["choices"][0]["delta"]["content"].as_str().unwrap_or("");
                if !chunk["choices"][0]["finish_reason"].is_null() {
                    finish = chunk["choices"][0]["finish_reason"].clone();
                }
            }
            assert_eq!(finish, "stop", "{text}");
            check_person(&text);
            answers += 1;
        } else {
            for c in json_of(&r)["choices"].as_array().unwrap() {
                assert_eq!(c["finish_reason"], "stop", "{c}");
                check_person(c["message"]["content"].as_str().unwrap());
                answers += 1;
            }
        }
    }
    assert_eq!(answers, 5);
    // json_object: any object.
    let r = post_to(
        addr,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "{", "max_tokens": 300, "seed": 1, "response_format": {"type": "json_object"}}),
    );
    let text = texts(&r).remove(0);
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text:?}")).is_object());
    let masks = metric(addr, "smelt_structured_masks_total");
    let micros = metric(addr, "smelt_structured_mask_microseconds_total");
    assert!(masks > 0);
    println!("{masks} masks, {:.1} µs each on average", micros as f64 / masks as f64);
    // Schemas that cannot be used are 400s naming response_format, and why.
    for (bad, why) in [
        (json!({"type": "nonsense"}), "nonsense"),
        (json!({"$ref": "#/$defs/nowhere"}), "$defs"),
        (json!({"type": "string", "minLength": 5, "maxLength": 2}), "maxLength"),
    ] {
        let body = json!({"model": "tiny", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": bad}}});
        let r = request(addr, "POST", "/v1/completions", &[], body.to_string().as_bytes());
        assert_eq!(error(&r, 400), "response_format", "{bad}: {r:?}");
        let message = json_of(&r)["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(why), "{bad}: the message does not say why: {message}");
    }
}
