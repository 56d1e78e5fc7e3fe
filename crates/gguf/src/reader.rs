//! The GGUF reader: memory-maps the file, parses header, metadata and tensor infos with every
//! read bounds-checked, so a truncated or corrupt file is an error naming the file and the
//! offending field rather than a panic.
//!
//! Layout (v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata
//! count, metadata (key string, u32 type, value), tensor infos (name, u32 n_dims, u64 dims,
//! u32 ggml type, u64 offset), padding to `general.alignment` (default 32), tensor data.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// GGUF metadata value type ids, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// One metadata value. Arrays may nest (an array of arrays).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type widened to i128-safe u64 when non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        if let Value::Bool(b) = *self {
            Some(b)
        } else {
            None
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        if let Value::String(s) = self {
            Some(s)
        } else {
            None
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        if let Value::Array(a) = self {
            Some(a)
        } else {
            None
        }
    }
}

/// A tensor's description; `offset` is relative to the data section start.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: innermost (fastest-varying) first.
    pub dims: Vec<u64>,
    /// The ggml type id (0 = F32, 1 = F16, 8 = Q8_0, ...); interpreted by whoever dequantises.
    pub ggml_type: u32,
    pub offset: u64,
}

/// The file's bytes: a read-only memory map, or a buffer (`GgufFile::from_bytes`).
enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: parsed metadata and tensor infos over a read-only memory map.
pub struct GgufFile {
    path: PathBuf,
    mmap: Bytes,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Byte offset of the data section in the file.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Refuse absurd counts before allocating: every item takes at least one byte in the file.
const MAX_NESTING: u32 = 8;

/// Metadata array items a file may hold in all: a parsed item takes ~32 bytes of memory however
/// few it takes in the file (one, for a u8), so the count is bounded by what real files hold
/// (a 256k vocabulary's tokens, scores, types and merges: ~1M) with room to spare (≤ ~0.5 GiB).
const MAX_ARRAY_ITEMS: usize = 1 << 24;

/// Bytes an array item takes in the file at least: its count must fit in what is left.
fn min_item_bytes(ty: ValueType) -> usize {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        ValueType::Array => 12,
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    items: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => bail!(
                "{}: truncated GGUF: {what} needs {n} bytes at offset {}, file has {}",
                self.path.display(),
                self.pos,
                self.buf.len()
            ),
        }
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn len(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            bail!(
                "{}: corrupt GGUF: {what} count {n} at offset {} exceeds the {left} bytes left",
                self.path.display(),
                self.pos - 8
            );
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what, 1)?;
        let at = self.pos;
        let b = self.take(n, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            // Some converters wrote token pieces that are not valid UTF-8; keep them readable.
            Err(_) if what.starts_with("array item") => Ok(String::from_utf8_lossy(b).into_owned()),
            Err(e) => bail!("{}: {what} at offset {at} is not UTF-8: {e}", self.path.display()),
        }
    }
    fn value(&mut self, ty: ValueType, what: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.arr::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.arr::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            ValueType::Bool => match self.arr::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!(
                    "{}: {what}: bool byte {b} at offset {} is neither 0 nor 1",
                    self.path.display(),
                    self.pos - 1
                ),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_NESTING {
                    bail!("{}: {what}: arrays nested deeper than {MAX_NESTING}", self.path.display());
                }
                let id = self.u32(what)?;
                let ity = ValueType::from_id(id)
                    .with_context(|| format!("{}: {what}: unknown array item type {id}", self.path.display()))?;
                let n = self.len(what, min_item_bytes(ity))?;
                self.items = self.items.saturating_add(n);
                if self.items > MAX_ARRAY_ITEMS {
                    bail!("{}: {what}: the metadata arrays hold more than {MAX_ARRAY_ITEMS} items in all (real vocabularies hold about 1M); refusing to load them",
                          self.path.display());
                }
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(ity, "array item", depth + 1)?);
                }
                Value::Array(items)
            }
        })
    }
}

impl GgufFile {
    /// Open and parse a GGUF file (v2 or v3). Tensor data stays in the memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("opening GGUF {}", path.display()))?;
        // SAFETY: the map is read-only; we rely on the file not being truncated while open,
        // as every mmap-based model loader does.
        let mmap =
            unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("memory-mapping {}", path.display()))?;
        Self::parse(path.to_path_buf(), Bytes::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory (`name` stands for the path in errors).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, mmap: Bytes) -> Result<Self> {
        let mut c = Cursor { buf: &mmap[..], pos: 0, path: &path, items: 0 };
        let magic = c
            .take(4, "magic")
            .map_err(|_| anyhow::anyhow!("{}: not a GGUF file (shorter than the 4-byte magic)", path.display()))?;
        if magic != b"GGUF" {
            bail!("{}: not a GGUF file (magic {:02x?}, expected \"GGUF\")", path.display(), magic);
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            bail!("{}: unsupported GGUF version {version} (this reader handles 2 and 3)", path.display());
        }
        // A tensor info takes at least 4+8+4+4+8 bytes, a key/value at least 8+4+1.
        let n_tensors = c.len("tensor", 28)?;
        let n_kv = c.len("metadata key", 13)?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let id = c.u32(&format!("type of metadata {key}"))?;
            let ty = ValueType::from_id(id)
                .with_context(|| format!("{}: metadata {key}: unknown value type {id}", path.display()))?;
            let v = c.value(ty, &format!("metadata {key}"), 0)?;
            index.insert(key.clone(), metadata.len());
            metadata.push((key, v));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => bail!("{}: general.alignment {v:?} is not a positive power of two", path.display()),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"))?;
            let nd = c.u32(&format!("tensor {name} n_dims"))?;
            if nd > 8 {
                bail!("{}: tensor {name}: {nd} dimensions (at most 8 allowed)", path.display());
            }
            let dims = (0..nd).map(|_| c.u64(&format!("tensor {name} dims"))).collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32(&format!("tensor {name} type"))?;
            let offset = c.u64(&format!("tensor {name} offset"))?;
            if offset % alignment != 0 {
                bail!(
                    "{}: tensor {name}: offset {offset} is not a multiple of the alignment {alignment}",
                    path.display()
                );
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let pos = c.pos as u64;
        let data_offset = pos.div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        if n_tensors > 0 && data_offset > file_len {
            bail!(
                "{}: truncated GGUF: data section would start at {data_offset}, file has {file_len} bytes",
                path.display()
            );
        }
        for t in &tensors {
            if data_offset.checked_add(t.offset).is_none_or(|s| s > file_len) {
                bail!(
                    "{}: tensor {}: offset {} lies past the end of the file ({file_len} bytes)",
                    path.display(),
                    t.name,
                    t.offset
                );
            }
        }
        Ok(GgufFile { path, mmap, version, metadata, index, tensors, alignment, data_offset })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// A metadata value that must be present, with an error naming the file and key otherwise.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).with_context(|| format!("{}: missing metadata key {key}", self.path.display()))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's block format and its bytes; an error for types smelt cannot compute with, for
    /// element counts that are not whole blocks, and for data outside the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<(crate::GgmlType, &[u8])> {
        let ty = crate::GgmlType::from_id(t.ggml_type).with_context(|| {
            format!(
            "{}: tensor {}: type {} ({}) is not supported (supported: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k)",
            self.path.display(), t.name, crate::ggml_type_name(t.ggml_type), t.ggml_type)
        })?;
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= usize::MAX as u64 / 4)
            .with_context(|| format!("{}: tensor {}: dims {:?} overflow", self.path.display(), t.name, t.dims))?;
        let row = t.dims.first().copied().unwrap_or(1) as usize;
        let len = ty.row_bytes(row).with_context(|| format!("{}: tensor {}", self.path.display(), t.name))? as u64
            * (n / (row.max(1) as u64));
        Ok((ty, self.tensor_data(t, len)?))
    }

    /// The raw bytes of a tensor, `len` bytes from its offset (the caller knows the byte size
    /// of its ggml type); an error when the range lies outside the file.
    pub fn tensor_data(&self, t: &TensorInfo, len: u64) -> Result<&[u8]> {
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.mmap.len() as u64 => Ok(&self.mmap[s as usize..e as usize]),
            _ => bail!(
                "{}: tensor {}: {len} bytes at offset {} run past the end of the file ({} bytes)",
                self.path.display(),
                t.name,
                t.offset,
                self.mmap.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests;
