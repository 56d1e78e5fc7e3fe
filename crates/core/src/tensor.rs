//! `Tensor`: a shape plus shared, contiguous, row-major storage on a device.
//!
//! Tensors are immutable values (cheap to clone: the storage is reference-counted); ops
//! allocate their outputs. The optimizer updates parameters in place through `f32_mut`, which
//! only copies when the storage is still shared (it is not, once the step's graph is dropped).
//! Compute dtype on CPU is f32; bf16/f16 are storage dtypes for loading and saving. On a GPU
//! under mixed precision, activations and their gradients are bf16 device tensors (see
//! `Device::activation_dtype`); host copies keep their dtype and `to_vec_f32` converts.
//!
//! With the `cuda` feature a tensor may instead live on a GPU (`Storage::Cuda`); ops dispatch
//! on `device()`. Host accessors (`as_f32`, `f32_mut`) refuse device tensors with an error
//! that says so; `to_device` moves data either way. A quantised weight (`Storage::Quant`) goes
//! to the GPU as its blocks, each row's bytes arranged for 16-byte loads (`Storage::CudaQuant`), and does not come back.

use crate::quant::QuantMatrix;
use anyhow::{bail, Result};
use half::{bf16, f16};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    I32,
    U32,
    /// A block-quantised weight (see [`crate::quant::QuantMatrix`]); inference only.
    Quant,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            // Blocks, not elements: ask the `QuantMatrix` for its byte size.
            DType::Quant => 0,
        }
    }
}

/// Where a tensor lives. Ops find their kernels for it through `crate::backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU with this ordinal (`--device cuda:N`).
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl Device {
    /// Whether this is the host (whose memory host code reads and writes directly).
    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }

    /// The dtype activations are stored in on this device: f32 on the CPU; on CUDA bf16 under
    /// mixed precision (the default), f32 under `SMELT_CUDA_MATMUL=f32` (see
    /// `cuda::activation_dtype`). KV caches are made in it.
    pub fn activation_dtype(self) -> DType {
        match self {
            Device::Cpu => DType::F32,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => crate::cuda::activation_dtype(),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Storage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::DeviceBuf),
    Quant(Arc<dyn QuantMatrix>),
    /// A quantised matrix uploaded to a GPU (its blocks, each row arranged for 16-byte loads).
    #[cfg(feature = "cuda")]
    CudaQuant(crate::quant::DeviceQuant),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn new(storage: Storage, shape: &[usize]) -> Result<Self> {
        let n = match &storage {
            Storage::F32(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::I32(v) => v.len(),
            Storage::U32(v) => v.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => b.len,
            Storage::Quant(q) => {
                let (r, c) = q.dims();
                r * c
            }
            #[cfg(feature = "cuda")]
            Storage::CudaQuant(q) => q.rows * q.cols,
        };
        if n != numel(shape) {
            bail!("tensor data has {n} elements but shape {shape:?} needs {}", numel(shape));
        }
        Ok(Tensor { storage: Arc::new(storage), shape: shape.to_vec() })
    }

    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        Self::new(Storage::F32(data), shape)
    }
    pub fn from_u32(data: Vec<u32>, shape: &[usize]) -> Result<Self> {
        Self::new(Storage::U32(data), shape)
    }
    pub fn from_i32(data: Vec<i32>, shape: &[usize]) -> Result<Self> {
        Self::new(Storage::I32(data), shape)
    }
    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Self> {
        Self::new(Storage::BF16(data), shape)
    }
    pub fn from_f16(data: Vec<f16>, shape: &[usize]) -> Result<Self> {
        Self::new(Storage::F16(data), shape)
    }
    /// A quantised 2-D weight; its shape is the matrix's `[rows, cols]`.
    pub fn from_quant(q: Arc<dyn QuantMatrix>) -> Self {
        let (r, c) = q.dims();
        Tensor { storage: Arc::new(Storage::Quant(q)), shape: vec![r, c] }
    }
    /// The quantised matrix, if this tensor holds one on the host.
    pub fn as_quant(&self) -> Option<&Arc<dyn QuantMatrix>> {
        match &*self.storage {
            Storage::Quant(q) => Some(q),
            _ => None,
        }
    }
    /// The quantised matrix, if this tensor holds one on a GPU.
    #[cfg(feature = "cuda")]
    pub fn as_device_quant(&self) -> Option<&crate::quant::DeviceQuant> {
        match &*self.storage {
            Storage::CudaQuant(q) => Some(q),
            _ => None,
        }
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { storage: Arc::new(Storage::F32(vec![0.0; numel(shape)])), shape: shape.to_vec() }
    }
    pub fn full(shape: &[usize], v: f32) -> Self {
        Tensor { storage: Arc::new(Storage::F32(vec![v; numel(shape)])), shape: shape.to_vec() }
    }
    pub fn scalar(v: f32) -> Self {
        Self::full(&[1], v)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn device(&self) -> Device {
        match &*self.storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => Device::Cuda(b.gpu.ordinal),
            #[cfg(feature = "cuda")]
            Storage::CudaQuant(q) => Device::Cuda(q.blocks.gpu.ordinal),
            _ => Device::Cpu,
        }
    }
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => b.dtype,
            Storage::F32(_) => DType::F32,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::I32(_) => DType::I32,
            Storage::U32(_) => DType::U32,
            Storage::Quant(_) => DType::Quant,
            #[cfg(feature = "cuda")]
            Storage::CudaQuant(_) => DType::Quant,
        }
    }
    /// The last dimension (row length); 1 for a scalar-shaped tensor.
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }

    /// Same data, new shape (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            bail!("cannot reshape {:?} ({} elements) to {shape:?}", self.shape, self.numel());
        }
        Ok(Tensor { storage: self.storage.clone(), shape: shape.to_vec() })
    }

    pub fn as_f32(&self) -> Result<&[f32]> {
        match &*self.storage {
            Storage::F32(v) => Ok(v),
            _ => {
                bail!("expected an f32 tensor on the CPU, got {:?} {:?} on {}", self.dtype(), self.shape, self.device())
            }
        }
    }
    pub fn as_u32(&self) -> Result<&[u32]> {
        match &*self.storage {
            Storage::U32(v) => Ok(v),
            _ => {
                bail!("expected a u32 tensor on the CPU, got {:?} {:?} on {}", self.dtype(), self.shape, self.device())
            }
        }
    }
    pub fn as_i32(&self) -> Result<&[i32]> {
        match &*self.storage {
            Storage::I32(v) => Ok(v),
            _ => {
                bail!("expected an i32 tensor on the CPU, got {:?} {:?} on {}", self.dtype(), self.shape, self.device())
            }
        }
    }

    /// Mutable f32 data; copies first if the storage is shared with another tensor.
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        if !self.device().is_cpu() {
            bail!("f32_mut: the tensor is on {}; host code cannot write it", self.device());
        }
        match Arc::make_mut(&mut self.storage) {
            Storage::F32(v) => Ok(v),
            _ => bail!("expected an f32 tensor"),
        }
    }

    /// The values as f32, converting from any dtype. A device tensor is copied back (waiting
    /// for its stream); a failed copy is an error.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(match &*self.storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => return self.to_device(Device::Cpu)?.to_vec_f32(),
            // Dequantised on the device by the same kernel the prefill matmul uses.
            #[cfg(feature = "cuda")]
            Storage::CudaQuant(q) => return crate::ops::qmatmul::cuda::dequantize(q, crate::DType::F32)?.to_vec_f32(),
            Storage::F32(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::U32(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::Quant(q) => {
                let (r, c) = q.dims();
                let mut out = vec![0f32; r * c];
                for (i, row) in out.chunks_mut(c.max(1)).enumerate() {
                    q.dequantize_row(i, row);
                }
                out
            }
        })
    }

    /// Converts to `dtype` on the tensor's device (f32 ↔ bf16 on a GPU by a kernel; other
    /// device conversions make the round trip through the host). Quantising needs a block
    /// format (smelt-gguf's job): asking for `DType::Quant` is an error.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let dev = self.device();
        if !dev.is_cpu() {
            let float = |d: DType| matches!(d, DType::F32 | DType::BF16);
            return if float(dtype) && float(self.dtype()) {
                crate::backend(dev).cast(self, dtype)
            } else {
                self.to_device(Device::Cpu)?.to_dtype(dtype)?.to_device(dev)
            };
        }
        let f = self.to_vec_f32()?;
        let storage = match dtype {
            DType::F32 => Storage::F32(f),
            DType::BF16 => Storage::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Storage::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::I32 => Storage::I32(f.iter().map(|&x| x as i32).collect()),
            DType::U32 => Storage::U32(f.iter().map(|&x| x as u32).collect()),
            DType::Quant => bail!(
                "to_dtype: {:?} {:?} cannot be quantised without a block format (see smelt-gguf)",
                self.dtype(),
                self.shape
            ),
        };
        Ok(Tensor { storage: Arc::new(storage), shape: self.shape.clone() })
    }

    /// Little-endian bytes of the storage (for safetensors); a quantised matrix gives its
    /// dequantised f32 values. A device tensor's bytes are copied back (a failed copy is an error).
    pub fn to_le_bytes(&self) -> Result<Vec<u8>> {
        Ok(match &*self.storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => b.to_bytes()?,
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::Quant(_) => self.to_vec_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
            #[cfg(feature = "cuda")]
            Storage::CudaQuant(_) => self.to_vec_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }

    /// Sum of all elements, accumulated in f64.
    pub fn sum_f64(&self) -> Result<f64> {
        Ok(self.to_vec_f32()?.iter().map(|&x| x as f64).sum())
    }

    /// Waits until every queued operation on `device` has finished (timing; a no-op on the CPU).
    pub fn synchronize(device: Device) -> Result<()> {
        match device {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => crate::cuda::gpu(n)?.synchronize(),
        }
    }

    /// An f32 zero tensor of `shape` on `device`.
    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::zeros_typed(shape, device, DType::F32)
    }

    /// A zero tensor of `shape` and `dtype` on `device` (the CPU holds f32, bf16 and f16).
    pub fn zeros_typed(shape: &[usize], device: Device, dtype: DType) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(match dtype {
                DType::F32 => Tensor::zeros(shape),
                DType::BF16 | DType::F16 => Tensor::zeros(shape).to_dtype(dtype)?,
                d => bail!("zeros: no {d:?} zeros on the CPU"),
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                if dtype == DType::Quant {
                    bail!("zeros: a device buffer cannot hold quantised blocks");
                }
                let buf = crate::cuda::DeviceBuf::zeros(&crate::cuda::gpu(n)?, dtype, numel(shape))?;
                Tensor::from_device_buf(buf, shape)
            }
        }
    }

    /// Zeros of this tensor's shape on its device: of its dtype on a GPU (a bf16 activation's
    /// gradient is bf16), f32 on the CPU (where compute is f32).
    pub fn zeros_like(&self) -> Result<Tensor> {
        let dtype = if self.device().is_cpu() { DType::F32 } else { self.dtype() };
        Tensor::zeros_typed(&self.shape, self.device(), dtype)
    }

    /// A copy on `device` (the same tensor, shared, if it is already there). Copies to the host
    /// wait for the device's queued work.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => {
                #[cfg(feature = "cuda")]
                if let Storage::Cuda(b) = &*self.storage {
                    let bytes = b.to_bytes()?;
                    let storage = match b.dtype {
                        DType::F32 => Storage::F32(
                            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                        ),
                        DType::BF16 => {
                            Storage::BF16(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect())
                        }
                        DType::F16 => {
                            Storage::F16(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect())
                        }
                        DType::I32 => Storage::I32(
                            bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                        ),
                        DType::U32 => Storage::U32(
                            bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                        ),
                        DType::Quant => bail!("a device buffer cannot hold quantised blocks"),
                    };
                    return Tensor::new(storage, &self.shape);
                }
                #[cfg(feature = "cuda")]
                if let Storage::CudaQuant(q) = &*self.storage {
                    bail!("quantised {} weights {:?} on {} are not copied back to the host (keep the host model, or dequantise with to_vec_f32)", q.format.name(), self.shape, self.device());
                }
                Ok(self.clone())
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                let host = self.to_device(Device::Cpu)?;
                let gpu = crate::cuda::gpu(n)?;
                if let Some(q) = host.as_quant() {
                    // Blocks the kernels know go up as blocks; other types (F16, BF16 GGUF
                    // matrices) as f32, like any other f32 weight.
                    if let Some(dq) = crate::quant::DeviceQuant::upload(q.as_ref(), &gpu)? {
                        return Tensor::new(Storage::CudaQuant(dq), &self.shape);
                    }
                    let f = host.to_vec_f32()?;
                    let buf = crate::cuda::DeviceBuf::from_bytes(
                        &gpu,
                        DType::F32,
                        f.len(),
                        &f.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                    )?;
                    return Tensor::from_device_buf(buf, &self.shape);
                }
                let buf = crate::cuda::DeviceBuf::from_bytes(&gpu, host.dtype(), host.numel(), &host.to_le_bytes()?)?;
                Tensor::from_device_buf(buf, &self.shape)
            }
        }
    }

    /// Rows `start..start + n` of a (rows, cols) view of this tensor, as a new (n, cols) tensor
    /// on the same device (a copy).
    pub fn narrow_rows(&self, start: usize, n: usize) -> Result<Tensor> {
        let c = self.cols();
        if start + n > self.rows() {
            bail!("narrow_rows: rows {start}..{} of {:?}", start + n, self.shape);
        }
        #[cfg(feature = "cuda")]
        if let Storage::Cuda(b) = &*self.storage {
            let mut out = crate::cuda::DeviceBuf::alloc(&b.gpu, b.dtype, n * c)?;
            b.gpu
                .stream
                .memcpy_dtod(&b.view(start * c, n * c), &mut *out.data)
                .map_err(|e| anyhow::anyhow!("narrow_rows on {:?}: {e:?}", b.gpu))?;
            return Tensor::from_device_buf(out, &[n, c]);
        }
        match &*self.storage {
            Storage::U32(v) => Tensor::from_u32(v[start * c..(start + n) * c].to_vec(), &[n, c]),
            _ => Tensor::from_f32(self.as_f32()?[start * c..(start + n) * c].to_vec(), &[n, c]),
        }
    }

    /// Overwrites elements `offset..offset + src.numel()` with `src` (same dtype; on the same
    /// device, or on the host for a device tensor: one upload into place); copies first if the
    /// storage is shared. (KV cache writes; a captured step's inputs.)
    pub fn write_at(&mut self, offset: usize, src: &Tensor) -> Result<()> {
        self.write_range(offset, src, 0, src.numel())
    }

    /// Overwrites elements `offset..offset + n` with elements `start..start + n` of `src` (as
    /// `write_at`). On a GPU one copy queued on the stream: device to device (which a captured
    /// step may hold) or, from a host tensor, host to device.
    pub fn write_range(&mut self, offset: usize, src: &Tensor, start: usize, n: usize) -> Result<()> {
        let host_to_device = src.device().is_cpu() && !self.device().is_cpu();
        if offset + n > self.numel()
            || start + n > src.numel()
            || src.dtype() != self.dtype()
            || (src.device() != self.device() && !host_to_device)
        {
            bail!(
                "write_at: cannot write elements {start}..{} of {:?} {:?} on {} at {offset} into {:?} {:?} on {}",
                start + n,
                src.dtype(),
                src.shape,
                src.device(),
                self.dtype(),
                self.shape,
                self.device()
            );
        }
        #[cfg(feature = "cuda")]
        if let Storage::Cuda(_) = &*self.storage {
            if host_to_device {
                crate::cuda::capture::refuse(self.cuda_buf()?.gpu.ordinal, "write_at from a host tensor")?;
                let size = self.dtype().size_in_bytes();
                let bytes = src.to_le_bytes()?;
                let d = self.cuda_buf_mut()?;
                let gpu = d.gpu.clone();
                let mut dst = d.view_mut(offset, n);
                return gpu
                    .stream
                    .memcpy_htod(&bytes[start * size..(start + n) * size], &mut dst)
                    .map_err(|e| anyhow::anyhow!("write_at (upload) on {gpu:?}: {e:?}"));
            }
            let sb = src.cuda_buf()?;
            let gpu = sb.gpu.clone();
            let d = self.cuda_buf_mut()?;
            let mut dst = d.view_mut(offset, n);
            return gpu
                .stream
                .memcpy_dtod(&sb.view(start, n), &mut dst)
                .map_err(|e| anyhow::anyhow!("write_at on {gpu:?}: {e:?}"));
        }
        match &*src.storage {
            Storage::U32(s) => {
                let s = s[start..start + n].to_vec();
                match Arc::make_mut(&mut self.storage) {
                    Storage::U32(d) => d[offset..offset + n].copy_from_slice(&s),
                    _ => bail!("write_at: a u32 source into a tensor that holds another type"),
                }
            }
            _ => {
                let s = src.as_f32()?[start..start + n].to_vec();
                self.f32_mut()?[offset..offset + n].copy_from_slice(&s);
            }
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl Tensor {
    pub fn from_device_buf(buf: crate::cuda::DeviceBuf, shape: &[usize]) -> Result<Tensor> {
        Self::new(Storage::Cuda(buf), shape)
    }

    /// The device buffer (an error for host tensors).
    pub fn cuda_buf(&self) -> Result<&crate::cuda::DeviceBuf> {
        match &*self.storage {
            Storage::Cuda(b) => Ok(b),
            _ => bail!("expected a tensor on a CUDA device, got one on the CPU {:?}", self.shape),
        }
    }

    /// How many tensors share this one's storage (itself included): a kernel may write a
    /// buffer in place only when no other tensor can observe it.
    pub(crate) fn storage_refs(&self) -> usize {
        Arc::strong_count(&self.storage)
    }

    /// The device buffer for writing in place; copied first if shared with another tensor.
    /// Drops any cached bf16 copy, which the write would make stale.
    pub fn cuda_buf_mut(&mut self) -> Result<&mut crate::cuda::DeviceBuf> {
        // A shared buffer is copied before the write (`Arc::make_mut`). Inside a captured step a
        // copy of a tensor made before the capture would take the write at every replay while
        // the tensor itself (a weight, a moment) never changed: refused.
        if Arc::strong_count(&self.storage) > 1 {
            if let Storage::Cuda(b) = &*self.storage {
                if b.outlives_capture() {
                    bail!(
                        "cuda:{}: a {:?} tensor {:?} made before a captured step is shared when the step writes it \
                         (its copy, not it, would be written at every replay); drop the other reference first",
                        b.gpu.ordinal,
                        b.dtype,
                        self.shape
                    );
                }
            }
        }
        match Arc::make_mut(&mut self.storage) {
            Storage::Cuda(b) => {
                b.bf16_shadow = std::sync::OnceLock::new();
                Ok(b)
            }
            _ => bail!("expected a tensor on a CUDA device"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_range_copies_a_slice_of_the_source_into_place() {
        let mut t = Tensor::from_u32(vec![0; 6], &[6]).unwrap();
        let src = Tensor::from_u32(vec![10, 11, 12, 13], &[4]).unwrap();
        t.write_range(1, &src, 2, 2).unwrap();
        assert_eq!(t.as_u32().unwrap(), &[0, 12, 13, 0, 0, 0]);
        t.write_at(4, &Tensor::from_u32(vec![7, 8], &[2]).unwrap()).unwrap();
        assert_eq!(t.as_u32().unwrap(), &[0, 12, 13, 0, 7, 8]);
        let mut f = Tensor::from_f32(vec![0.0; 3], &[3]).unwrap();
        f.write_range(0, &Tensor::from_f32(vec![1.0, 2.0, 3.0], &[3]).unwrap(), 1, 2).unwrap();
        assert_eq!(f.as_f32().unwrap(), &[2.0, 3.0, 0.0]);
        // Out of range, or another dtype: errors that say so.
        assert!(format!("{:#}", t.write_range(5, &src, 0, 2).unwrap_err()).contains("write_at"));
        assert!(t.write_range(0, &src, 3, 2).is_err());
        assert!(t.write_at(0, &f).is_err());
    }
}
