//! `smelt generate`: sample text from a model folder.

use anyhow::Result;
use clap::{Args, ValueEnum};
use smelt_infer::{generate, stop_ids, GenerateConfig, SamplingConfig};
use smelt_tokenizer::{ChatTemplate, Message, StreamDecoder, Tokenizer};
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
    /// A LoRA adapter folder in PEFT's format (adapter_config.json, adapter_model.safetensors)
    /// to apply on top of the model (from `smelt train --lora-r`, `smelt sft` or PEFT).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Raw prompt text (continued as is).
    #[arg(long, default_value = "", conflicts_with = "chat")]
    prompt: String,
    /// A user message: rendered through the model's chat template (tokenizer_config.json or
    /// chat_template.jinja) with the assistant turn opened; prints only the reply.
    #[arg(long)]
    chat: Option<String>,
    /// System message for --chat.
    // `conflicts_with` too: clap does not enforce `requires` when an argument that conflicts
    // with the required one (--prompt) is given, and the message would be dropped without a word.
    #[arg(long, requires = "chat", conflicts_with = "prompt")]
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

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = super::device::resolve(&a.device)?;
    let mut model = super::lora::load_model_adapted(&a.model, a.adapter.as_deref())?;
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
    let stop_ids = stop_ids(&model, &tok, &a.model)?;
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
    let mut stream = StreamDecoder::new(&tok);
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
                writeln!(out, "{}", stream.finish())?;
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
