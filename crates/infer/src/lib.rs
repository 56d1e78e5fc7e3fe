//! smelt-infer: sampling, generation with a KV cache, and perplexity.

pub mod generate;
pub mod perplexity;
pub mod sample;

pub use generate::{generate, GenerateConfig, Generation};
pub use perplexity::{perplexity, Perplexity};
pub use sample::{Sampler, SamplingConfig};
