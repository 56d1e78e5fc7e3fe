//! Micro-benchmark of the activation quantiser and the quantised matvec (decode-sized, one
//! FFN matrix, or QBENCH_ROWS rows of 576), best of many runs: `cargo run --release -p smelt-core --example qbench`; SMELT_NO_SIMD=1 for scalar.
//! QBENCH_N=512 times a prefill-sized matmul instead (512 input rows; F16 too), at every SIMD
//! level this CPU has (Avx2 is the one-output-at-a-time path, Avx512 the register tiles, or for
//! Q8_0/Q4_0/Q4_1/Q6_K with a multiple of 32 rows the AMX tiles where `quant::amx_in_use`: labelled
//! `Avx512+AMX`; SMELT_AMX=0 times the register tiles there).
use smelt_core::quant::simd::Level;
use smelt_core::quant::{act, GgmlType, QTensor, QuantMatrix};
use std::time::Instant;
fn main() {
    // Inside the pool, as the smelt binary runs (waking it from outside costs more than a matvec).
    rayon::ThreadPoolBuilder::new().build().unwrap().install(run)
}

fn run() {
    // QBENCH_ROWS=49152 for a matrix that does not stay in cache (SmolLM2's output head).
    let rows = std::env::var("QBENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1536);
    let cols = std::env::var("QBENCH_COLS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(576);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let n: usize = std::env::var("QBENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    if n > 1 {
        return gemm(&w, rows, cols, n);
    }
    let x: Vec<f32> = (0..cols).map(|i| ((i * 31) % 100) as f32 / 50.0 - 1.0).collect();
    let t = Instant::now();
    for _ in 0..10000 {
        std::hint::black_box(act::quantize_q8(std::hint::black_box(&x)));
    }
    println!("quantize_q8 576: {:.2} µs", t.elapsed().as_secs_f64() / 10000.0 * 1e6);
    let k_quants = cols.is_multiple_of(256);
    // QBENCH_COPIES=60: cycle through that many copies of the matrix (each read cold).
    let copies: usize = std::env::var("QBENCH_COPIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let only = std::env::var("QBENCH_TYPES").ok();
    for ty in
        [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16]
    {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|t| t == ty.name())) {
            continue;
        }
        if ty.block_size() == 256 && !k_quants {
            continue;
        }
        let q = QTensor::quantize(ty, &w, rows, cols).unwrap();
        let mut y = vec![0f32; rows];
        if copies > 1 {
            // As a model's decode step meets them: each matrix cold (the copies exceed the
            // cache), one after another; the mean per matvec of the best of 20 passes.
            let qs: Vec<QTensor> = (0..copies).map(|_| q.clone()).collect();
            let mut s = f64::INFINITY;
            for _ in 0..20 {
                let t = Instant::now();
                for q in &qs {
                    q.matmul(&x, 1, &mut y);
                }
                s = s.min(t.elapsed().as_secs_f64() / copies as f64);
            }
            println!(
                "{} matvec {rows}x{cols} ({copies} copies, cold): {:.1} µs, {:.2} GB/s",
                ty.name(),
                s * 1e6,
                q.nbytes() as f64 / s / 1e9
            );
            continue;
        }
        // Best of n (the machine is shared).
        let n = (2000 * 1536 / rows).max(20);
        let mut s = f64::INFINITY;
        for _ in 0..n {
            let t = Instant::now();
            q.matmul(&x, 1, &mut y);
            s = s.min(t.elapsed().as_secs_f64());
        }
        let amx = smelt_core::quant::amx_in_use()
            && matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q6_K)
            && rows.is_multiple_of(32);
        println!(
            "{} matvec {rows}x{cols}{}: {:.1} µs, {:.2} GB/s",
            ty.name(),
            if amx { " (AMX order)" } else { "" },
            s * 1e6,
            q.nbytes() as f64 / s / 1e9
        );
    }
}

/// y (n × rows) = x (n × cols) · wᵀ for every format and SIMD level, best of a few runs.
fn gemm(w: &[f32], rows: usize, cols: usize, n: usize) {
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 31) % 100) as f32 / 50.0 - 1.0).collect();
    let mut levels = vec![Level::detect()];
    if Level::detect() == Level::Avx512 {
        levels.insert(0, Level::Avx2);
    }
    let threads = rayon::current_num_threads();
    // QBENCH_TYPES=q8_0,f16 times only those ("f32": the dense f32 `linear_fwd`, whose AVX-512
    // tiles SMELT_NO_AVX512=1 turns off for matrixmultiply's sgemm).
    let only = std::env::var("QBENCH_TYPES").ok();
    if only.as_deref().is_none_or(|o| o.split(',').any(|t| t == "f32")) {
        let (mut s, mut cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..7 {
            let (t, c) = (Instant::now(), cpu_secs());
            std::hint::black_box(smelt_core::ops::matmul::cpu::linear_fwd(&x, w, None, n, cols, rows));
            s = s.min(t.elapsed().as_secs_f64());
            cpu = cpu.min(cpu_secs() - c);
        }
        let gflops = 2.0 * (n * rows * cols) as f64 / s / 1e9;
        println!(
            "f32 linear_fwd {rows}x{cols} · {n} rows, {threads} threads, {:?}: {:.2} ms, {gflops:.1} GFLOP/s, CPU {:.2} ms",
            Level::detect(),
            s * 1e3,
            cpu * 1e3
        );
    }
    for ty in
        [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16]
    {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|t| t == ty.name())) {
            continue;
        }
        if ty.block_size() > 1 && !cols.is_multiple_of(ty.block_size()) {
            continue;
        }
        let q = QTensor::quantize(ty, w, rows, cols).unwrap();
        let mut y = vec![0f32; n * rows];
        for &level in &levels {
            // Best wall time and best process CPU time (steadier on a shared machine, where
            // other processes take slices of the cores).
            let (mut s, mut cpu) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..7 {
                let (t, c) = (Instant::now(), cpu_secs());
                q.matmul_with(&x, n, &mut y, level);
                s = s.min(t.elapsed().as_secs_f64());
                cpu = cpu.min(cpu_secs() - c);
            }
            let gflops = 2.0 * (n * rows * cols) as f64 / s / 1e9;
            let amx = level == Level::Avx512
                && smelt_core::quant::amx_in_use()
                && matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q6_K)
                && rows.is_multiple_of(32);
            println!(
                "{} {rows}x{cols} · {n} rows, {threads} threads, {level:?}{}: {:.2} ms, {gflops:.1} GFLOP/s, CPU {:.2} ms",
                ty.name(),
                if amx { "+AMX" } else { "" },
                s * 1e3,
                cpu * 1e3
            );
        }
    }
}

/// CPU seconds of the whole process (all threads).
fn cpu_secs() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}
