//! ggml's tensor types as a GGUF file names them: the one table of id, name, block size and
//! block bytes that sizes a tensor's data (`enum ggml_type` and `ggml_type_traits` in ggml.c).
//! The block formats' kernels (dequantise, quantise, dot products, on CPU and CUDA) live in
//! smelt-core's `quant` and `ops/qmatmul`, keyed by this type.

use anyhow::{bail, Result};

/// The ggml tensor types smelt can hold and compute with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl GgmlType {
    pub const ALL: [GgmlType; 9] =
        [Self::F32, Self::F16, Self::BF16, Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q8_0, Self::Q4_K, Self::Q6_K];

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The id stored in GGUF tensor infos (`enum ggml_type`).
    pub const fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q8_0 => "q8_0",
            Self::Q4_K => "q4_k",
            Self::Q6_K => "q6_k",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let l = s.to_ascii_lowercase();
        match Self::ALL.into_iter().find(|t| t.name() == l) {
            Some(t) => Ok(t),
            None => bail!("unknown tensor type {s:?} (known: f32, f16, bf16, q4_0, q4_1, q5_0, q8_0, q4_k, q6_k)"),
        }
    }

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q6_K => 256,
        }
    }

    /// Bytes per block (llama.cpp's layouts, ggml-common.h).
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q6_K => 210,
        }
    }

    /// Bytes of a row of `n` elements; an error unless `n` is a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let b = self.block_size();
        if !n.is_multiple_of(b) {
            bail!("{}: a row of {n} elements is not a whole number of {b}-element blocks", self.name());
        }
        Ok(n / b * self.block_bytes())
    }
}

/// The name of any ggml type id, for display (including types smelt cannot compute with).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 42] = [
        "f32",
        "f16",
        "q4_0",
        "q4_1",
        "q4_2",
        "q4_3",
        "q5_0",
        "q5_1",
        "q8_0",
        "q8_1",
        "q2_k",
        "q3_k",
        "q4_k",
        "q5_k",
        "q6_k",
        "q8_k",
        "iq2_xxs",
        "iq2_xs",
        "iq3_xxs",
        "iq1_s",
        "iq4_nl",
        "iq3_s",
        "iq2_s",
        "iq4_xs",
        "i8",
        "i16",
        "i32",
        "i64",
        "f64",
        "iq1_m",
        "bf16",
        "q4_0_4_4",
        "q4_0_4_8",
        "q4_0_8_8",
        "tq1_0",
        "tq2_0",
        "iq4_nl_4_4",
        "iq4_nl_4_8",
        "iq4_nl_8_8",
        "mxfp4",
        "nvfp4",
        "?",
    ];
    NAMES.get(id as usize).map_or_else(|| format!("type{id}"), |s| s.to_string())
}
