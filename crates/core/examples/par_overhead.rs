//! What one parallel call costs: `smelt_core::par::for_each` against rayon's `par_iter` (called
//! from inside its pool, as the CLI does), one task per thread (a decode step's matvec split),
//! each task `WORK` (default 1000) dependent additions, ~0.3 µs. Threads: RAYON_NUM_THREADS.
//! Prints µs a call, and the serial time of the same tasks for scale.
//!
//!     RAYON_NUM_THREADS=16 cargo run --release -p smelt-core --example par_overhead
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(run)
}

fn run() {
    let t = smelt_core::par::threads();
    let calls = 20_000;
    let n: u64 = std::env::var("WORK").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let work = |i: usize| {
        let mut x = i as u64;
        for _ in 0..n {
            x = black_box(x.wrapping_mul(3).wrapping_add(1));
        }
        black_box(x);
    };
    let start = Instant::now();
    for _ in 0..calls / 10 {
        (0..t).for_each(work);
    }
    let serial = start.elapsed().as_secs_f64() / (calls / 10) as f64 * 1e6;
    let mut best = [f64::MAX; 2];
    for _round in 0..3 {
        let start = Instant::now();
        for _ in 0..calls {
            smelt_core::par::for_each(t, work);
        }
        best[0] = best[0].min(start.elapsed().as_secs_f64() / calls as f64 * 1e6);
        let start = Instant::now();
        for _ in 0..calls {
            (0..t).into_par_iter().for_each(work);
        }
        best[1] = best[1].min(start.elapsed().as_secs_f64() / calls as f64 * 1e6);
    }
    println!(
        "{t} threads, {t} tasks of ~{:.2} us: par::for_each {:.2} us a call, rayon {:.2} us a call (serially {serial:.2} us)",
        serial / t as f64,
        best[0],
        best[1]
    );
}
