//! CUDA launchers for quantised weights (qmatmul.cu): the decode matvec, dequantisation to a
//! scratch weight for cuBLASLt (prefill, perplexity), and the embedding gather.

use crate::cuda::blas::Operand;
use crate::cuda::{self, DeviceBuf};
use crate::quant::{DeviceQuant, GgmlType};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(crate) const SRC: &str = include_str!("qmatmul.cu");

/// Up to this many input rows the matvec kernel runs (decode, small batches); above it the
/// weight is dequantised once and multiplied by cuBLASLt, whose cost no longer grows with
/// every row (as llama.cpp's CUDA backend does for batches).
pub const MATVEC_MAX_N: usize = 8;
/// Warps (output rows) per matvec block; must match QMV_WARPS in qmatmul.cu.
const WARPS: u32 = 4;

/// Kernel names of one format: [matvec, dequant f32, dequant bf16, gather f32, matvec bf16].
fn names(f: GgmlType) -> Result<[&'static str; 5]> {
    macro_rules! n {
        ($f:ident) => {
            [
                concat!("qmatvec_", stringify!($f)),
                concat!("qdequant_f32_", stringify!($f)),
                concat!("qdequant_bf16_", stringify!($f)),
                concat!("qgather_f32_", stringify!($f)),
                concat!("qmatvec_bf16_", stringify!($f)),
            ]
        };
    }
    Ok(match f {
        GgmlType::Q4_0 => n!(Q4_0),
        GgmlType::Q4_1 => n!(Q4_1),
        GgmlType::Q5_0 => n!(Q5_0),
        GgmlType::Q8_0 => n!(Q8_0),
        GgmlType::Q4_K => n!(Q4_K),
        GgmlType::Q6_K => n!(Q6_K),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            bail!("{}: not a block format the CUDA kernels read", f.name())
        }
    })
}

/// y (n × m) = x (n × k) · wᵀ (+ bias), w quantised (m × k) on x's device. x is f32 or bf16;
/// y has the activation dtype of the matmul precision (bf16 under mixed precision), as a plain
/// `linear` would give.
pub fn linear(x: &Tensor, w: &DeviceQuant, bias: Option<&Tensor>, n: usize, k: usize, m: usize) -> Result<Tensor> {
    let [xb] = cuda::float_bufs([x], "linear (quantised weight)")?;
    let gpu = xb.gpu.clone();
    if w.blocks.gpu.ordinal != gpu.ordinal {
        bail!("linear: input on cuda:{}, quantised weight on cuda:{}", gpu.ordinal, w.blocks.gpu.ordinal);
    }
    let (op, ydt) = crate::ops::matmul::cuda::precision();
    let y = if n > 0 && m > 0 && n <= MATVEC_MAX_N {
        // The matvec computes in f32 and reads/writes f32, or bf16 when both the input and the
        // activation dtype are bf16 (mixed precision: no cast launches in decode); any other
        // combination goes through casts (n ≤ 8 rows: tiny).
        let bf = x.dtype() == DType::BF16 && ydt == DType::BF16;
        let xk =
            if bf || x.dtype() == DType::F32 { x.clone() } else { crate::ops::elementwise::cuda::cast(x, DType::F32)? };
        let yk = DeviceBuf::alloc(&gpu, if bf { DType::BF16 } else { DType::F32 }, n * m)?;
        let func = names(w.format)?[if bf { 4 } else { 0 }];
        let f = gpu.function("qmatmul", SRC, func)?;
        let (rows, cols, rb, n32) = (m as i32, k as i32, w.row_bytes as i64, n as i32);
        let cfg = LaunchConfig {
            grid_dim: ((m as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32, WARPS, 1),
            shared_mem_bytes: 0,
        };
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&w.blocks.data).arg(&xk.cuda_buf()?.data).arg(&yk.data).arg(&rows).arg(&cols).arg(&rb).arg(&n32);
        cuda::launched(unsafe { l.launch(cfg) }, func)?;
        let y = Tensor::from_device_buf(yk, &[n * m])?;
        if y.dtype() == ydt {
            y
        } else {
            crate::ops::elementwise::cuda::cast(&y, ydt)?
        }
    } else {
        let y = DeviceBuf::alloc(&gpu, ydt, n * m)?;
        if n > 0 && m > 0 {
            // The weight in the product's precision, for this product only (memory stays at the
            // quantised size between products).
            let wd = dequantize(w, if op == Operand::F32 { DType::F32 } else { DType::BF16 })?;
            let xo = crate::ops::matmul::cuda::operand(x, op, false, "linear input (quantised weight)")?;
            crate::ops::matmul::cuda::xwt(&xo, &wd, &y, op, n, k, m)?;
        }
        Tensor::from_device_buf(y, &[n * m])?
    };
    if let Some(bias) = bias {
        crate::ops::matmul::cuda::add_bias(y.cuda_buf()?, bias, n, m)?;
    }
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = m;
    }
    y.reshape(&shape)
}

/// The whole matrix dequantised on its device, as an f32 or bf16 (rows, cols) tensor.
pub fn dequantize(w: &DeviceQuant, dtype: DType) -> Result<Tensor> {
    let gpu = &w.blocks.gpu;
    let func = match dtype {
        DType::F32 => names(w.format)?[1],
        DType::BF16 => names(w.format)?[2],
        d => bail!("dequantize: {} to {d:?} is not supported (f32 or bf16)", w.format.name()),
    };
    let out = DeviceBuf::alloc(gpu, dtype, w.rows * w.cols)?;
    if w.rows * w.cols > 0 {
        let f = gpu.function("qmatmul", SRC, func)?;
        let (rows, cols, rb) = (w.rows as i64, w.cols as i32, w.row_bytes as i64);
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&w.blocks.data).arg(&out.data).arg(&rows).arg(&cols).arg(&rb);
        cuda::launched(unsafe { l.launch(cuda::grid_for(w.rows * w.cols / 8, 256)) }, func)?;
    }
    Tensor::from_device_buf(out, &[w.rows, w.cols])
}

/// out (…, cols) = rows `ids` of the quantised table, dequantised (ids on the host, checked by
/// the caller, or on the device: an out-of-range id gives a NaN row).
pub fn embedding(table: &DeviceQuant, ids: &Tensor) -> Result<Tensor> {
    let gpu = &table.blocks.gpu;
    let idt = cuda::ids_on(ids, gpu)?;
    let ib = idt.cuda_buf()?;
    let (n, d) = (ids.numel(), table.cols);
    let out = DeviceBuf::alloc(gpu, DType::F32, n * d)?;
    if n * d > 0 {
        let func = names(table.format)?[3];
        let f = gpu.function("qmatmul", SRC, func)?;
        let (n64, d32, rb, v32) = (n as i64, d as i32, table.row_bytes as i64, table.rows as u32);
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&table.blocks.data).arg(&ib.data).arg(&out.data).arg(&n64).arg(&d32).arg(&rb).arg(&v32);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n * d / 8, 256)) }, func)?;
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Tensor::from_device_buf(out, &shape)
}

impl super::QuantKernels for crate::backend::Cuda {
    fn linear_quant(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<Tensor> {
        let Some(q) = w.as_device_quant() else {
            bail!("linear: expected a quantised weight on {}, got {:?} {:?}", w.device(), w.dtype(), w.shape())
        };
        linear(x, q, bias, n, k, m)
    }
    fn embedding_quant(&self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let Some(q) = table.as_device_quant() else {
            bail!(
                "embedding: expected a quantised table on {}, got {:?} {:?}",
                table.device(),
                table.dtype(),
                table.shape()
            )
        };
        embedding(q, ids)
    }
}
