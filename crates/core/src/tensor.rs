//! `Tensor`: a shape plus shared, contiguous, row-major storage on a device.
//!
//! Tensors are immutable values (cheap to clone: the storage is reference-counted); ops
//! allocate their outputs. The optimizer updates parameters in place through `f32_mut`, which
//! only copies when the storage is still shared (it is not, once the step's graph is dropped).
//! Compute dtype on CPU is f32; bf16/f16 are storage dtypes for loading and saving.

use anyhow::{bail, Result};
use half::{bf16, f16};
use crate::quant::QuantMatrix;
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

/// Where a tensor lives. Only the CPU exists in this build; the CUDA backend adds a variant
/// and a storage kind, and every op dispatches on it in its own `mod.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
}

#[derive(Clone, Debug)]
pub enum Storage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    Quant(Arc<dyn QuantMatrix>),
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
            Storage::Quant(q) => { let (r, c) = q.dims(); r * c }
        };
        if n != numel(shape) {
            bail!("tensor data has {n} elements but shape {shape:?} needs {}", numel(shape));
        }
        Ok(Tensor { storage: Arc::new(storage), shape: shape.to_vec() })
    }

    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Self> { Self::new(Storage::F32(data), shape) }
    pub fn from_u32(data: Vec<u32>, shape: &[usize]) -> Result<Self> { Self::new(Storage::U32(data), shape) }
    pub fn from_i32(data: Vec<i32>, shape: &[usize]) -> Result<Self> { Self::new(Storage::I32(data), shape) }
    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Self> { Self::new(Storage::BF16(data), shape) }
    pub fn from_f16(data: Vec<f16>, shape: &[usize]) -> Result<Self> { Self::new(Storage::F16(data), shape) }
    /// A quantised 2-D weight; its shape is the matrix's `[rows, cols]`.
    pub fn from_quant(q: Arc<dyn QuantMatrix>) -> Self {
        let (r, c) = q.dims();
        Tensor { storage: Arc::new(Storage::Quant(q)), shape: vec![r, c] }
    }
    /// The quantised matrix, if this tensor holds one.
    pub fn as_quant(&self) -> Option<&Arc<dyn QuantMatrix>> {
        match &*self.storage { Storage::Quant(q) => Some(q), _ => None }
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { storage: Arc::new(Storage::F32(vec![0.0; numel(shape)])), shape: shape.to_vec() }
    }
    pub fn full(shape: &[usize], v: f32) -> Self {
        Tensor { storage: Arc::new(Storage::F32(vec![v; numel(shape)])), shape: shape.to_vec() }
    }
    pub fn scalar(v: f32) -> Self { Self::full(&[1], v) }

    pub fn shape(&self) -> &[usize] { &self.shape }
    pub fn numel(&self) -> usize { numel(&self.shape) }
    pub fn device(&self) -> Device { Device::Cpu }
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::F32(_) => DType::F32,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::I32(_) => DType::I32,
            Storage::U32(_) => DType::U32,
            Storage::Quant(_) => DType::Quant,
        }
    }
    /// The last dimension (row length); 1 for a scalar-shaped tensor.
    pub fn cols(&self) -> usize { *self.shape.last().unwrap_or(&1) }
    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize { self.numel() / self.cols().max(1) }

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
            _ => bail!("expected an f32 tensor, got {:?} {:?}", self.dtype(), self.shape),
        }
    }
    pub fn as_u32(&self) -> Result<&[u32]> {
        match &*self.storage {
            Storage::U32(v) => Ok(v),
            _ => bail!("expected a u32 tensor, got {:?} {:?}", self.dtype(), self.shape),
        }
    }
    pub fn as_i32(&self) -> Result<&[i32]> {
        match &*self.storage {
            Storage::I32(v) => Ok(v),
            _ => bail!("expected an i32 tensor, got {:?} {:?}", self.dtype(), self.shape),
        }
    }

    /// Mutable f32 data; copies first if the storage is shared with another tensor.
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        match Arc::make_mut(&mut self.storage) {
            Storage::F32(v) => Ok(v),
            _ => bail!("expected an f32 tensor"),
        }
    }

    /// The values as f32, converting from any dtype.
    pub fn to_vec_f32(&self) -> Vec<f32> {
        match &*self.storage {
            Storage::F32(v) => v.clone(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::U32(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::Quant(q) => {
                let (r, c) = q.dims();
                let mut out = vec![0f32; r * c];
                for (i, row) in out.chunks_mut(c.max(1)).enumerate() { q.dequantize_row(i, row); }
                out
            }
        }
    }

    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let f = self.to_vec_f32();
        let storage = match dtype {
            DType::F32 => Storage::F32(f),
            DType::BF16 => Storage::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Storage::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::I32 => Storage::I32(f.iter().map(|&x| x as i32).collect()),
            DType::U32 => Storage::U32(f.iter().map(|&x| x as u32).collect()),
            // Quantising needs a block format: that is smelt-gguf's job.
            DType::Quant => Storage::F32(f),
        };
        Tensor { storage: Arc::new(storage), shape: self.shape.clone() }
    }

    /// Little-endian bytes of the storage (for safetensors).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &*self.storage {
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::Quant(_) => self.to_vec_f32().iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Sum of all elements, accumulated in f64.
    pub fn sum_f64(&self) -> f64 {
        self.to_vec_f32().iter().map(|&x| x as f64).sum()
    }
}
