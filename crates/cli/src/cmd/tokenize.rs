//! `smelt tokenize`: print token ids as JSON, for inspection and for comparing with other
//! tokenizers.

use anyhow::{bail, Context, Result};
use smelt_tokenizer::Tokenizer;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  smelt tokenize --tokenizer tok.json --input notes.txt\n  \
smelt tokenize --tokenizer model.gguf --jsonl texts.jsonl --add-special")]
pub struct TokenizeArgs {
    /// A tokenizer.json, a model directory holding one, or a .gguf file.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Encode this whole file as one text; prints one JSON array of ids.
    #[arg(long, conflicts_with = "jsonl")]
    pub input: Option<PathBuf>,
    /// Each line is a JSON string; prints one JSON array of ids per line.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Add the tokenizer's special tokens (BOS/EOS per its post-processor).
    #[arg(long)]
    pub add_special: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    match (&a.input, &a.jsonl) {
        (Some(p), None) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let ids = tok.encode_bytes(&bytes, a.add_special);
            writeln!(out, "{}", serde_json::to_string(&ids)?)?;
        }
        (None, Some(p)) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let lines: Vec<String> = std::io::BufReader::new(f).lines().collect::<std::io::Result<_>>()
                .with_context(|| format!("reading {}", p.display()))?;
            let texts: Vec<String> = lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| serde_json::from_str::<String>(l).with_context(|| format!("{}:{}: not a JSON string", p.display(), i + 1)))
                .collect::<Result<_>>()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for ids in tok.encode_batch(&refs, a.add_special) {
                writeln!(out, "{}", serde_json::to_string(&ids)?)?;
            }
        }
        _ => bail!("give --input FILE or --jsonl FILE"),
    }
    out.flush()?;
    Ok(())
}
