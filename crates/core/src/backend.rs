//! The one seam between the ops and the devices (dfdx's shape: a kernel trait per op group).
//!
//! Each op folder declares the kernels its tensor-level functions need as a trait
//! (`ops::matmul::LinearKernels`, `ops::attention::AttentionKernels`, …). A backend is a unit
//! struct that implements every one of them: [`Cpu`] beside each op's reference kernels in
//! `ops/<op>/mod.rs`, [`Cuda`] in `ops/<op>/cuda.rs` next to the `.cu` source. [`backend`]
//! is the only place that maps a [`Device`] to its kernels; op entry points check shapes, then
//! call `backend::on("op", [x, w])?.linear(..)`, which also refuses inputs on two devices.
//!
//! Adding a backend (docs/ARCHITECTURE.md, "Backends"): a `Device` variant and its storage
//! in `tensor.rs`, a unit struct here with one arm in `backend`, and `ops/<op>/<backend>.rs`
//! implementing each op group's trait. The compiler lists every group still missing.

use crate::ops::adamw::OptimKernels;
use crate::ops::attention::AttentionKernels;
use crate::ops::cross_entropy::CrossEntropyKernels;
use crate::ops::distill::DistillKernels;
use crate::ops::dropout::DropoutKernels;
use crate::ops::elementwise::ElementwiseKernels;
use crate::ops::embedding::EmbeddingKernels;
use crate::ops::matmul::LinearKernels;
use crate::ops::muon::MuonKernels;
use crate::ops::qmatmul::QuantKernels;
use crate::ops::rmsnorm::RmsNormKernels;
use crate::ops::rope::RopeKernels;
use crate::ops::sample::SampleKernels;
use crate::ops::swiglu::SwiGluKernels;
use crate::{Device, Tensor};
use anyhow::{bail, Result};

/// Every kernel group a device provides; implemented for any type that implements them all.
pub trait Backend:
    ElementwiseKernels
    + EmbeddingKernels
    + LinearKernels
    + QuantKernels
    + RmsNormKernels
    + RopeKernels
    + AttentionKernels
    + CrossEntropyKernels
    + DistillKernels
    + DropoutKernels
    + SwiGluKernels
    + SampleKernels
    + OptimKernels
    + MuonKernels
    + Sync
{
}

impl<B> Backend for B where
    B: ElementwiseKernels
        + EmbeddingKernels
        + LinearKernels
        + QuantKernels
        + RmsNormKernels
        + RopeKernels
        + AttentionKernels
        + CrossEntropyKernels
        + DistillKernels
        + DropoutKernels
        + SwiGluKernels
        + SampleKernels
        + OptimKernels
        + MuonKernels
        + Sync
{
}

/// The CPU: the readable reference kernels (f32 compute), in each op's `mod.rs`.
pub struct Cpu;

/// NVIDIA GPUs: `ops/<op>/cuda.rs` + `<op>.cu`, compiled at run time (`crate::cuda`).
#[cfg(feature = "cuda")]
pub struct Cuda;

/// The kernels that run on `device`. The one match from a device to a backend.
pub fn backend(device: Device) -> &'static dyn Backend {
    match device {
        Device::Cpu => &Cpu,
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => &Cuda,
    }
}

/// The one device all of `tensors` live on (the CPU for none); `what` names the op in the
/// error that names both devices when they differ.
pub fn device_of<'a>(what: &str, tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<Device> {
    let mut it = tensors.into_iter();
    let Some(first) = it.next() else {
        return Ok(Device::Cpu);
    };
    let d = first.device();
    if let Some(other) = it.find(|t| t.device() != d) {
        bail!("{what}: inputs on {d} and on {} (move them to one device first)", other.device());
    }
    Ok(d)
}

/// The backend of the one device `tensors` live on (see [`device_of`]).
pub fn on<'a>(what: &str, tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<&'static dyn Backend> {
    Ok(backend(device_of(what, tensors)?))
}
