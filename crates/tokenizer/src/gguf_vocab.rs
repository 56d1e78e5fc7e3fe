//! Tokenizers to and from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp builds and
//! convert_hf_to_gguf.py writes them. Reading (`load`): `model = gpt2` is byte-level BPE whose
//! split regex is chosen by `tokenizer.ggml.pre` (expressed as a tokenizer.json, so it runs and
//! saves like any HF tokenizer); `model = llama` is SentencePiece, run by [`crate::spm`].
//! Writing ([`hf_gguf_metadata`], for smelt-convert's export): a Hugging Face folder's byte-level
//! BPE as `tokenizer.ggml.*` keys. The table between llama.cpp's pre-tokeniser names and
//! pre-tokenizers lives here in both directions (`pre_for`, `pre_name`).

use crate::added::{AddedToken, Matcher};
use crate::decode::DecStep;
use crate::hf_json;
use crate::pretokenize::{GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN};
use crate::{Inner, Model, Tokenizer};
use anyhow::{bail, Context, Result};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{json, Value};
use smelt_gguf::{GgufFile, Value as GgufValue};
use std::path::Path;

// llama.cpp token types.
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// llama.cpp's gpt-2 regex lacks HF's trailing `|\s+`; the split pieces are the same.
const LLAMACPP_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

fn split(re: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value, and whether merges are ignored for
/// pieces already in the vocab (llama.cpp's `ignore_merges`).
fn pre_for(pre: &str, file: &Path) -> Result<(Value, bool)> {
    let bl = |use_regex| hf_json::byte_level_pre(use_regex);
    Ok(match pre {
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => (bl(true), false),
        "llama-bpe" | "llama3" | "llama-v3" => (json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), bl(false)]}), true),
        "qwen2" | "deepseek-r1-qwen" => (json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), bl(false)]}), false),
        // llama.cpp splits off every digit, then applies its GPT-2 regex; written as Hugging
        // Face writes these tokenizers (Digits, then ByteLevel's own GPT-2 regex: the same
        // pieces), so that a saved tokenizer.json is theirs and `export-gguf` recognises it.
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" =>
            (json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, bl(true)]}), false),
        // llama.cpp's fallback when a converter wrote no (or an unknown-to-it) pre type.
        "default" | "" => (json!({"type": "Sequence", "pretokenizers": [
            split(r"[\p{P}\$\+<=>\^~\|]+"), split(LLAMACPP_GPT2), split(r"\p{N}+"), split("[0-9][0-9][0-9]"), bl(false)]}), false),
        p => bail!("{}: unsupported tokenizer.ggml.pre {p:?} (supported: gpt-2, llama-bpe, qwen2, smollm, starcoder, refact, default, ...)", file.display()),
    })
}

pub fn load(file: &Path) -> Result<Inner> {
    let g = GgufFile::open(file)?;
    let model = g
        .get_str("tokenizer.ggml.model")
        .with_context(|| format!("{}: no tokenizer.ggml.model (not a model with a vocabulary?)", file.display()))?;
    let strings = |key: &str| -> Result<Vec<String>> {
        let a = g.require(key)?.as_array().with_context(|| format!("{}: {key} is not an array", file.display()))?;
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{}: {key}[{i}] is not a string", file.display()))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(a) if a.len() == n => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        Some(a) => bail!("{}: tokenizer.ggml.token_type has {} entries for {n} tokens", file.display(), a.len()),
        None => vec![1; n],
    };
    let id_key = |k: &str| -> Result<Option<u32>> {
        match g.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                // Some converters write -1 for "none".
                _ if v.as_i64() == Some(-1) => Ok(None),
                _ => bail!("{}: {k} = {v:?} is not a token id below {n}", file.display()),
            },
        }
    };
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    let eos = id_key("tokenizer.ggml.eos_token_id")?;
    let unk = id_key("tokenizer.ggml.unknown_token_id")?;
    let flag = |k: &str, d: bool| g.get(k).and_then(|v| v.as_bool()).unwrap_or(d);
    let chat_template = g.get_str("tokenizer.chat_template").map(str::to_string);

    match model {
        "gpt2" => {
            let merges = strings("tokenizer.ggml.merges")?;
            let mut vocab = serde_json::Map::new();
            for (i, t) in tokens.iter().enumerate() {
                vocab.insert(t.clone(), json!(i));
            }
            let merges: Vec<(String, String)> = merges
                .iter()
                .enumerate()
                .map(|(i, m)| match m.split_once(' ') {
                    Some((a, b)) => Ok((a.to_string(), b.to_string())),
                    None => bail!("{}: tokenizer.ggml.merges[{i}] {m:?} is not \"a b\"", file.display()),
                })
                .collect::<Result<_>>()?;
            let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let (pre_tok, ignore_merges) = pre_for(pre, file)?;
            let mut v = hf_json::bpe_json(vocab, merges, &[], pre_tok);
            v["model"]["ignore_merges"] = json!(ignore_merges);
            v["added_tokens"] = json!(tokens
                .iter()
                .enumerate()
                .filter(|(i, _)| matches!(types[*i], CONTROL | USER_DEFINED))
                .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                                     "normalized": false, "special": types[i] == CONTROL}))
                .collect::<Vec<_>>());
            let (add_bos, add_eos) =
                (flag("tokenizer.ggml.add_bos_token", false), flag("tokenizer.ggml.add_eos_token", false));
            if add_bos || add_eos {
                let mut single = Vec::new();
                let mut specials = serde_json::Map::new();
                let mut item = |id: Option<u32>, what: &str| -> Result<Value> {
                    let id = id.with_context(|| {
                        format!("{}: add_{what}_token is set but there is no {what}_token_id", file.display())
                    })?;
                    let t = &tokens[id as usize];
                    specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
                    Ok(json!({"SpecialToken": {"id": t, "type_id": 0}}))
                };
                if add_bos {
                    single.push(item(bos, "bos")?);
                }
                single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
                if add_eos {
                    single.push(item(eos, "eos")?);
                }
                v["post_processor"] =
                    json!({"type": "TemplateProcessing", "single": single, "pair": null, "special_tokens": specials});
            }
            let mut inner = hf_json::from_json(v, file, None)?;
            inner.bos = bos;
            inner.eos = eos;
            inner.chat_template = chat_template;
            Ok(inner)
        }
        "llama" => {
            let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                Some(a) => bail!("{}: tokenizer.ggml.scores has {} entries for {n} tokens", file.display(), a.len()),
                None => bail!("{}: SentencePiece vocabulary without tokenizer.ggml.scores", file.display()),
            };
            let mut ids = FxHashMap::default();
            for (i, t) in tokens.iter().enumerate() {
                ids.entry(t.clone()).or_insert(i as u32);
            }
            let added: Vec<AddedToken> = tokens
                .iter()
                .enumerate()
                .filter(|(i, _)| matches!(types[*i], UNKNOWN | CONTROL | USER_DEFINED))
                .map(|(i, t)| AddedToken {
                    id: i as u32,
                    content: t.clone(),
                    special: types[i] != USER_DEFINED,
                    lstrip: false,
                    rstrip: false,
                    normalized: false,
                    single_word: false,
                })
                .collect();
            let special_ids: FxHashSet<u32> = added.iter().filter(|a| a.special).map(|a| a.id).collect();
            let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
            let spm = crate::spm::Spm { scores, unk, byte_tokens: hf_json::byte_tokens(&ids), add_space_prefix };
            let decoder = vec![
                DecStep::Replace("\u{2581}".into(), " ".into()),
                DecStep::ByteFallback,
                DecStep::Fuse,
                DecStep::Strip { content: ' ', start: usize::from(add_space_prefix), stop: 0 },
            ];
            let prefix = if flag("tokenizer.ggml.add_bos_token", true) { bos.into_iter().collect() } else { vec![] };
            let suffix = if flag("tokenizer.ggml.add_eos_token", false) { eos.into_iter().collect() } else { vec![] };
            Ok(Inner {
                vocab: tokens,
                ids,
                model: Model::Spm(spm),
                normalizers: vec![],
                pre: vec![],
                decoder,
                raw_added: Matcher::new(added),
                norm_added: Matcher::default(),
                special_ids,
                prefix,
                suffix,
                bos,
                eos,
                byte_level: false,
                json: None,
                chat_template,
                uid: crate::next_uid(),
            })
        }
        m => bail!(
            "{}: unsupported tokenizer.ggml.model {m:?} (supported: gpt2 = BPE, llama = SentencePiece)",
            file.display()
        ),
    }
}

/// llama.cpp's pre-tokeniser name for a tokenizer.json `pre_tokenizer`, recognised by its
/// regex: the inverse of `pre_for` (on the patterns of `crate::pretokenize`).
fn pre_name(pre: &Value) -> Option<&'static str> {
    match pre["type"].as_str()? {
        "ByteLevel" if pre["use_regex"].as_bool() != Some(false) => Some("gpt-2"),
        "Sequence" => {
            let items = pre["pretokenizers"].as_array()?;
            let regex = items.iter().find_map(|p| p["pattern"]["Regex"].as_str());
            match regex {
                Some(r) if r == LLAMA3_PATTERN => Some("llama-bpe"),
                Some(r) if r == QWEN2_PATTERN => Some("qwen2"),
                Some(r) if r == GPT2_PATTERN => Some("gpt-2"),
                None if items.iter().any(|p| p["type"] == "ByteLevel" && p["use_regex"].as_bool() != Some(false)) => {
                    // Digits split one by one before the GPT-2 regex: SmolLM's tokenizer.
                    let digits = items.iter().any(|p| p["type"] == "Digits" && p["individual_digits"] == true);
                    Some(if digits { "smollm" } else { "gpt-2" })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn read_json(p: &Path) -> Result<Value> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("{}: not valid JSON", p.display()))
}

/// The `tokenizer.*` GGUF metadata of the Hugging Face folder `dir` (tokenizer.json, and
/// tokenizer_config.json, config.json, chat_template.jinja when present), as
/// convert_hf_to_gguf.py writes it for a byte-level BPE: tokens padded to the model's
/// `vocab_size`, token types, merges, bos/eos/pad/unk ids, add_bos from the post-processor, the
/// chat template, and llama.cpp's name for the pre-tokeniser (recognised, or given as `pre`).
pub fn hf_gguf_metadata(dir: &Path, pre: Option<&str>, vocab_size: usize) -> Result<Vec<(String, GgufValue)>> {
    let p = dir.join("tokenizer.json");
    let tok = Tokenizer::from_file(dir)?;
    let tj = tok.to_json().with_context(|| format!("{}: not a BPE tokenizer", p.display()))?;
    if tj["model"]["type"] != "BPE" || tj["decoder"]["type"] != "ByteLevel" {
        bail!(
            "{}: only byte-level BPE tokenizers are exported to GGUF (model {}, decoder {})",
            p.display(),
            tj["model"]["type"],
            tj["decoder"]["type"]
        );
    }
    let pre = match pre {
        // A name smelt cannot read back would make a file that loads nowhere.
        Some(x) => match pre_for(x, &p) {
            Ok(_) => x.to_string(),
            Err(_) => bail!(
                "--pre {x:?}: not a llama.cpp pre-tokeniser smelt can read back (gpt-2, llama-bpe, qwen2, smollm, starcoder, refact, default, …)"
            ),
        },
        None => pre_name(&tj["pre_tokenizer"]).map(str::to_string).with_context(|| {
            format!(
                "{}: pre-tokenizer not recognised as one llama.cpp knows; pass its llama.cpp name with --pre",
                p.display()
            )
        })?,
    };
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    for (id, t) in (0..tok.vocab_size()).filter_map(|id| Some((id, tok.id_to_token(id as u32)?))) {
        if id >= vocab_size {
            bail!("{}: token {t:?} has id {id} ≥ the model's vocab size {vocab_size}", p.display());
        }
        tokens[id] = Some(t.to_string());
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"].as_u64().context("added token id")? as usize;
        types[id] = if a["special"] == true { CONTROL as i32 } else { USER_DEFINED as i32 };
    }
    let tokens: Vec<GgufValue> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) => GgufValue::String(t),
            None => {
                types[i] = 5;
                GgufValue::String(format!("[PAD{i}]"))
            }
        })
        .collect();
    let merges: Vec<GgufValue> = tj["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => Ok(GgufValue::String(s.clone())),
            Value::Array(ab) if ab.len() == 2 => {
                Ok(GgufValue::String(format!("{} {}", ab[0].as_str().unwrap_or(""), ab[1].as_str().unwrap_or(""))))
            }
            other => bail!("merge {other} is neither \"a b\" nor [a, b]"),
        })
        .collect::<Result<_>>()?;
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), GgufValue::String(pre)),
        ("tokenizer.ggml.tokens".to_string(), GgufValue::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), GgufValue::Array(types.into_iter().map(GgufValue::I32).collect())),
        ("tokenizer.ggml.merges".to_string(), GgufValue::Array(merges)),
    ];
    let cfg = dir.join("tokenizer_config.json");
    let tc = if cfg.exists() { read_json(&cfg)? } else { Value::Null };
    let mc = if dir.join("config.json").exists() { read_json(&dir.join("config.json"))? } else { Value::Null };
    // The ids tokenizer_config.json names (a string or an AddedToken object), else config.json's.
    let id_of = |key: &str| -> Option<u32> {
        let name = match &tc[key] {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("content").and_then(|c| c.as_str()),
            _ => None,
        };
        name.and_then(|n| tok.token_to_id(n)).or_else(|| mc[format!("{key}_id")].as_u64().map(|v| v as u32))
    };
    for (key, gkey) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ] {
        if let Some(id) = id_of(key) {
            out.push((format!("tokenizer.ggml.{gkey}"), GgufValue::U32(id)));
        }
    }
    // BOS is added when the post-processor's single-sequence template starts with a special token.
    let starts_special =
        |p: &Value| p["single"].as_array().and_then(|s| s.first()).is_some_and(|f| f.get("SpecialToken").is_some());
    let pp = &tj["post_processor"];
    let adds_bos = starts_special(pp) || pp["processors"].as_array().into_iter().flatten().any(starts_special);
    out.push(("tokenizer.ggml.add_bos_token".to_string(), GgufValue::Bool(adds_bos)));
    out.push(("tokenizer.ggml.add_eos_token".to_string(), GgufValue::Bool(false)));
    let template = match tok.chat_template() {
        Some(t) => Some(t.to_string()),
        None => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    if let Some(t) = template {
        out.push(("tokenizer.chat_template".to_string(), GgufValue::String(t)));
    }
    Ok(out)
}
