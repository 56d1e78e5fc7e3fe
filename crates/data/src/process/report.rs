//! What `process` did: documents in, removed per rule, duplicates, kept. Printed as a table and
//! written as JSON (`--report`).

use super::filters::{FilterConfig, Rule};
use serde::Serialize;
use std::fmt;

#[derive(Debug, Serialize)]
pub struct RuleCount {
    pub rule: &'static str,
    pub removed: u64,
}

#[derive(Debug, Serialize)]
pub struct DedupSettings {
    pub mode: &'static str,
    pub threshold: f64,
    pub num_perm: usize,
    pub bands: usize,
    pub rows: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub input_documents: u64,
    pub kept_documents: u64,
    pub input_chars: u64,
    pub kept_chars: u64,
    /// Removals by quality rule; each document is counted under the first rule it fails.
    pub filtered: Vec<RuleCount>,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    /// Documents whose invalid UTF-8 was replaced by U+FFFD.
    pub lossy_utf8_documents: u64,
    pub filters: FilterConfig,
    pub dedup: DedupSettings,
    pub seconds: f64,
}

impl Report {
    pub(crate) fn new(filters: FilterConfig, dedup: DedupSettings) -> Self {
        Report {
            input_documents: 0,
            kept_documents: 0,
            input_chars: 0,
            kept_chars: 0,
            filtered: Rule::ALL.iter().map(|r| RuleCount { rule: r.name(), removed: 0 }).collect(),
            exact_duplicates: 0,
            near_duplicates: 0,
            lossy_utf8_documents: 0,
            filters,
            dedup,
            seconds: 0.0,
        }
    }

    pub(crate) fn count(&mut self, r: Rule) {
        let i = Rule::ALL.iter().position(|&x| x == r).unwrap();
        self.filtered[i].removed += 1;
    }

    pub fn removed_by(&self, rule: &str) -> u64 {
        self.filtered.iter().find(|c| c.rule == rule).map_or(0, |c| c.removed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.input_documents.max(1) as f64;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, v: u64| {
            writeln!(f, "  {name:<18} {v:>12} {:>7.2}%", 100.0 * v as f64 / n)
        };
        writeln!(f, "  {:<18} {:>12} {:>8}", "step", "documents", "share")?;
        row(f, "input", self.input_documents)?;
        for c in &self.filtered {
            row(f, c.rule, c.removed)?;
        }
        row(f, "exact_duplicate", self.exact_duplicates)?;
        row(f, "near_duplicate", self.near_duplicates)?;
        row(f, "kept", self.kept_documents)?;
        if self.lossy_utf8_documents > 0 {
            writeln!(f, "  ({} documents had invalid UTF-8, replaced by U+FFFD)", self.lossy_utf8_documents)?;
        }
        write!(
            f,
            "  chars kept: {} of {} ({:.1}%) in {:.1}s",
            self.kept_chars,
            self.input_chars,
            100.0 * self.kept_chars as f64 / self.input_chars.max(1) as f64,
            self.seconds
        )
    }
}
