//! One module per subcommand: its clap argument struct and its `run`.
pub mod bench;
pub mod device;
pub mod generate;
pub mod import_bpe;
pub mod import_hf;
pub mod mix;
pub mod perplexity;
pub mod prepare;
pub mod process;
pub mod progress;
pub mod sizes;
pub mod tokenize;
pub mod tokenizer;
pub mod train;
