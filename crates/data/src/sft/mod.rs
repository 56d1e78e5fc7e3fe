//! Supervised fine-tuning data: JSONL examples → token ids and a loss mask.
//!
//! Each line of a `.jsonl` file is one example in one of the shapes the ecosystem uses (TRL's
//! dataset formats):
//! - `{"text": "..."}`: plain language modelling; every token is in the loss.
//! - `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation rendered through the
//!   model's chat template; the assistant turns are in the loss.
//! - `{"prompt": "...", "completion": "..."}`: the completion is in the loss.
//! - `{"prompt": [messages], "completion": [messages]}`: the same, rendered through the chat
//!   template (the prompt with the assistant turn opened).
//!
//! The masking rules (docs/FINETUNE.md): `--train-on-prompt` puts every token in the loss.
//! Plain strings are tokenised with the tokenizer's specials (BOS, as `tokenizers` does by
//! default) and get the EOS id appended (unless they already end with it), inside the loss.
//! Chat-rendered text is tokenised without specials (the template writes them). A trained
//! turn's loss runs from its first token through its last end-of-turn token (EOS or one of the
//! model's `eos_token_ids`): a newline the template prints after `<|im_end|>` is context, not
//! target. Turns are found by rendering growing prefixes of the conversation (the text up to
//! an assistant turn is the render of the messages before it with the generation prompt), so any
//! template whose renders extend each other works; one that does not is an error naming the line.
//!
//! Batching (padding, packing, epochs, shuffling) is in `batch.rs`; nothing here knows tensors.

pub mod batch;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde_json::Value;
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::path::Path;

pub use batch::{SftBatch, SftPlan};

/// The target id that the loss skips (equal to `smelt_core::ops::cross_entropy::IGNORE`; the
/// trainer checks they agree).
pub const IGNORE: u32 = u32::MAX;

/// One tokenised example: `loss[i]` says whether token `ids[i]` is a target of the loss (it is
/// predicted from the tokens before it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub loss: Vec<bool>,
}

impl Example {
    /// How many tokens are targets of the loss (the first token never is: nothing predicts it).
    pub fn loss_tokens(&self) -> usize {
        self.loss.iter().skip(1).filter(|&&l| l).count()
    }
}

/// How text becomes an example: the tokenizer, the chat template (needed only by conversation
/// shapes), the end-of-turn ids and the masking rule.
pub struct Format<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    /// Ids that end a trained turn (the tokenizer's EOS and the model's `eos_token_ids`).
    pub end_of_turn: Vec<u32>,
    /// Appended to plain-string texts and completions.
    pub eos: Option<u32>,
    pub train_on_prompt: bool,
}

/// One rendered piece of an example and whether it is trained.
struct Piece {
    text: String,
    trained: bool,
    /// Tokenise with the tokenizer's specials (BOS) before it.
    specials: bool,
}

impl Format<'_> {
    /// Reads every line of a JSONL file (blank lines skipped); an error names `file:line` and
    /// the field at fault.
    pub fn read_jsonl(&self, path: &Path) -> Result<Vec<Example>> {
        read_lines(path, |v| self.example(v))
    }

    /// One example from its JSON object.
    pub fn example(&self, v: &Value) -> Result<Example> {
        let obj = v.as_object().context("expected a JSON object")?;
        let has = |k: &str| obj.contains_key(k);
        let pieces = if has("text") {
            if has("messages") || has("prompt") || has("completion") {
                bail!("\"text\" cannot be combined with \"messages\", \"prompt\" or \"completion\"");
            }
            let text = str_field(v, "text")?;
            vec![Piece { text: text.into(), trained: true, specials: true }]
        } else if has("messages") {
            if has("prompt") || has("completion") {
                bail!("\"messages\" cannot be combined with \"prompt\" or \"completion\"");
            }
            let msgs = messages(v, "messages")?;
            let trained: Vec<bool> = msgs.iter().map(|m| m["role"] == "assistant").collect();
            if !trained.iter().any(|&t| t) {
                bail!("field \"messages\": no assistant message, so nothing to train on");
            }
            self.render_turns(&msgs, &trained)?
        } else if has("prompt") || has("completion") {
            return self.prompt_completion(v, "prompt", "completion");
        } else {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            bail!(
                "no \"text\", \"messages\" or \"prompt\"/\"completion\" field (has {keys:?}); see docs/FINETUNE.md for the shapes"
            );
        };
        let chat = !pieces.first().is_some_and(|p| p.specials);
        self.tokenize(&pieces, chat)
    }

    /// The example of a prompt and a completion under the keys `pk` and `ck` of `v` (two strings,
    /// or two message lists): the completion is in the loss. DPO reads its `chosen` and
    /// `rejected` completions through this too, so errors name the key as the file has it.
    pub fn prompt_completion(&self, v: &Value, pk: &str, ck: &str) -> Result<Example> {
        let (p, c) = (&v[pk], &v[ck]);
        let pieces = match (p, c) {
            (Value::String(p), Value::String(c)) => vec![
                Piece { text: p.clone(), trained: false, specials: true },
                Piece { text: c.clone(), trained: true, specials: false },
            ],
            (Value::Array(_), Value::Array(_)) => {
                let (p, c) = (messages(v, pk)?, messages(v, ck)?);
                if c.is_empty() {
                    bail!("field \"{ck}\": an empty message list");
                }
                let trained: Vec<bool> = p.iter().map(|_| false).chain(c.iter().map(|_| true)).collect();
                self.render_turns(&[p, c].concat(), &trained)?
            }
            (Value::Null, _) => bail!("field \"{pk}\" is missing (a \"{ck}\" needs one)"),
            (_, Value::Null) => bail!("field \"{ck}\" is missing (a \"{pk}\" needs one)"),
            _ => bail!(
                "fields \"{pk}\" and \"{ck}\": expected two strings or two message lists, got {} and {}",
                kind(p),
                kind(c)
            ),
        };
        let chat = !pieces.first().is_some_and(|p| p.specials);
        self.tokenize(&pieces, chat)
    }

    /// Splits a conversation into pieces: message i's text is what rendering messages 0..=i adds
    /// to the render of messages 0..i (with the generation prompt when i is an assistant turn,
    /// so `<|im_start|>assistant\n` is context, not target).
    fn render_turns(&self, msgs: &[Value], trained: &[bool]) -> Result<Vec<Piece>> {
        let tmpl = self.template.context(
            "a conversation needs the model's chat template (tokenizer_config.json, chat_template.jinja or the GGUF's)",
        )?;
        let render = |n: usize, gen: bool| -> Result<String> {
            tmpl.render_with(&Value::Array(msgs[..n].to_vec()), gen, &Value::Null)
                .with_context(|| format!("rendering messages 0..{n} through the chat template"))
        };
        let mut pieces = Vec::new();
        let mut prev = String::new();
        for i in 0..msgs.len() {
            let role = msgs[i]["role"].as_str().unwrap_or_default();
            if role == "assistant" {
                let head = render(i, true)?;
                let add = head.strip_prefix(prev.as_str()).with_context(|| not_prefix(i, "the generation prompt"))?;
                pieces.push(Piece { text: add.into(), trained: false, specials: false });
                prev = head;
            }
            let full = render(i + 1, false)?;
            let add = full.strip_prefix(prev.as_str()).with_context(|| not_prefix(i, role))?;
            pieces.push(Piece { text: add.into(), trained: trained[i], specials: false });
            prev = full;
        }
        Ok(pieces)
    }

    fn tokenize(&self, pieces: &[Piece], chat: bool) -> Result<Example> {
        let tok = self.tokenizer;
        let (mut ids, mut loss) = (Vec::new(), Vec::new());
        let last_trained = pieces.iter().rposition(|p| p.trained);
        for (i, p) in pieces.iter().enumerate() {
            let mut part = tok.encode_with(&p.text, p.specials);
            let mut n_trained = part.len();
            if p.trained && chat {
                // Through the last end-of-turn token; what the template prints after it is context.
                if let Some(e) = part.iter().rposition(|t| self.end_of_turn.contains(t)) {
                    n_trained = e + 1;
                }
            }
            if p.trained && !chat && Some(i) == last_trained {
                let eos = self.eos.context("the tokenizer has no EOS token to end the example with")?;
                if part.last() != Some(&eos) {
                    part.push(eos);
                }
                n_trained = part.len();
            }
            let on = p.trained || self.train_on_prompt;
            loss.extend((0..part.len()).map(|j| if p.trained { j < n_trained || self.train_on_prompt } else { on }));
            ids.extend(part);
        }
        if ids.len() < 2 {
            bail!("the example is {} token(s) long: nothing to predict", ids.len());
        }
        Ok(Example { ids, loss })
    }
}

/// Every non-blank line of a JSONL file parsed and turned into a `T` by `f`, in parallel; the
/// first bad line (in file order) is the error, naming `file:line`.
pub fn read_lines<T: Send>(path: &Path, f: impl Fn(&Value) -> Result<T> + Sync) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}:{line}: not valid UTF-8 (byte {at} of the file; JSONL is UTF-8 text)", path.display())
    })?;
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("{}: no examples", path.display());
    }
    lines
        .par_iter()
        .map(|&(i, line)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
            f(&v).with_context(at)
        })
        .collect::<Vec<Result<T>>>()
        .into_iter()
        .collect()
}

fn not_prefix(i: usize, what: &str) -> String {
    format!(
        "messages[{i}] ({what}): the chat template's render of the conversation up to it is not a prefix of the longer render, so its tokens cannot be told apart"
    )
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn str_field<'v>(v: &'v Value, k: &str) -> Result<&'v str> {
    v[k].as_str().with_context(|| format!("field \"{k}\": expected a string, got {}", kind(&v[k])))
}

/// A message list: objects with string `role` and `content` (other keys pass through to the
/// template).
fn messages(v: &Value, k: &str) -> Result<Vec<Value>> {
    let list =
        v[k].as_array().with_context(|| format!("field \"{k}\": expected a list of messages, got {}", kind(&v[k])))?;
    for (i, m) in list.iter().enumerate() {
        for f in ["role", "content"] {
            if !m[f].is_string() {
                bail!("field \"{k}\"[{i}].{f}: expected a string, got {}", kind(&m[f]));
            }
        }
    }
    Ok(list.clone())
}

#[cfg(test)]
mod tests;
