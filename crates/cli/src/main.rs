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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
