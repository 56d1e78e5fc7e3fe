//! One module per subcommand: its clap argument struct and its `run`.
pub mod mix;
pub mod prepare;
pub mod process;
pub mod progress;
pub mod bench;
pub mod device;
pub mod generate;
pub mod import_hf;
pub mod perplexity;
pub mod sizes;
pub mod train;
