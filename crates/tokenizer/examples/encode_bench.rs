//! Encode throughput: `encode_bench TOKENIZER TEXTFILE [REPEATS]` encodes the file's lines with
//! `encode_batch` (all cores) and prints MB/s and tokens/s. Used by bench/tokenizer_train.py.

use smelt_tokenizer::Tokenizer;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: encode_bench TOKENIZER TEXTFILE [REPEATS]");
    let tok = Tokenizer::from_file(args[1].as_ref())?;
    let text = std::fs::read_to_string(&args[2])?;
    let repeats: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let lines: Vec<&str> = text.lines().collect();
    let mut best = f64::MAX;
    let mut ntok = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let ids = tok.encode_batch(&lines, false);
        best = best.min(t.elapsed().as_secs_f64());
        ntok = ids.iter().map(Vec::len).sum::<usize>();
    }
    println!(
        "{{\"seconds\": {best:.4}, \"mb_per_s\": {:.2}, \"tokens\": {ntok}, \"tokens_per_s\": {:.0}}}",
        text.len() as f64 / best / 1e6,
        ntok as f64 / best
    );
    Ok(())
}
