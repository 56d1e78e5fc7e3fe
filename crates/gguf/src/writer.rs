//! The GGUF writer (v3, little-endian, alignment 32): metadata in insertion order, then tensor
//! infos, then the data section with every tensor padded to the alignment. Writes to a
//! temporary file renamed into place, so a failed export leaves no half file.

use crate::GgmlType;
use crate::Value;
use anyhow::{bail, Context, Result};
use std::io::Write;

const ALIGN: usize = 32;

pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { metadata: vec![], tensors: vec![] }
    }

    pub fn kv(&mut self, key: &str, v: Value) {
        self.metadata.push((key.to_string(), v));
    }

    /// A tensor of Hugging Face `shape` (outermost first) already in `ty`'s bytes.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType, data: Vec<u8>) -> Result<()> {
        let n: usize = shape.iter().product();
        let row = *shape.last().unwrap_or(&1);
        let need = ty.row_bytes(row)? * (n / row.max(1));
        if data.len() != need {
            bail!("tensor {name}: {} bytes, {} {shape:?} needs {need}", data.len(), ty.name());
        }
        self.tensors.push((name.to_string(), shape.to_vec(), ty, data));
        Ok(())
    }

    /// Writes the file to `w` (the caller decides where: `smelt_convert::write_gguf` stages it
    /// beside its target and renames it into place, so a failed write leaves no partial file).
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<()> {
        let put = |w: &mut W, b: &[u8]| -> Result<()> { w.write_all(b).context("writing GGUF") };
        put(w, b"GGUF")?;
        put(w, &3u32.to_le_bytes())?;
        put(w, &(self.tensors.len() as u64).to_le_bytes())?;
        put(w, &(self.metadata.len() as u64).to_le_bytes())?;
        let mut buf = Vec::new();
        for (k, v) in &self.metadata {
            write_str(&mut buf, k);
            buf.extend_from_slice(&type_id(v).to_le_bytes());
            write_value(&mut buf, v);
        }
        let mut offset = 0usize;
        for (name, shape, ty, data) in &self.tensors {
            write_str(&mut buf, name);
            buf.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                buf.extend_from_slice(&(d as u64).to_le_bytes());
            }
            buf.extend_from_slice(&ty.id().to_le_bytes());
            buf.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += data.len().div_ceil(ALIGN) * ALIGN;
        }
        put(w, &buf)?;
        let pad = |p: usize| (ALIGN - p % ALIGN) % ALIGN;
        let p = pad(24 + buf.len());
        put(w, &vec![0u8; p])?;
        for (_, _, _, data) in &self.tensors {
            put(w, data)?;
            put(w, &vec![0u8; pad(data.len())])?;
        }
        w.flush().context("writing GGUF")
    }
}

fn write_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => write_str(b, s),
        Value::Array(items) => {
            // An empty array is written as an array of u8.
            b.extend_from_slice(&items.first().map_or(0, type_id).to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(b, it);
            }
        }
    }
}
