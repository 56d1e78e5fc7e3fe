//! `smelt mix`: blend token files by ratio.

use anyhow::Result;
use smelt_data::mix::{mix, parse_source, MixConfig};
use std::path::PathBuf;

/// Blend token files by ratio, sampling whole documents (EOS-delimited).
///
/// Each source's documents are taken in a seeded shuffled order and interleaved so that every
/// prefix of the output keeps close to the ratios. Without --tokens the output is as large as the
/// sources allow with no document repeated: the scarcest source (relative to its ratio) is used
/// once, whole. With --tokens beyond that, sources are reused in new shuffled passes (reported).
/// All inputs must come from the same tokenizer (same vocabulary size and EOS).
#[derive(clap::Args)]
pub struct MixArgs {
    /// Source and its ratio as PATH:RATIO (ratios are normalised). Repeat for each source.
    #[arg(long, short, required = true)]
    pub input: Vec<String>,
    /// Output token file.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Tokens to write (rounded up to whole documents); refused when the output would not fit
    /// on its disk.
    #[arg(long, value_parser = super::checks::count_u64)]
    pub tokens: Option<u64>,
    /// Seed for the document order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: MixArgs) -> Result<()> {
    let sources = a.input.iter().map(|s| parse_source(s)).collect::<Result<Vec<_>>>()?;
    let s = mix(&MixConfig { sources, output: a.output, tokens: a.tokens, seed: a.seed })?;
    println!(
        "  {:<32} {:>8} {:>8} {:>14} {:>10} {:>7}",
        "source", "ratio", "realised", "tokens", "documents", "passes"
    );
    for r in &s.sources {
        println!(
            "  {:<32} {:>8.4} {:>8.4} {:>14} {:>10} {:>7.2}",
            r.path.display().to_string(),
            r.ratio,
            r.realised,
            r.tokens,
            r.documents,
            r.passes
        );
        if r.passes > 1.0 {
            println!(
                "  note: {} was repeated ({:.2} passes over its {} tokens)",
                r.path.display(),
                r.passes,
                r.available_tokens
            );
        }
    }
    println!("  wrote {} ({} tokens)", s.output.display(), s.tokens);
    Ok(())
}
