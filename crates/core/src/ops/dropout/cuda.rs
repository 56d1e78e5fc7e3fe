//! CUDA launcher for dropout (dropout.cu): the mask drawn on the device from (seed, index) by
//! the CPU's hash, so a GPU step drops exactly the elements a CPU step drops.

use crate::cuda::{self, DeviceBuf};
use crate::Tensor;
use anyhow::Result;
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("dropout.cu");

/// x·mask in x's dtype (f32 or bf16), mask = 1/(1 − p) or 0 as `super::draw` says.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let [xb] = cuda::float_bufs([x], "dropout")?;
    let gpu = &xb.gpu;
    let n = x.numel();
    let y = DeviceBuf::alloc(gpu, xb.dtype, n)?;
    let name = cuda::kname("dropout", &[xb.dtype], "dropout")?;
    let f = gpu.function("dropout", SRC, &name)?;
    let (n64, keep) = (n as i64, 1.0 / (1.0 - p));
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&xb.data).arg(&y.data).arg(&n64).arg(&p).arg(&keep).arg(&seed);
        cuda::launched(unsafe { b.launch(cuda::grid_for(n, 256)) }, &name)?;
    }
    Tensor::from_device_buf(y, x.shape())
}

impl super::DropoutKernels for crate::backend::Cuda {
    fn dropout(&self, x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
        dropout(x, p, seed)
    }
}
