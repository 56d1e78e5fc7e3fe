//! Added tokens (specials like `<|im_start|>` and user-added words): found in the text before
//! normalisation and pre-tokenisation, leftmost-longest, as Hugging Face `tokenizers` does.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

#[derive(Clone, Debug)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub single_word: bool,
}

/// A part of the input: plain text, or an added token's id.
#[derive(Debug, PartialEq)]
pub enum Segment<'a> {
    Text(&'a str, usize),
    Token(u32),
}

#[derive(Clone, Debug, Default)]
pub struct Matcher {
    ac: Option<AhoCorasick>,
    tokens: Vec<AddedToken>,
}

impl Matcher {
    pub fn new(tokens: Vec<AddedToken>) -> Self {
        let tokens: Vec<AddedToken> = tokens.into_iter().filter(|t| !t.content.is_empty()).collect();
        let ac = if tokens.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(tokens.iter().map(|t| t.content.as_str()))
                .ok()
        };
        Matcher { ac, tokens }
    }

    /// Split `text` (whose first byte is at `base` in the whole input) into text and tokens.
    pub fn split<'a>(&self, text: &'a str, base: usize, out: &mut Vec<Segment<'a>>) {
        let Some(ac) = &self.ac else {
            if !text.is_empty() {
                out.push(Segment::Text(text, base));
            }
            return;
        };
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        let mut pos = 0; // start of the text not yet emitted
        for m in ac.find_iter(text) {
            let t = &self.tokens[m.pattern().as_usize()];
            let (mut a, mut b) = (m.start(), m.end());
            if a < pos {
                continue;
            }
            if t.single_word {
                let before = text[..a].chars().next_back();
                let after = text[b..].chars().next();
                if before.is_some_and(is_word) || after.is_some_and(is_word) {
                    continue;
                }
            }
            // lstrip/rstrip: the token swallows the whitespace beside it.
            if t.lstrip {
                a = pos + text[pos..a].trim_end().len();
            }
            if t.rstrip {
                b = text.len() - text[b..].trim_start().len();
            }
            if a > pos {
                out.push(Segment::Text(&text[pos..a], base + pos));
            }
            out.push(Segment::Token(t.id));
            pos = b;
        }
        if pos < text.len() {
            out.push(Segment::Text(&text[pos..], base + pos));
        }
    }
}
