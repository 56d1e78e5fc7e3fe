//! Hugging Face `tokenizer.json`: parsing any BPE tokenizer into smelt's pipeline, and building
//! the JSON for tokenizers smelt makes (trained, byte-level, from GGUF). Everything smelt runs
//! goes through [`from_json`], so what `save` writes is exactly what was run.
//!
//! Unsupported parts (WordPiece/Unigram models, unknown pre-tokenizers...) are errors naming the
//! file and the type, never silently different tokenisation.

use crate::added::{AddedToken, Matcher};
use crate::bpe::Bpe;
use crate::decode::DecStep;
use crate::normalize::Normalizer;
use crate::pretokenize::{Behavior, Pattern, PreTok, Prepend, SplitRegex};
use crate::{Inner, Model};
use anyhow::{bail, Context, Result};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{json, Map, Value};
use std::path::Path;

pub fn byte_level_pre(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// A byte-level BPE tokenizer.json with the given vocab, merges and special added tokens.
pub fn bpe_json(
    vocab: Map<String, Value>,
    merges: Vec<(String, String)>,
    specials: &[(String, u32)],
    pre_tokenizer: Value,
) -> Value {
    let added: Vec<Value> = specials
        .iter()
        .map(|(c, id)| {
            json!({
        "id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab,
                  "merges": merges.into_iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()},
    })
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T> {
        bail!("{}: {what}", self.file.display())
    }
    fn typ<'v>(&self, v: &'v Value, section: &str) -> Result<&'v str> {
        match v.get("type").and_then(Value::as_str) {
            Some(t) => Ok(t),
            None => self.err(format!("{section} has no \"type\"")),
        }
    }
    fn regex(&self, pattern: &Value, section: &str) -> Result<Pattern> {
        if let Some(r) = pattern.get("Regex").and_then(Value::as_str) {
            return SplitRegex::new(r)
                .map(Pattern::Regex)
                .with_context(|| format!("{}: {section}", self.file.display()));
        }
        if let Some(s) = pattern.get("String").and_then(Value::as_str) {
            return Ok(Pattern::Literal(s.to_string()));
        }
        self.err(format!("{section}: pattern must be {{\"Regex\": ..}} or {{\"String\": ..}}, got {pattern}"))
    }

    fn normalizer(&self, v: &Value, out: &mut Vec<Normalizer>) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match self.typ(v, "normalizer")? {
            "Sequence" => {
                for n in v.get("normalizers").and_then(Value::as_array).into_iter().flatten() {
                    self.normalizer(n, out)?;
                }
            }
            "NFC" => out.push(Normalizer::Nfc),
            "NFD" => out.push(Normalizer::Nfd),
            "NFKC" => out.push(Normalizer::Nfkc),
            "NFKD" => out.push(Normalizer::Nfkd),
            "Lowercase" => out.push(Normalizer::Lowercase),
            "Prepend" => out.push(Normalizer::Prepend(s("prepend"))),
            "Strip" => out.push(Normalizer::Strip {
                left: v.get("strip_left").and_then(Value::as_bool).unwrap_or(true),
                right: v.get("strip_right").and_then(Value::as_bool).unwrap_or(true),
            }),
            "Replace" => match self.regex(v.get("pattern").unwrap_or(&Value::Null), "Replace normalizer")? {
                Pattern::Literal(p) => out.push(Normalizer::Replace(p, s("content"))),
                Pattern::Regex(_) => {
                    let p = v["pattern"]["Regex"].as_str().unwrap_or("");
                    let re = fancy_regex::Regex::new(p)
                        .with_context(|| format!("{}: Replace normalizer regex", self.file.display()))?;
                    out.push(Normalizer::ReplaceRegex(re, s("content")))
                }
            },
            t => return self.err(format!("unsupported normalizer type {t:?}")),
        }
        Ok(())
    }

    fn pre_tokenizer(&self, v: &Value, out: &mut Vec<PreTok>) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        match self.typ(v, "pre_tokenizer")? {
            "Sequence" => {
                for p in v.get("pretokenizers").and_then(Value::as_array).into_iter().flatten() {
                    self.pre_tokenizer(p, out)?;
                }
            }
            "ByteLevel" => out.push(PreTok::ByteLevel {
                add_prefix_space: flag("add_prefix_space", true),
                regex: if flag("use_regex", true) {
                    Some(SplitRegex::new(crate::pretokenize::GPT2_PATTERN)?)
                } else {
                    None
                },
            }),
            "Split" => {
                let b = v.get("behavior").and_then(Value::as_str).unwrap_or("");
                let behavior =
                    Behavior::parse(b).map_or_else(|| self.err(format!("Split: unknown behavior {b:?}")), Ok)?;
                out.push(PreTok::Split {
                    pattern: self.regex(v.get("pattern").unwrap_or(&Value::Null), "Split pre-tokenizer")?,
                    behavior,
                    invert: flag("invert", false),
                });
            }
            "Metaspace" => out.push(PreTok::Metaspace {
                replacement: metaspace_char(v),
                prepend: metaspace_prepend(v),
                split: flag("split", true),
            }),
            "Digits" => out.push(PreTok::Digits { individual: flag("individual_digits", false) }),
            t => {
                return self.err(format!(
                    "unsupported pre_tokenizer type {t:?} (supported: ByteLevel, Split, Metaspace, Digits, Sequence)"
                ))
            }
        }
        Ok(())
    }

    fn decoder(&self, v: &Value, out: &mut Vec<DecStep>) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        match self.typ(v, "decoder")? {
            "Sequence" => {
                for d in v.get("decoders").and_then(Value::as_array).into_iter().flatten() {
                    self.decoder(d, out)?;
                }
            }
            "ByteLevel" => out.push(DecStep::ByteLevel),
            "ByteFallback" => out.push(DecStep::ByteFallback),
            "Fuse" => out.push(DecStep::Fuse),
            "Replace" => match self.regex(v.get("pattern").unwrap_or(&Value::Null), "Replace decoder")? {
                Pattern::Literal(p) => {
                    out.push(DecStep::Replace(p, v.get("content").and_then(Value::as_str).unwrap_or("").into()))
                }
                Pattern::Regex(_) => return self.err("Replace decoder with a regex pattern is not supported"),
            },
            "Strip" => out.push(DecStep::Strip {
                content: v.get("content").and_then(Value::as_str).and_then(|s| s.chars().next()).unwrap_or(' '),
                start: v.get("start").and_then(Value::as_u64).unwrap_or(0) as usize,
                stop: v.get("stop").and_then(Value::as_u64).unwrap_or(0) as usize,
            }),
            "Metaspace" => out.push(DecStep::Metaspace {
                replacement: metaspace_char(v),
                strip_first: metaspace_prepend(v) != Prepend::Never,
            }),
            t => return self.err(format!("unsupported decoder type {t:?}")),
        }
        Ok(())
    }

    /// Post-processor → (ids before, ids after) the sequence.
    fn post(&self, v: &Value, pre: &mut Vec<u32>, post: &mut Vec<u32>, ids: &FxHashMap<String, u32>) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        match self.typ(v, "post_processor")? {
            "Sequence" => {
                for p in v.get("processors").and_then(Value::as_array).into_iter().flatten() {
                    self.post(p, pre, post, ids)?;
                }
            }
            "ByteLevel" => {}
            "TemplateProcessing" => {
                let specials = v.get("special_tokens").cloned().unwrap_or(Value::Null);
                let mut seen_seq = false;
                for item in v.get("single").and_then(Value::as_array).into_iter().flatten() {
                    if item.get("Sequence").is_some() {
                        seen_seq = true;
                        continue;
                    }
                    let Some(name) = item.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str) else {
                        return self.err(format!("TemplateProcessing: unexpected item {item}"));
                    };
                    let tok_ids: Vec<u32> =
                        match specials.get(name).and_then(|s| s.get("ids")).and_then(Value::as_array) {
                            Some(a) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
                            None => match ids.get(name) {
                                Some(&i) => vec![i],
                                None => return self.err(format!("TemplateProcessing: unknown special token {name:?}")),
                            },
                        };
                    if seen_seq {
                        post.extend(tok_ids)
                    } else {
                        pre.extend(tok_ids)
                    }
                }
            }
            t @ ("RobertaProcessing" | "BertProcessing") => {
                let id = |k: &str| v.get(k).and_then(|x| x.get(1)).and_then(Value::as_u64).map(|x| x as u32);
                match (id("cls"), id("sep")) {
                    (Some(c), Some(s)) => {
                        pre.push(c);
                        post.push(s);
                    }
                    _ => return self.err(format!("{t}: cls/sep must be [token, id]")),
                }
            }
            t => return self.err(format!("unsupported post_processor type {t:?}")),
        }
        Ok(())
    }
}

fn metaspace_char(v: &Value) -> char {
    v.get("replacement").and_then(Value::as_str).and_then(|s| s.chars().next()).unwrap_or('\u{2581}')
}

fn metaspace_prepend(v: &Value) -> Prepend {
    match v.get("prepend_scheme").and_then(Value::as_str) {
        Some("first") => Prepend::First,
        Some("never") => Prepend::Never,
        Some(_) => Prepend::Always,
        None => {
            if v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true) {
                Prepend::Always
            } else {
                Prepend::Never
            }
        }
    }
}

/// `<0x00>`..`<0xFF>` ids, when all 256 are in the vocab.
pub fn byte_tokens(ids: &FxHashMap<String, u32>) -> Option<Box<[u32; 256]>> {
    let mut t = Box::new([0u32; 256]);
    for (b, slot) in t.iter_mut().enumerate() {
        *slot = *ids.get(&format!("<0x{b:02X}>"))?;
    }
    Some(t)
}

/// Build the runnable tokenizer from a parsed tokenizer.json. `config` is an optional
/// `tokenizer_config.json` naming BOS/EOS and the chat template.
pub fn from_json(v: Value, file: &Path, config: Option<&Path>) -> Result<Inner> {
    let c = Ctx { file };
    let model = v.get("model").filter(|m| m.is_object()).map_or_else(|| c.err("no \"model\" object"), Ok)?;
    let mtype =
        model.get("type").and_then(Value::as_str).unwrap_or(if model.get("merges").is_some() { "BPE" } else { "?" });
    if mtype != "BPE" {
        return c.err(format!("unsupported model type {mtype:?} (only BPE tokenizers are supported)"));
    }
    for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            return c.err(format!("BPE with {k} is not supported"));
        }
    }
    let vocab_obj =
        model.get("vocab").and_then(Value::as_object).map_or_else(|| c.err("model.vocab must be an object"), Ok)?;
    let mut ids: FxHashMap<String, u32> = FxHashMap::default();
    ids.reserve(vocab_obj.len());
    for (tok, id) in vocab_obj {
        let Some(id) = id.as_u64().filter(|&i| i < u32::MAX as u64) else {
            return c.err(format!("model.vocab[{tok:?}]: id {id} is not a u32"));
        };
        ids.insert(tok.clone(), id as u32);
    }
    let mut added = Vec::new();
    for (i, a) in v.get("added_tokens").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let content = a
            .get("content")
            .and_then(Value::as_str)
            .map_or_else(|| c.err(format!("added_tokens[{i}] has no content")), Ok)?;
        let id =
            a.get("id").and_then(Value::as_u64).map_or_else(|| c.err(format!("added_tokens[{i}] has no id")), Ok)?
                as u32;
        let f = |k: &str, d: bool| a.get(k).and_then(Value::as_bool).unwrap_or(d);
        ids.insert(content.to_string(), id);
        added.push(AddedToken {
            id,
            content: content.to_string(),
            special: f("special", false),
            lstrip: f("lstrip", false),
            rstrip: f("rstrip", false),
            normalized: f("normalized", !f("special", false)),
            single_word: f("single_word", false),
        });
    }
    let n = ids.values().map(|&i| i as usize + 1).max().unwrap_or(0);
    // Ids index a table; refuse wildly sparse ids instead of allocating for them.
    if n > ids.len().saturating_mul(2).max(1 << 16) {
        return c.err(format!("token ids are sparse (largest id {} for {} tokens)", n - 1, ids.len()));
    }
    let mut vocab = vec![String::new(); n];
    for (t, &i) in &ids {
        vocab[i as usize] = t.clone();
    }

    let mut merges = FxHashMap::default();
    let merge_list = match model.get("merges") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        // Read as "no merges" it would encode every text byte by byte, without a word.
        Some(_) => return c.err("model.merges is not a list"),
    };
    merges.reserve(merge_list.len());
    for (rank, m) in merge_list.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => match s.split_once(' ') {
                Some(p) => p,
                None => return c.err(format!("merges[{rank}] {s:?} is not \"a b\"")),
            },
            Value::Array(p) if p.len() == 2 && p[0].is_string() && p[1].is_string() => {
                (p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""))
            }
            _ => return c.err(format!("merges[{rank}] must be \"a b\" or [\"a\", \"b\"], got {m}")),
        };
        let get = |t: &str| {
            ids.get(t)
                .copied()
                .map_or_else(|| c.err(format!("merges[{rank}] ({a:?}, {b:?}): {t:?} is not in the vocab")), Ok)
        };
        let (ia, ib, inew) = (get(a)?, get(b)?, get(&format!("{a}{b}"))?);
        merges.entry((ia, ib)).or_insert((rank as u32, inew));
    }
    let unk = match model.get("unk_token").and_then(Value::as_str) {
        Some(u) => Some(ids.get(u).copied().map_or_else(|| c.err(format!("unk_token {u:?} is not in the vocab")), Ok)?),
        None => None,
    };
    let flag = |k: &str| model.get(k).and_then(Value::as_bool).unwrap_or(false);
    let bpe = Bpe {
        merges,
        unk,
        fuse_unk: flag("fuse_unk"),
        byte_fallback: flag("byte_fallback"),
        ignore_merges: flag("ignore_merges"),
        byte_tokens: byte_tokens(&ids),
    };
    if bpe.byte_fallback && bpe.byte_tokens.is_none() {
        return c.err("byte_fallback is set but the vocab lacks the <0x00>..<0xFF> tokens");
    }

    let mut normalizers = Vec::new();
    c.normalizer(v.get("normalizer").unwrap_or(&Value::Null), &mut normalizers)?;
    let mut pre = Vec::new();
    c.pre_tokenizer(v.get("pre_tokenizer").unwrap_or(&Value::Null), &mut pre)?;
    let mut decoder = Vec::new();
    c.decoder(v.get("decoder").unwrap_or(&Value::Null), &mut decoder)?;
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    c.post(v.get("post_processor").unwrap_or(&Value::Null), &mut prefix, &mut suffix, &ids)?;
    let byte_level = pre.iter().any(|p| matches!(p, PreTok::ByteLevel { .. }));

    // BOS/EOS: tokenizer_config.json when present, else the post-processor's first special and
    // the usual names.
    let cfg: Option<Value> = match config {
        Some(p) => Some(
            serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{}: not valid JSON", p.display()))?,
        ),
        None => None,
    };
    let cfg_tok = |k: &str| -> Option<u32> {
        let t = cfg.as_ref()?.get(k)?;
        let s = t.as_str().or_else(|| t.get("content").and_then(Value::as_str))?;
        ids.get(s).copied()
    };
    let named = |names: &[&str]| names.iter().find_map(|n| ids.get(*n).copied());
    let bos = cfg_tok("bos_token")
        .or(prefix.first().copied())
        .or_else(|| named(&["<|begin_of_text|>", "<s>", "<|startoftext|>"]));
    let eos = cfg_tok("eos_token")
        .or_else(|| named(&["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|eot_id|>"]));
    let chat_template = cfg.as_ref().and_then(|c| c.get("chat_template")).and_then(Value::as_str).map(str::to_string);

    let special_ids: FxHashSet<u32> = added.iter().filter(|a| a.special).map(|a| a.id).collect();
    let (norm, raw): (Vec<_>, Vec<_>) = added.into_iter().partition(|a| a.normalized && !normalizers.is_empty());
    Ok(Inner {
        vocab,
        ids,
        model: Model::Bpe(bpe),
        normalizers,
        pre,
        decoder,
        raw_added: Matcher::new(raw),
        norm_added: Matcher::new(norm),
        special_ids,
        prefix,
        suffix,
        bos,
        eos,
        byte_level,
        json: Some(v),
        chat_template,
        uid: crate::next_uid(),
    })
}

/// GPT-2 style `vocab.json` (token → id) + `merges.txt` ("a b" per line, optional `#version`
/// header) → a byte-level BPE tokenizer; `<|endoftext|>` becomes a special added token.
pub fn from_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Inner> {
    let text = std::fs::read_to_string(vocab_path).with_context(|| format!("reading {}", vocab_path.display()))?;
    let vocab: Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON object of token → id", vocab_path.display()))?;
    let text = std::fs::read_to_string(merges_path).with_context(|| format!("reading {}", merges_path.display()))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        match line.split_once(' ') {
            Some((a, b)) => merges.push((a.to_string(), b.to_string())),
            None => bail!("{}:{}: expected \"a b\", got {line:?}", merges_path.display(), i + 1),
        }
    }
    let specials: Vec<(String, u32)> = ["<|endoftext|>"]
        .iter()
        .filter_map(|s| vocab.get(*s).and_then(Value::as_u64).map(|id| (s.to_string(), id as u32)))
        .collect();
    from_json(bpe_json(vocab, merges, &specials, byte_level_pre(true)), merges_path, None)
}
