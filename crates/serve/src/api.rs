//! OpenAI's wire format, the request side: a body of `/v1/completions` or
//! `/v1/chat/completions` read into a [`Request`], every field checked with an error that names
//! it; and [`ApiError`], OpenAI's error body with its status.
//!
//! Unknown fields are ignored (clients send many). Known fields smelt does not implement
//! (tools, `echo`, `suffix`, `best_of`) are refused with a 400 naming them, never ignored: a
//! client that asks for them would otherwise get something it did not ask for.
//! `response_format` is read here into a [`Format`]; whether its schema can be used is the
//! grammar compiler's answer (`structured`, called by `http`).

use crate::structured::Format;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use smelt_infer::SamplingConfig;
use smelt_tokenizer::Message;

/// An error as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// A 400 about one request field.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}

/// A JSON body with its content type.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
    (status, headers, v.to_string()).into_response()
}

/// What the model is asked to continue.
#[derive(Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<Message>),
}

/// A checked completion request (either endpoint).
#[derive(Debug)]
pub struct Request {
    pub model: String,
    pub prompt: Prompt,
    /// None: the endpoint's default (16 for completions, as OpenAI; the rest of the context for chat).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (`n`).
    pub n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// None, or Some(k): each token's log-probability and its top k alternatives (chat:
    /// `logprobs: true` with `top_logprobs: k`; completions: `logprobs: k`).
    pub logprobs: Option<usize>,
    /// `response_format`: None for text.
    pub format: Option<Format>,
    /// `ignore_eos` (vLLM's and llama-server's extension, for benchmarks): the end-of-sequence
    /// token does not end generation; `max_tokens`, stop strings and a grammar still do.
    pub ignore_eos: bool,
}

/// Most choices a request may ask for (OpenAI allows 128).
pub const MAX_N: usize = 128;

/// Most stop strings a request may give (OpenAI allows 4; a few more cost nothing).
const MAX_STOPS: usize = 16;

/// Reads a request body; `chat` picks `/v1/chat/completions` (messages) over `/v1/completions` (prompt).
pub fn parse(body: &[u8], chat: bool) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(o) = v else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "the body must be a JSON object"));
    };
    let f = Fields(&o);
    let model = f.get("model").ok_or_else(|| ApiError::field("model", "`model` is required"))?;
    let model = model.as_str().ok_or_else(|| ApiError::field("model", "`model` must be a string"))?.to_string();
    let prompt = if chat { Prompt::Chat(messages(&f)?) } else { prompt(&f)? };
    let max_tokens = match (chat, f.uint("max_completion_tokens")?) {
        (true, Some(n)) => Some(n),
        _ => f.uint("max_tokens")?,
    };
    for key in ["max_tokens", "max_completion_tokens"] {
        if f.uint(key)? == Some(0) {
            return Err(ApiError::field(key, format!("`{key}` must be at least 1")));
        }
    }
    let d = SamplingConfig::default();
    let top_k = match f.get("top_k") {
        // -1 means off, as in vLLM.
        Some(v) if v.as_i64() == Some(-1) => 0,
        _ => f.uint("top_k")?.unwrap_or(0),
    };
    let sampling = SamplingConfig {
        // OpenAI's default temperature is 1.
        temperature: f.num("temperature", 0.0, 2.0, true)?.unwrap_or(1.0),
        top_k,
        top_p: f.num("top_p", 0.0, 1.0, false)?.unwrap_or(d.top_p),
        min_p: f.num("min_p", 0.0, 1.0, true)?.unwrap_or(d.min_p),
        repetition_penalty: f.num("repetition_penalty", 0.0, f32::MAX, false)?.unwrap_or(d.repetition_penalty),
        seed: match f.get("seed") {
            None => random_seed(),
            Some(v) => v
                .as_i64()
                .map(|s| s as u64)
                .or_else(|| v.as_u64())
                .ok_or_else(|| ApiError::field("seed", "`seed` must be an integer"))?,
        },
    };
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOPS => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::field("stop", "`stop` must be a string or a list of strings"))?,
        Some(_) => {
            return Err(ApiError::field(
                "stop",
                format!("`stop` must be a string or a list of at most {MAX_STOPS} strings"),
            ))
        }
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(so)) => Fields(so).bool("include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::field("stream_options", "`stream_options` must be an object")),
    };
    let n = f.uint("n")?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::field("n", format!("`n` must be between 1 and {MAX_N}")));
    }
    let presence_penalty = f.num("presence_penalty", -2.0, 2.0, true)?.unwrap_or(0.0);
    let frequency_penalty = f.num("frequency_penalty", -2.0, 2.0, true)?.unwrap_or(0.0);
    let logprobs = if chat {
        let top = f.uint("top_logprobs")?;
        if top.is_some_and(|k| k > 20) {
            return Err(ApiError::field("top_logprobs", "`top_logprobs` must be between 0 and 20"));
        }
        match f.bool("logprobs")? {
            Some(true) => Some(top.unwrap_or(0)),
            _ if top.is_some() => {
                return Err(ApiError::field("top_logprobs", "`top_logprobs` needs `logprobs`: true"));
            }
            _ => None,
        }
    } else {
        match f.uint("logprobs")? {
            Some(k) if k > 5 => return Err(ApiError::field("logprobs", "`logprobs` must be between 0 and 5")),
            k => k,
        }
    };
    unsupported(&f, chat)?;
    let format = f.get("response_format").map(response_format).transpose()?.flatten();
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    Ok(Request {
        model,
        prompt,
        max_tokens,
        sampling,
        stop,
        stream,
        include_usage,
        n,
        presence_penalty,
        frequency_penalty,
        logprobs,
        format,
        ignore_eos,
    })
}

/// OpenAI's `response_format`: `{"type": "text"}` (None), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
/// Every error names `response_format`, the param OpenAI reports.
fn response_format(v: &Value) -> Result<Option<Format>, ApiError> {
    let bad = |msg: &str| ApiError::field("response_format", msg);
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::JsonObject)),
        Some("json_schema") => {
            let js = v
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("`response_format.json_schema` must be an object with `name` and `schema`"))?;
            if js.get("name").is_some_and(|n| !n.is_string()) {
                return Err(bad("`response_format.json_schema.name` must be a string"));
            }
            if js.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(bad("`response_format.json_schema.strict` must be true or false"));
            }
            match js.get("schema") {
                Some(s @ Value::Object(_)) => Ok(Some(Format::JsonSchema(s.clone()))),
                Some(Value::Bool(true)) | None | Some(Value::Null) => Ok(Some(Format::JsonSchema(json!({})))),
                Some(_) => Err(bad("`response_format.json_schema.schema` must be a JSON Schema object")),
            }
        }
        Some(other) => Err(bad(&format!(
            "`response_format.type` \"{other}\" is not one of \"text\", \"json_object\", \"json_schema\""
        ))),
        None => Err(bad("`response_format` must be an object with a string `type`")),
    }
}

/// A seed for a request that gave none: OpenAI's sampling is not reproducible without one.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Known fields with values smelt cannot honour.
fn unsupported(f: &Fields, chat: bool) -> Result<(), ApiError> {
    let no = |key: &str, what: &str| Err(ApiError::field(key, format!("{what} is not supported yet by smelt serve")));
    if let Some(best_of) = f.uint("best_of")? {
        if best_of != 1 {
            return no("best_of", "`best_of` other than 1");
        }
    }
    if f.get("tools").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return no("tools", "`tools`");
    }
    if f.get("functions").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return no("functions", "`functions`");
    }
    // A bias changes what is sampled: ignoring it would answer another request than the one sent.
    if f.get("logit_bias").is_some_and(|b| !b.is_null() && b.as_object().is_none_or(|o| !o.is_empty())) {
        return no("logit_bias", "`logit_bias`");
    }
    if !chat {
        if f.bool("echo")? == Some(true) {
            return no("echo", "`echo`");
        }
        if f.get("suffix").is_some_and(|s| s != "") {
            return no("suffix", "`suffix`");
        }
    }
    Ok(())
}

/// `/v1/completions`' `prompt`: a string, a list of token ids, or a list holding one of those.
fn prompt(f: &Fields) -> Result<Prompt, ApiError> {
    let bad = || ApiError::field("prompt", "`prompt` must be a string or a list of token ids");
    let p = f.get("prompt").ok_or_else(|| ApiError::field("prompt", "`prompt` is required"))?;
    let one = |p: &Value| -> Result<Prompt, ApiError> {
        match p {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<u32>>>()
                .map(Prompt::Ids)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    };
    match p {
        Value::Array(a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => one(&a[0]),
        Value::Array(a) if a.iter().any(|x| x.is_string() || x.is_array()) => {
            Err(ApiError::field("prompt", "several prompts in one request are not supported yet by smelt serve"))
        }
        p => one(p),
    }
}

/// `/v1/chat/completions`' `messages`: roles and text contents (a string, or text parts).
fn messages(f: &Fields) -> Result<Vec<Message>, ApiError> {
    let m = f.get("messages").ok_or_else(|| ApiError::field("messages", "`messages` is required"))?;
    let list = m.as_array().filter(|a| !a.is_empty());
    let list = list.ok_or_else(|| ApiError::field("messages", "`messages` must be a non-empty list"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, msg) in list.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str);
        let role =
            role.ok_or_else(|| ApiError::field(&format!("messages[{i}].role"), "each message needs a string `role`"))?;
        let param = format!("messages[{i}].content");
        let content = match msg.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text += t,
                        _ => return Err(ApiError::field(&param, "only text content parts are supported")),
                    }
                }
                text
            }
            Some(_) => return Err(ApiError::field(&param, "`content` must be a string or a list of text parts")),
        };
        out.push(Message::new(role, &content));
    }
    Ok(out)
}

/// Typed access to a body's fields; `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn uint(&self, key: &str) -> Result<Option<usize>, ApiError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| ApiError::field(key, format!("`{key}` must be a non-negative integer")))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| ApiError::field(key, format!("`{key}` must be true or false"))))
            .transpose()
    }

    /// A number in `lo..=hi` (`lo` itself only when `lo_ok`).
    fn num(&self, key: &str, lo: f32, hi: f32, lo_ok: bool) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| ApiError::field(key, format!("`{key}` must be a number")))? as f32;
        let above = if lo_ok { x >= lo } else { x > lo };
        if !(above && x <= hi) {
            let (open, hi) =
                (if lo_ok { "[" } else { "(" }, if hi == f32::MAX { "∞)".to_string() } else { format!("{hi}]") });
            return Err(ApiError::field(key, format!("`{key}` = {x} is out of range: expected {open}{lo}, {hi}")));
        }
        Ok(Some(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str, chat: bool) -> ApiError {
        parse(body.as_bytes(), chat).expect_err(body)
    }

    #[test]
    fn fields_are_read_and_bad_ones_named() {
        let r = parse(
            br#"{"model":"m","prompt":"hi","max_tokens":5,"temperature":0,"stop":"x","seed":-1,"extra":1}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(
            (r.max_tokens, r.sampling.temperature, r.stop.clone(), r.sampling.seed),
            (Some(5), 0.0, vec!["x".into()], u64::MAX)
        );
        let r =
            parse(br#"{"model":"m","prompt":[[1,2]],"stream":true,"stream_options":{"include_usage":true}}"#, false)
                .unwrap();
        assert_eq!((r.prompt, r.stream, r.include_usage, r.max_tokens), (Prompt::Ids(vec![1, 2]), true, true, None));
        let r = parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":3,"max_tokens":9}"#,
            true,
        )
        .unwrap();
        assert_eq!((r.prompt, r.max_tokens), (Prompt::Chat(vec![Message::new("user", "ab")]), Some(3)));
        for (body, chat, param) in [
            (r#"{"prompt":"x"}"#, false, "model"),
            (r#"{"model":"m"}"#, false, "prompt"),
            (r#"{"model":"m","prompt":"x","temperature":3}"#, false, "temperature"),
            (r#"{"model":"m","prompt":"x","top_p":0}"#, false, "top_p"),
            (r#"{"model":"m","prompt":"x","max_tokens":-1}"#, false, "max_tokens"),
            (r#"{"model":"m","prompt":"x","max_tokens":0}"#, false, "max_tokens"),
            (r#"{"model":"m","prompt":"x","stop":[1]}"#, false, "stop"),
            (r#"{"model":"m","prompt":"x","n":0}"#, false, "n"),
            (r#"{"model":"m","prompt":"x","logprobs":6}"#, false, "logprobs"),
            (r#"{"model":"m","prompt":"x","presence_penalty":2.5}"#, false, "presence_penalty"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#, true, "top_logprobs"),
            (r#"{"model":"m","prompt":["a","b"]}"#, false, "prompt"),
            (r#"{"model":"m","messages":[]}"#, true, "messages"),
            (r#"{"model":"m","prompt":"x","logit_bias":{"5":10}}"#, false, "logit_bias"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"functions":[{"name":"f"}]}"#,
                true,
                "functions",
            ),
            (r#"{"model":"m","messages":[{"content":"x"}]}"#, true, "messages[0].role"),
            (r#"{"model":"m","prompt":"x","response_format":"json"}"#, false, "response_format"),
            (r#"{"model":"m","prompt":"x","response_format":{"type":"xml"}}"#, false, "response_format"),
            (r#"{"model":"m","prompt":"x","response_format":{"type":"json_schema"}}"#, false, "response_format"),
            (
                r#"{"model":"m","prompt":"x","response_format":{"type":"json_schema","json_schema":{"name":"a","schema":[1]}}}"#,
                false,
                "response_format",
            ),
        ] {
            let e = err(body, chat);
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{body}: {e:?}");
        }
        let r = parse(br#"{"model":"m","prompt":"x","n":3,"logprobs":2,"frequency_penalty":0.5}"#, false).unwrap();
        assert_eq!((r.n, r.logprobs, r.frequency_penalty), (3, Some(2), 0.5));
        let chat = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":3}"#;
        assert_eq!(parse(chat, true).unwrap().logprobs, Some(3));
        let fmt = |rf: &str| {
            let body =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"response_format":{rf}}}"#);
            parse(body.as_bytes(), true).unwrap().format
        };
        assert_eq!(fmt(r#"{"type":"text"}"#), None);
        assert_eq!(fmt(r#"{"type":"json_object"}"#), Some(Format::JsonObject));
        let schema = r#"{"type":"json_schema","json_schema":{"name":"p","strict":true,"schema":{"type":"integer"}}}"#;
        assert_eq!(fmt(schema), Some(Format::JsonSchema(json!({"type": "integer"}))));
        let e = err("{nope", false);
        assert!(e.message.contains("not valid JSON"), "{e:?}");
    }
}
