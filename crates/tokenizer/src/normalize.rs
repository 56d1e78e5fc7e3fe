//! Normalizers found in real BPE tokenizer.json files (NFC for Qwen, Prepend + Replace for
//! Llama-2/Mistral style, ...), applied to each text segment between added tokens.

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

#[derive(Clone, Debug)]
pub enum Normalizer {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    Prepend(String),
    /// Literal replacement (HF `Replace` with a `String` pattern).
    Replace(String, String),
    /// Regex replacement (HF `Replace` with a `Regex` pattern).
    ReplaceRegex(fancy_regex::Regex, String),
    Strip {
        left: bool,
        right: bool,
    },
}

impl Normalizer {
    pub fn apply(&self, s: String) -> String {
        match self {
            // Most text is already NFC; the quick check avoids rebuilding it.
            Normalizer::Nfc => {
                if is_nfc_quick(s.chars()) == IsNormalized::Yes {
                    s
                } else {
                    s.nfc().collect()
                }
            }
            Normalizer::Nfd => s.nfd().collect(),
            Normalizer::Nfkc => s.nfkc().collect(),
            Normalizer::Nfkd => s.nfkd().collect(),
            Normalizer::Lowercase => s.to_lowercase(),
            // HF prepends only to non-empty strings.
            Normalizer::Prepend(p) => {
                if s.is_empty() {
                    s
                } else {
                    format!("{p}{s}")
                }
            }
            Normalizer::Replace(a, b) => {
                if a.is_empty() {
                    s
                } else {
                    s.replace(a.as_str(), b)
                }
            }
            Normalizer::ReplaceRegex(re, b) => re.replace_all(&s, b.as_str()).into_owned(),
            Normalizer::Strip { left, right } => {
                let t = if *left { s.trim_start() } else { &s };
                let t = if *right { t.trim_end() } else { t };
                t.to_string()
            }
        }
    }
}

pub fn normalize(steps: &[Normalizer], s: &str) -> String {
    let mut s = s.to_string();
    for n in steps {
        s = n.apply(s);
    }
    s
}
