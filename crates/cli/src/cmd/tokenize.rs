//! `smelt tokenize`: print token ids as JSON (or each id with its piece), for inspection and
//! for comparing with other tokenizers.

use anyhow::{bail, Context, Result};
use smelt_tokenizer::Tokenizer;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  smelt tokenize --tokenizer tok.json \"Hello, world\"\n  \
smelt tokenize --tokenizer model.gguf --show-tokens \"Hello, world\"\n  \
smelt tokenize --tokenizer tok.json --input notes.txt\n  \
smelt tokenize --tokenizer model.gguf --jsonl texts.jsonl --add-special")]
pub struct TokenizeArgs {
    /// A tokenizer.json, a model directory holding one, or a .gguf file.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The text to encode; prints one JSON array of ids (or use --input / --jsonl).
    #[arg(conflicts_with_all = ["input", "jsonl"])]
    pub text: Option<String>,
    /// Encode this whole file as one text; prints one JSON array of ids.
    #[arg(long, conflicts_with = "jsonl")]
    pub input: Option<PathBuf>,
    /// Each line is a JSON string; prints one JSON array of ids per line.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Add the tokenizer's special tokens (BOS/EOS per its post-processor).
    #[arg(long)]
    pub add_special: bool,
    /// Print one token per line, its id and its piece (the bytes it decodes to, quoted), instead
    /// of a JSON array; texts of --jsonl are separated by an empty line.
    #[arg(long)]
    pub show_tokens: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let ids: Vec<Vec<u32>> = match (&a.text, &a.input, &a.jsonl) {
        (Some(t), None, None) => vec![tok.encode_with(t, a.add_special)],
        (None, Some(p), None) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            vec![tok.encode_bytes(&bytes, a.add_special)]
        }
        (None, None, Some(p)) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let lines: Vec<String> = std::io::BufReader::new(f)
                .lines()
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("reading {}", p.display()))?;
            let texts: Vec<String> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str::<String>(l)
                        .with_context(|| format!("{}:{}: not a JSON string", p.display(), i + 1))
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            tok.encode_batch(&refs, a.add_special)
        }
        _ => bail!("give the text, --input FILE or --jsonl FILE"),
    };
    for (i, ids) in ids.iter().enumerate() {
        if !a.show_tokens {
            writeln!(out, "{}", serde_json::to_string(ids)?)?;
            continue;
        }
        if i > 0 {
            writeln!(out)?;
        }
        for &id in ids {
            writeln!(out, "{id:>7} {}", piece(&tok.decode_bytes(&[id], false)))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A token's bytes, quoted: `"text"` with Rust's escapes when they are UTF-8 (a piece may be
/// part of a character), else `b"\xe4\xb8"`.
fn piece(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("b\"{}\"", bytes.escape_ascii()),
    }
}
