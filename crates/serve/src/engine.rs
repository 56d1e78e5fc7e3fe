//! The engine: the one thread that owns the model. HTTP handlers hand it [`Job`]s (prompt ids
//! and settings) over a channel and read [`Event`]s back over the job's own channel; the I/O
//! loop never touches the model.
//!
//! This slice runs one job at a time, in arrival order (the channel is the queue), through
//! `smelt_infer::generate_until`: the very loop `smelt generate` runs, so greedy output is the
//! same by construction. The seam for continuous batching is [`run`]: it owns the queue and
//! the model, and a scheduler that admits jobs into a running batch replaces its body without
//! the handlers changing (docs/SERVE.md).

use smelt_infer::{generate_until, GenerateConfig, SamplingConfig};
use smelt_model::Model;
use smelt_tokenizer::{StreamDecoder, Tokenizer};
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use tokio::sync::mpsc::UnboundedSender;

/// One request, validated and tokenised by its handler.
pub struct Job {
    pub prompt: Vec<u32>,
    /// New tokens at most (already capped at what the context leaves after the prompt).
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Strings that end generation; never part of the output.
    pub stop: Vec<String>,
    /// Where the events go; a closed channel (the client went away) ends the job.
    pub events: UnboundedSender<Event>,
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

#[derive(Debug)]
pub enum Event {
    /// The next piece of text (never empty, never part of a stop string).
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The model failed mid-request (a server error, not the request's fault).
    Failed(String),
}

/// Counters the engine and the handlers keep, read by `/metrics` and the queue check.
#[derive(Default)]
pub struct Stats {
    /// Jobs sent and not yet started (the queue depth).
    pub waiting: AtomicU64,
    /// Jobs generating now (0 or 1 in this slice).
    pub running: AtomicU64,
    /// Jobs finished (whatever the reason: done, failed, client gone).
    pub finished: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Runs jobs until every sender of `jobs` is gone (the HTTP side has ended).
pub fn run(model: &Model, tok: &Tokenizer, stop_ids: &[u32], jobs: Receiver<Job>, stats: &Stats) {
    while let Ok(job) = jobs.recv() {
        stats.waiting.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            stats.finished.fetch_add(1, Ordering::Relaxed);
            continue; // its client left while it waited
        }
        stats.running.fetch_add(1, Ordering::Relaxed);
        // A panic in the model code fails that request, not the server.
        let events = job.events.clone();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| run_one(model, tok, stop_ids, job, stats)));
        if let Err(p) = run {
            let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            let _ = events.send(Event::Failed(format!("the engine panicked: {}", why.unwrap_or_default())));
        }
        stats.running.fetch_sub(1, Ordering::Relaxed);
        stats.finished.fetch_add(1, Ordering::Relaxed);
    }
}

fn run_one(model: &Model, tok: &Tokenizer, stop_ids: &[u32], job: Job, stats: &Stats) {
    stats.prompt_tokens.fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
    let cfg = GenerateConfig { max_tokens: job.max_tokens, sampling: job.sampling, stop_ids: stop_ids.to_vec() };
    let mut decoder = StreamDecoder::new(tok);
    let mut stops = StopMatcher::new(job.stop);
    let mut hit = false;
    let mut gone = false;
    let events = &job.events;
    let send = |text: String| -> bool { text.is_empty() || events.send(Event::Text(text)).is_ok() };
    let result = generate_until(model, &job.prompt, &cfg, |id| {
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let (text, stopped) = stops.push(&decoder.push(id));
        hit = stopped;
        gone = !send(text);
        if hit || gone {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let g = match result {
        Ok(g) => g,
        Err(e) => {
            let _ = events.send(Event::Failed(format!("{e:#}")));
            return;
        }
    };
    if gone {
        return;
    }
    if !hit {
        // The bytes the decoder held back, then whatever the stop matcher held back.
        let (text, stopped) = stops.push(&decoder.finish());
        hit = stopped;
        let rest = if hit { String::new() } else { stops.flush() };
        if !send(text + &rest) {
            return;
        }
    }
    let finish = if hit || g.stopped_on_eos { Finish::Stop } else { Finish::Length };
    let _ = events.send(Event::Done { finish, prompt_tokens: g.prompt_ids.len(), completion_tokens: g.ids.len() });
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
}
