//! What `/metrics` reports: counters and gauges the engine and the handlers keep, and
//! Prometheus histograms of time to first token and inter-token latency, in Prometheus' text
//! format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms' buckets (vLLM's TTFT buckets, which also
/// cover inter-token latencies).
const BUCKETS: [f64; 17] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0];

/// A Prometheus histogram: counts per bucket (cumulated when rendered), the sum, the count.
#[derive(Default)]
pub struct Histogram {
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            h.0[i] += 1;
        }
        h.1 += secs;
        h.2 += 1;
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).2
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *out += &format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut acc = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += h.0.get(i).copied().unwrap_or(0);
            *out += &format!("{name}_bucket{{le=\"{b}\"}} {acc}\n");
        }
        *out += &format!("{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n", h.2, h.1, h.2);
    }
}

/// Counters the engine and the handlers keep, read by `/metrics` and the queue check.
#[derive(Default)]
pub struct Stats {
    /// Jobs sent and not yet running (the queue depth), preempted ones included.
    pub waiting: AtomicU64,
    /// Jobs in the running batch.
    pub running: AtomicU64,
    /// Jobs finished (whatever the reason: done, failed, client gone).
    pub finished: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Sequences sent back to wait for want of KV blocks.
    pub preempted: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    /// Blocks held by sequences (the rest are free or cached).
    pub kv_blocks_used: AtomicU64,
    /// Forward passes the engine has run, and the most sequences one of them held.
    pub steps: AtomicU64,
    pub batch_max: AtomicU64,
    /// Microseconds those forward passes took (the model's step: its matmuls, attention and
    /// logits, not the sampling, the text or the HTTP side): TPOT against it is what serving
    /// adds per token.
    pub forward_micros: AtomicU64,
    /// Of those, the steps where every sequence took one token (no prompt), and their time.
    pub decode_steps: AtomicU64,
    pub decode_forward_micros: AtomicU64,
    /// Of those steps, the ones replayed from a captured CUDA graph (all-decode steps on a GPU).
    pub graph_steps: AtomicU64,
    /// Steps that computed part of a prompt and left the rest for later (`--prefill-chunk`).
    pub prefill_chunks: AtomicU64,
    /// Structured output: token masks computed, and the time they took (microseconds).
    pub masks: AtomicU64,
    pub mask_micros: AtomicU64,
    /// Seconds from queueing to the first token.
    pub ttft: Histogram,
    /// Seconds between a sequence's consecutive tokens.
    pub itl: Histogram,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Prometheus' text format.
    pub fn render(&self) -> String {
        let rows = [
            (
                "smelt_requests_finished_total",
                "counter",
                "Requests the engine has finished (any outcome).",
                &self.finished,
            ),
            ("smelt_prompt_tokens_total", "counter", "Prompt tokens processed.", &self.prompt_tokens),
            (
                "smelt_prompt_tokens_cached_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                &self.cached_prompt_tokens,
            ),
            ("smelt_generated_tokens_total", "counter", "Tokens generated.", &self.generated_tokens),
            (
                "smelt_preemptions_total",
                "counter",
                "Sequences sent back to wait for want of KV blocks.",
                &self.preempted,
            ),
            ("smelt_requests_waiting", "gauge", "Requests queued for the engine (the queue depth).", &self.waiting),
            ("smelt_requests_running", "gauge", "Requests in the running batch.", &self.running),
            ("smelt_kv_blocks_total", "gauge", "Blocks in the KV pool.", &self.kv_blocks_total),
            ("smelt_kv_blocks_used", "gauge", "KV blocks held by running requests.", &self.kv_blocks_used),
            ("smelt_engine_steps_total", "counter", "Batched forward passes run.", &self.steps),
            ("smelt_batch_size_max", "gauge", "Most sequences one forward pass has held.", &self.batch_max),
            (
                "smelt_engine_forward_microseconds_total",
                "counter",
                "Microseconds the batched forward passes took (the model alone: no sampling, text or HTTP).",
                &self.forward_micros,
            ),
            (
                "smelt_engine_decode_steps_total",
                "counter",
                "Forward passes in which every sequence took one token (no prompt rows).",
                &self.decode_steps,
            ),
            (
                "smelt_engine_decode_forward_microseconds_total",
                "counter",
                "Microseconds those decode-only forward passes took.",
                &self.decode_forward_micros,
            ),
            (
                "smelt_cuda_graph_steps_total",
                "counter",
                "Decode steps replayed from a captured CUDA graph.",
                &self.graph_steps,
            ),
            (
                "smelt_prefill_chunks_total",
                "counter",
                "Prompt chunks computed with the rest of their prompt left for a later step (--prefill-chunk).",
                &self.prefill_chunks,
            ),
            (
                "smelt_structured_masks_total",
                "counter",
                "Token masks computed for response_format (one per constrained token).",
                &self.masks,
            ),
            (
                "smelt_structured_mask_microseconds_total",
                "counter",
                "Microseconds spent computing those masks.",
                &self.mask_micros,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in rows {
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n", Self::get(v));
        }
        self.ttft.render("smelt_time_to_first_token_seconds", "Seconds from queueing to the first token.", &mut out);
        self.itl.render(
            "smelt_inter_token_latency_seconds",
            "Seconds between consecutive tokens of a request.",
            &mut out,
        );
        out
    }
}
