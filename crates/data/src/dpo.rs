//! Preference pairs for DPO (`smelt dpo`): JSONL `{"prompt", "chosen", "rejected"}` → two
//! examples sharing the prompt, and their batches.
//!
//! Each line holds a prompt and two completions of it, as TRL's `DPOTrainer` takes them: three
//! strings, or three message lists (the prompt's turns, then each completion's assistant
//! turn(s), rendered through the chat template). `chosen` and `rejected` are each read as the
//! completion of a `{"prompt", "completion"}` SFT example (`sft::Format::prompt_completion`), so
//! the tokens in their log-probability are exactly the tokens SFT would train on: the
//! completion and its end-of-turn token (the EOS appended to a string completion).
//!
//! Batch `k` is a pure function of (pairs, settings, seed, k), as SFT's: each epoch is a seeded
//! permutation of the pairs, a batch `batch` consecutive pairs of it. Its rows are the chosen
//! completions then the rejected ones (2·n rows), padded at the end to the batch's longest.

use crate::sft::batch::{permutation, to_seq, Seq};
use crate::sft::{kind, read_lines, Example, Format, IGNORE};
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;

/// One preference: the same prompt with the completion preferred and the one rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
}

/// Reads every pair of a JSONL file (blank lines skipped); an error names `file:line` and the
/// field at fault, before any training.
pub fn read_pairs(fmt: &Format, path: &Path) -> Result<Vec<Pair>> {
    read_lines(path, |v| pair(fmt, v))
}

/// One pair from its JSON object.
pub fn pair(fmt: &Format, v: &Value) -> Result<Pair> {
    let obj = match v.as_object() {
        Some(o) => o,
        None => bail!("expected a JSON object with \"prompt\", \"chosen\" and \"rejected\", got {}", kind(v)),
    };
    for k in ["chosen", "rejected"] {
        if !obj.contains_key(k) {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            bail!("field \"{k}\" is missing (has {keys:?}); a pair is {{\"prompt\", \"chosen\", \"rejected\"}}");
        }
    }
    if !obj.contains_key("prompt") {
        bail!("field \"prompt\" is missing: pairs need an explicit prompt (TRL's implicit-prompt form, where \"chosen\" and \"rejected\" repeat it, is not read)");
    }
    if fmt.train_on_prompt {
        bail!("DPO scores completions only: the format must not put the prompt in the loss");
    }
    Ok(Pair {
        chosen: fmt.prompt_completion(v, "prompt", "chosen")?,
        rejected: fmt.prompt_completion(v, "prompt", "rejected")?,
    })
}

/// The pairs of a run, cut to `seq_len + 1` tokens, and their batches.
pub struct PairPlan {
    /// (chosen, rejected) as (inputs, targets).
    pairs: Vec<(Seq, Seq)>,
    batch: usize,
    seed: u64,
    shuffle: bool,
    pad_id: u32,
    /// Pairs dropped because a completion had no token left within `seq_len`.
    pub dropped: usize,
    /// Completions cut to `seq_len + 1` tokens.
    pub truncated: usize,
}

/// One batch of n pairs: rows 0..n are their chosen completions, rows n..2n their rejected
/// ones, row-major (2n × t).
#[derive(Clone, Debug, PartialEq)]
pub struct PairBatch {
    /// The plan's indices of the pairs (`PairPlan::pair`), in row order.
    pub pairs: Vec<usize>,
    pub t: usize,
    pub inputs: Vec<u32>,
    /// Next-token targets, `IGNORE` outside the completions and in padding.
    pub targets: Vec<u32>,
    /// Positions holding tokens (not padding).
    pub tokens: usize,
}

impl PairPlan {
    /// `shuffle` false keeps the file's order (validation).
    pub fn new(pairs: &[Pair], batch: usize, seq_len: usize, shuffle: bool, seed: u64, pad_id: u32) -> Result<Self> {
        if batch == 0 || seq_len == 0 {
            bail!("batch size ({batch}) and sequence length ({seq_len}) must be positive");
        }
        let (mut kept, mut dropped, mut truncated) = (Vec::with_capacity(pairs.len()), 0, 0);
        for p in pairs {
            let ((c, cut_c), (r, cut_r)) = (to_seq(&p.chosen, seq_len), to_seq(&p.rejected, seq_len));
            truncated += usize::from(cut_c) + usize::from(cut_r);
            match (c, r) {
                (Some(c), Some(r)) => kept.push((c, r)),
                _ => dropped += 1,
            }
        }
        if kept.is_empty() {
            bail!("no pair keeps a completion token of both answers within --seq-len {seq_len}");
        }
        Ok(PairPlan { pairs: kept, batch, seed, shuffle, pad_id, dropped, truncated })
    }

    /// Pairs per epoch.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Batches per epoch (the last may be short).
    pub fn batches_per_epoch(&self) -> u64 {
        self.pairs.len().div_ceil(self.batch) as u64
    }

    /// Pair `i`'s (chosen, rejected) rows as (inputs, targets).
    pub fn pair(&self, i: usize) -> (&Seq, &Seq) {
        (&self.pairs[i].0, &self.pairs[i].1)
    }

    /// Batch `k` of the run (epoch k / batches_per_epoch).
    pub fn batch(&self, k: u64) -> PairBatch {
        let per = self.batches_per_epoch();
        let (epoch, i) = (k / per, (k % per) as usize);
        let order = permutation(self.pairs.len(), crate::hash::hash_u64s(&[self.seed, epoch]), self.shuffle);
        let chosen = order[i * self.batch..((i + 1) * self.batch).min(order.len())].to_vec();
        self.rows(chosen)
    }

    /// The batch of the pairs `idx` (in that order).
    pub fn rows(&self, idx: Vec<usize>) -> PairBatch {
        let seqs: Vec<&Seq> =
            idx.iter().map(|&p| &self.pairs[p].0).chain(idx.iter().map(|&p| &self.pairs[p].1)).collect();
        let t = seqs.iter().map(|s| s.0.len()).max().unwrap_or(1);
        let (mut inputs, mut targets) = (Vec::with_capacity(seqs.len() * t), Vec::with_capacity(seqs.len() * t));
        let mut tokens = 0;
        for (x, y) in seqs {
            inputs.extend_from_slice(x);
            targets.extend_from_slice(y);
            tokens += x.len();
            inputs.extend(std::iter::repeat_n(self.pad_id, t - x.len()));
            targets.extend(std::iter::repeat_n(IGNORE, t - x.len()));
        }
        PairBatch { pairs: idx, t, inputs, targets, tokens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use smelt_tokenizer::{ChatTemplate, Tokenizer};

    const CHATML: &str = "{% for message in messages %}{{'<s>' + message['role'] + '\n' + message['content'] + '</s>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}";

    fn fmt<'a>(tok: &'a Tokenizer, tmpl: &'a ChatTemplate) -> Format<'a> {
        Format { tokenizer: tok, template: Some(tmpl), end_of_turn: vec![62], eos: Some(256), train_on_prompt: false }
    }

    fn trained(e: &Example) -> String {
        e.ids.iter().zip(&e.loss).filter(|(&i, &l)| l && i < 256).map(|(&i, _)| i as u8 as char).collect()
    }

    #[test]
    fn strings_and_conversations() {
        let (tok, tmpl) = (Tokenizer::byte_level(), ChatTemplate::new(CHATML, "", ""));
        let f = fmt(&tok, &tmpl);
        let p = pair(&f, &json!({"prompt": "Q:", "chosen": "yes", "rejected": "no"})).unwrap();
        assert_eq!(p.chosen, f.example(&json!({"prompt": "Q:", "completion": "yes"})).unwrap());
        assert_eq!(trained(&p.rejected), "no");
        assert_eq!(*p.rejected.ids.last().unwrap(), 256, "EOS in the loss");
        let conv = json!({"prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]});
        let p = pair(&f, &conv).unwrap();
        assert_eq!(trained(&p.chosen), "good</s>");
        assert_eq!(trained(&p.rejected), "bad</s>");
        assert_eq!(p.chosen.ids[..9], p.rejected.ids[..9], "the same prompt tokens");
    }

    #[test]
    fn bad_pairs_name_the_field() {
        let (tok, tmpl) = (Tokenizer::byte_level(), ChatTemplate::new(CHATML, "", ""));
        let f = fmt(&tok, &tmpl);
        let err = |v: Value| format!("{:#}", pair(&f, &v).unwrap_err());
        assert!(err(json!({"prompt": "q", "chosen": "a"})).contains("field \"rejected\" is missing"));
        assert!(err(json!({"chosen": "a", "rejected": "b"})).contains("field \"prompt\" is missing"));
        assert!(err(json!({"prompt": "q", "chosen": "a", "rejected": 3})).contains("\"rejected\""));
        let e = err(json!({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant"}],
            "rejected": [{"role": "assistant", "content": "b"}]}));
        assert!(e.contains("field \"chosen\"[0].content: expected a string, got null"), "{e}");
        assert!(err(json!([1])).contains("expected a JSON object"));
    }

    #[test]
    fn batches_hold_chosen_then_rejected_rows() {
        let ex =
            |n: usize, from: usize| Example { ids: (0..n as u32).collect(), loss: (0..n).map(|i| i >= from).collect() };
        let pairs: Vec<Pair> = (0..5).map(|i| Pair { chosen: ex(4 + i, 2), rejected: ex(3, 1) }).collect();
        let mut all = pairs.clone();
        all.push(Pair { chosen: ex(9, 8), rejected: ex(3, 1) }); // its chosen target is cut off
        let plan = PairPlan::new(&all, 2, 6, true, 7, 99).unwrap();
        assert_eq!((plan.len(), plan.dropped, plan.truncated), (5, 1, 2));
        assert_eq!(plan.batches_per_epoch(), 3);
        let mut seen: Vec<usize> = (0..3).flat_map(|k| plan.batch(k).pairs).collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4], "an epoch covers every pair once");
        let b = plan.batch(0);
        let n = b.pairs.len();
        assert_eq!(b.inputs.len(), 2 * n * b.t);
        for (r, &p) in b.pairs.iter().enumerate() {
            let (c, rj) = plan.pair(p);
            assert_eq!(b.targets[r * b.t..r * b.t + c.1.len()], c.1[..]);
            assert_eq!(b.targets[(n + r) * b.t..(n + r) * b.t + rj.1.len()], rj.1[..]);
            assert!(b.targets[(n + r) * b.t + rj.1.len()..(n + r + 1) * b.t].iter().all(|&t| t == IGNORE));
        }
        assert_eq!(plan.batch(3).pairs.len(), 2, "the next epoch");
    }
}
