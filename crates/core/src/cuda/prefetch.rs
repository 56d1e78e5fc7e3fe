//! L2 prefetch hints for a decode step's matvecs (issue 14's batch-1 decode).
//!
//! A 1B bf16 decode layer reads 121 MB of weights in ~54 µs where the bandwidth allows ~29: the
//! small products (q/k/v 12.6 MB, o 8.4 MB) run at 1.0-1.3 TB/s, because a read that short is
//! mostly its own latency ramp, and between them the attention leaves the DRAM idle. A matvec
//! given a hint also issues `prefetch.global.L2` for its block's share of the hinted weights,
//! after its own first loads (gemv.cu's `mv_start`), so a later small product finds its weights
//! in the 50 MB L2: the q/k/v launch prefetches o (read after the attention), o's launch the
//! first 12 MB of gate's and of up's (the DRAM has nothing else to do while o and the attention
//! run), the down launch the next layer's q/k/v. A prefetch moves no value into a register, so
//! no result changes.
//!
//! `hint` sets the weights for the next matvec launched on this thread (the guard it returns
//! clears them when dropped, consumed or not); the launchers `take` them as kernel arguments,
//! so a captured step replays its prefetches. Off unless `SMELT_CUDA_PREFETCH=1`: measured, they
//! slowed the 1B bf16 decode by 8% (`enabled`).

use crate::{DType, Tensor};
use std::cell::RefCell;

/// The most weight ranges one launch prefetches (three: the next layer's q, k and v).
pub(crate) const RANGES: usize = 3;

thread_local! {
    /// The hinted weights and how many of each one's first bytes to prefetch.
    static NEXT: RefCell<(Vec<Tensor>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    /// Bytes handed to kernels as prefetch ranges on this thread, ever (`handed_bytes`).
    static HANDED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The bytes this thread's launches have been given to prefetch so far: a test's check that the
/// hints reach the kernels they are meant for.
pub fn handed_bytes() -> u64 {
    HANDED.with(|h| h.get())
}

/// Off by default: measured on an H200 (2026-12-05, docs/PERF.md) the hints slowed the 1B bf16
/// decode from 1,157 to 1,064 tok/s. `SMELT_CUDA_PREFETCH=1` turns them on, to compare.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(f) = FORCE.with(|f| f.get()) {
        return f;
    }
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_PREFETCH").is_ok_and(|v| v == "1"))
}

thread_local! {
    static FORCE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Forces (`Some`) or releases (`None`) the hints on this thread, whatever `SMELT_CUDA_PREFETCH`
/// says: the test that checks they reach their launches.
#[doc(hidden)]
pub fn force(on: Option<bool>) {
    FORCE.with(|f| f.set(on));
}

/// Clears this thread's hint when dropped.
pub(crate) struct Hint(());

impl Drop for Hint {
    fn drop(&mut self) {
        NEXT.with(|n| n.borrow_mut().0.clear());
    }
}

/// Until the returned guard drops, the next matvec launched on this thread also prefetches the
/// first `max_bytes` of each of `ws` (at most `RANGES`; the rest are ignored) into L2.
pub(crate) fn hint(ws: &[&Tensor], max_bytes: usize) -> Hint {
    if enabled() {
        NEXT.with(|n| *n.borrow_mut() = (ws.iter().take(RANGES).map(|&t| (*t).clone()).collect(), max_bytes));
    }
    Hint(())
}

/// The hinted ranges as (device address, bytes), unused ones (0, 0), and the hint cleared: the
/// bytes a matvec reads for each weight — a quantised weight's blocks; under mixed precision an
/// f32 weight's bf16 copy (skipped while the copy is not made yet: the first step; never made
/// here); otherwise the weight's own buffer. Host weights and another GPU's are skipped.
pub(crate) fn take(gpu: &super::Gpu, bf16_operands: bool) -> [(u64, i64); RANGES] {
    let mut out = [(0u64, 0i64); RANGES];
    let (ws, max_bytes) = NEXT.with(|n| std::mem::take(&mut *n.borrow_mut()));
    for (slot, w) in out.iter_mut().zip(&ws) {
        // Only this GPU's memory (another device's address is not to be prefetched here).
        if let Some(q) = w.as_device_quant() {
            if q.blocks.gpu.ordinal == gpu.ordinal {
                *slot = (q.blocks.ptr(), (q.rows * q.row_bytes).min(max_bytes) as i64);
            }
            continue;
        }
        let Ok(b) = w.cuda_buf() else { continue };
        if b.gpu.ordinal != gpu.ordinal {
            continue;
        }
        let read = match (b.dtype, bf16_operands) {
            (DType::F32, true) => match b.bf16_shadow.get().and_then(|t| t.cuda_buf().ok()) {
                Some(s) => s,
                None => continue,
            },
            _ => b,
        };
        *slot = (read.ptr(), (read.len * read.dtype.size_in_bytes()).min(max_bytes) as i64);
    }
    HANDED.with(|h| h.set(h.get() + out.iter().map(|&(_, n)| n as u64).sum::<u64>()));
    out
}
