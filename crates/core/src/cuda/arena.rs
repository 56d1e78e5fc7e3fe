//! A captured step's intermediates from one buffer made before the capture, so the graph holds
//! kernel nodes (not memory nodes) between its kernels.
//!
//! Without it every op's output allocation and every free becomes a memory node of the graph,
//! between two kernels; those cost little themselves, but a kernel launched with programmatic
//! dependent launch (`launch::Launch`) can only overlap the kernel before it across a
//! kernel→kernel edge (`examples/decode_chain`, docs/PERF.md: 2.59 → 1.27 µs a small kernel,
//! none of it with memory nodes between).
//!
//! Per thread, per GPU: `count` runs a closure (the step's uncaptured first run) and returns the
//! bytes the arena will need for it; `bump` runs one (the capture) with `DeviceBuf::alloc`
//! handing out pieces of a buffer instead. A freed piece is reused by a later request of the
//! same rounded size (the layers repeat their sizes), as the stream-ordered allocator's memory
//! nodes reuse memory within a graph: safe because every kernel of a step runs after the ones
//! launched before it have finished — plainly launched, or programmatic ones that write
//! nothing before `pdl_wait`. `count` runs the same allocator on offsets, so its answer is the
//! high-water mark, not the sum. A piece is never freed to the driver (the memory is the
//! arena's, kept by the graph); a request that does not fit falls back to the stream's
//! allocator (a memory node again: slower, still correct). `uncounted` keeps lasting
//! allocations a first run makes (the bf16 copies of f32 weights) out of it.

use std::cell::RefCell;

/// Pieces start on 256-byte boundaries, as the driver's allocations do (16-byte loads and the
/// kernels' alignment checks rely on it).
pub(crate) const ALIGN: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Count,
    Bump { base: u64 },
}

/// One arena in use on this thread: its allocator over offsets [0, size).
struct Active {
    kind: Kind,
    ordinal: usize,
    size: usize,
    /// The high-water mark of the offsets handed out.
    top: usize,
    /// Freed pieces (offset, rounded size), reused first.
    free: Vec<(usize, usize)>,
    /// A serial number, so that a piece freed after its arena ended is not given back to
    /// another.
    id: u64,
    /// Allocations made with the arena paused (`uncounted`: lasting ones, such as a weight's
    /// first bf16 copy). A step that makes none has reached its steady state.
    lasting: usize,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
    static PAUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static NEXT_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

fn round(bytes: usize) -> usize {
    bytes.max(1).div_ceil(ALIGN) * ALIGN
}

/// What `DeviceBuf::alloc` got from the arena: a piece to use (`Piece`), or only a place in
/// the count (`Counted`; the buffer is allocated as usual). Either is handed back with `give`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Taken {
    pub(crate) ptr: Option<u64>,
    id: u64,
    offset: usize,
    size: usize,
}

/// Restores the previous arena (or none) when dropped, also on a panic inside the closure.
struct Restore(Option<Active>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        ACTIVE.with(|a| *a.borrow_mut() = prev);
    }
}

/// (what `f` returns, the high-water mark, the lasting allocations).
fn run<R>(kind: Kind, ordinal: usize, size: usize, f: impl FnOnce() -> R) -> (R, usize, usize) {
    let id = NEXT_ID.with(|n| n.replace(n.get() + 1));
    let prev = ACTIVE
        .with(|a| a.borrow_mut().replace(Active { kind, ordinal, size, top: 0, free: Vec::new(), id, lasting: 0 }));
    let restore = Restore(prev);
    let r = f();
    let (top, lasting) = ACTIVE.with(|a| a.borrow().as_ref().map_or((0, 0), |a| (a.top, a.lasting)));
    drop(restore);
    (r, top, lasting)
}

/// Runs `f` counting what an arena for its allocations on GPU `ordinal` needs (bytes).
pub(crate) fn count<R>(ordinal: usize, f: impl FnOnce() -> R) -> (R, usize) {
    let (r, top, _) = run(Kind::Count, ordinal, usize::MAX, f);
    (r, top)
}

/// `count`, and how many lasting allocations (`uncounted`) `f` made on that GPU: 0 once a
/// step's first-run work (kernel loads, weights' bf16 copies) is behind it.
pub(crate) fn count_steady<R>(ordinal: usize, f: impl FnOnce() -> R) -> (R, usize, usize) {
    run(Kind::Count, ordinal, usize::MAX, f)
}

/// Runs `f` with the allocations on GPU `ordinal` taken from `size` bytes at `base`; returns
/// what `f` returns and the bytes used.
///
/// # Safety
/// `base..base + size` must be device memory of that GPU, 256-byte aligned, that outlives
/// every use of the pointers handed out (the captured graph that holds them) and that nothing
/// else uses meanwhile.
pub(crate) unsafe fn bump<R>(ordinal: usize, base: u64, size: usize, f: impl FnOnce() -> R) -> (R, usize) {
    debug_assert_eq!(base % ALIGN as u64, 0, "arena base not {ALIGN}-byte aligned");
    let (r, top, _) = run(Kind::Bump { base }, ordinal, size, f);
    (r, top)
}

/// Runs `f` with the arena out of the way: its allocations are neither counted nor taken.
pub(crate) fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    struct Unpause(bool);
    impl Drop for Unpause {
        fn drop(&mut self) {
            PAUSED.with(|p| p.set(self.0));
        }
    }
    let _u = Unpause(PAUSED.with(|p| p.replace(true)));
    f()
}

/// Called by `DeviceBuf::alloc` for `bytes` on GPU `ordinal`: None when no arena of that GPU
/// is active (or it is paused or full); else a place in it, with a pointer in bump mode.
pub(crate) fn take(ordinal: usize, bytes: usize) -> Option<Taken> {
    if PAUSED.with(|p| p.get()) {
        ACTIVE.with(|a| {
            if let Some(a) = a.borrow_mut().as_mut().filter(|a| a.ordinal == ordinal) {
                a.lasting += 1;
            }
        });
        return None;
    }
    ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        let a = a.as_mut().filter(|a| a.ordinal == ordinal)?;
        let size = round(bytes);
        let offset = match a.free.iter().position(|&(_, s)| s == size) {
            Some(i) => a.free.swap_remove(i).0,
            None if a.top + size <= a.size => {
                a.top += size;
                a.top - size
            }
            None => return None,
        };
        let ptr = match a.kind {
            Kind::Bump { base } => Some(base + offset as u64),
            Kind::Count => None,
        };
        Some(Taken { ptr, id: a.id, offset, size })
    })
}

/// Hands a place back (its buffer dropped): reused by a later `take` of the same size while its
/// arena is active; forgotten once it has ended.
pub(crate) fn give(t: Taken) {
    ACTIVE.with(|a| {
        if let Some(a) = a.borrow_mut().as_mut().filter(|a| a.id == t.id) {
            a.free.push((t.offset, t.size));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_aligned_reused_by_size_and_end_with_the_arena() {
        let ((a, b, c, other), used) = unsafe {
            bump(0, 4096, 1024, || {
                let a = take(0, 10).unwrap();
                let b = take(0, 300).unwrap();
                give(a);
                let c = take(0, 200).unwrap(); // a's place again
                let other = take(1, 8);
                (a, b, c, other)
            })
        };
        assert_eq!((a.ptr, b.ptr, c.ptr, other), (Some(4096), Some(4096 + 256), Some(4096), None));
        assert_eq!(used, 768);
        assert_eq!(take(0, 8), None, "none outside an arena");
        give(b); // after its arena: forgotten
        let (full, _) = unsafe { bump(0, 0, 512, || (take(0, 256).is_some(), take(0, 512).is_none())) };
        assert_eq!(full, (true, true), "a piece past the end falls back");
        let (_, n) = count(0, || {
            let x = take(0, 1).unwrap();
            uncounted(|| assert!(take(0, 5000).is_none()));
            take(1, 5000);
            give(x);
            take(0, 200); // reuses x's place
            take(0, 257)
        });
        assert_eq!(n, 256 + 512, "the high-water mark of GPU 0's, not the paused one's");
        let (_, _, lasting) = count_steady(0, || {
            uncounted(|| take(0, 64));
            take(1, 64);
            take(0, 64)
        });
        assert_eq!(lasting, 1, "GPU 0's one paused allocation");
    }

    #[test]
    fn a_panic_inside_ends_the_arena() {
        let r = std::panic::catch_unwind(|| unsafe { bump(0, 4096, 1024, || panic!("inside")) });
        assert!(r.is_err());
        assert_eq!(take(0, 8), None, "the arena ended with the panic");
    }
}
