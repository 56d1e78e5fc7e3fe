//! Document quality filters, after Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al.
//! 2020), with the thresholds those papers (and FineWeb's reimplementation) use as defaults.
//!
//! Each rule looks at one document alone; the first rule that fails names the reason, so the
//! report's counts add up to the documents removed. Dedup (across documents) is in `minhash.rs`
//! and `mod.rs`. Rules judge, they never edit the text.

use crate::hash::{hash_bytes, hash_u64s};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Why a document was removed, in the order the rules run (cheap ones first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    TooShort,
    TooLong,
    LoremIpsum,
    Boilerplate,
    SymbolRatio,
    DigitRatio,
    AlphaWords,
    WordLength,
    PunctLines,
    RepeatedLines,
    TopNgram,
    DupNgram,
}

impl Rule {
    pub const ALL: [Rule; 12] = [
        Rule::TooShort,
        Rule::TooLong,
        Rule::LoremIpsum,
        Rule::Boilerplate,
        Rule::SymbolRatio,
        Rule::DigitRatio,
        Rule::AlphaWords,
        Rule::WordLength,
        Rule::PunctLines,
        Rule::RepeatedLines,
        Rule::TopNgram,
        Rule::DupNgram,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Rule::TooShort => "too_short",
            Rule::TooLong => "too_long",
            Rule::LoremIpsum => "lorem_ipsum",
            Rule::Boilerplate => "boilerplate",
            Rule::SymbolRatio => "symbol_ratio",
            Rule::DigitRatio => "digit_ratio",
            Rule::AlphaWords => "alpha_words",
            Rule::WordLength => "word_length",
            Rule::PunctLines => "punct_lines",
            Rule::RepeatedLines => "repeated_lines",
            Rule::TopNgram => "top_ngram",
            Rule::DupNgram => "dup_ngram",
        }
    }
}

/// Thresholds; a document is removed when a measure crosses one. `None` disables a rule.
#[derive(Clone, Debug, Serialize)]
pub struct FilterConfig {
    /// Characters (Unicode scalar values). Gopher's 50..100k words is about 250..500k chars.
    pub min_chars: usize,
    pub max_chars: usize,
    /// Fraction of non-space characters that are symbols: not letters, digits, or the ordinary
    /// punctuation of prose (`.,;:!?'"()-` and their typographic forms).
    pub max_symbol_ratio: Option<f64>,
    /// Fraction of non-space characters that are digits (tables of numbers, logs, IDs).
    pub max_digit_ratio: Option<f64>,
    /// Gopher: at least this fraction of words must contain a letter.
    pub min_alpha_words: Option<f64>,
    /// Gopher: mean word length (in chars) must lie in this range.
    pub word_length: Option<(f64, f64)>,
    /// FineWeb: at least this fraction of lines must end in terminal punctuation. Lenient
    /// (0.12) because hard-wrapped prose ends most lines mid-sentence.
    pub min_punct_lines: Option<f64>,
    /// Gopher: fraction of (non-empty) lines that repeat an earlier line; the same limit minus
    /// 0.1 applies to the fraction of characters in such lines (Gopher's 0.3 / 0.2).
    pub max_dup_line_frac: Option<f64>,
    /// Gopher: characters covered by the most frequent 2-gram; 3- and 4-grams get this minus 0.02
    /// and 0.04 (Gopher's 0.20 / 0.18 / 0.16).
    pub max_top_ngram_frac: Option<f64>,
    /// Gopher: characters covered by repeated 5-grams; 6..10-grams get this minus 0.01 per extra
    /// word (Gopher's 0.15 down to 0.10).
    pub max_dup_ngram_frac: Option<f64>,
    /// C4-style: fraction of lines that are web boilerplate (cookie and JavaScript notices,
    /// "click here", policy links).
    pub max_boilerplate_frac: Option<f64>,
    /// C4: any "lorem ipsum" removes the document.
    pub lorem_ipsum: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            min_chars: 200,
            max_chars: 500_000,
            max_symbol_ratio: Some(0.2),
            max_digit_ratio: Some(0.2),
            min_alpha_words: Some(0.8),
            word_length: Some((3.0, 10.0)),
            min_punct_lines: Some(0.12),
            max_dup_line_frac: Some(0.3),
            max_top_ngram_frac: Some(0.2),
            max_dup_ngram_frac: Some(0.15),
            max_boilerplate_frac: Some(0.2),
            lorem_ipsum: true,
        }
    }
}

/// Lower-cased substrings that mark a line as boilerplate (C4's policy list plus common
/// navigation and notice phrases).
const BOILERPLATE: &[&str] = &[
    "javascript",
    "uses cookies",
    "use of cookies",
    "use cookies",
    "accept cookies",
    "cookie policy",
    "click here",
    "privacy policy",
    "terms of use",
    "terms and conditions",
    "all rights reserved",
    "skip to content",
    "subscribe to our newsletter",
    "sign up for our newsletter",
    "share on facebook",
    "share on twitter",
    "powered by wordpress",
    "log in to reply",
];

fn is_prose_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '"' | '(' | ')' | '-' | '‘' | '’' | '“' | '”' | '–' | '—' | '…'
    )
}

fn ends_with_terminal_punct(line: &str) -> bool {
    matches!(line.trim_end().chars().last(), Some('.' | '!' | '?' | '"' | '\'' | '”' | '’' | '…' | ':' | ')'))
}

/// Words as Gopher counts them: whitespace-separated, lower-cased, outer punctuation stripped.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The first rule `text` fails, or `None` if it passes them all.
pub fn check(cfg: &FilterConfig, text: &str) -> Option<Rule> {
    let chars = text.chars().count();
    if chars < cfg.min_chars {
        return Some(Rule::TooShort);
    }
    if chars > cfg.max_chars {
        return Some(Rule::TooLong);
    }
    let lower = text.to_lowercase();
    if cfg.lorem_ipsum && lower.contains("lorem ipsum") {
        return Some(Rule::LoremIpsum);
    }

    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(max) = cfg.max_boilerplate_frac {
        let bp = lower.lines().filter(|l| !l.trim().is_empty() && BOILERPLATE.iter().any(|p| l.contains(p))).count();
        if frac(bp, lines.len()) > max {
            return Some(Rule::Boilerplate);
        }
    }

    let (mut nonspace, mut symbols, mut digits) = (0usize, 0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        nonspace += 1;
        if c.is_numeric() {
            digits += 1
        } else if !c.is_alphabetic() && !is_prose_punct(c) {
            symbols += 1
        }
    }
    if cfg.max_symbol_ratio.is_some_and(|m| frac(symbols, nonspace) > m) {
        return Some(Rule::SymbolRatio);
    }
    if cfg.max_digit_ratio.is_some_and(|m| frac(digits, nonspace) > m) {
        return Some(Rule::DigitRatio);
    }

    let ws = words(text);
    if let Some(min) = cfg.min_alpha_words {
        let alpha = ws.iter().filter(|w| w.chars().any(char::is_alphabetic)).count();
        if frac(alpha, ws.len()) < min {
            return Some(Rule::AlphaWords);
        }
    }
    if let Some((lo, hi)) = cfg.word_length {
        let mean = ws.iter().map(|w| w.chars().count()).sum::<usize>() as f64 / ws.len().max(1) as f64;
        if !(lo..=hi).contains(&mean) {
            return Some(Rule::WordLength);
        }
    }
    if let Some(min) = cfg.min_punct_lines {
        let p = lines.iter().filter(|l| ends_with_terminal_punct(l)).count();
        if frac(p, lines.len()) < min {
            return Some(Rule::PunctLines);
        }
    }
    if let Some(max) = cfg.max_dup_line_frac {
        let (dup_lines, dup_chars) = duplicate_lines(&lines);
        let total_chars: usize = lines.iter().map(|l| l.len()).sum();
        if frac(dup_lines, lines.len()) > max || frac(dup_chars, total_chars) > max - 0.1 {
            return Some(Rule::RepeatedLines);
        }
    }
    let wlen: Vec<usize> = ws.iter().map(|w| w.chars().count()).collect();
    let total: usize = wlen.iter().sum();
    let wh: Vec<u64> = ws.iter().map(|w| hash_bytes(w.as_bytes(), 0)).collect();
    if let Some(max) = cfg.max_top_ngram_frac {
        for n in 2..=4 {
            if frac(top_ngram_chars(&wh, &wlen, n), total) > max - 0.02 * (n - 2) as f64 {
                return Some(Rule::TopNgram);
            }
        }
    }
    if let Some(max) = cfg.max_dup_ngram_frac {
        for n in 5..=10 {
            if frac(dup_ngram_chars(&wh, &wlen, n), total) > max - 0.01 * (n - 5) as f64 {
                return Some(Rule::DupNgram);
            }
        }
    }
    None
}

fn frac(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Lines equal to an earlier line, and their bytes.
fn duplicate_lines(lines: &[&str]) -> (usize, usize) {
    let mut seen = HashSet::new();
    let (mut n, mut c) = (0, 0);
    for l in lines {
        if !seen.insert(*l) {
            n += 1;
            c += l.len();
        }
    }
    (n, c)
}

/// Characters in all occurrences of the most frequent n-gram (0 if none repeats).
pub fn top_ngram_chars(wh: &[u64], wlen: &[usize], n: usize) -> usize {
    if wh.len() < n {
        return 0;
    }
    let mut counts: HashMap<u64, (usize, usize)> = HashMap::new();
    for i in 0..=wh.len() - n {
        let e = counts.entry(hash_u64s(&wh[i..i + n])).or_insert((0, i));
        e.0 += 1;
    }
    // Ties broken by first position so the result does not depend on HashMap order.
    let (count, first) = counts.values().copied().max_by_key(|&(c, i)| (c, std::cmp::Reverse(i))).unwrap();
    if count < 2 {
        return 0;
    }
    count * wlen[first..first + n].iter().sum::<usize>()
}

/// Characters of words covered by a repeated occurrence (second or later) of some n-gram.
pub fn dup_ngram_chars(wh: &[u64], wlen: &[usize], n: usize) -> usize {
    if wh.len() < n {
        return 0;
    }
    let mut seen = HashSet::new();
    let mut covered = vec![false; wh.len()];
    for i in 0..=wh.len() - n {
        if !seen.insert(hash_u64s(&wh[i..i + n])) {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    covered.iter().zip(wlen).filter(|(c, _)| **c).map(|(_, l)| l).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROSE: &str = "The kernel keeps a list of every device it has found, and each driver \
        registers the devices it can handle. When a new device appears, the core walks the list \
        of drivers and asks each one whether it wants the device. The first driver that says yes \
        gets to bind to it, and from then on it owns the hardware until it is removed.";

    fn rule(t: &str) -> Option<Rule> {
        check(&FilterConfig::default(), t)
    }

    #[test]
    fn prose_passes_each_rule_catches_its_case() {
        assert_eq!(rule(PROSE), None);
        assert_eq!(rule("Too short."), Some(Rule::TooShort));
        assert_eq!(rule(&format!("{PROSE} Lorem ipsum dolor sit amet.")), Some(Rule::LoremIpsum));
        let bp = format!(
            "{PROSE}\nClick here to subscribe.\nThis site uses cookies.\nEnable JavaScript.\nAll rights reserved."
        );
        assert_eq!(rule(&bp), Some(Rule::Boilerplate));
        assert_eq!(rule(&format!("{PROSE} {}", "#@$%^&*{}[]<>|~=+_/\\ ".repeat(10))), Some(Rule::SymbolRatio));
        assert_eq!(rule(&format!("{PROSE} {}", "2024 1999 3.14159 42 ".repeat(12))), Some(Rule::DigitRatio));
        assert_eq!(rule(&format!("{PROSE} {}", "x ".repeat(60))), Some(Rule::WordLength));
        let no_punct = PROSE.replace(['.', ','], "").split(' ').collect::<Vec<_>>().join("\n");
        assert_eq!(rule(&no_punct), Some(Rule::PunctLines));
        let rep = format!("{PROSE}\n{}", "Buy now, the best offer.\n".repeat(6));
        assert_eq!(rule(&rep), Some(Rule::RepeatedLines));
        let top = format!("{PROSE} {}.", "very good ".repeat(30));
        assert_eq!(rule(&top), Some(Rule::TopNgram));
        let dup = format!("{PROSE} {PROSE}");
        assert_eq!(rule(&dup), Some(Rule::DupNgram));
    }

    #[test]
    fn ngram_measures() {
        let ws = words("a b c a b c a b");
        let wh: Vec<u64> = ws.iter().map(|w| hash_bytes(w.as_bytes(), 0)).collect();
        let wl = vec![1; ws.len()];
        assert_eq!(top_ngram_chars(&wh, &wl, 2), 6); // "a b" ×3
        assert_eq!(dup_ngram_chars(&wh, &wl, 3), 5); // positions 3..8 repeat earlier trigrams
        assert_eq!(dup_ngram_chars(&wh, &wl, 9), 0);
    }
}
