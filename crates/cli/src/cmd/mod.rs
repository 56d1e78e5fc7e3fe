//! One module per subcommand: its clap argument struct and its `run`.

pub mod import_bpe;
pub mod tokenize;
pub mod tokenizer;
