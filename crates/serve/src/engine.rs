//! The engine: the one thread that owns the model. HTTP handlers hand it [`Job`]s (prompt ids
//! and settings) over a channel and read [`Event`]s back over the job's own channel; the I/O
//! loop never touches the model.
//!
//! Continuous batching over a paged KV cache: every step the scheduler takes the jobs that
//! arrived, admits waiting ones into the running batch while there is room (`--parallel`
//! sequences, free blocks in the pool), runs one forward over every running sequence (the
//! new ones' prompts, reusing cached prefix blocks, and one decode token for each of the
//! others: `Model::logits_paged`), samples each row with the sequence's own sampler, and
//! retires finished sequences at once, their blocks back in the pool. A sequence that needs a
//! block when none is free preempts the most recently admitted other one, which waits again
//! and recomputes its tokens when readmitted. Each sequence's logits are what it gets alone
//! (`logits_paged`'s guarantee), so greedy output is `smelt generate`'s and a seeded request
//! gives the same text whatever else runs.
//!
//! A sequence with a `response_format` has its row masked to what its grammar allows before
//! sampling (the step's masks are computed on a thread of their own while the forward runs,
//! `structured`) and ends when the grammar is complete.
//!
//! Chunked prefill: a step computes at most `--prefill-chunk` prompt tokens (all sequences'
//! together), so a long prompt takes several steps and the decode rows of the others keep
//! flowing beside it; a sequence samples its first token in the step that completes its prompt.
//! On a GPU a step of decode rows only is replayed from a captured CUDA graph
//! (`smelt_model::PagedDecoder`); every other step is launched (`Model::logits_paged`).

use crate::blocks::{Blocks, BLOCK_SIZE};
use crate::metrics::Stats;
use crate::structured::{Constraint, Mask};
use smelt_core::Tensor;
use smelt_infer::{Sampler, SamplingConfig};
use smelt_model::{Decoder, KvCache, KvPool, KvType, Model, PagedDecoder, SeqStep};
use smelt_tokenizer::{StreamDecoder, Tokenizer};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// A prompt's last tokens that are always computed, never taken from the prefix cache: the
/// last one gives the logits, and more than the matmuls' few-row threshold keeps the prompt's
/// rows on the path `smelt generate`'s prefill takes (so a cache hit changes no bits).
const MIN_RECOMPUTE: usize = 5;

/// Prompt tokens a step computes at most, by default (`--prefill-chunk`).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Rows a prompt chunk takes, and leaves for later, at least: from 8 rows every CPU matmul takes
/// the kernel it takes for a whole prompt (f32 weights: GEMM above 4 rows; K-quants: tiled from
/// 8), so a prompt computed in chunks gives the whole prompt's bits.
const MIN_CHUNK_ROWS: usize = 8;

/// The smallest `--prefill-chunk`: a block (a chunk must leave and take at least
/// `MIN_CHUNK_ROWS` rows, see `chunk_len`).
pub const MIN_PREFILL_CHUNK: usize = BLOCK_SIZE;

/// One request's choice, validated and tokenised by its handler.
pub struct Job {
    pub prompt: Vec<u32>,
    /// New tokens at most (already capped at what the context leaves after the prompt).
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// OpenAI's presence and frequency penalties (0 = off), over the generated tokens.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Log-probabilities to report: None, or Some(k) for the chosen token and its top k.
    pub logprobs: Option<usize>,
    /// Strings that end generation; never part of the output.
    pub stop: Vec<String>,
    /// `response_format`'s grammar state: each step's logits are masked to what it allows,
    /// and the sequence ends ("stop") when it is complete.
    pub constraint: Option<Constraint>,
    /// Whether the end-of-sequence tokens are ordinary tokens (`ignore_eos`).
    pub ignore_eos: bool,
    /// Which choice of its request this is (`n`): events carry it.
    pub index: usize,
    /// Where the events go; a closed channel (the client went away) ends the job.
    pub events: UnboundedSender<(usize, Event)>,
    /// When the handler queued it (time to first token counts from here).
    pub queued: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model's end-of-sequence id or a stop string.
    Stop,
    /// `max_tokens` (or the context) ran out.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A generated token's log-probability and the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, logprob), most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub enum Event {
    /// The next piece of text (never part of a stop string; may be empty when only
    /// log-probabilities come), and the log-probabilities of the tokens generated since the
    /// last event when asked for.
    Text(String, Vec<TokenLogprob>),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens whose keys and values came from the prefix cache.
        cached_tokens: usize,
    },
    /// The model failed mid-request (a server error, not the request's fault).
    Failed(String),
}

/// How the engine runs.
pub struct EngineConfig {
    /// Sequences in the running batch at most (`--parallel`).
    pub parallel: usize,
    /// The KV pool (`--ctx-size` positions of `--kv-cache-type`, on the model's device), made
    /// before the server says it is ready so that a pool that cannot be made stops it at
    /// start; for `one_at_a_time` an empty one.
    pub pool: KvPool,
    /// Batch over the paged pool, or run one request at a time, each with its own contiguous
    /// cache behind `smelt generate`'s decoder.
    pub paged: bool,
    /// Prompt tokens one step computes at most, over all sequences (`--prefill-chunk`; 0: no
    /// limit, a prompt is one step's work). The paged engine only.
    pub prefill_chunk: usize,
}

impl EngineConfig {
    /// Continuous batching over a paged pool on the model's device (the CPU or a GPU).
    pub fn new(model: &Model, parallel: usize, pool_tokens: usize, kv_type: KvType) -> anyhow::Result<Self> {
        Ok(EngineConfig {
            parallel,
            pool: KvPool::with_type(model, pool_tokens, BLOCK_SIZE, kv_type)?,
            paged: true,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        })
    }

    /// One request at a time with contiguous caches behind `Decoder` (on a GPU each step
    /// after the first a replayed graph): what the paged engine is compared against.
    pub fn one_at_a_time(model: &Model) -> anyhow::Result<Self> {
        Ok(EngineConfig { parallel: 1, pool: KvPool::new_empty(model, BLOCK_SIZE)?, paged: false, prefill_chunk: 0 })
    }

    /// At most `n` prompt tokens a step (0: no limit; else at least `MIN_PREFILL_CHUNK`).
    pub fn with_prefill_chunk(mut self, n: usize) -> anyhow::Result<Self> {
        if n != 0 && n < MIN_PREFILL_CHUNK {
            anyhow::bail!("--prefill-chunk {n}: give 0 (no limit) or at least {MIN_PREFILL_CHUNK} tokens");
        }
        self.prefill_chunk = n;
        Ok(self)
    }
}

/// How many of a prompt's `remaining` tokens a step with `budget` prompt tokens left computes:
/// all when they fit; else a chunk that takes at least `MIN_CHUNK_ROWS` rows and leaves at least
/// as many for later (on the CPU fewer rows would pick another matmul kernel and change the
/// bits: this keeps a chunked prompt's logits those of the whole prompt); else none (it waits).
fn chunk_len(remaining: usize, budget: usize) -> usize {
    if remaining <= budget {
        return remaining;
    }
    let t = budget.min(remaining.saturating_sub(MIN_CHUNK_ROWS));
    if t >= MIN_CHUNK_ROWS {
        t
    } else {
        0
    }
}

/// A step's new tokens for each running sequence (those not yet in the pool): a decode row
/// takes its one token, prompts share `budget` in order of admission (`chunk_len`); 0 waits.
fn plan_step(remaining: impl Iterator<Item = usize>, budget: usize) -> Vec<usize> {
    let mut left = if budget == 0 { usize::MAX } else { budget };
    remaining
        .map(|r| {
            if r <= 1 {
                return r;
            }
            let t = chunk_len(r, left);
            left -= t;
            t
        })
        .collect()
}

/// One sequence in the engine, waiting or running.
struct Seq<'t> {
    job: Job,
    /// Prompt then generated ids.
    tokens: Vec<u32>,
    table: Vec<u32>,
    /// Positions whose keys and values are in the pool.
    computed: usize,
    /// Full blocks of `table` named in the prefix cache, and the last one's hash.
    named: usize,
    last_hash: u64,
    cached_tokens: usize,
    generated: Vec<u32>,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    pending_logprobs: Vec<TokenLogprob>,
    last_token: Option<Instant>,
    /// `EngineConfig::one_at_a_time`: the sequence's own contiguous cache, behind the
    /// decoder `smelt generate` uses (on a GPU each step after the first is a replayed graph).
    dec: Option<Decoder<'t>>,
}

enum Outcome {
    Going,
    Finished,
    /// The client left, or the model failed (already told).
    Gone,
}

impl<'t> Seq<'t> {
    fn new(job: Job, tok: &'t Tokenizer) -> Self {
        let mut sampler = Sampler::new(job.sampling.clone());
        sampler.observe(&job.prompt);
        Seq {
            tokens: job.prompt.clone(),
            stops: StopMatcher::new(job.stop.clone()),
            job,
            table: Vec::new(),
            computed: 0,
            named: 0,
            last_hash: 0,
            cached_tokens: 0,
            generated: Vec::new(),
            sampler,
            decoder: StreamDecoder::new(tok),
            pending_logprobs: Vec::new(),
            last_token: None,
            dec: None,
        }
    }

    fn send(&self, ev: Event) -> bool {
        self.job.events.send((self.job.index, ev)).is_ok()
    }

    /// Names the blocks this sequence has filled, so later prompts can share them.
    fn name_full_blocks(&mut self, blocks: &mut Blocks) {
        while (self.named + 1) * BLOCK_SIZE <= self.computed {
            let toks = &self.tokens[self.named * BLOCK_SIZE..(self.named + 1) * BLOCK_SIZE];
            self.last_hash = blocks.name(self.table[self.named], self.last_hash, toks);
            self.named += 1;
        }
    }

    /// Gives back the blocks (on retirement or preemption).
    fn release(&mut self, blocks: &mut Blocks) {
        self.dec = None;
        blocks.release(&self.table);
        self.table.clear();
        self.computed = 0;
        self.named = 0;
        self.last_hash = 0;
    }

    /// Whether this sequence's rows are read on the host (penalties, log-probabilities, a
    /// grammar's mask).
    fn wants_host(&self) -> bool {
        self.job.logprobs.is_some()
            || self.job.presence_penalty != 0.0
            || self.job.frequency_penalty != 0.0
            || self.job.constraint.is_some()
    }

    /// Greedy with no state: its token is its row's argmax, whatever the sampler holds (so a
    /// step's such rows can be picked together, `pick_greedy`).
    fn plain_greedy(&self) -> bool {
        let c = &self.job.sampling;
        c.temperature == 0.0 && c.repetition_penalty == 1.0 && !self.wants_host()
    }

    /// Takes the next token: from this sequence's logits row (1, V), or already picked from it
    /// (`Row::Picked`, a plain greedy row); `mask`: what its constraint allows at this step
    /// (Some exactly when it has one).
    fn advance(
        &mut self,
        row: Row,
        mask: Option<anyhow::Result<Mask>>,
        stop_ids: &[u32],
        stats: &Stats,
    ) -> anyhow::Result<Outcome> {
        let (next, logits) = match row {
            Row::Picked(id) => (id, None),
            Row::Logits(logits) => {
                // Penalties and log-probabilities read the row on the host (a GPU's logits
                // come back only when a request asks for them).
                let host = |t: &Tensor| t.to_device(smelt_core::Device::Cpu)?.to_dtype(smelt_core::DType::F32);
                let logits = if self.wants_host() { self.penalised(&host(&logits)?)? } else { logits };
                // Structured output: what the grammar forbids is −∞ before the sampler sees it
                // (greedy or not). Log-probabilities stay those of the unmasked row.
                let masked = match mask {
                    Some(m) => {
                        let mut row = logits.as_f32()?.to_vec();
                        m?.apply(&mut row);
                        Some(Tensor::from_f32(row, logits.shape())?)
                    }
                    None => None,
                };
                (self.sampler.sample(masked.as_ref().unwrap_or(&logits))?, Some(logits))
            }
        };
        let now = Instant::now();
        match self.last_token {
            None => stats.ttft.observe((now - self.job.queued).as_secs_f64()),
            Some(t) => stats.itl.observe((now - t).as_secs_f64()),
        }
        self.last_token = Some(now);
        if stop_ids.contains(&next) && !self.job.ignore_eos {
            return Ok(self.end(Finish::Stop));
        }
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        // One entry per completion token (the EOS that ends generation is not one).
        if let (Some(k), Some(logits)) = (self.job.logprobs, &logits) {
            self.pending_logprobs.push(logprob_of(logits, next, k)?);
        }
        if let Some(c) = self.job.constraint.as_mut() {
            c.consume(next)?;
        }
        self.generated.push(next);
        self.tokens.push(next);
        let (text, hit) = self.stops.push(&self.decoder.push(next));
        if hit {
            return Ok(self.end_with(text, Finish::Stop));
        }
        if !text.is_empty() || !self.pending_logprobs.is_empty() {
            let lp = std::mem::take(&mut self.pending_logprobs);
            if !self.send(Event::Text(text, lp)) {
                return Ok(Outcome::Gone);
            }
        }
        // The grammar is complete and allows nothing more: the answer is whole.
        if self.job.constraint.as_ref().is_some_and(Constraint::is_done) {
            return Ok(self.end(Finish::Stop));
        }
        if self.generated.len() >= self.job.max_tokens {
            return Ok(self.end(Finish::Length));
        }
        Ok(Outcome::Going)
    }

    /// OpenAI's presence and frequency penalties on the generated tokens: logit −=
    /// presence·[count > 0] + frequency·count (vLLM's definition).
    fn penalised(&self, logits: &Tensor) -> anyhow::Result<Tensor> {
        let (pp, fp) = (self.job.presence_penalty, self.job.frequency_penalty);
        if (pp == 0.0 && fp == 0.0) || self.generated.is_empty() {
            return Ok(logits.clone());
        }
        let mut row = logits.as_f32()?.to_vec();
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &id in &self.generated {
            *counts.entry(id).or_default() += 1;
        }
        for (id, c) in counts {
            if let Some(x) = row.get_mut(id as usize) {
                *x -= pp + fp * c as f32;
            }
        }
        Tensor::from_f32(row, logits.shape())
    }

    /// The end: the bytes the decoder held back, then whatever the stop matcher held back
    /// (a stop string they complete ends it as "stop"), then Done.
    fn end(&mut self, finish: Finish) -> Outcome {
        let (text, hit) = self.stops.push(&self.decoder.finish());
        let rest = if hit { String::new() } else { self.stops.flush() };
        self.end_with(text + &rest, if hit { Finish::Stop } else { finish })
    }

    fn end_with(&mut self, text: String, finish: Finish) -> Outcome {
        let lp = std::mem::take(&mut self.pending_logprobs);
        if (!text.is_empty() || !lp.is_empty()) && !self.send(Event::Text(text, lp)) {
            return Outcome::Gone;
        }
        let done = Event::Done {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated.len(),
            cached_tokens: self.cached_tokens,
        };
        if !self.send(done) {
            return Outcome::Gone;
        }
        Outcome::Finished
    }
}

/// What a sequence takes its next token from.
enum Row {
    Logits(Tensor),
    Picked(u32),
}

/// The tokens of a step's plain greedy rows (`Seq::plain_greedy`), all at once; None for the
/// other rows. `rows[i]`: sequence i's row of `logits`, when it samples this step. Off the CPU,
/// one sampling launch and one copy back rather than a launch and a wait per row: every row is
/// argmaxed, the others' (sampled sequences', a replayed step's padding) ignored (greedy needs
/// no state, and no gather of the wanted rows). On the CPU, the wanted rows' argmax in place
/// on the pool's threads (`sample_row`'s greedy pick: no copy of each (1, V) row, no serial
/// pass over 32 rows of 49k logits between two forwards).
fn pick_greedy(logits: &Tensor, running: &[Seq], rows: &[Option<usize>]) -> anyhow::Result<Vec<Option<u32>>> {
    let mut picked = vec![None; running.len()];
    let want: Vec<(usize, usize)> =
        (0..running.len()).filter_map(|i| rows[i].filter(|_| running[i].plain_greedy()).map(|r| (i, r))).collect();
    if logits.device().is_cpu() {
        if want.is_empty() {
            return Ok(picked);
        }
        let (z, v) = (logits.to_dtype(smelt_core::DType::F32)?, logits.cols());
        let z = z.as_f32()?;
        if let Some(&(_, r)) = want.iter().find(|&&(_, r)| (r + 1) * v > z.len()) {
            anyhow::bail!("greedy pick: row {r} of logits with {} rows", logits.rows());
        }
        let ids =
            smelt_core::par::map(want.len(), |j| smelt_core::ops::sample::argmax(&z[want[j].1 * v..][..v]) as u32);
        for ((i, _), id) in want.into_iter().zip(ids) {
            picked[i] = Some(id);
        }
        return Ok(picked);
    }
    if want.len() < 2 {
        return Ok(picked);
    }
    let p = running[want[0].0].job.sampling.params();
    let ids = smelt_core::ops::sample::sample(logits, None, &p, &vec![0.0; logits.rows()])?;
    let ids = ids.to_device(smelt_core::Device::Cpu)?;
    let ids = ids.as_u32()?;
    for (i, r) in want {
        picked[i] = Some(ids[r]);
    }
    Ok(picked)
}

/// The chosen token's log-probability under `logits` (1, V) and the top `k`.
fn logprob_of(logits: &Tensor, id: u32, k: usize) -> anyhow::Result<TokenLogprob> {
    let row = logits.as_f32()?;
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = max + row.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        idx.truncate(k);
        idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        top = idx.into_iter().map(|i| (i, row[i as usize] - lse)).collect();
    }
    Ok(TokenLogprob { id, logprob: row[id as usize] - lse, top })
}

/// Runs jobs until every sender of `jobs` is gone (the HTTP side has ended).
///
/// With `EngineConfig::one_at_a_time`, jobs run one at a time, each with its own contiguous
/// cache, through the same loop.
pub fn run<'a>(
    model: &'a Model,
    tok: &'a Tokenizer,
    stop_ids: &[u32],
    jobs: Receiver<Job>,
    stats: &Stats,
    cfg: EngineConfig,
) {
    let paged = cfg.paged;
    let parallel = if paged { cfg.parallel.max(1) } else { 1 };
    let prefill_chunk = if cfg.prefill_chunk == 0 { 0 } else { cfg.prefill_chunk.max(MIN_PREFILL_CHUNK) };
    let mut pool = cfg.pool;
    // On a GPU, steps of decode rows only are replayed from captured graphs (unless
    // SMELT_CUDA_GRAPH=0); they hold the pool's addresses, and the pool lives as long.
    let graphs = if paged { PagedDecoder::new(model, &pool, parallel) } else { Ok(None) };
    let mut graphs = graphs.unwrap_or_else(|e| {
        eprintln!("smelt serve: batched decode steps will be launched, not replayed: {e:#}");
        None
    });
    let mut blocks = Blocks::new(pool.blocks(), BLOCK_SIZE);
    stats.kv_blocks_total.store(blocks.total() as u64, Ordering::Relaxed);
    let mut waiting: VecDeque<Seq> = VecDeque::new();
    let mut running: Vec<Seq> = Vec::new();
    let mut open = true;
    loop {
        // Take what arrived; sleep on the channel only when there is nothing to do.
        loop {
            let job = if running.is_empty() && waiting.is_empty() && open {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            match job {
                Ok(job) => waiting.push_back(Seq::new(job, tok)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open && running.is_empty() && waiting.is_empty() {
            return;
        }
        // Jobs whose clients left while they waited.
        waiting.retain(|s| {
            let gone = s.job.events.is_closed();
            if gone {
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                stats.finished.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        // Sequences whose clients left: their blocks go back now.
        let (gone, going): (Vec<Seq>, Vec<Seq>) = running.into_iter().partition(|s| s.job.events.is_closed());
        running = going;
        for s in gone {
            retire(s, &mut blocks, stats);
        }
        // Room for every running sequence's next token; preempt the newest if there is none.
        let mut i = 0;
        while paged && i < running.len() {
            let need = (running[i].tokens.len()).div_ceil(BLOCK_SIZE);
            if running[i].table.len() >= need {
                i += 1;
                continue;
            }
            match blocks.allocate() {
                Some(b) => running[i].table.push(b),
                None => {
                    let victim = running.len() - 1;
                    let mut s = running.remove(victim);
                    s.release(&mut blocks);
                    stats.preempted.fetch_add(1, Ordering::Relaxed);
                    stats.running.fetch_sub(1, Ordering::Relaxed);
                    stats.waiting.fetch_add(1, Ordering::Relaxed);
                    waiting.push_front(s);
                    if victim == i {
                        break;
                    }
                }
            }
        }
        // Admit waiting sequences while there is room.
        while running.len() < parallel {
            let Some(s) = waiting.front_mut() else { break };
            let n = s.tokens.len();
            if !paged {
                let mut s = waiting.pop_front().expect("front exists");
                match KvCache::new_on(&model.cfg, 1, s.job.prompt.len() + s.job.max_tokens + 1, model.device()) {
                    Ok(c) => s.dec = Some(Decoder::new(model, c)),
                    Err(e) => {
                        stats.waiting.fetch_sub(1, Ordering::Relaxed);
                        stats.finished.fetch_add(1, Ordering::Relaxed);
                        s.send(Event::Failed(format!("{e:#}")));
                        continue;
                    }
                }
                stats.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                stats.running.fetch_add(1, Ordering::Relaxed);
                running.push(s);
                continue;
            }
            let need = (n + 1).div_ceil(BLOCK_SIZE);
            let reuse = n.saturating_sub(MIN_RECOMPUTE) / BLOCK_SIZE;
            let (hit, last_hash) = blocks.match_prefix(&s.tokens, reuse);
            if blocks.unused() < need - hit.len() {
                blocks.release(&hit);
                break;
            }
            let fresh = need - hit.len();
            let mut s = waiting.pop_front().expect("front exists");
            if s.generated.is_empty() {
                s.cached_tokens = hit.len() * BLOCK_SIZE;
                stats.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                stats.cached_prompt_tokens.fetch_add(s.cached_tokens as u64, Ordering::Relaxed);
            }
            s.computed = hit.len() * BLOCK_SIZE;
            s.named = hit.len();
            s.last_hash = last_hash;
            s.table = hit;
            for _ in 0..fresh {
                s.table.push(blocks.allocate().expect("counted as unused"));
            }
            stats.waiting.fetch_sub(1, Ordering::Relaxed);
            stats.running.fetch_add(1, Ordering::Relaxed);
            running.push(s);
        }
        stats.kv_blocks_used.store(blocks.used() as u64, Ordering::Relaxed);
        if running.is_empty() {
            // Nothing fits yet (cannot happen with a pool of at least one context): wait.
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        // What each sequence computes this step (chunked prefill; one at a time: everything),
        // its row of the logits, and whether it samples (its prompt is then complete).
        let takes = if paged {
            plan_step(running.iter().map(|s| s.tokens.len() - s.computed), prefill_chunk)
        } else {
            running.iter().map(|s| s.tokens.len() - s.computed).collect()
        };
        let mut next_row = 0;
        let rows: Vec<Option<usize>> = running
            .iter()
            .zip(&takes)
            .map(|(s, &t)| {
                let row = (t > 0).then_some(next_row);
                next_row += usize::from(t > 0);
                row.filter(|_| s.computed + t == s.tokens.len())
            })
            .collect();
        let chunks = running.iter().zip(&takes).filter(|(s, &t)| t > 0 && s.computed + t < s.tokens.len()).count();
        stats.prefill_chunks.fetch_add(chunks as u64, Ordering::Relaxed);
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats.batch_max.fetch_max(next_row as u64, Ordering::Relaxed);
        // Structured output: a constrained sequence's mask for this step depends only on its
        // tokens so far, so the masks are computed on a thread of their own while the forward
        // runs (the constraints of the sequences that sample are lent to it and come back after).
        let mut constraints: Vec<Option<Constraint>> = running
            .iter_mut()
            .zip(&rows)
            .map(|(s, r)| if r.is_some() { s.job.constraint.take() } else { None })
            .collect();
        let (step, masks) = std::thread::scope(|sc| {
            let masker = constraints.iter().any(Option::is_some).then(|| {
                sc.spawn(|| {
                    let timed = |c: &mut Constraint| {
                        let t = Instant::now();
                        (c.next_mask(), t.elapsed())
                    };
                    constraints.iter_mut().map(|c| c.as_mut().map(timed)).collect::<Vec<_>>()
                })
            });
            let t = Instant::now();
            let step = forward(model, &mut running, &takes, &mut pool, &mut graphs);
            // On a GPU this is the launch; the device's work is waited for by the sampling.
            let micros = t.elapsed().as_micros() as u64;
            stats.forward_micros.fetch_add(micros, Ordering::Relaxed);
            if takes.iter().all(|&t| t <= 1) {
                stats.decode_steps.fetch_add(1, Ordering::Relaxed);
                stats.decode_forward_micros.fetch_add(micros, Ordering::Relaxed);
            }
            (step, masker.map(|h| h.join()))
        });
        let mut masks: Vec<Option<anyhow::Result<Mask>>> = match masks {
            None => running.iter().map(|_| None).collect(),
            Some(Ok(masks)) => masks
                .into_iter()
                .map(|m| {
                    m.map(|(m, took)| {
                        stats.masks.fetch_add(1, Ordering::Relaxed);
                        stats.mask_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                        m
                    })
                })
                .collect(),
            Some(Err(_)) => constraints
                .iter()
                .map(|c| c.as_ref().map(|_| Err(anyhow::anyhow!("structured output: the mask thread panicked"))))
                .collect(),
        };
        for (s, c) in running.iter_mut().zip(constraints) {
            if c.is_some() {
                s.job.constraint = c;
            }
        }
        if let Some(g) = &graphs {
            stats.graph_steps.store(g.replayed(), Ordering::Relaxed);
        }
        let logits = match step {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                fail_all(&mut running, &mut blocks, stats, &format!("{e:#}"));
                continue;
            }
            Err(p) => {
                let why =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                fail_all(
                    &mut running,
                    &mut blocks,
                    stats,
                    &format!("the engine panicked: {}", why.unwrap_or_default()),
                );
                continue;
            }
        };
        let picked = match pick_greedy(&logits, &running, &rows) {
            Ok(p) => p,
            Err(e) => {
                fail_all(&mut running, &mut blocks, stats, &format!("{e:#}"));
                continue;
            }
        };
        let mut keep = Vec::with_capacity(running.len());
        for (i, mut s) in running.drain(..).enumerate() {
            s.computed += takes[i];
            if paged {
                s.name_full_blocks(&mut blocks);
            }
            // Waiting for its turn, or a prompt chunk with more to come: nothing to sample.
            let Some(row) = rows[i] else {
                keep.push(s);
                continue;
            };
            let mask = masks[i].take();
            let outcome = match picked[i] {
                Some(id) => s.advance(Row::Picked(id), mask, stop_ids, stats),
                // A one-row step's logits are the row (no copy: the one-client case).
                None => (if logits.rows() == 1 { Ok(logits.clone()) } else { logits.narrow_rows(row, 1) })
                    .and_then(|row| s.advance(Row::Logits(row), mask, stop_ids, stats)),
            };
            match outcome {
                Ok(Outcome::Going) => keep.push(s),
                Ok(Outcome::Finished | Outcome::Gone) => retire(s, &mut blocks, stats),
                Err(e) => {
                    s.send(Event::Failed(format!("{e:#}")));
                    retire(s, &mut blocks, stats);
                }
            }
        }
        running = keep;
        stats.kv_blocks_used.store(blocks.used() as u64, Ordering::Relaxed);
    }
}

/// One forward over the running sequences' `takes` new tokens (those with none sit it out) →
/// the logits of each one's last new position, a row per taking sequence in order (a replayed
/// step's padding rows may follow); a panic fails the batch, not the server.
fn forward(
    model: &Model,
    running: &mut [Seq],
    takes: &[usize],
    pool: &mut KvPool,
    graphs: &mut Option<PagedDecoder>,
) -> std::thread::Result<anyhow::Result<Tensor>> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        if let [s] = running {
            if let Some(dec) = s.dec.as_mut() {
                let new = &s.tokens[s.computed..];
                let ids = Tensor::from_u32(new.to_vec(), &[1, new.len()])?;
                // The prompt, then one token a step (the step's logits are read before
                // the next one overwrites them).
                return if s.computed == 0 { dec.prefill(&ids) } else { dec.step(&ids) };
            }
        }
        let steps: Vec<SeqStep> = running
            .iter()
            .zip(takes)
            .filter(|(_, &t)| t > 0)
            .map(|(s, &t)| SeqStep { tokens: &s.tokens[s.computed..s.computed + t], pos0: s.computed, table: &s.table })
            .collect();
        match graphs.as_mut() {
            Some(g) if g.takes(&steps) => g.step(&steps, pool),
            _ => model.logits_paged(&steps, pool),
        }
    }))
}

fn retire(mut s: Seq, blocks: &mut Blocks, stats: &Stats) {
    s.release(blocks);
    stats.running.fetch_sub(1, Ordering::Relaxed);
    stats.finished.fetch_add(1, Ordering::Relaxed);
}

fn fail_all(running: &mut Vec<Seq>, blocks: &mut Blocks, stats: &Stats, why: &str) {
    for s in running.drain(..) {
        s.send(Event::Failed(why.to_string()));
        retire(s, blocks, stats);
    }
}

/// Stop strings over a stream of text pieces: a stop string may span pieces (tokens), so text
/// that could be the start of one is held back until it is known not to be.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds `piece`; returns the text that is now safe to emit and whether a stop string
    /// completed (then the text is everything before the earliest one, and nothing more comes).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        // Keep the longest tail of `held` that some stop string starts with.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The text held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out += &t;
            if hit {
                return (out, true);
            }
        }
        (out + &m.flush(), false)
    }

    #[test]
    fn stop_strings_across_pieces_are_cut_and_never_emitted() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["xE", "N", "D", "y"]), ("x".into(), true));
        // A false start is released once it cannot match.
        assert_eq!(run(&["END"], &["xEN", "o"]), ("xENo".into(), false));
        // The earliest of several wins.
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
        // Held text is released piece by piece as soon as it is safe.
        let mut m = StopMatcher::new(vec!["<|end|>".into()]);
        assert_eq!(m.push("hi <|"), ("hi ".into(), false));
        assert_eq!(m.push("x"), ("<|x".into(), false));
        // Multi-byte text is cut at character boundaries; no stops: everything passes at once.
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a"]), ("a".into(), false));
    }

    /// The one-request-at-a-time loop (contiguous caches behind `Decoder`):
    /// the same ids as `smelt_infer::generate`, one request after another.
    #[test]
    fn one_at_a_time_mode_gives_generate_s_answers() {
        use smelt_infer::{generate, GenerateConfig};
        use smelt_model::ModelConfig;
        let mut c = ModelConfig::llama(257, 32, 2, 4, 2, 64);
        c.max_pos = 128;
        let model = Model::init(c, 3).unwrap();
        let tok = Tokenizer::byte_level();
        let (jobs, queue) = std::sync::mpsc::channel();
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Stats::default();
        let prompts: Vec<Vec<u32>> = ["first", "second prompt"].iter().map(|p| tok.encode(p)).collect();
        for (i, p) in prompts.iter().enumerate() {
            let sampling = SamplingConfig { temperature: 0.7, seed: i as u64, ..Default::default() };
            stats.waiting.fetch_add(1, Ordering::Relaxed);
            let job = Job {
                prompt: p.clone(),
                max_tokens: 12,
                sampling,
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                logprobs: Some(0),
                stop: vec![],
                constraint: None,
                ignore_eos: false,
                index: i,
                events: events.clone(),
                queued: Instant::now(),
            };
            jobs.send(job).unwrap();
        }
        drop((jobs, events));
        super::run(&model, &tok, &[256], queue, &stats, EngineConfig::one_at_a_time(&model).unwrap());
        let mut ids = vec![Vec::new(); 2];
        while let Ok((i, ev)) = rx.try_recv() {
            if let Event::Text(_, lp) = ev {
                ids[i].extend(lp.iter().map(|l| l.id));
            }
        }
        for (i, p) in prompts.iter().enumerate() {
            let sampling = SamplingConfig { temperature: 0.7, seed: i as u64, ..Default::default() };
            let cfg = GenerateConfig { max_tokens: 12, sampling, stop_ids: vec![256] };
            assert_eq!(ids[i], generate(&model, p, &cfg, |_| {}).unwrap().ids, "request {i}");
        }
        assert_eq!((Stats::get(&stats.finished), Stats::get(&stats.batch_max)), (2, 1));
    }

    /// A constrained job runs the same in both loops (batched over the paged pool, and one
    /// at a time): the same greedy and seeded answers, each a whole JSON value
    /// of the schema, ended as "stop" by the grammar.
    #[test]
    fn constrained_jobs_give_the_same_valid_answers_in_both_modes() {
        use crate::structured::{Format, Grammars};
        use smelt_model::ModelConfig;
        let mut c = ModelConfig::llama(257, 32, 2, 4, 2, 64);
        c.max_pos = 256;
        let model = Model::init(c, 3).unwrap();
        let tok = Tokenizer::byte_level();
        let grammars = Grammars::new(&tok, 257, &[256]).unwrap();
        let schema = serde_json::json!({"type": "object", "properties": {"ok": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 0, "maximum": 999}}, "required": ["ok", "n"],
            "additionalProperties": false});
        let constraint = grammars.compile(&Format::JsonSchema(schema)).unwrap();
        let answers = |cfg: EngineConfig| {
            let (jobs, queue) = std::sync::mpsc::channel();
            let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let stats = Stats::default();
            for (i, temperature) in [0.0, 1.0, 1.0].into_iter().enumerate() {
                stats.waiting.fetch_add(1, Ordering::Relaxed);
                jobs.send(Job {
                    prompt: tok.encode(&format!("prompt {i}")),
                    max_tokens: 200,
                    sampling: SamplingConfig { temperature, seed: i as u64, ..Default::default() },
                    presence_penalty: 0.0,
                    frequency_penalty: 0.0,
                    logprobs: None,
                    stop: vec![],
                    constraint: Some(constraint.clone()),
                    ignore_eos: false,
                    index: i,
                    events: events.clone(),
                    queued: Instant::now(),
                })
                .unwrap();
            }
            drop((jobs, events));
            super::run(&model, &tok, &[256], queue, &stats, cfg);
            let mut out = vec![(String::new(), None); 3];
            while let Ok((i, ev)) = rx.try_recv() {
                match ev {
                    Event::Text(t, _) => out[i].0 += &t,
                    Event::Done { finish, .. } => out[i].1 = Some(finish),
                    Event::Failed(e) => panic!("{e}"),
                }
            }
            assert!(Stats::get(&stats.masks) > 0);
            out
        };
        let batched = answers(EngineConfig::new(&model, 4, 1024, KvType::F32).unwrap());
        let single = answers(EngineConfig::one_at_a_time(&model).unwrap());
        assert_eq!(batched, single);
        for (text, finish) in &batched {
            assert_eq!(*finish, Some(Finish::Stop), "{text}");
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(v["ok"].is_boolean() && v["n"].as_u64().is_some_and(|n| n <= 999), "{text}");
            assert_eq!(v.as_object().unwrap().len(), 2, "{text}");
        }
    }

    #[test]
    fn a_step_s_prompt_tokens_stay_within_the_chunk_and_every_chunk_keeps_eight_rows() {
        // Decode rows always go; prompts share the budget in order of admission.
        assert_eq!(plan_step([1, 600, 1, 300].into_iter(), 512), vec![1, 512, 1, 0]);
        assert_eq!(plan_step([1, 600, 1, 300].into_iter(), 0), vec![1, 600, 1, 300]);
        assert_eq!(plan_step([100, 300].into_iter(), 512), vec![100, 300]);
        assert_eq!(plan_step([100, 300, 200].into_iter(), 512), vec![100, 300, 112]);
        // A chunk never leaves fewer than 8 rows for later, nor takes fewer than 8.
        assert_eq!(chunk_len(514, 512), 506);
        assert_eq!(chunk_len(519, 512), 511);
        assert_eq!(chunk_len(520, 512), 512);
        assert_eq!(chunk_len(600, 7), 0);
        assert_eq!(chunk_len(15, 10), 0);
        assert_eq!(chunk_len(16, 10), 8);
        assert_eq!(chunk_len(3, 512), 3);
        assert_eq!(plan_step([600, 600].into_iter(), 519), vec![519, 0]);
        assert_eq!(plan_step([100, 600].into_iter(), 120), vec![100, 20]);
        assert_eq!(plan_step([100, 600].into_iter(), 107), vec![100, 0]);
        // Every prompt finishes: chunk after chunk, whatever the lengths.
        for n in 2..200 {
            for budget in [16, 17, 31, 64] {
                let (mut left, mut chunks) = (n, Vec::new());
                while left > 0 {
                    let t = plan_step([left].into_iter(), budget)[0];
                    assert!(t > 0 && t <= budget.max(left.min(budget)), "{n} in chunks of {budget}: {chunks:?}");
                    assert!(
                        t == left || (t >= MIN_CHUNK_ROWS && left - t >= MIN_CHUNK_ROWS),
                        "{n}/{budget}: {t} of {left}"
                    );
                    chunks.push(t);
                    left -= t;
                }
            }
        }
    }

    #[test]
    fn logprobs_are_log_softmax_with_the_top_alternatives_in_order() {
        let logits = Tensor::from_f32(vec![1.0, 3.0, 2.0, 0.0], &[1, 4]).unwrap();
        let lp = logprob_of(&logits, 2, 2).unwrap();
        let z: f64 = [1.0f64, 3.0, 2.0, 0.0].iter().map(|x| x.exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((lp.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
    }
}
