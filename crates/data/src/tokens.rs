//! The token file: what `prepare` writes and `train` reads through mmap.
//!
//! Layout (little-endian), a 32-byte header then the ids:
//! ```text
//! 0   magic     b"SMELTTOK"
//! 8   version   u32 = 1
//! 12  width     u32 = 2 (u16 ids) or 4 (u32 ids)
//! 16  vocab     u32 vocabulary size the ids were made with
//! 20  eos       u32 document separator id (u32::MAX: none)
//! 24  count     u64 number of ids
//! 32  ids       count × width bytes
//! ```

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"SMELTTOK";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;

/// A read-only, memory-mapped token file.
pub struct TokenFile {
    path: PathBuf,
    map: memmap2::Mmap,
    width: usize,
    vocab_size: u32,
    eos: Option<u32>,
    len: usize,
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("opening token file {}", path.display()))?;
        // SAFETY: the file is opened read-only; smelt never writes a token file in place (it
        // writes a temporary file and renames it), so the mapping does not change under us.
        let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
        let p = path.display();
        if map.len() < HEADER_LEN || &map[..8] != MAGIC {
            bail!("{p}: not a smelt token file (missing SMELTTOK header; make one with `smelt prepare`)");
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            bail!("{p}: token file version {version}, this smelt reads version {VERSION}");
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            bail!("{p}: token width {width} bytes in header, expected 2 or 4");
        }
        let vocab_size = u32_at(16);
        let eos = match u32_at(20) {
            u32::MAX => None,
            e => Some(e),
        };
        let len = u64::from_le_bytes(map[24..32].try_into().unwrap()) as usize;
        let want = HEADER_LEN as u128 + len as u128 * width as u128;
        if map.len() as u128 != want {
            bail!(
                "{p}: header says {len} tokens ({want} bytes) but the file has {} bytes (truncated or corrupt)",
                map.len()
            );
        }
        Ok(TokenFile { path: path.to_path_buf(), map, width, vocab_size, eos, len })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER_LEN + i * self.width;
        if self.width == 2 {
            u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32
        } else {
            u32::from_le_bytes(self.map[o..o + 4].try_into().unwrap())
        }
    }

    /// Append ids `start..start+n` to `out`; an error naming the file and the position for an
    /// id outside the header's vocabulary (a corrupt file, or one written by another tool),
    /// which would otherwise surface mid-run as an embedding error that names neither.
    pub fn read_into(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        assert!(start + n <= self.len, "token range {}..{} out of {}", start, start + n, self.len);
        let from = out.len();
        out.extend((start..start + n).map(|i| self.get(i)));
        if let Some(k) = out[from..].iter().position(|&id| id >= self.vocab_size) {
            bail!(
                "{}: token {} at position {} is outside the vocabulary of {} the header gives (corrupt file?)",
                self.path.display(),
                out[from + k],
                start + k,
                self.vocab_size
            );
        }
        Ok(())
    }
}

/// Streams ids into a token file: writes to a temporary beside it (`smelt_files::Temp`),
/// renames on `finish`, so an interrupted write never leaves a half file under the final name;
/// dropped unfinished (an error), it removes the temporary.
pub struct TokenWriter {
    path: PathBuf,
    tmp: smelt_files::Temp,
    out: std::io::BufWriter<std::fs::File>,
    width: usize,
    vocab_size: u32,
    eos: Option<u32>,
    count: u64,
}

impl TokenWriter {
    pub fn create(path: &Path, vocab_size: u32, eos: Option<u32>) -> Result<Self> {
        let tmp = smelt_files::Temp::new(path);
        let f = std::fs::File::create(tmp.path()).with_context(|| format!("creating {}", tmp.path().display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        out.write_all(&[0u8; HEADER_LEN]).with_context(|| format!("writing {}", path.display()))?; // patched in finish()
        let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
        Ok(TokenWriter { path: path.to_path_buf(), tmp, out, width, vocab_size, eos, count: 0 })
    }

    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            if id >= self.vocab_size {
                bail!("token id {id} out of vocabulary ({}) while writing {}", self.vocab_size, self.path.display());
            }
            let w = if self.width == 2 {
                self.out.write_all(&(id as u16).to_le_bytes())
            } else {
                self.out.write_all(&id.to_le_bytes())
            };
            w.with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.count += ids.len() as u64;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self) -> Result<u64> {
        use std::io::{Seek, SeekFrom};
        let path = self.path.display().to_string();
        let mut f = self.out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {path}"))?;
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.width as u32).to_le_bytes());
        h.extend_from_slice(&self.vocab_size.to_le_bytes());
        h.extend_from_slice(&self.eos.unwrap_or(u32::MAX).to_le_bytes());
        h.extend_from_slice(&self.count.to_le_bytes());
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&h))
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {path}"))?;
        drop(f);
        self.tmp.commit(&self.path)?;
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("smelt-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.bin");
        let mut w = TokenWriter::create(&p, 300, Some(256)).unwrap();
        w.push(&[1, 2, 299, 256]).unwrap();
        assert!(w.push(&[300]).is_err());
        w.finish().unwrap();
        let t = TokenFile::open(&p).unwrap();
        assert_eq!((t.len(), t.vocab_size(), t.eos_id()), (4, 300, Some(256)));
        let mut v = vec![];
        t.read_into(0, 4, &mut v).unwrap();
        assert_eq!(v, vec![1, 2, 299, 256]);
        let mut bytes = std::fs::read(&p).unwrap();
        // An id past the header's vocabulary (a corrupt file): an error naming the file and where.
        bytes[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&65000u16.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = TokenFile::open(&p).unwrap().read_into(0, 4, &mut v).unwrap_err().to_string();
        assert!(e.contains("a.bin") && e.contains("token 65000 at position 1") && e.contains("300"), "{e}");
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let e = TokenFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("truncated") && e.contains("a.bin"), "{e}");
        std::fs::write(&p, b"hello").unwrap();
        assert!(TokenFile::open(&p).err().unwrap().to_string().contains("not a smelt token file"));
    }
}
