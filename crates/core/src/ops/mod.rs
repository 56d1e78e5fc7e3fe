//! The backend ops. Each op is one folder: its API and docs in `mod.rs`, the CPU reference
//! kernels (generic over f32/f64 so the f64 gradient checks run the very same code), the
//! backward beside the forward, and the tests. Tensor-level functions dispatch on the device;
//! the CUDA backend adds `cuda.rs` + `<op>.cu` beside each.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod decode_layers;
pub mod distill;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod muon;
pub mod qmatmul;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod swiglu;

use crate::{DType, Tensor};
use anyhow::{bail, Result};

/// A decode position: where a step's new keys and values go and the rotary angle of its
/// tokens. Known on the host, or held on the device as a u32 `[1]` tensor (`Device`, with the
/// cache capacity that bounds it) so that one captured CUDA graph replays every step (the
/// kernels read it there; the CPU reads it back).
#[derive(Clone, Copy, Debug)]
pub enum Pos<'a> {
    Host(usize),
    Device { at: &'a Tensor, cap: usize },
}

impl Pos<'_> {
    /// The position as a number (for a `Device` position: copied back from the device).
    pub fn value(&self) -> Result<usize> {
        match self {
            Pos::Host(p) => Ok(*p),
            Pos::Device { at, .. } => {
                if at.dtype() != DType::U32 || at.numel() != 1 {
                    bail!("a device position is a u32 [1] tensor, got {:?} {:?}", at.dtype(), at.shape());
                }
                Ok(at.to_device(crate::Device::Cpu)?.as_u32()?[0] as usize)
            }
        }
    }
    /// The kernel arguments of a position: (device address of the u32, 0) for a `Device`
    /// position, (0 = null, the value) for a `Host` one; kernels read `*pos` when non-null.
    #[cfg(feature = "cuda")]
    pub(crate) fn kernel_args(&self, what: &str) -> Result<(u64, i32)> {
        Ok(match self {
            Pos::Host(p) => (0, *p as i32),
            Pos::Device { at, .. } => {
                let b = at.cuda_buf()?;
                b.expect(DType::U32, what)?;
                (b.ptr(), 0)
            }
        })
    }
    /// The largest position + 1 this step may reach (for tables sized once, before a capture).
    pub fn bound(&self, t: usize) -> Result<usize> {
        Ok(match self {
            Pos::Host(p) => p + t,
            Pos::Device { cap, .. } => *cap,
        })
    }
}

#[cfg(all(test, feature = "cuda"))]
mod parity_bf16_tests;
#[cfg(all(test, feature = "cuda"))]
mod parity_tests;
#[cfg(test)]
pub(crate) mod testing;
