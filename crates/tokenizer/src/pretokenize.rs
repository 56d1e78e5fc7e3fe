//! Pre-tokenisation: cutting normalised text into pieces before the model sees them, for the
//! pre-tokenizers real BPE tokenizers use (Split by regex or string, ByteLevel, Metaspace,
//! Digits, Sequence). Semantics follow Hugging Face `tokenizers`.
//!
//! Split regexes use lookahead (`\s+(?!\S)`), which the `regex` crate lacks; `fancy-regex`
//! handles any pattern, and [`SplitRegex::new`] recognises the common "GPT-2 family" shape and
//! runs it on the much faster `regex` crate with an exact rewrite of that one lookahead.

use crate::bytelevel;
use anyhow::{bail, Result};

/// The GPT-2 split regex (HF ByteLevel's `use_regex`).
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3's split regex.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (single digits).
pub const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A compiled split regex.
#[derive(Clone, Debug)]
pub enum SplitRegex {
    /// Any pattern, on a backtracking engine.
    Fancy(fancy_regex::Regex),
    /// A pattern whose only lookaround was a trailing `\s+(?!\S)` alternative, compiled with that
    /// alternative turned into `\s+`. A whitespace-only match of two or more chars that is
    /// followed by a non-space is then one char too long (the lookahead would have stopped
    /// before the last space so that it can lead the next word) and gets shortened, except when
    /// an earlier `\s*[\r\n]+` alternative produced it (it ends in a newline then).
    Fast { re: regex::Regex, newline_alt: bool },
}

impl SplitRegex {
    pub fn new(pattern: &str) -> Result<Self> {
        for tail in [r"|\s+(?!\S)|\s+", r"|\s+(?!\S)"] {
            if let Some(head) = pattern.strip_suffix(tail) {
                if !head.contains("(?=") && !head.contains("(?!") && !head.contains("(?<") && !head.contains(r"\s+") {
                    if let Ok(re) = regex::Regex::new(&format!(r"{head}|\s+")) {
                        return Ok(SplitRegex::Fast { re, newline_alt: head.contains(r"\s*[\r\n]+") });
                    }
                }
            }
        }
        match fancy_regex::Regex::new(pattern) {
            Ok(re) => Ok(SplitRegex::Fancy(re)),
            Err(e) => bail!("split regex {pattern:?} does not compile: {e}"),
        }
    }

    /// Byte ranges of the matches, left to right.
    pub fn find_ranges(&self, s: &str, out: &mut Vec<(usize, usize)>) {
        match self {
            SplitRegex::Fancy(re) => {
                for m in re.find_iter(s) {
                    // A regex error here is backtrack-limit exhaustion on adversarial input;
                    // leave the rest unsplit rather than panic.
                    match m {
                        Ok(m) => out.push((m.start(), m.end())),
                        Err(_) => break,
                    }
                }
            }
            SplitRegex::Fast { re, newline_alt } => {
                let mut pos = 0;
                while let Some(m) = re.find_at(s, pos) {
                    let (a, mut b) = (m.start(), m.end());
                    let text = &s[a..b];
                    if let Some(next) = s[b..].chars().next() {
                        let ends_nl = text.ends_with(['\r', '\n']);
                        if !next.is_whitespace() && text.chars().all(char::is_whitespace) && !(*newline_alt && ends_nl)
                        {
                            let last = text.chars().next_back().map_or(0, char::len_utf8);
                            if b - last > a {
                                b -= last;
                            }
                        }
                    }
                    out.push((a, b));
                    pos = if b > a { b } else { b + s[b..].chars().next().map_or(1, char::len_utf8) };
                    if pos > s.len() {
                        break;
                    }
                }
            }
        }
    }
}

/// What a Split does with the matched parts (HF `SplitDelimiterBehavior`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

impl Behavior {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Removed" => Self::Removed,
            "Isolated" => Self::Isolated,
            "MergedWithPrevious" => Self::MergedWithPrevious,
            "MergedWithNext" => Self::MergedWithNext,
            "Contiguous" => Self::Contiguous,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub enum Pattern {
    Regex(SplitRegex),
    Literal(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prepend {
    Always,
    First,
    Never,
}

#[derive(Clone, Debug)]
pub enum PreTok {
    Split { pattern: Pattern, behavior: Behavior, invert: bool },
    ByteLevel { add_prefix_space: bool, regex: Option<SplitRegex> },
    Metaspace { replacement: char, prepend: Prepend, split: bool },
    Digits { individual: bool },
}

/// A piece of text on its way to the model; `at_start` says it begins at offset 0 of the input
/// (Metaspace's `first` scheme prepends only there).
#[derive(Clone, Debug)]
pub struct Piece {
    pub text: String,
    pub at_start: bool,
}

/// Split `s` at the match ranges per `behavior`; returns the byte ranges of the pieces.
fn split_by(s: &str, matches: &[(usize, usize)], behavior: Behavior, invert: bool) -> Vec<(usize, usize)> {
    // Label every span as matched or not, covering the whole string.
    let mut spans: Vec<(usize, usize, bool)> = Vec::with_capacity(matches.len() * 2 + 1);
    let mut pos = 0;
    for &(a, b) in matches {
        if a == b {
            continue;
        }
        if a > pos {
            spans.push((pos, a, invert));
        }
        spans.push((a, b, !invert));
        pos = b;
    }
    if pos < s.len() {
        spans.push((pos, s.len(), invert));
    }
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    match behavior {
        Behavior::Removed => out.extend(spans.iter().filter(|x| !x.2).map(|x| (x.0, x.1))),
        Behavior::Isolated => out.extend(spans.iter().map(|x| (x.0, x.1))),
        Behavior::Contiguous => {
            let mut last_matched = None;
            for &(a, b, m) in &spans {
                if m && last_matched == Some(true) {
                    out.last_mut().expect("has last").1 = b;
                } else {
                    out.push((a, b));
                }
                last_matched = Some(m);
            }
        }
        Behavior::MergedWithPrevious => {
            let mut prev_unmatched = false;
            for &(a, b, m) in &spans {
                if m && prev_unmatched {
                    out.last_mut().expect("has last").1 = b;
                } else {
                    out.push((a, b));
                }
                prev_unmatched = !m;
            }
        }
        Behavior::MergedWithNext => {
            let mut pending: Option<usize> = None;
            for &(a, b, m) in &spans {
                let start = pending.take().unwrap_or(a);
                if m {
                    pending = Some(start);
                } else {
                    out.push((start, b));
                }
            }
            if let Some(start) = pending {
                out.push((start, s.len()));
            }
        }
    }
    out
}

fn split_pieces(pieces: Vec<Piece>, f: impl Fn(&str) -> Vec<(usize, usize)>) -> Vec<Piece> {
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        for (a, b) in f(&p.text) {
            out.push(Piece { text: p.text[a..b].to_string(), at_start: p.at_start && a == 0 });
        }
    }
    out
}

impl PreTok {
    pub fn apply(&self, pieces: Vec<Piece>) -> Vec<Piece> {
        match self {
            PreTok::Split { pattern, behavior, invert } => split_pieces(pieces, |s| {
                let mut m = Vec::new();
                match pattern {
                    Pattern::Regex(re) => re.find_ranges(s, &mut m),
                    Pattern::Literal(lit) if !lit.is_empty() => {
                        m.extend(s.match_indices(lit.as_str()).map(|(i, x)| (i, i + x.len())))
                    }
                    Pattern::Literal(_) => {}
                }
                split_by(s, &m, *behavior, *invert)
            }),
            PreTok::ByteLevel { add_prefix_space, regex } => {
                let mut out = Vec::with_capacity(pieces.len());
                let mut ranges = Vec::new();
                for p in pieces {
                    let text =
                        if *add_prefix_space && !p.text.starts_with(' ') { format!(" {}", p.text) } else { p.text };
                    ranges.clear();
                    match regex {
                        Some(re) => re.find_ranges(&text, &mut ranges),
                        None => ranges.push((0, text.len())),
                    }
                    for (i, &(a, b)) in split_by(&text, &ranges, Behavior::Isolated, false).iter().enumerate() {
                        let mut t = String::with_capacity((b - a) * 2);
                        bytelevel::encode_bytes(&text.as_bytes()[a..b], &mut t);
                        out.push(Piece { text: t, at_start: p.at_start && i == 0 });
                    }
                }
                out
            }
            PreTok::Metaspace { replacement, prepend, split } => {
                let pieces: Vec<Piece> = pieces
                    .into_iter()
                    .map(|p| {
                        let mut t = p.text.replace(' ', &replacement.to_string());
                        let add = match prepend {
                            Prepend::Always => true,
                            Prepend::First => p.at_start,
                            Prepend::Never => false,
                        };
                        if add && !t.starts_with(*replacement) {
                            t.insert(0, *replacement);
                        }
                        Piece { text: t, at_start: p.at_start }
                    })
                    .collect();
                if !split {
                    return pieces;
                }
                let r = *replacement;
                split_pieces(pieces, |s| {
                    let m: Vec<_> = s.match_indices(r).map(|(i, x)| (i, i + x.len())).collect();
                    split_by(s, &m, Behavior::MergedWithNext, false)
                })
            }
            PreTok::Digits { individual } => split_pieces(pieces, |s| {
                let mut m: Vec<(usize, usize)> = Vec::new();
                for (i, c) in s.char_indices() {
                    if !c.is_numeric() {
                        continue;
                    }
                    let end = i + c.len_utf8();
                    match m.last_mut() {
                        Some(l) if !individual && l.1 == i => l.1 = end,
                        _ => m.push((i, end)),
                    }
                }
                split_by(s, &m, Behavior::Isolated, false)
            }),
        }
    }
}

/// Run a pre-tokenizer sequence over one text segment.
pub fn pre_tokenize(steps: &[PreTok], text: &str, at_start: bool) -> Vec<Piece> {
    let mut pieces = vec![Piece { text: text.to_string(), at_start }];
    for s in steps {
        pieces = s.apply(pieces);
    }
    pieces.retain(|p| !p.text.is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast rewrite must agree with fancy-regex on whitespace-heavy text.
    #[test]
    fn fast_path_matches_fancy_regex() {
        let texts = [
            "Hello  world\n\n  foo\t\tbar  ",
            "a \n b\r\n\r\n  c   ",
            "   ",
            " \u{3000}x",
            "1234567 'll 'S\n\n\n",
            "x  \n\ny",
            "\n \n a",
            "tab\t \tz",
            "  !!  ??\n",
            "🚀  emoji\u{a0} nbsp",
            "a\u{2009}\u{2009}b",
        ];
        for pat in [
            GPT2_PATTERN,
            LLAMA3_PATTERN,
            QWEN2_PATTERN,
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        ] {
            let fast = SplitRegex::new(pat).unwrap();
            assert!(matches!(fast, SplitRegex::Fast { .. }), "{pat}");
            let slow = SplitRegex::Fancy(fancy_regex::Regex::new(pat).unwrap());
            for t in texts {
                let (mut a, mut b) = (vec![], vec![]);
                fast.find_ranges(t, &mut a);
                slow.find_ranges(t, &mut b);
                // Compare as pieces (Isolated), which is how splits are used.
                assert_eq!(
                    split_by(t, &a, Behavior::Isolated, false),
                    split_by(t, &b, Behavior::Isolated, false),
                    "{pat} on {t:?}"
                );
            }
        }
    }
}
