//! `smelt`: one binary, one subcommand per pipeline stage. This file only dispatches; each
//! subcommand's arguments and driver live in `cmd/<name>.rs`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "smelt", version, about = "From raw text to a served language model, in Rust.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a byte-level BPE tokenizer (writes a Hugging Face tokenizer.json).
    Tokenizer(cmd::tokenizer::TokenizerArgs),
    /// Convert GPT-2 style vocab.json + merges.txt into a tokenizer.json.
    ImportBpe(cmd::import_bpe::ImportBpeArgs),
    /// Print token ids of a file (or of JSONL strings) as JSON arrays.
    Tokenize(cmd::tokenize::TokenizeArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tokenizer(a) => cmd::tokenizer::run(a),
        Command::ImportBpe(a) => cmd::import_bpe::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
