//! smelt-tokenizer: turns text into token ids and back.
//!
//! One [`Tokenizer`] type runs every supported vocabulary through the same pipeline as Hugging
//! Face `tokenizers`: added tokens are cut out first, each remaining segment is normalised,
//! pre-tokenised and handed to the model (BPE, or llama.cpp's SentencePiece for GGUF `llama`
//! vocabularies), then the post-processor adds BOS/EOS. Loading lives in `hf_json` (tokenizer.json)
//! and `gguf_vocab` (GGUF `tokenizer.ggml.*`, read and written), training in `train`, chat templates in
//! `chat`, incremental decoding of generated ids in `stream`.

mod added;
mod bpe;
pub mod bytelevel;
mod chat;
mod corpus;
mod decode;
mod gguf_vocab;
mod hf_json;
mod normalize;
pub mod pretokenize;
mod spm;
mod stream;
mod train;

pub use chat::{ChatTemplate, Message};
pub use gguf_vocab::hf_gguf_metadata;
pub use stream::StreamDecoder;
pub use train::TrainConfig;

use added::{Matcher, Segment};
use anyhow::{Context, Result};
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::path::Path;
use std::sync::Arc;

/// (tokenizer uid, pre-token → ids): one thread's cache of encoded pieces.
type PieceCache = (u64, FxHashMap<String, Box<[u32]>>);

thread_local! {
    /// See `encode_piece_cached`.
    static CACHE: std::cell::RefCell<PieceCache> = Default::default();
}

/// A distinct id per built tokenizer, so a thread's cache never serves another's pieces.
pub(crate) fn next_uid() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A tokenizer. Ids are `u32`. Cloning is cheap (the tables are shared).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) enum Model {
    Bpe(bpe::Bpe),
    Spm(spm::Spm),
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// id → token string ("" for ids the file leaves unused).
    vocab: Vec<String>,
    ids: FxHashMap<String, u32>,
    model: Model,
    normalizers: Vec<normalize::Normalizer>,
    pre: Vec<pretokenize::PreTok>,
    decoder: Vec<decode::DecStep>,
    /// Added tokens matched on the raw text / on the normalised text.
    raw_added: Matcher,
    norm_added: Matcher,
    /// Ids that `decode` skips (added tokens marked special, GGUF control tokens).
    special_ids: FxHashSet<u32>,
    /// Post-processor ids around every encoded sequence when specials are requested.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// The pre-tokenizer maps bytes to the GPT-2 table, so raw bytes can be encoded.
    byte_level: bool,
    /// The tokenizer.json this tokenizer was built from; `save` writes it back.
    json: Option<serde_json::Value>,
    chat_template: Option<String>,
    /// Identifies this tokenizer to the per-thread BPE cache.
    uid: u64,
}

impl Tokenizer {
    pub(crate) fn from_inner(inner: Inner) -> Self {
        Tokenizer { inner: Arc::new(inner) }
    }

    /// The byte-level tokenizer: ids 0..256 are bytes, 256 is `<|endoftext|>` (EOS). It is a
    /// byte-level BPE with no merges, so it saves as an ordinary tokenizer.json.
    pub fn byte_level() -> Self {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8)
            .map(|b| (bytelevel::byte_char(b).to_string(), serde_json::json!(b)))
            .chain([("<|endoftext|>".to_string(), serde_json::json!(256))])
            .collect();
        let v = hf_json::bpe_json(vocab, Vec::new(), &[("<|endoftext|>".into(), 256)], hf_json::byte_level_pre(false));
        let mut t = hf_json::from_json(v, Path::new("<byte-level>"), None).expect("built-in tokenizer is valid");
        t.eos = Some(256);
        Self::from_inner(t)
    }

    /// Load from a `tokenizer.json`, a model directory holding one, or a `.gguf` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        if file.extension().is_some_and(|e| e == "gguf") {
            return gguf_vocab::load(&file).map(Self::from_inner);
        }
        let bytes = std::fs::read(&file).with_context(|| format!("reading tokenizer {}", file.display()))?;
        if bytes.starts_with(b"GGUF") {
            // Formats are told apart by name, as the model loader does: say so, not "not UTF-8".
            anyhow::bail!("{}: a GGUF file: give it a name ending in .gguf", file.display());
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: not a tokenizer.json (the file is not UTF-8 text)", file.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))?;
        if v.get("model").and_then(|m| m.get("type")).and_then(|t| t.as_str()) == Some("smelt-bytes") {
            return Ok(Self::byte_level());
        }
        let config = file.parent().map(|d| d.join("tokenizer_config.json")).filter(|p| p.exists());
        hf_json::from_json(v, &file, config.as_deref()).map(Self::from_inner)
    }

    /// Build a byte-level BPE from GPT-2 style `vocab.json` + `merges.txt` files.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        hf_json::from_vocab_merges(vocab, merges).map(Self::from_inner)
    }

    /// Save as a Hugging Face `tokenizer.json` (written to a temporary file, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        let v = self.inner.json.as_ref().with_context(|| {
            format!(
                "cannot save {}: a SentencePiece (GGUF `llama`) vocabulary has no tokenizer.json form here",
                path.display()
            )
        })?;
        smelt_files::write_atomic(path, serde_json::to_string(v)?)
            .with_context(|| format!("saving tokenizer {}", path.display()))
    }

    /// Save as the tokenizer files of a Hugging Face model folder: `tokenizer.json`, and a
    /// `tokenizer_config.json` naming BOS and EOS and carrying the chat template (what
    /// `smelt import-hf` writes for a GGUF file's vocabulary). `transformers` reads the pair as a
    /// `PreTrainedTokenizerFast`; smelt reads it back as the same tokenizer.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        self.save(&dir.join("tokenizer.json"))?;
        let mut cfg = serde_json::Map::new();
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        for (key, id) in [("bos_token", self.bos_id()), ("eos_token", self.eos_id())] {
            if let Some(t) = id.and_then(|i| self.id_to_token(i)) {
                cfg.insert(key.into(), t.into());
            }
        }
        cfg.insert("clean_up_tokenization_spaces".into(), false.into());
        if let Some(t) = self.chat_template() {
            cfg.insert("chat_template".into(), t.into());
        }
        let p = dir.join("tokenizer_config.json");
        smelt_files::write_atomic(&p, serde_json::to_string_pretty(&cfg)?)
            .with_context(|| format!("saving {}", p.display()))
    }

    /// The tokenizer.json this tokenizer saves as (None for SentencePiece GGUF vocabularies).
    pub fn to_json(&self) -> Option<&serde_json::Value> {
        self.inner.json.as_ref()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.ids.get(token).copied()
    }
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.vocab.get(id as usize).map(String::as_str).filter(|s| !s.is_empty())
    }
    /// Whether `id` is a special token (one `decode` skips: an added token marked special, a
    /// GGUF control token).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.contains(&id)
    }

    /// Every id's bytes as it decodes after other text: what generation appends when it
    /// samples the id (a SentencePiece `▁` is a space here, though `decode` drops it at the
    /// start of a text), special tokens spelled out. What a constraint engine that matches
    /// tokens as byte strings needs (`smelt-serve`'s structured output).
    pub fn token_bytes_all(&self) -> Vec<Vec<u8>> {
        // An ordinary token to decode each id after, so that decoders that treat the first
        // token differently (Metaspace's leading space, a Strip) see it mid-text.
        let plain = |id: u32| !self.is_special(id) && !self.decode_bytes(&[id], false).is_empty();
        let anchor = match self.encode_with("a", false)[..] {
            [id] if plain(id) => Some(id),
            _ => (0..self.vocab_size() as u32).find(|&id| plain(id)),
        };
        let prefix = anchor.map(|a| self.decode_bytes(&[a], false)).unwrap_or_default();
        (0..self.vocab_size() as u32)
            .map(|id| {
                let alone = || self.decode_bytes(&[id], false);
                let Some(a) = anchor else { return alone() };
                match self.decode_bytes(&[a, id], false).strip_prefix(&prefix[..]) {
                    Some(rest) => rest.to_vec(),
                    None => alone(),
                }
            })
            .collect()
    }

    /// The chat template embedded in the vocabulary's source (GGUF `tokenizer.chat_template`
    /// or `tokenizer_config.json` next to a tokenizer.json), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template.as_deref()
    }

    /// Encode as Hugging Face `tokenizers`' `encode(text)` does by default (post-processor
    /// specials such as BOS included).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, true)
    }

    /// Encode; `add_special` applies the post-processor's special tokens (BOS/EOS templates).
    /// Added tokens written in the text (`<|im_start|>`) are always recognised, as in HF.
    pub fn encode_with(&self, text: &str, add_special: bool) -> Vec<u32> {
        let t = &*self.inner;
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if add_special {
            out.extend(&t.prefix);
        }
        let mut segs = Vec::new();
        t.raw_added.split(text, 0, &mut segs);
        let mut after_token = true;
        for seg in segs {
            match seg {
                Segment::Token(id) => {
                    out.push(id);
                    after_token = true;
                }
                Segment::Text(s, at) => {
                    self.encode_segment(s, at, after_token, &mut out);
                    after_token = false;
                }
            }
        }
        if add_special {
            out.extend(&t.suffix);
        }
        out
    }

    fn encode_segment(&self, s: &str, at: usize, after_token: bool, out: &mut Vec<u32>) {
        let t = &*self.inner;
        match &t.model {
            Model::Spm(spm) => spm.encode(s, after_token, &t.ids, out),
            Model::Bpe(bpe) => {
                let normed = if t.normalizers.is_empty() {
                    std::borrow::Cow::Borrowed(s)
                } else {
                    std::borrow::Cow::Owned(normalize::normalize(&t.normalizers, s))
                };
                let mut segs = Vec::new();
                t.norm_added.split(&normed, at, &mut segs);
                for seg in segs {
                    match seg {
                        Segment::Token(id) => out.push(id),
                        Segment::Text(s2, at2) => {
                            for p in pretokenize::pre_tokenize(&t.pre, s2, at2 == 0) {
                                self.encode_piece_cached(bpe, &p.text, out);
                            }
                        }
                    }
                }
            }
        }
    }

    /// BPE of one pre-token through a per-thread cache: words repeat (Zipf), and a hit skips
    /// the merge loop and its allocations. The cache belongs to one tokenizer at a time (by
    /// `uid`, never reused) and is cleared when it grows past a bound.
    fn encode_piece_cached(&self, bpe: &bpe::Bpe, piece: &str, out: &mut Vec<u32>) {
        const MAX_PIECE: usize = 48;
        const MAX_ENTRIES: usize = 1 << 16;
        let t = &*self.inner;
        if piece.len() > MAX_PIECE {
            return bpe.encode_piece(piece, |x| t.ids.get(x).copied(), out);
        }
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != t.uid {
                c.0 = t.uid;
                c.1.clear();
            }
            if let Some(ids) = c.1.get(piece) {
                out.extend_from_slice(ids);
                return;
            }
            let start = out.len();
            bpe.encode_piece(piece, |x| t.ids.get(x).copied(), out);
            if c.1.len() >= MAX_ENTRIES {
                c.1.clear();
            }
            c.1.insert(piece.to_string(), out[start..].into());
        })
    }

    /// Encode raw bytes, which need not be UTF-8. For byte-level tokenizers every byte sequence
    /// round-trips: valid UTF-8 runs are encoded as text, each run of invalid bytes as one
    /// pre-token of byte-table chars. Other tokenizers see the bytes decoded lossily.
    pub fn encode_bytes(&self, bytes: &[u8], add_special: bool) -> Vec<u32> {
        let t = &*self.inner;
        let (true, Model::Bpe(bpe)) = (t.byte_level, &t.model) else {
            return self.encode_with(&String::from_utf8_lossy(bytes), add_special);
        };
        let mut out = Vec::new();
        if add_special {
            out.extend(&t.prefix);
        }
        for chunk in bytes.utf8_chunks() {
            out.extend(self.encode_with(chunk.valid(), false));
            if !chunk.invalid().is_empty() {
                let mut s = String::new();
                bytelevel::encode_bytes(chunk.invalid(), &mut s);
                bpe.encode_piece(&s, |x| t.ids.get(x).copied(), &mut out);
            }
        }
        if add_special {
            out.extend(&t.suffix);
        }
        out
    }

    /// Encode many texts in parallel (rayon).
    pub fn encode_batch(&self, texts: &[&str], add_special: bool) -> Vec<Vec<u32>> {
        texts.par_iter().map(|s| self.encode_with(s, add_special)).collect()
    }

    /// Decode ids to text; specials are skipped, invalid UTF-8 is replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, true)
    }

    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    /// Decode to raw bytes (the inverse of `encode_bytes`); unknown ids are skipped.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let t = &*self.inner;
        let toks: Vec<Vec<u8>> = ids
            .iter()
            .filter(|id| !(skip_special && t.special_ids.contains(id)))
            .filter_map(|&id| t.vocab.get(id as usize))
            .map(|s| s.as_bytes().to_vec())
            .collect();
        decode::decode(&t.decoder, toks)
    }
}
