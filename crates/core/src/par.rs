//! The inference thread pool: `for_each(n, f)` runs f(0..n) on threads that spin between
//! calls, as llama.cpp's do between graph nodes.
//!
//! Why not rayon for these ops: a batch-1 decode step of a 135M model is ~150-200 parallel ops
//! of 10–30 µs each. Rayon splits each one by recursive `join`, and its idle workers fall asleep
//! after ~64 µs of yielding, so every op pays wake-ups and steals; at 16 threads that overhead
//! was larger than the work (decode stopped scaling past 4 threads, add_rmsnorm got slower
//! from 4 to 16; docs/PERF.md "CPU at 16 threads"). Here a call publishes one job and the
//! workers (already spinning) see it; the caller works too; a worker parks on a condvar only
//! after `SMELT_SPIN_US` (default 200) µs without a job.
//!
//! A call's cost is its cache-line traffic, and a read-modify-write of a line every thread
//! writes is the dear kind (each one waits for the last: 16 threads × a few such writes was
//! ~4.5 µs a call on a 16-core Xeon, docs/PERF.md). So the first `threads` tasks are owned:
//! task i < threads is thread i's, claimed on thread i's own line (the caller is thread 0), and
//! only tasks past those go through one shared counter. A thread marks its line busy while it
//! holds the job, and the caller, done with its own share, runs any owned task no one has
//! claimed yet (a parked or descheduled worker's) and then waits until no line is busy. A
//! decode matvec (one task per thread) thus costs each thread two writes to its own line.
//!
//! The results never depend on which thread ran a task: each task writes its own outputs, so
//! the split changes the time and nothing else (the ops' parity tests pin the bits). Rayon
//! stays the pool for everything else (training's tasks, data preparation); a call made while
//! another thread holds this pool (tests run in parallel) goes to rayon, and a call from
//! inside a task runs serially on that thread.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A value alone on its cache lines (two: the adjacent-line prefetcher pairs them), so that
/// what one thread writes does not invalidate what another reads.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Thread t's line: written by thread t, read by the caller (and written by it only to run
/// an owned task that t has not claimed).
struct Seat {
    /// True while the thread may touch the current job (set before it loads `Call::job`).
    busy: AtomicBool,
    /// The number of the last call whose owned task t was claimed (by t, or by the caller).
    claimed: AtomicU64,
}

/// One call's work, on the caller's stack: a thread reaches it through `Call::job` only while
/// its seat is busy, and the caller returns only when no seat is.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    /// This call's number (`Call::epoch`): the tag of its claims.
    epoch: u64,
    /// Tasks 0..owned are owned (one per thread); the rest are claimed from `next`.
    owned: usize,
    panicked: AtomicBool,
    next: Line<AtomicUsize>,
}

impl Job<'_> {
    fn run(&self, i: usize) {
        if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
            self.panicked.store(true, Relaxed);
        }
    }

    /// Claims owned task i for this call; false if someone already has.
    fn claim(&self, seat: &Seat) -> bool {
        let last = seat.claimed.load(Acquire);
        last != self.epoch && seat.claimed.compare_exchange(last, self.epoch, AcqRel, Relaxed).is_ok()
    }

    /// Thread t's share: its owned task, then shared ones until none is left (a read before
    /// each claim, so no write to the shared line once the tasks are gone).
    fn work(&self, t: usize, seats: &[Line<Seat>]) {
        if t < self.owned && self.claim(&seats[t]) {
            self.run(t);
        }
        while self.next.load(Relaxed) < self.n {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.n {
                break;
            }
            self.run(i);
        }
    }
}

struct Pool {
    /// Threads including the caller's.
    threads: usize,
    /// One caller at a time.
    submit: Mutex<()>,
    /// What a call publishes, on a line the workers only read between calls.
    call: Line<Call>,
    /// One per thread (the caller's, 0, unused but for the indexing).
    seats: Vec<Line<Seat>>,
    /// Workers parked on `wake`.
    sleeping: Line<AtomicUsize>,
    lock: Mutex<()>,
    wake: Condvar,
    spin: Duration,
}

struct Call {
    /// The current job (a `*const Job` with its lifetime erased), null between calls.
    job: AtomicPtr<()>,
    /// Bumped per call: what spinning workers watch.
    epoch: AtomicU64,
    /// The call's task count: worker t (1..) takes part only if t < tasks, so a call of few
    /// tasks costs the other workers nothing but this read.
    tasks: AtomicUsize,
}

thread_local! {
    /// True on the pool's workers and on a caller while it runs tasks: a nested call runs serially.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let spin_us = std::env::var("SMELT_SPIN_US").ok().and_then(|s| s.parse().ok()).unwrap_or(200u64);
        let threads = rayon::current_num_threads().max(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            threads,
            submit: Mutex::new(()),
            call: Line(Call {
                job: AtomicPtr::new(std::ptr::null_mut()),
                epoch: AtomicU64::new(0),
                tasks: AtomicUsize::new(0),
            }),
            seats: (0..threads)
                .map(|_| Line(Seat { busy: AtomicBool::new(false), claimed: AtomicU64::new(0) }))
                .collect(),
            sleeping: Line(AtomicUsize::new(0)),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            spin: Duration::from_micros(spin_us),
        }));
        for t in 1..pool.threads {
            let spawned = std::thread::Builder::new().name(format!("smelt-par-{t}")).spawn(move || worker(pool, t));
            if spawned.is_err() {
                // Fewer workers only means fewer hands: the caller runs the owned tasks of the
                // missing ones, and everyone claims the shared ones.
                break;
            }
        }
        pool
    })
}

fn worker(pool: &'static Pool, id: usize) {
    INSIDE.with(|c| c.set(true));
    let call = &pool.call;
    let seat = &pool.seats[id];
    let mut seen = call.epoch.load(Acquire);
    loop {
        // Spin until a new call, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while call.epoch.load(Acquire) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || start.elapsed() < pool.spin {
                std::hint::spin_loop();
                continue;
            }
            let mut guard = pool.lock.lock().unwrap_or_else(|e| e.into_inner());
            pool.sleeping.fetch_add(1, SeqCst);
            while call.epoch.load(SeqCst) == seen {
                guard = pool.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            pool.sleeping.fetch_sub(1, SeqCst);
        }
        seen = call.epoch.load(Acquire);
        // (A later call's count when this worker lags a call behind: it then helps that call,
        // or sits it out, exactly as a worker that arrived late; its owned task, if any, is
        // then the caller's to run.)
        if id >= call.tasks.load(Acquire) {
            continue;
        }
        // Busy before loading the job, and the caller clears the job before reading the seats
        // (both SeqCst): either the caller sees this seat busy and waits, or this load sees
        // null (or a later call's job, which that call's caller then waits for).
        seat.busy.store(true, SeqCst);
        let job = call.job.load(SeqCst) as *const Job;
        if !job.is_null() {
            // SAFETY: a non-null `job` loaded while the seat is busy stays alive until the seat
            // is not (above).
            unsafe { (*job).work(id, &pool.seats) };
        }
        seat.busy.store(false, Release);
    }
}

/// The number of threads `for_each` spreads over (rayon's pool size: `--threads`, else
/// RAYON_NUM_THREADS, else one per logical CPU).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Output rows a task for a product of a few inputs (decode) over `rows` weight rows: one
/// block per thread, at least 32 rows (a floor on a task's bytes was tried on the Xeon at 16
/// threads, docs/PERF.md: no consistent gain).
pub fn few_rows_block(rows: usize) -> usize {
    rows.div_ceil(threads()).max(32)
}

/// Runs f(i) for every i in 0..n, spread over the pool's threads (the caller's included), and
/// returns when all are done. A panic in a task is re-raised here once every task has ended.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n == 0 {
        return;
    }
    if n == 1 || INSIDE.with(|c| c.get()) || threads() == 1 {
        return (0..n).for_each(f);
    }
    let pool = pool();
    let Ok(_one_caller) = pool.submit.try_lock() else {
        use rayon::prelude::*;
        return (0..n).into_par_iter().for_each(&f);
    };
    let owned = n.min(pool.threads);
    let epoch = pool.call.epoch.load(Relaxed) + 1;
    let job = Job { f: &f, n, epoch, owned, panicked: AtomicBool::new(false), next: Line(AtomicUsize::new(owned)) };
    pool.call.tasks.store(n, SeqCst);
    pool.call.job.store(&job as *const Job as *mut (), SeqCst);
    pool.call.epoch.store(epoch, SeqCst);
    if pool.sleeping.load(SeqCst) > 0 {
        let _guard = pool.lock.lock().unwrap_or_else(|e| e.into_inner());
        pool.wake.notify_all();
    }
    INSIDE.with(|c| c.set(true));
    job.work(0, &pool.seats);
    // The owned tasks nobody has claimed: a worker parked, descheduled or missing.
    for (t, seat) in pool.seats.iter().enumerate().take(owned).skip(1) {
        if job.claim(seat) {
            job.run(t);
        }
    }
    INSIDE.with(|c| c.set(false));
    // Every task is claimed now; each claimed one ends before its thread's seat is free. (All
    // seats: a worker past `owned` that read an earlier call's task count may hold the job too;
    // the seats nobody wrote since the last call are still in this core's cache.)
    pool.call.job.store(std::ptr::null_mut(), SeqCst);
    // Each pass reads every seat (independent loads, in flight together), rather than waiting
    // on one seat after another (one cross-core miss at a time: ~1.5 µs at 16 threads).
    wait_until(|| !pool.seats[1..].iter().fold(false, |any, seat| any | seat.busy.load(SeqCst)));
    if job.panicked.load(Relaxed) {
        panic!("a task of smelt_core::par::for_each panicked (its message is above)");
    }
}

/// Spins on `ready`, yielding the core after a while (a preempted worker needs it back).
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins = spins.wrapping_add(1);
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// `v` cut into pieces of `size` (the last shorter), piece i given to f(i, piece) in parallel.
pub fn chunks_mut<T: Send>(v: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let pieces = Pieces::new(v, size);
    // SAFETY: task i takes piece i, and only it.
    for_each(pieces.count(), |i| f(i, unsafe { pieces.take(i) }));
}

/// A mutable slice cut into pieces of `size` (the last shorter) that parallel tasks take one
/// each: for ops that write several outputs cut alike (`chunks_mut` is the one-output case).
pub struct Pieces<'a, T> {
    ptr: *mut T,
    len: usize,
    size: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: pieces are handed out disjointly (`take`'s contract), like `par_chunks_mut`'s.
unsafe impl<T: Send> Sync for Pieces<'_, T> {}

impl<'a, T> Pieces<'a, T> {
    pub fn new(v: &'a mut [T], size: usize) -> Self {
        Pieces { ptr: v.as_mut_ptr(), len: v.len(), size: size.max(1), _borrow: std::marker::PhantomData }
    }
    pub fn count(&self) -> usize {
        self.len.div_ceil(self.size)
    }
    /// Piece i.
    ///
    /// # Safety
    /// Each i is taken at most once while the pieces live (one task per piece).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn take(&self, i: usize) -> &'a mut [T] {
        let start = i * self.size;
        assert!(start < self.len, "piece {i} of {}", self.count());
        std::slice::from_raw_parts_mut(self.ptr.add(start), self.size.min(self.len - start))
    }
}

/// [f(0), …, f(n − 1)], computed in parallel.
pub fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out = uninit(n);
    chunks_mut(&mut out, 1, |i, slot| {
        slot[0].write(f(i));
    });
    // SAFETY: every slot was written (for_each returned normally: all n tasks ran, none
    // panicked).
    unsafe { assume_init(out) }
}

/// A vector of `n` slots to be written in parallel (then `assume_init`).
pub(crate) fn uninit<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// The vector of `uninit`'s slots as values.
///
/// # Safety
/// Every slot has been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the caller wrote every slot; MaybeUninit<T> has T's layout.
    Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity())
}

/// A pointer shared by tasks that write disjoint parts of what it points to.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
// SAFETY: users write disjoint elements through it (each use says why).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so that a closure captures the whole `SendPtr`, which is Sync,
    /// rather than its raw-pointer field, which is not).
    pub fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once() {
        for n in [0, 1, 2, 7, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each(n, |i| {
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
        }
    }

    /// Calls of every size one after another (owned tasks only, owned and shared ones), some
    /// tasks slow enough that the caller finishes first and claims the owned tasks of workers
    /// that have not started: each index still runs exactly once per call.
    #[test]
    fn owned_and_shared_tasks_run_once_per_call_across_many_calls() {
        for call in 0..2000 {
            let n = 1 + call % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each(n, |i| {
                if (call + i) % 97 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "call {call}, n = {n}");
        }
    }

    #[test]
    fn chunks_and_map_cover_everything_in_order() {
        let mut v = vec![0usize; 1001];
        chunks_mut(&mut v, 10, |i, c| c.iter_mut().enumerate().for_each(|(j, x)| *x = i * 10 + j));
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
        let m = map(333, |i| vec![i; 3]);
        assert!(m.iter().enumerate().all(|(i, x)| x == &vec![i; 3]));
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        for_each(8, |_| {
                            for_each(4, |_| {
                                total.fetch_add(1, Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 200 * 32);
    }

    #[test]
    fn a_panicking_task_is_reported_after_the_others_end() {
        let ran = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            for_each(16, |i| {
                ran.fetch_add(1, Relaxed);
                if i == 3 {
                    panic!("task 3");
                }
            })
        }));
        assert!(r.is_err());
        assert_eq!(ran.load(Relaxed), 16);
    }
}
