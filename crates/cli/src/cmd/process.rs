//! `smelt process`: quality-filter and deduplicate text documents into JSONL.

use super::progress::bytes_bar;
use anyhow::Result;
use smelt_data::process::filters::FilterConfig;
use smelt_data::process::{process, write_report, Dedup, ProcessConfig};
use std::path::PathBuf;

/// Filter documents by quality rules and remove exact and near duplicates.
///
/// Rules (Gopher / C4 / FineWeb defaults): length, symbol and digit ratios, words with letters,
/// mean word length, lines ending in punctuation, repeated lines, most frequent 2-4-grams,
/// repeated 5-10-grams, boilerplate lines, "lorem ipsum". A document removed by several rules is
/// counted under the first. Then exact dedup (normalised text) and near dedup (MinHash over word
/// 5-grams with LSH banding, verified against --minhash-threshold); the first occurrence is kept.
/// Output: one {"text": ...} per line. Deterministic for given inputs and settings.
#[derive(clap::Args)]
pub struct ProcessArgs {
    /// Input: a file, a directory (recursive) or a glob; .txt = one document per file,
    /// .jsonl = one per line; .gz allowed. Repeat for more.
    #[arg(long, short, required = true)]
    pub input: Vec<String>,
    /// Output JSONL of kept documents.
    #[arg(long, short)]
    pub output: PathBuf,
    /// JSON field holding the text in .jsonl inputs.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Write the per-rule report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Minimum characters per document.
    #[arg(long, default_value_t = 200)]
    pub min_chars: usize,
    /// Maximum characters per document.
    #[arg(long, default_value_t = 500_000)]
    pub max_chars: usize,
    /// Maximum share of non-space characters that are symbols (not letters, digits or prose
    /// punctuation). 1 disables.
    #[arg(long, default_value_t = 0.2, value_parser = super::checks::fraction)]
    pub max_symbol_ratio: f64,
    /// Maximum share of non-space characters that are digits. 1 disables.
    #[arg(long, default_value_t = 0.2, value_parser = super::checks::fraction)]
    pub max_digit_ratio: f64,
    /// Minimum share of words containing a letter (Gopher). 0 disables.
    #[arg(long, default_value_t = 0.8, value_parser = super::checks::fraction)]
    pub min_alpha_words: f64,
    /// Minimum share of lines ending in terminal punctuation (FineWeb). 0 disables.
    #[arg(long, default_value_t = 0.12, value_parser = super::checks::fraction)]
    pub min_punct_lines: f64,
    /// Maximum share of lines repeating an earlier line; characters in such lines are held to
    /// this minus 0.1 (Gopher: 0.3 / 0.2). 1 disables.
    #[arg(long, default_value_t = 0.3, value_parser = super::checks::fraction)]
    pub max_dup_line_frac: f64,
    /// Maximum share of characters in the most frequent 2-gram; 3- and 4-grams get 0.02 and
    /// 0.04 less (Gopher). 1 disables.
    #[arg(long, default_value_t = 0.2, value_parser = super::checks::fraction)]
    pub max_top_ngram_frac: f64,
    /// Maximum share of characters in repeated 5-grams; 6..10-grams get 0.01 less per word
    /// (Gopher: 0.15 down to 0.10). 1 disables.
    #[arg(long, default_value_t = 0.15, value_parser = super::checks::fraction)]
    pub max_dup_ngram_frac: f64,
    /// Maximum share of boilerplate lines (cookie/JavaScript notices, "click here", policy
    /// links). 1 disables.
    #[arg(long, default_value_t = 0.2, value_parser = super::checks::fraction)]
    pub max_boilerplate_frac: f64,
    /// Keep documents containing "lorem ipsum" (removed by default, as in C4).
    #[arg(long)]
    pub keep_lorem_ipsum: bool,
    /// Deduplication: exact (normalised text), near (MinHash), both, or none.
    #[arg(long, value_enum, default_value = "both")]
    pub dedup: DedupArg,
    /// Estimated Jaccard similarity of word 5-gram sets at or above which two documents are
    /// near duplicates.
    #[arg(long, default_value_t = 0.8, value_parser = super::checks::fraction)]
    pub minhash_threshold: f64,
    /// MinHash permutations (signature length).
    #[arg(long, default_value_t = 128, value_parser = super::checks::num_perm)]
    pub num_perm: usize,
    /// LSH bands (rows per band = num_perm / bands). Default: the split that minimises false
    /// positives plus false negatives at the threshold (9 × 13 for 0.8 and 128).
    #[arg(long, value_parser = super::checks::count)]
    pub bands: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DedupArg {
    Exact,
    Near,
    Both,
    None,
}

/// A ratio limit of 1 (or a minimum of 0) can never trigger: treat it as "off".
fn max_limit(v: f64) -> Option<f64> {
    (v < 1.0).then_some(v)
}
fn min_limit(v: f64) -> Option<f64> {
    (v > 0.0).then_some(v)
}

pub fn run(a: ProcessArgs) -> Result<()> {
    let filters = FilterConfig {
        min_chars: a.min_chars,
        max_chars: a.max_chars,
        max_symbol_ratio: max_limit(a.max_symbol_ratio),
        max_digit_ratio: max_limit(a.max_digit_ratio),
        min_alpha_words: min_limit(a.min_alpha_words),
        min_punct_lines: min_limit(a.min_punct_lines),
        max_dup_line_frac: max_limit(a.max_dup_line_frac),
        max_top_ngram_frac: max_limit(a.max_top_ngram_frac),
        max_dup_ngram_frac: max_limit(a.max_dup_ngram_frac),
        max_boilerplate_frac: max_limit(a.max_boilerplate_frac),
        lorem_ipsum: !a.keep_lorem_ipsum,
        ..FilterConfig::default()
    };
    if let Some(r) = &a.report {
        // Written after the work: refused now rather than over an input, or after it all.
        let mut reads = smelt_files::expand_inputs(&a.input)?;
        reads.push(a.output.clone());
        smelt_files::check_output(r, &reads, "--report")?;
    }
    let mut cfg = ProcessConfig::new(a.input, a.output);
    cfg.field = a.field;
    cfg.filters = filters;
    cfg.dedup = match a.dedup {
        DedupArg::Exact => Dedup::Exact,
        DedupArg::Near => Dedup::Near,
        DedupArg::Both => Dedup::Both,
        DedupArg::None => Dedup::None,
    };
    cfg.threshold = a.minhash_threshold;
    cfg.num_perm = a.num_perm;
    cfg.bands = a.bands;
    let bar = bytes_bar();
    let report = process(&cfg, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!("{report}");
    println!("  wrote {}", cfg.output.display());
    if let Some(p) = &a.report {
        write_report(&report, p)?;
        println!("  wrote {}", p.display());
    }
    Ok(())
}
