//! smelt-tokenizer: turns text into token ids and back.
//!
//! This is the API the rest of smelt relies on. The engine-core issue ships only the byte-level
//! tokenizer (every byte is one token, then the specials); the tokenizer issue replaces the inside
//! with byte-level BPE training, Hugging Face `tokenizer.json` loading/saving and GGUF vocabularies,
//! keeping these signatures.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// A tokenizer. Ids are `u32`.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// Special tokens appended after the 256 byte tokens, e.g. `<|endoftext|>`.
    specials: Vec<String>,
    eos: Option<u32>,
    bos: Option<u32>,
}

impl Tokenizer {
    /// The byte-level tokenizer: ids 0..256 are bytes, 256 is `<|endoftext|>` (EOS).
    pub fn byte_level() -> Self {
        Tokenizer { specials: vec!["<|endoftext|>".into()], eos: Some(256), bos: None }
    }

    /// Load from a `tokenizer.json`, a model directory holding one, or (later) a `.gguf` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading tokenizer {}", file.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        if v.get("model").and_then(|m| m.get("type")).and_then(|t| t.as_str()) == Some("smelt-bytes") {
            return Ok(Self::byte_level());
        }
        bail!("{}: unsupported tokenizer (only the byte-level tokenizer is built in so far)", file.display())
    }

    /// Save as JSON (`tokenizer.json`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let v = serde_json::json!({"version": "1.0", "model": {"type": "smelt-bytes"}, "added_tokens": self.specials});
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing tokenizer {}", path.display()))
    }

    pub fn vocab_size(&self) -> usize { 256 + self.specials.len() }
    pub fn eos_id(&self) -> Option<u32> { self.eos }
    pub fn bos_id(&self) -> Option<u32> { self.bos }

    /// Encode as Hugging Face `tokenizers`' `encode(text)` does by default (post-processor
    /// specials such as BOS included).
    pub fn encode(&self, text: &str) -> Vec<u32> { self.encode_with(text, true) }

    /// Encode; `add_special` applies the post-processor's special tokens (BOS/EOS templates).
    pub fn encode_with(&self, text: &str, _add_special: bool) -> Vec<u32> {
        text.bytes().map(|b| b as u32).collect()
    }

    /// Decode ids to text; specials are skipped, invalid UTF-8 is replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
