//! `smelt generate`: sample text from a model folder.

use anyhow::Result;
use clap::{Args, ValueEnum};
use smelt_infer::{generate, GenerateConfig, SamplingConfig};
use smelt_tokenizer::{ChatTemplate, Message};
use smelt_tokenizer::Tokenizer;
use std::io::Write;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model folder (config.json, model.safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Raw prompt text (continued as is).
    #[arg(long, default_value = "", conflicts_with = "chat")]
    prompt: String,
    /// A user message: rendered through the model's chat template (tokenizer_config.json or
    /// chat_template.jinja) with the assistant turn opened; prints only the reply.
    #[arg(long)]
    chat: Option<String>,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// New tokens at most; capped (with a warning) at what the model's context leaves after the prompt.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.8, value_parser = super::checks::non_negative_f32)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens with this much probability (1 = off).
    #[arg(long, default_value_t = 0.95, value_parser = super::checks::top_p)]
    top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05, value_parser = super::checks::fraction_f32)]
    min_p: f32,
    /// > 1 discourages repeating tokens already in the context (1 = off).
    #[arg(long, default_value_t = 1.0, value_parser = super::checks::positive_f32)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print tokens as they are generated.
    #[arg(long)]
    stream: bool,
    /// text: the prompt and its continuation; json: one object with prompt_ids, ids, text, tokens_per_second.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// cpu, cuda[:N] or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Prints the growing decoded text incrementally, holding back an incomplete UTF-8 tail.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self { TextStream { tok, ids: vec![], printed: 0 } }
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids);
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return String::new();
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        new
    }
}

/// `eos_token_id` (one or a list) from the model folder's generation_config.json, if any.
fn generation_config_eos(dir: &std::path::Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else { return vec![] };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = super::device::resolve(&a.device)?;
    let mut model = super::load_model(&a.model)?;
    model.to_device(device)?;
    let tok = Tokenizer::from_file(&a.model)?;
    let (prompt_text, prompt_ids) = match &a.chat {
        Some(user) => {
            let tmpl = if a.model.extension().is_some_and(|e| e == "gguf") {
                ChatTemplate::from_gguf(&a.model)?
            } else {
                ChatTemplate::from_tokenizer_config(&a.model)?
            };
            let mut msgs = Vec::new();
            if let Some(sys) = &a.system {
                msgs.push(Message::new("system", sys));
            }
            msgs.push(Message::new("user", user));
            let text = tmpl.render(&msgs, true)?;
            // The template writes its own special tokens (as transformers' apply_chat_template).
            let ids = tok.encode_with(&text, false);
            (String::new(), ids)
        }
        None => (a.prompt.clone(), tok.encode(&a.prompt)),
    };
    let max_tokens = super::limits::new_tokens(&model, prompt_ids.len(), a.max_tokens, "--max-tokens")?;
    let mut stop_ids = model.cfg.eos_token_ids.clone();
    stop_ids.extend(tok.eos_id());
    stop_ids.extend(generation_config_eos(&a.model));
    let cfg = GenerateConfig {
        max_tokens,
        sampling: SamplingConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
        },
        stop_ids,
    };
    let streaming = a.stream && matches!(a.format, Format::Text);
    let mut out = std::io::stdout().lock();
    if streaming {
        write!(out, "{prompt_text}")?;
        out.flush()?;
    }
    let mut stream = TextStream::new(&tok);
    let g = generate(&model, &prompt_ids, &cfg, |id| {
        if streaming {
            let s = stream.push(id);
            let _ = write!(out, "{s}");
            let _ = out.flush();
        }
    })?;
    let text = tok.decode(&g.ids);
    match a.format {
        Format::Text => {
            if streaming {
                writeln!(out)?;
            } else {
                writeln!(out, "{prompt_text}{text}")?;
            }
            eprintln!("[{} tokens, {:.1} tokens/s]", g.ids.len(), g.tokens_per_second);
        }
        Format::Json => {
            let v = serde_json::json!({
                "prompt_ids": g.prompt_ids, "ids": g.ids, "text": text, "tokens_per_second": g.tokens_per_second,
            });
            writeln!(out, "{v}")?;
        }
    }
    Ok(())
}
