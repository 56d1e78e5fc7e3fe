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
const CTX: usize = 64;

fn model() -> Model {
    let mut cfg = ModelConfig::llama(257, 32, 2, 4, 2, 64);
    cfg.max_pos = 256;
    Model::init(cfg, 7).unwrap()
}

/// One server for the whole file (started on first use, never stopped).
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = Options {
            api_key: Some(KEY.into()),
            ctx_size: Some(CTX),
            model_id: "tiny".into(),
            model_path: "/models/tiny".into(),
            body_limit: 1 << 16,
            max_queue: 8,
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
    (Tokenizer::byte_level().decode(&g.ids), g.ids.len(), g.stopped_on_eos)
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
    assert_eq!(v["usage"], json!({"prompt_tokens": ids.len(), "completion_tokens": n, "total_tokens": ids.len() + n}));
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
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": want}));
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
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": ids.len(), "completion_tokens": n, "total_tokens": ids.len() + n})
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
    // The server goes on serving.
    let ok = json!({"model": "tiny", "prompt": "x", "max_tokens": 2}).to_string();
    assert_eq!(request(addr, "POST", "/v1/completions", &[], ok.as_bytes()).status, 200);
    assert_eq!(metric(addr, "smelt_generated_tokens_total"), generated + 2);
    println!("the engine stopped after {generated} of {max} tokens");
}
