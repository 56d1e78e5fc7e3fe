//! Input documents for `prepare` and `process`: streaming documents out of the files that
//! `smelt_files::expand_inputs` lists for the `--input` values (paths, directories, globs).
//!
//! A plain text file is one document; a `.jsonl`/`.ndjson` file holds one document per line, in a
//! string field (default `text`). Either may be gzip-compressed (`.gz`). Files are read one at a
//! time and JSONL line by line, so memory holds at most one text file or one batch of lines.
//! Tokenising and filtering are not here: this module only yields text.
//!
//! Invalid UTF-8 is replaced by U+FFFD and counted, not fatal: a long run over a crawled corpus
//! should not die on one bad byte, and the count and the first file names reach the summary, so
//! the damage is visible and bounded.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a file's bytes become documents, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
}

pub fn format_of(path: &Path) -> (Format, bool) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    let gz = name.ends_with(".gz");
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    let fmt = if base.ends_with(".jsonl") || base.ends_with(".ndjson") { Format::Jsonl } else { Format::Text };
    (fmt, gz)
}

/// One document's text. `lossy` is set when invalid UTF-8 was replaced by U+FFFD.
pub struct Doc {
    pub text: String,
    pub lossy: bool,
}

/// Counts raw (on-disk, possibly compressed) bytes read, for progress bars.
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

struct Open {
    path: PathBuf,
    fmt: Format,
    reader: Box<dyn BufRead + Send>,
    line: u64,
}

/// Streams documents from a list of files, in order.
pub struct DocStream {
    files: Vec<PathBuf>,
    next_file: usize,
    cur: Option<Open>,
    field: String,
    bytes_read: Arc<AtomicU64>,
    /// Documents in which invalid UTF-8 was replaced.
    pub lossy_docs: u64,
    /// The first few files where that happened, for the report.
    pub lossy_files: Vec<PathBuf>,
    line_buf: Vec<u8>,
}

impl DocStream {
    pub fn new(files: Vec<PathBuf>, field: &str) -> Self {
        DocStream {
            files,
            next_file: 0,
            cur: None,
            field: field.to_string(),
            bytes_read: Arc::new(AtomicU64::new(0)),
            lossy_docs: 0,
            lossy_files: Vec::new(),
            line_buf: Vec::new(),
        }
    }

    /// Raw bytes read so far across all files (compressed size for `.gz`); shared with progress
    /// reporters on other threads.
    pub fn bytes_counter(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    /// Total on-disk size of all inputs, the denominator for progress.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    fn open(&self, path: &Path) -> Result<Open> {
        let f = std::fs::File::open(path).with_context(|| format!("opening input {}", path.display()))?;
        let counted = Counting { inner: f, n: self.bytes_read.clone() };
        let (fmt, gz) = format_of(path);
        let reader: Box<dyn BufRead + Send> = if gz {
            Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(BufReader::new(counted))))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, counted))
        };
        Ok(Open { path: path.to_path_buf(), fmt, reader, line: 0 })
    }

    fn note_lossy(&mut self, path: &Path) {
        self.lossy_docs += 1;
        if self.lossy_files.len() < 5 && self.lossy_files.last().map(|p| p.as_path()) != Some(path) {
            self.lossy_files.push(path.to_path_buf());
        }
    }

    /// The next document, or `None` when all files are done.
    pub fn next_doc(&mut self) -> Result<Option<Doc>> {
        loop {
            if self.cur.is_none() {
                if self.next_file == self.files.len() {
                    return Ok(None);
                }
                let path = self.files[self.next_file].clone();
                self.next_file += 1;
                self.cur = Some(self.open(&path)?);
            }
            let cur = self.cur.as_mut().unwrap();
            match cur.fmt {
                Format::Text => {
                    let mut bytes = Vec::new();
                    cur.reader
                        .read_to_end(&mut bytes)
                        .with_context(|| format!("reading input {}", cur.path.display()))?;
                    let path = cur.path.clone();
                    self.cur = None;
                    let (text, lossy) = to_string_lossy(bytes);
                    if lossy {
                        self.note_lossy(&path)
                    }
                    return Ok(Some(Doc { text, lossy }));
                }
                Format::Jsonl => {
                    self.line_buf.clear();
                    let n = cur
                        .reader
                        .read_until(b'\n', &mut self.line_buf)
                        .with_context(|| format!("reading input {} after line {}", cur.path.display(), cur.line))?;
                    if n == 0 {
                        self.cur = None;
                        continue;
                    }
                    cur.line += 1;
                    if self.line_buf.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    let (line, lossy) = to_string_lossy(std::mem::take(&mut self.line_buf));
                    let (path, lineno) = (cur.path.clone(), cur.line);
                    let text =
                        json_field(&line, &self.field).with_context(|| format!("{}:{lineno}", path.display()))?;
                    self.line_buf = line.into_bytes();
                    if lossy {
                        self.note_lossy(&path)
                    }
                    return Ok(Some(Doc { text, lossy }));
                }
            }
        }
    }

    /// Up to `max_docs` documents or about `max_bytes` of text, whichever comes first; empty at
    /// the end of input. Batching bounds memory while giving parallel workers enough to share.
    pub fn next_batch(&mut self, max_docs: usize, max_bytes: usize) -> Result<Vec<Doc>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_docs && bytes < max_bytes {
            match self.next_doc()? {
                Some(d) => {
                    bytes += d.text.len();
                    out.push(d)
                }
                None => break,
            }
        }
        Ok(out)
    }
}

fn to_string_lossy(bytes: Vec<u8>) -> (String, bool) {
    match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    }
}

fn json_field(line: &str, field: &str) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    match v.get_mut(field) {
        Some(serde_json::Value::String(s)) => Ok(std::mem::take(s)),
        Some(other) => bail!("field {field:?} is not a string (found {})", kind(other)),
        None => bail!("no field {field:?} (choose the text field with --field)"),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
