//! A captured step's intermediates from one buffer made before the capture, so the graph holds
//! kernel nodes only.
//!
//! Without it every op's output allocation and every free becomes a memory node of the graph,
//! between two kernels; those cost little themselves, but a kernel launched with programmatic
//! dependent launch (`launch::Launch`) can only overlap the kernel before it across a
//! kernel→kernel edge (`examples/decode_chain`, docs/PERF.md: 2.59 → 1.27 µs a small kernel,
//! none of it with memory nodes between).
//!
//! Per thread, per GPU: `count` runs a closure (the step's uncaptured first run) and returns the
//! bytes it allocated on that GPU; `bump` runs one (the capture) with `DeviceBuf::alloc` handing
//! out consecutive pieces of a buffer instead, never reusing one (a step's intermediates are a
//! few MB). A piece is not freed when its buffer drops (the memory is the arena's, kept by the
//! graph); an allocation that does not fit falls back to the stream's allocator (a memory node
//! again: slower, still correct). `uncounted` keeps lasting allocations a first run makes (the
//! bf16 copies of f32 weights) out of the count.

use std::cell::Cell;

/// Pieces start on 256-byte boundaries, as the driver's allocations do (16-byte loads and the
/// kernels' alignment checks rely on it).
const ALIGN: usize = 256;

#[derive(Clone, Copy)]
enum Mode {
    Off,
    Count { ordinal: usize, bytes: usize },
    Bump { ordinal: usize, base: u64, size: usize, used: usize },
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Off) };
    static PAUSED: Cell<bool> = const { Cell::new(false) };
}

fn round(bytes: usize) -> usize {
    bytes.max(1).div_ceil(ALIGN) * ALIGN
}

/// Runs `f` counting the bytes it allocates on GPU `ordinal` (rounded as the arena rounds them).
pub fn count<R>(ordinal: usize, f: impl FnOnce() -> R) -> (R, usize) {
    let before = MODE.with(|m| m.replace(Mode::Count { ordinal, bytes: 0 }));
    let r = f();
    let after = MODE.with(|m| m.replace(before));
    (r, if let Mode::Count { bytes, .. } = after { bytes } else { 0 })
}

/// Runs `f` with the allocations on GPU `ordinal` taken from `size` bytes at `base` (a buffer
/// that outlives whatever keeps the pointers, e.g. the captured graph). Returns what `f` returns
/// and the bytes it took.
pub fn bump<R>(ordinal: usize, base: u64, size: usize, f: impl FnOnce() -> R) -> (R, usize) {
    let before = MODE.with(|m| m.replace(Mode::Bump { ordinal, base, size, used: 0 }));
    let r = f();
    let after = MODE.with(|m| m.replace(before));
    (r, if let Mode::Bump { used, .. } = after { used } else { 0 })
}

/// Runs `f` with the arena out of the way: its allocations are neither counted nor bumped.
pub fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let before = PAUSED.with(|p| p.replace(true));
    let r = f();
    PAUSED.with(|p| p.set(before));
    r
}

/// Called by `DeviceBuf::alloc` for `bytes` on GPU `ordinal`: the address of an arena piece in
/// bump mode (None when off, counting, paused, another GPU's, or full).
pub(super) fn take(ordinal: usize, bytes: usize) -> Option<u64> {
    if PAUSED.with(|p| p.get()) {
        return None;
    }
    MODE.with(|m| match m.get() {
        Mode::Count { ordinal: o, bytes: b } if o == ordinal => {
            m.set(Mode::Count { ordinal: o, bytes: b + round(bytes) });
            None
        }
        Mode::Bump { ordinal: o, base, size, used } if o == ordinal && used + round(bytes) <= size => {
            m.set(Mode::Bump { ordinal: o, base, size, used: used + round(bytes) });
            Some(base + used as u64)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_aligned_consecutive_and_end_with_the_arena() {
        let ((a, b, c, other), used) = bump(0, 4096, 1024, || (take(0, 10), take(0, 300), take(0, 600), take(1, 8)));
        assert_eq!((a, b, c, other), (Some(4096), Some(4096 + 256), None, None), "a piece past the end falls back");
        assert_eq!(used, 768);
        assert_eq!(take(0, 8), None, "off outside bump");
        let (_, n) = count(0, || {
            take(0, 1);
            uncounted(|| take(0, 5000));
            take(1, 5000);
            take(0, 257)
        });
        assert_eq!(n, 256 + 512, "only GPU 0's, not the paused one");
    }
}
