//! smelt-model: the one transformer (config + presets, parameters with Hugging Face names,
//! forward pass with KV cache) and safetensors I/O.

pub mod config;
pub mod decode;
pub mod io;
pub mod lora;
pub mod memory;
pub mod model;
pub mod paged;
pub mod paged_graph;
pub mod params;
pub mod presets;

pub use config::{Activation, Arch, ModelConfig, NormKind, RopeScaling};
pub use decode::Decoder;
pub use lora::{Adapter, LoraConfig};
pub use model::{KvCache, Logits, Model};
pub use paged::{KvPool, KvType, SeqStep};
pub use paged_graph::PagedDecoder;
