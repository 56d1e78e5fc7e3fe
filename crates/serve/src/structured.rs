//! Structured output (`response_format`): the output is constrained token by token through
//! llguidance (the constraint engine mistral.rs and llama.cpp use), never checked after the
//! fact. This file is the only one that names llguidance:
//! - [`Grammars`]: the model's vocabulary as llguidance's token trie (the bridge from smelt's
//!   tokenizer: each id's bytes, specials marked), built once at load, and the compiler of a
//!   request's [`Format`] into a [`Constraint`] (a bad schema is the request's error);
//! - [`Constraint`]: one sequence's parser state: the allowed tokens of the next step as a
//!   mask on its logits row, the sampled token fed back, and whether the grammar is complete.
//!
//! It does not sample or decide when a sequence ends: the engine does (`engine.rs`).

use anyhow::{anyhow, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use smelt_tokenizer::Tokenizer;
use std::sync::Arc;

/// What a request asks its output to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// JSON valid under this schema (`{"type": "json_schema", "json_schema": {"schema": …}}`).
    JsonSchema(Value),
}

/// Whitespace allowed between a JSON value's tokens (llama.cpp's `SPACE_RULE`).
const WHITESPACE: &str = r"(?: |\n{1,2}[ \t]{0,20})";

/// The vocabulary as llguidance sees it, and the grammar compiler over it. Built once per model.
pub struct Grammars {
    factory: ParserFactory,
}

/// llguidance's view of smelt's tokenizer: the trie of every id's bytes, and smelt's own
/// encoder for the text llguidance tokenises itself.
struct Vocab {
    trie: TokTrie,
    tok: Tokenizer,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tok.encode_bytes(s, false)
    }

    /// llguidance may then force tokens it tokenised itself; smelt never asks it to.
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

impl Grammars {
    /// The token trie of `tok` for a model with `vocab` logits (ids the tokenizer does not
    /// have are never allowed); `stop_ids` end a sequence, so the mask allows them exactly when
    /// the grammar is complete.
    pub fn new(tok: &Tokenizer, vocab: usize, stop_ids: &[u32]) -> Result<Self> {
        let mut words = tok.token_bytes_all();
        words.resize(vocab, Vec::new());
        for (id, w) in words.iter_mut().enumerate() {
            // llguidance's convention: a special token's bytes start with 0xFF (never valid
            // UTF-8), so no text the grammar allows can spell one.
            if tok.is_special(id as u32) {
                w.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
        }
        let eos: Vec<u32> = stop_ids.iter().copied().filter(|&id| (id as usize) < vocab).collect();
        let Some(&first) = eos.first() else {
            return Err(anyhow!("the model has no end-of-sequence token, which structured output needs to end"));
        };
        let info = TokRxInfo::new(vocab as u32, first);
        // The trie asserts what it needs (a token's length, the ids); a vocabulary it cannot
        // hold is an error here, not a panic of the request that asked first.
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words).with_eos_tokens(&eos))
            .map_err(|_| anyhow!("llguidance could not build the token trie of this vocabulary"))?;
        let env: TokEnv = Arc::new(Vocab { trie, tok: tok.clone() });
        let mut factory = ParserFactory::new_simple(&env)?;
        // Errors reach the client as 400s; nothing goes to the server's stderr.
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A fresh constraint for `format`; Err: why the schema cannot be used (the request's fault).
    pub fn compile(&self, format: &Format) -> Result<Constraint, String> {
        let mut schema = match format {
            Format::JsonObject => json!({"type": "object"}),
            Format::JsonSchema(s) => s.clone(),
        };
        // Whitespace between tokens bounded as llama.cpp's JSON grammars bound it (a space, or
        // one or two newlines and up to 20 spaces or tabs of indent): llguidance's default
        // allows any run, and a small model can fill its whole answer with it. A client's own
        // `x-guidance` options (llguidance's extension) win.
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| json!({"whitespace_pattern": WHITESPACE}));
        }
        let parser = self.factory.create_parser(TopLevelGrammar::from_json_schema(schema));
        // `{:#}`: the matcher keeps the error's Display, which shows a context but not its cause.
        let matcher = Matcher::new(parser.map_err(|e| anyhow!("llguidance: {e:#}")));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint { matcher })
    }
}

/// One sequence's grammar state. Cloning gives an independent copy (one per choice of `n`).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

/// The tokens the grammar allows at one step (computed from the state alone, so the engine
/// computes it while the forward that gives the step's logits runs).
pub struct Mask(SimpleVob);

impl Mask {
    /// Sets the logit of every token not allowed to −∞; `row` is one sequence's logits (V,).
    pub fn apply(&self, row: &mut [f32]) {
        self.0.iter_unset_entries(|i| {
            if let Some(x) = row.get_mut(i) {
                *x = f32::NEG_INFINITY;
            }
        });
    }
}

impl Constraint {
    /// The tokens allowed next (the stop ids exactly when the grammar is complete).
    pub fn next_mask(&mut self) -> Result<Mask> {
        let allowed = self.matcher.compute_mask().map_err(|e| anyhow!("structured output: {e}"))?;
        if allowed.is_zero() {
            return Err(anyhow!("structured output: the grammar allows no token here"));
        }
        Ok(Mask(allowed))
    }

    /// Feeds the sampled token (one the last mask allowed) to the grammar.
    pub fn consume(&mut self, id: u32) -> Result<()> {
        self.matcher.consume_token(id).map_err(|e| anyhow!("structured output: {e}"))
    }

    /// Whether the grammar is complete and allows nothing more (then the sequence ends).
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level vocabulary (ids 0..256 bytes, 256 EOS): the mask on a tiny grammar allows
    /// exactly the bytes that continue it, EOS only once it is complete.
    #[test]
    fn the_mask_allows_exactly_what_continues_the_grammar() {
        let tok = Tokenizer::byte_level();
        let g = Grammars::new(&tok, 260, &[256]).unwrap();
        let schema = json!({"enum": ["yes", "no"]});
        let mut c = g.compile(&Format::JsonSchema(schema)).unwrap();
        let allowed = |c: &mut Constraint| {
            let mut row = vec![0.0f32; 260];
            c.next_mask().unwrap().apply(&mut row);
            (0..260u32).filter(|&i| row[i as usize] == 0.0).collect::<Vec<u32>>()
        };
        // A JSON string starts with a quote (the default JSON grammar allows leading whitespace
        // nowhere at the top level).
        assert_eq!(allowed(&mut c), vec![u32::from(b'"')]);
        c.consume(u32::from(b'"')).unwrap();
        assert_eq!(allowed(&mut c), vec![u32::from(b'n'), u32::from(b'y')]);
        for b in *b"no\"" {
            assert!(!c.is_done());
            c.consume(u32::from(b)).unwrap();
        }
        // Complete with nothing that could follow: done (the engine ends the sequence).
        assert!(c.is_done());
        // An integer may go on or end: digits and EOS (the ids past the tokenizer's vocabulary
        // are never allowed); a token the mask forbade is an error, not a silent pass.
        let mut c = g.compile(&Format::JsonSchema(json!({"type": "integer"}))).unwrap();
        c.consume(u32::from(b'4')).unwrap();
        let digits: Vec<u32> = (b'0'..=b'9').map(u32::from).chain([256]).collect();
        assert_eq!(allowed(&mut c), digits);
        assert!(!c.is_done());
        assert!(c.clone().consume(u32::from(b'x')).is_err());
        c.consume(256).unwrap();
        assert!(c.is_done());
        // Any JSON object for json_object.
        let mut c = g.compile(&Format::JsonObject).unwrap();
        assert_eq!(allowed(&mut c), vec![u32::from(b'{')]);
    }

    #[test]
    fn bad_schemas_are_errors() {
        let g = Grammars::new(&Tokenizer::byte_level(), 257, &[256]).unwrap();
        // An unknown type, a reference to nothing, not a schema, a keyword llguidance does not
        // implement (refused, not ignored), contradictory bounds.
        for bad in [
            json!({"type": "no-such-type"}),
            json!({"$ref": "#/definitions/missing"}),
            json!(7),
            json!({"type": "array", "uniqueItems": true}),
            json!({"type": "string", "minLength": 5, "maxLength": 2}),
        ] {
            let e = g.compile(&Format::JsonSchema(bad.clone())).err();
            assert!(e.is_some(), "{bad} compiled");
        }
    }
}
