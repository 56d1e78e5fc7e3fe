//! The corpus `Tokenizer::train` reads (the file list comes from `smelt_files::expand_inputs`):
//! gzip (`.gz`), and JSONL with a text field. Text is streamed in chunks of whole sequences so that
//! memory stays bounded by the chunk size, not the corpus.
//!
//! A "sequence" is what the trainer pre-tokenises on its own, as Hugging Face's trainer does
//! when it reads files: each line of a text file (with its newline), or each JSONL document.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Sequences packed in one buffer: sequence `i` is `data[ends[i-1]..ends[i]]`.
#[derive(Default)]
pub struct Chunk {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Chunk {
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&e| {
            let s = &self.data[start..e];
            start = e;
            s
        })
    }
}

fn open(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

fn is_jsonl(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".ndjson")
}

/// Stream a file as chunks of about `chunk_bytes`. A file is JSONL when its name says so
/// (`.jsonl`, `.jsonl.gz`, `.ndjson`) or, given a `field`, when it starts with `{`; `field`
/// selects the text of its records. Other files are plain text, read line by line.
pub fn read_chunks(
    path: &Path,
    field: Option<&str>,
    chunk_bytes: usize,
    mut emit: impl FnMut(Chunk) -> Result<()>,
) -> Result<()> {
    let mut r = open(path)?;
    let starts_with_brace = {
        let buf = r.fill_buf().with_context(|| format!("reading {}", path.display()))?;
        buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    };
    let jsonl = is_jsonl(path) || (field.is_some() && starts_with_brace);
    if jsonl && field.is_none() {
        bail!("{}: JSONL input needs a field name (--field)", path.display());
    }
    let field = if jsonl { field } else { None };
    let mut chunk = Chunk::default();
    let mut line = Vec::new();
    let mut lineno = 0usize;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if let Some(field) = field {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&line)
                .with_context(|| format!("{}:{lineno}: not a JSON value", path.display()))?;
            match v.get(field) {
                Some(serde_json::Value::String(s)) => chunk.data.extend(s.as_bytes()),
                Some(_) => bail!("{}:{lineno}: field {field:?} is not a string", path.display()),
                None => bail!("{}:{lineno}: no field {field:?}", path.display()),
            }
        } else {
            chunk.data.extend(&line);
        }
        chunk.ends.push(chunk.data.len());
        if chunk.data.len() >= chunk_bytes {
            emit(std::mem::take(&mut chunk))?;
        }
    }
    if !chunk.ends.is_empty() {
        emit(chunk)?;
    }
    Ok(())
}
