//! CUDA launchers for the elementwise basics and the f32 ↔ bf16 casts (elementwise.cu). Inputs
//! are f32 or bf16; a binary op's two inputs share one dtype, which its output keeps.

use crate::cuda::{self, DeviceBuf};
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::PushKernelArg;

pub(crate) const SRC: &str = include_str!("elementwise.cu");

fn binary(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let [ab, bb] = cuda::float_bufs([a, b], op)?;
    let dt = cuda::same_dtype(&[ab, bb], &["a", "b"], op)?;
    let gpu = &ab.gpu;
    let n = a.numel();
    let y = DeviceBuf::alloc(gpu, dt, n)?;
    let name = cuda::kname(op, &[dt], op)?;
    let f = gpu.function("elementwise", SRC, &name)?;
    let n64 = n as i64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&ab.data).arg(&bb.data).arg(&y.data).arg(&n64);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, &name)?;
    }
    Tensor::from_device_buf(y, a.shape())
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b)
}

/// a += b; a keeps its dtype (b may be stored differently: rounded once into a's dtype).
pub fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    let b = if b.device().is_cpu() { b.to_device(a.device())? } else { b.clone() };
    let n = a.numel();
    let [bb] = cuda::float_bufs([&b], "add_assign")?;
    let ab = a.cuda_buf_mut()?;
    let name = cuda::kname("add_assign", &[ab.dtype, bb.dtype], "add_assign")?;
    let gpu = ab.gpu.clone();
    let f = gpu.function("elementwise", SRC, &name)?;
    let n64 = n as i64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&mut ab.data).arg(&bb.data).arg(&n64);
    cuda::launched(unsafe { l.launch(cuda::grid_for(n.div_ceil(8), 256)) }, &name)?;
    Ok(())
}

pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    let [ab] = cuda::float_bufs([a], "scale")?;
    let gpu = &ab.gpu;
    let n = a.numel();
    let y = DeviceBuf::alloc(gpu, ab.dtype, n)?;
    let name = cuda::kname("scale", &[ab.dtype], "scale")?;
    let f = gpu.function("elementwise", SRC, &name)?;
    let n64 = n as i64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&ab.data).arg(&y.data).arg(&s).arg(&n64);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n, 256)) }, &name)?;
    }
    Tensor::from_device_buf(y, a.shape())
}

/// f32 → bf16 (round to nearest even) or bf16 → f32 (exact) on the device; the same tensor
/// when it already has dtype `to`.
pub fn cast(a: &Tensor, to: DType) -> Result<Tensor> {
    let ab = a.cuda_buf()?;
    let func = match (ab.dtype, to) {
        (DType::F32, DType::BF16) => "f32_to_bf16",
        (DType::BF16, DType::F32) => "bf16_to_f32",
        (x, y) if x == y => return Ok(a.clone()),
        (x, y) => bail!("cast on CUDA: {x:?} → {y:?} is not supported"),
    };
    let gpu = &ab.gpu;
    let n = a.numel();
    let y = DeviceBuf::alloc(gpu, to, n)?;
    let f = gpu.function("elementwise", SRC, func)?;
    let n64 = n as i64;
    {
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&ab.data).arg(&y.data).arg(&n64);
        cuda::launched(unsafe { l.launch(cuda::grid_for(n.div_ceil(8), 256)) }, func)?;
        // 8 a thread
    }
    Tensor::from_device_buf(y, a.shape())
}

/// rows × cols elements from `src` (row stride sld, starting `s0` elements in) to `dst` (row
/// stride dld, `d0` elements in): copy_cols in elementwise.cu.
#[allow(clippy::too_many_arguments)]
fn copy_cols(
    src: &DeviceBuf,
    s0: usize,
    sld: usize,
    dst: &DeviceBuf,
    d0: usize,
    dld: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let name = cuda::kname("copy_cols", &[src.dtype], "copy_cols")?;
    let gpu = &src.gpu;
    let f = gpu.function("elementwise", SRC, &name)?;
    let es = src.dtype.size_in_bytes() as u64;
    let (sp, dp) = (src.ptr() + s0 as u64 * es, dst.ptr() + d0 as u64 * es);
    let (sld, dld, rows64, cols32) = (sld as i64, dld as i64, rows as i64, cols as i32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(&sp).arg(&sld).arg(&dp).arg(&dld).arg(&rows64).arg(&cols32);
    cuda::launched(unsafe { l.launch(cuda::grid_for((rows * cols).div_ceil(8), 256)) }, &name)
}

/// `ops::elementwise::concat_cols` on CUDA (shapes checked there).
pub(crate) fn concat_cols(parts: &[&Tensor]) -> Result<Tensor> {
    let bufs = parts.iter().map(|p| p.cuda_buf()).collect::<Result<Vec<_>>>()?;
    let dt = bufs[0].dtype;
    let rows = parts[0].rows();
    let total: usize = parts.iter().map(|p| p.cols()).sum();
    let y = DeviceBuf::alloc(&bufs[0].gpu, dt, rows * total)?;
    let mut c0 = 0;
    for (p, b) in parts.iter().zip(&bufs) {
        copy_cols(b, 0, p.cols(), &y, c0, total, rows, p.cols())?;
        c0 += p.cols();
    }
    Tensor::from_device_buf(y, &[rows, total])
}

/// `ops::elementwise::extend_cols` on CUDA (shapes checked there): one block a row
/// (grid-strided), w's part in 16-byte chunks where the row lengths and pointers allow.
pub(crate) fn extend_cols(w: &Tensor, b: &Tensor, off: usize, width: usize) -> Result<Tensor> {
    let [wb, bb] = cuda::float_bufs([w, b], "extend_cols")?;
    let gpu = &wb.gpu;
    let (rows, k, nb) = (w.rows(), w.cols(), b.cols());
    let y = DeviceBuf::alloc(gpu, wb.dtype, rows * (k + width))?;
    if rows > 0 {
        let name = cuda::kname("extend_cols", &[wb.dtype, bb.dtype], "extend_cols")?;
        let f = gpu.function("elementwise", SRC, &name)?;
        let (rows32, k32, nb32, off32, width32) = (rows as i32, k as i32, nb as i32, off as i32, width as i32);
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&wb.data).arg(&bb.data).arg(&y.data).arg(&rows32).arg(&k32).arg(&nb32).arg(&off32).arg(&width32);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (rows.min(65535) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        cuda::launched(unsafe { l.launch(cfg) }, &name)?;
    }
    Tensor::from_device_buf(y, &[rows, k + width])
}

/// `ops::elementwise::narrow_cols` on CUDA (bounds checked there).
pub(crate) fn narrow_cols(x: &Tensor, start: usize, n: usize) -> Result<Tensor> {
    let xb = x.cuda_buf()?;
    let rows = x.rows();
    let y = DeviceBuf::alloc(&xb.gpu, xb.dtype, rows * n)?;
    copy_cols(xb, start, x.cols(), &y, 0, n, rows, n)?;
    Tensor::from_device_buf(y, &[rows, n])
}

impl super::ElementwiseKernels for crate::backend::Cuda {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        add(a, b)
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        mul(a, b)
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        add_assign(a, b)
    }
    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor> {
        scale(a, s)
    }
    /// No division kernel: multiplies by the f32 reciprocal.
    fn div_scalar(&self, a: &Tensor, d: f32) -> Result<Tensor> {
        scale(a, 1.0 / d)
    }
    fn cast(&self, a: &Tensor, dtype: DType) -> Result<Tensor> {
        cast(a, dtype)
    }
    fn concat_cols(&self, parts: &[&Tensor]) -> Result<Tensor> {
        concat_cols(parts)
    }
    fn narrow_cols(&self, x: &Tensor, start: usize, n: usize) -> Result<Tensor> {
        narrow_cols(x, start, n)
    }
    fn extend_cols(&self, w: &Tensor, b: &Tensor, off: usize, width: usize) -> Result<Tensor> {
        extend_cols(w, b, off, width)
    }
}
