//! Per-op wall-clock totals, on when `SMELT_PROFILE=1`: `smelt bench` prints them, which is how
//! to see where a step's time goes without a profiler. Off, it costs one relaxed load per op.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on
static TOTALS: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("SMELT_PROFILE").is_ok_and(|v| v == "1");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Runs `f`, adding its duration to `name`'s total when profiling is on.
pub fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let mut m = TOTALS.lock().unwrap();
    let e = m.entry(name).or_insert((0.0, 0));
    e.0 += t.elapsed().as_secs_f64();
    e.1 += 1;
    r
}

/// (name, seconds, calls), largest first; clears the totals.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    let mut m = TOTALS.lock().unwrap();
    let mut v: Vec<_> = m.iter().map(|(k, (s, n))| (*k, *s, *n)).collect();
    m.clear();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    v
}
