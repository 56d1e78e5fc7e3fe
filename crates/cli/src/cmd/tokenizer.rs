//! `smelt tokenizer`: train a byte-level BPE tokenizer and write it as a Hugging Face
//! tokenizer.json.

use anyhow::Result;
use smelt_tokenizer::{Tokenizer, TrainConfig};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  smelt tokenizer --input data/linux-doc-slice.txt.gz --vocab-size 8192 --output tok.json\n\n\
The result loads in Hugging Face `tokenizers` (Tokenizer.from_file) and gives the same ids as smelt."
)]
pub struct TokenizerArgs {
    /// Training text: files, directories (read recursively) or globs; `.gz` is decompressed.
    /// Text files are read line by line; `.jsonl` files need --field.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<String>,
    /// Vocabulary size, including the 256 byte tokens and the special tokens.
    #[arg(long, default_value_t = 8192, value_parser = super::checks::vocab_size)]
    pub vocab_size: usize,
    /// Where to write the tokenizer.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Stop merging once the most frequent pair occurs fewer times than this.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Special tokens, given ids 0, 1, ... in this order.
    #[arg(long, num_args = 1.., default_values_t = vec!["<|endoftext|>".to_string()])]
    pub special_tokens: Vec<String>,
    /// For JSONL inputs: the field holding each document's text.
    #[arg(long)]
    pub field: Option<String>,
}

pub fn run(a: TokenizerArgs) -> Result<()> {
    smelt_files::check_output(&a.output, &smelt_files::expand_inputs(&a.input)?, "--output")?;
    let cfg = TrainConfig {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
        special_tokens: a.special_tokens,
        field: a.field,
        progress: true,
    };
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::train(&a.input, &cfg)?;
    tok.save(&a.output)?;
    eprintln!("trained {} tokens in {:.2}s → {}", tok.vocab_size(), t0.elapsed().as_secs_f64(), a.output.display());
    Ok(())
}
