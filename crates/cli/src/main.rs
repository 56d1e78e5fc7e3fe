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
    /// Tokenise text documents into a token file for training.
    Prepare(cmd::prepare::PrepareArgs),
    /// Quality-filter and deduplicate text documents into JSONL.
    Process(cmd::process::ProcessArgs),
    /// Blend token files by ratio, by whole documents.
    Mix(cmd::mix::MixArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare(a) => cmd::prepare::run(a),
        Command::Process(a) => cmd::process::run(a),
        Command::Mix(a) => cmd::mix::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
