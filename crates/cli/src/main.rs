//! `smelt`: one binary, one subcommand per pipeline stage. This file only dispatches; each
//! subcommand's arguments and driver live in `cmd/<name>.rs`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "smelt", version, about = "From raw text to a served language model, in Rust.")]
struct Cli {
    /// CPU worker threads (as llama.cpp's -t), before or after the subcommand. Default: the
    /// RAYON_NUM_THREADS environment variable, else one per logical CPU.
    #[arg(short = 't', long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process: boxing the args buys nothing
enum Command {
    /// Train a byte-level BPE tokenizer (writes a Hugging Face tokenizer.json).
    Tokenizer(cmd::tokenizer::TokenizerArgs),
    /// Convert GPT-2 style vocab.json + merges.txt into a tokenizer.json.
    ImportBpe(cmd::import_bpe::ImportBpeArgs),
    /// Print the token ids of a text, a file or JSONL strings (as JSON arrays, or with their pieces).
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Tokenise text documents into a token file for training.
    Prepare(cmd::prepare::PrepareArgs),
    /// Quality-filter and deduplicate text documents into JSONL.
    Process(cmd::process::ProcessArgs),
    /// Blend token files by ratio, by whole documents.
    Mix(cmd::mix::MixArgs),
    /// Pretrain a model (or continue one exactly with --resume).
    Train(cmd::train::TrainArgs),
    /// Fine-tune a model on JSONL examples (text, chat messages, prompt/completion), the loss on
    /// the responses. Takes `train`'s flags, with fine-tuning defaults for these five.
    #[command(
        mut_arg("lr", |a| a.default_value("2e-5")),
        mut_arg("min_lr", |a| a.default_value("0")),
        mut_arg("warmup", |a| a.default_value("10")),
        mut_arg("weight_decay", |a| a.default_value("0")),
        mut_arg("seq_len", |a| a.default_value("1024"))
    )]
    Sft(cmd::sft::SftArgs),
    /// Distil a teacher into a student: τ²·KL(teacher ‖ student) at temperature τ plus α·CE, on
    /// JSONL examples or token files; the teacher run on the fly or from precomputed top-k logits.
    Distill(cmd::distill::DistillArgs),
    /// Align a model on preference pairs ({"prompt", "chosen", "rejected"}) with the DPO loss
    /// against a frozen reference. Takes `train`'s flags, with these defaults (TRL's lr).
    #[command(
        mut_arg("lr", |a| a.default_value("1e-6")),
        mut_arg("min_lr", |a| a.default_value("0")),
        mut_arg("warmup", |a| a.default_value("10")),
        mut_arg("weight_decay", |a| a.default_value("0")),
        mut_arg("seq_len", |a| a.default_value("1024"))
    )]
    Dpo(cmd::dpo::DpoArgs),
    /// Generate text from a model.
    Generate(cmd::generate::GenerateArgs),
    /// Score a text file: mean negative log-likelihood and perplexity.
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Measure forward, decode and training speed and peak memory.
    Bench(cmd::bench::BenchArgs),
    /// Parameter counts and memory needs of the model presets.
    Sizes(cmd::sizes::SizesArgs),
    /// Normalise a Hugging Face model folder (sharded, bf16, …) into one smelt checkpoint.
    ImportHf(cmd::import_hf::ImportHfArgs),
    /// Show what a .gguf file, .safetensors file or Hugging Face folder holds.
    Inspect(cmd::inspect::InspectArgs),
    /// Fold a LoRA adapter (PEFT's format) into its base: an ordinary checkpoint folder.
    Merge(cmd::merge::MergeArgs),
    /// Write a GGUF file llama.cpp runs (f32, f16, bf16 or a quantised type).
    ExportGguf(cmd::export_gguf::ExportGgufArgs),
    /// Compute an importance matrix (llama.cpp's imatrix format) from calibration text.
    Imatrix(cmd::imatrix::ImatrixArgs),
    /// Quantise a model to a GGUF file and report the perplexity change.
    Quantize(cmd::quantize::QuantizeArgs),
    /// Run a prompt through the model and show every stage (shapes, times, statistics; --dump .npy).
    Trace(cmd::trace::TraceArgs),
    /// Serve a model over HTTP with OpenAI's API (/v1/chat/completions, /v1/completions, ...).
    Serve(cmd::serve::ServeArgs),
}

fn main() {
    // Freed activations stay in the heap for the next op (no page faults per op).
    smelt_core::mem::keep_freed_memory();
    let cli = Cli::parse();
    // Ctrl-C or a kill removes the temporaries of outputs being written, then ends the process.
    smelt_files::staging::install_signal_cleanup();
    // One thread pool for the whole process (every rayon call, from any thread, uses it), sized
    // once here: --threads, else rayon's default (RAYON_NUM_THREADS, else one per logical CPU).
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        pool = pool.num_threads(n as usize);
    }
    // The command runs on a worker of that pool (`scope` called from outside the pool runs its
    // closure there): each parallel op then starts from inside the pool instead of waking it
    // from outside, which halves the cost of the many small matvecs of batch-1 decoding.
    let result = match pool.build_global() {
        Ok(()) => rayon::scope(|_| dispatch(cli)),
        Err(e) => Err(anyhow::anyhow!("starting the thread pool: {e}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Tokenizer(a) => cmd::tokenizer::run(a),
        Command::ImportBpe(a) => cmd::import_bpe::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Prepare(a) => cmd::prepare::run(a),
        Command::Process(a) => cmd::process::run(a),
        Command::Mix(a) => cmd::mix::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Sft(a) => cmd::sft::run(a),
        Command::Distill(a) => cmd::distill::run(a),
        Command::Dpo(a) => cmd::dpo::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Sizes(a) => cmd::sizes::run(a),
        Command::ImportHf(a) => cmd::import_hf::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::ExportGguf(a) => cmd::export_gguf::run(a),
        Command::Imatrix(a) => cmd::imatrix::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Serve(a) => cmd::serve::run(a),
    }
}
