//! `smelt import-bpe`: turn GPT-2 style `vocab.json` + `merges.txt` into a tokenizer.json.

use anyhow::Result;
use smelt_tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ImportBpeArgs {
    /// merges.txt: one "a b" merge per line, optional "#version" header.
    #[arg(long)]
    pub merges: PathBuf,
    /// vocab.json: a JSON object of token → id.
    #[arg(long)]
    pub vocab: PathBuf,
    /// Where to write the tokenizer.json (byte-level BPE, GPT-2 split regex).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(a: ImportBpeArgs) -> Result<()> {
    smelt_files::check_output(&a.output, &[a.vocab.clone(), a.merges.clone()], "--output")?;
    let tok = Tokenizer::from_vocab_merges(&a.vocab, &a.merges)?;
    tok.save(&a.output)?;
    eprintln!("wrote {} ({} tokens)", a.output.display(), tok.vocab_size());
    Ok(())
}
