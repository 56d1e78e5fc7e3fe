//! One module per subcommand: its clap argument struct and its `run`.
pub mod bench;
pub mod checks;
pub mod device;
pub mod distill;
pub mod dpo;
pub mod export_gguf;
pub mod generate;
pub mod imatrix;
pub mod import_bpe;
pub mod import_hf;
pub mod inspect;
pub mod launch;
pub mod limits;
pub mod lora;
pub mod merge;
pub mod mix;
pub mod perplexity;
pub mod prepare;
pub mod process;
pub mod progress;
pub mod quantize;
pub mod serve;
pub mod sft;
pub mod sizes;
pub mod tokenize;
pub mod tokenizer;
pub mod trace;
pub mod train;

use std::path::Path;

/// A model from a smelt/Hugging Face folder or a `.gguf` file (weights kept quantised).
pub fn load_model(path: &Path) -> anyhow::Result<smelt_model::Model> {
    if path.extension().is_some_and(|e| e == "gguf") {
        smelt_convert::load_model(path)
    } else {
        smelt_model::Model::load(path)
    }
}
