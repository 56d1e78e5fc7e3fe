//! smelt-infer: sampling, generation with a KV cache, perplexity, and the traced forward.

pub mod generate;
pub mod perplexity;
pub mod sample;
pub mod trace;

pub use generate::{generate, generate_until, stop_ids, GenerateConfig, Generation};
pub use perplexity::{perplexity, perplexity_from, Perplexity};
pub use sample::{Sampler, SamplingConfig};
pub use trace::{trace, trace_decode, Stage, Stats};
