//! The AMX path: (a) the kernels (emulated tiles, with AVX-512 and with scalar float code, and
//! the few-input kernel) against `dot_ref`, the order written out, bit for bit; (b) that order
//! against the AVX-512 path's (llama.cpp's AVX-512 build) within 1e-5 of the terms' size, through
//! `QTensor` as a model runs it; (c) the real tiles against the emulation, bit for bit, on a CPU
//! with AMX: a loud skip elsewhere, a failure under `SMELT_REQUIRE_AMX=1` (`bench/amx_check.sh`).
//! Shapes cover rows and inputs that are not multiples of 16 (padded tiles), one to four inputs
//! (the few-input kernel), odd numbers of tiles of each operand, and one to 48 blocks.

use super::*;
use crate::quant::act::{quantize_q8, BlockQ8K};
use crate::quant::qtensor::{matmul_few_many_amx_or, matmul_many_tiles_amx_or};
use crate::quant::simd::{avx512_detected, Level};
use crate::quant::{f16_bytes, QTensor, QuantMatrix};
use crate::rng::Rng;

const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

/// (weight rows, columns, inputs).
const SHAPES: [(usize, usize, usize); 10] = [
    (16, 32, 1),
    (37, 96, 2),
    (45, 64, 3),
    (64, 256, 4),
    (37, 96, 5),
    (40, 512, 17),
    (70, 160, 33),
    (32, 1536, 16),
    (96, 1536, 70),
    (33, 64, 129),
];

/// Random block bytes: every quant bit pattern, finite f16 scales (and Q4_1 mins) of both signs.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let bb = ty.block_bytes();
    let mut w = vec![0u8; rows * cols / 32 * bb];
    for blk in w.chunks_exact_mut(bb) {
        for b in blk.iter_mut() {
            *b = r.next_u64() as u8;
        }
        blk[..2].copy_from_slice(&f16_bytes(r.normal() as f32 * 0.02));
        if ty == GgmlType::Q4_1 {
            blk[2..4].copy_from_slice(&f16_bytes(r.normal() as f32 * 0.1));
        }
    }
    w
}

/// Random activation blocks: the whole i8 range (−128 too, which the quantiser never makes),
/// f16-valued d and s as the quantiser stores them.
fn random_acts(n: usize, nb: usize, seed: u64) -> Vec<Vec<BlockQ8>> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| {
            (0..nb)
                .map(|_| {
                    let mut qs = [0i8; 32];
                    for q in &mut qs {
                        *q = r.next_u64() as i8;
                    }
                    let d = super::super::round_f16(r.uniform() as f32 * 0.05);
                    let s = super::super::round_f16(r.normal() as f32);
                    BlockQ8 { d, s, qs }
                })
                .collect()
        })
        .collect()
}

fn rows_of(a: &[Vec<BlockQ8>]) -> Vec<&[BlockQ8]> {
    a.iter().map(|r| &r[..]).collect()
}

/// y (n × rows) by `dot_ref`.
fn reference(ty: GgmlType, w: &[u8], rows: usize, a: &[Vec<BlockQ8>]) -> Vec<f32> {
    let rb = w.len() / rows;
    let mut y = vec![0f32; a.len() * rows];
    for (i, ai) in a.iter().enumerate() {
        for j in 0..rows {
            y[i * rows + j] = dot_ref(ty, &w[j * rb..(j + 1) * rb], ai);
        }
    }
    y
}

/// The tile kernel over the whole product in one task (whatever n is).
///
/// # Safety
/// As `gemm_task` for `engine`.
unsafe fn tiles_whole(engine: Engine, w: &Packed, a: &Acts) -> Vec<f32> {
    let mut y = vec![f32::NAN; a.n * w.rows];
    gemm_task(engine, w, (0, w.rows), a, (0, a.n), y.as_mut_ptr(), w.rows);
    y
}

fn assert_bits(got: &[f32], want: &[f32], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}");
    let bad: Vec<usize> = (0..got.len()).filter(|&e| got[e].to_bits() != want[e].to_bits()).collect();
    assert!(
        bad.is_empty(),
        "{label}: {} of {} outputs differ, first #{}: {:e} vs {:e}",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

#[test]
fn the_amx_kernels_sum_in_the_reference_order_bit_for_bit() {
    let simd = avx512_detected();
    if !simd {
        smelt_testing::skip(smelt_testing::Need::Cpu, "no AVX-512 VNNI: only the portable emulation is checked");
    }
    for ty in TYPES {
        for (s, &(rows, cols, n)) in SHAPES.iter().enumerate() {
            let w = random_blocks(ty, rows, cols, 10 + s as u64);
            let a = random_acts(n, cols / 32, 100 + s as u64);
            let want = reference(ty, &w, rows, &a);
            let packed = Packed::new(kind(ty).unwrap(), &w, rows, cols);
            let acts = Acts::new(&rows_of(&a));
            let label = |what: &str| format!("{} [{rows}x{cols}]·{n} {what}", ty.name());
            let mut y = vec![f32::NAN; n * rows];
            matmul(Engine::Portable, &packed, &acts, &mut y);
            assert_bits(&y, &want, &label("portable emulation"));
            if simd {
                // n ≤ 4: the few-input kernel; more: the emulated tiles with the AVX-512 epilogue.
                matmul(Engine::Emulated, &packed, &acts, &mut y);
                assert_bits(&y, &want, &label("emulated tiles / few-input kernel"));
                // SAFETY: AVX-512 VNNI checked.
                assert_bits(
                    &unsafe { tiles_whole(Engine::Emulated, &packed, &acts) },
                    &want,
                    &label("tiles, one task"),
                );
            }
        }
    }
}

/// Σ |w·a| over the elements (Σ_b |d_w·d_a|·Σ |q·q_a|, + |m_w·s_a| for Q4_1) in f64: a bound on
/// every partial sum of either order, against which the two orders' roundings are measured (as
/// the other kernel tests do: within 1e-5 of max(|dot|, Σ|w·a|)).
fn term_size(ty: GgmlType, w: &[u8], a: &[BlockQ8]) -> f64 {
    let bb = ty.block_bytes();
    let mut t = 0f64;
    for (blk, ab) in w.chunks_exact(bb).zip(a) {
        let mut isum = 0f64;
        for e in 0..32 {
            isum += (weight_q(ty, blk, e) as f64 * ab.qs[e] as f64).abs();
        }
        t += isum * (f16_at(blk) as f64 * ab.d as f64).abs();
        if ty == GgmlType::Q4_1 {
            t += (f16_at(&blk[2..]) as f64 * ab.s as f64).abs();
        }
    }
    t
}

#[test]
fn the_amx_order_is_within_1e5_of_the_avx512_path() {
    if !avx512_detected() {
        smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX-512 F/BW/VL/VNNI");
        return;
    }
    let mut worst = 0f64;
    for ty in TYPES {
        for (s, &(rows, cols, n)) in SHAPES.iter().chain(&[(64, 576, 33), (96, 576, 5), (1536, 576, 70)]).enumerate() {
            let mut r = Rng::new(200 + s as u64);
            let wf: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
            let q = QTensor::quantize(ty, &wf, rows, cols).unwrap();
            let mut vnni = vec![0f32; n * rows];
            q.matmul_amx_or(&x, n, &mut vnni, Level::Avx512, None);
            let a: Vec<Vec<BlockQ8>> = (0..n).map(|i| quantize_q8(&x[i * cols..(i + 1) * cols])).collect();
            let packed = Packed::new(kind(ty).unwrap(), q.bytes(), rows, cols);
            let mut y = vec![f32::NAN; n * rows];
            matmul(Engine::Emulated, &packed, &Acts::new(&rows_of(&a)), &mut y);
            let rb = q.bytes().len() / rows;
            for i in 0..n {
                for j in 0..rows {
                    let size = term_size(ty, &q.bytes()[j * rb..(j + 1) * rb], &a[i]);
                    let (u, v) = (y[i * rows + j] as f64, vnni[i * rows + j] as f64);
                    let dev = (u - v).abs() / size.max(u.abs()).max(f64::MIN_POSITIVE);
                    worst = worst.max(dev);
                    assert!(
                        dev <= 1e-5,
                        "{} [{rows}x{cols}]·{n}: output ({i}, {j}) AMX order {u:e}, AVX-512 {v:e}",
                        ty.name()
                    );
                }
            }
            // Through QTensor: the same bits where the AMX path takes the matrix.
            let mut via = vec![0f32; n * rows];
            q.matmul_amx_or(&x, n, &mut via, Level::Avx512, Some(Engine::Emulated));
            if takes(ty, rows) {
                assert_bits(&via, &y, &format!("{} [{rows}x{cols}]·{n} through QTensor", ty.name()));
            } else {
                assert_bits(&via, &vnni, &format!("{} [{rows}x{cols}]·{n} (not AMX's) through QTensor", ty.name()));
            }
        }
    }
    eprintln!("AMX order against the AVX-512 path: largest difference {worst:.2e} of the terms' size");
}

/// `matmul_few_many` (decode's q/k/v) and `matmul_many_tiles` (a prompt's) give each matrix what
/// its own matmul gives, with the AMX engine for the matrices it takes (64, 32 and 96 rows) and
/// the other paths for the rest (37 rows).
#[test]
fn several_matrices_in_one_job_keep_each_matmuls_amx_bits() {
    if !avx512_detected() {
        smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX-512 F/BW/VL/VNNI");
        return;
    }
    let cols = 256;
    let e = Some(Engine::Emulated);
    for ty in TYPES.into_iter().chain([GgmlType::Q6_K]) {
        // (Q6_K off AMX is llama.cpp's tiled path, which `matmul_many_tiles` does not mix in: all
        // of its matrices here are AMX's.)
        let shapes: &[(usize, u64)] =
            if ty == GgmlType::Q6_K { &[(64, 1), (32, 2), (96, 4)] } else { &[(64, 1), (32, 2), (37, 3), (96, 4)] };
        let qs: Vec<QTensor> = shapes
            .iter()
            .map(|&(rows, seed)| {
                let mut r = Rng::new(seed);
                let w: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
                QTensor::quantize(ty, &w, rows, cols).unwrap()
            })
            .collect();
        let refs: Vec<&QTensor> = qs.iter().collect();
        for n in [1, 3, 4, 5, 70] {
            let mut r = Rng::new(50 + n as u64);
            let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
            let ys = if n <= 4 {
                matmul_few_many_amx_or(&refs, &x, n, e)
            } else {
                matmul_many_tiles_amx_or(&refs, &x, n, e)
            };
            let ys = ys.unwrap_or_else(|| panic!("{} · {n}: no one-job product", ty.name()));
            for (q, y) in qs.iter().zip(&ys) {
                let mut want = vec![0f32; n * q.dims().0];
                q.matmul_amx_or(&x, n, &mut want, Level::Avx512, e);
                assert_bits(y, &want, &format!("{} {:?} · {n} in one job", ty.name(), q.dims()));
            }
            // A prompt's gate and up gated tile by tile: the products then swiglu.
            if n > 4 {
                use crate::float::Float;
                let (g, u) = (&qs[0], &qs[qs.len() - 1]);
                let u = if u.dims().0 == g.dims().0 { u } else { g };
                let y = crate::quant::qtensor::swiglu_many_tiles_amx_or(g, u, &x, n, e)
                    .unwrap_or_else(|| panic!("{} · {n}: no gated product", ty.name()));
                let m = g.dims().0;
                let (mut gy, mut uy, mut want) = (vec![0f32; n * m], vec![0f32; n * m], vec![0f32; n * m]);
                g.matmul_amx_or(&x, n, &mut gy, Level::Avx512, e);
                u.matmul_amx_or(&x, n, &mut uy, Level::Avx512, e);
                f32::swiglu_into(&mut want, &gy, &uy);
                assert_bits(&y, &want, &format!("{} gate/up · {n} gated tile by tile", ty.name()));
            }
        }
    }
}

/// No input rows: nothing to compute, on the few-row and the tile engines alike (the compact
/// few-row layout takes one to four rows only).
#[test]
fn no_input_rows_give_no_outputs() {
    if !avx512_detected() {
        smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX-512 F/BW/VL/VNNI");
        return;
    }
    let (rows, cols) = (64, 256);
    let mut r = Rng::new(7);
    let w: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
    for ty in TYPES {
        let q = QTensor::quantize(ty, &w, rows, cols).unwrap();
        for e in [Engine::Emulated, Engine::Portable] {
            q.matmul_amx_or(&[], 0, &mut [], Level::Avx512, Some(e));
        }
    }
}

#[test]
fn real_amx_tiles_equal_the_emulation_bit_for_bit() {
    let Some(Engine::Amx) = engine() else {
        let why = match std::env::var("SMELT_AMX") {
            Ok(v) if v == "0" => "SMELT_AMX=0".to_string(),
            _ if !cpu_has_amx_int8() => "this CPU has no AMX-INT8".to_string(),
            _ => "AMX-INT8 present but not usable (AVX-512 off, or the OS refused the tile state: see stderr)".into(),
        };
        eprintln!("\n******** AMX NOT TESTED: {why}; the real tiles run only on a CPU with AMX ********\n");
        smelt_testing::skip(smelt_testing::Need::Amx, format!("real AMX tiles not tested: {why}"));
        return;
    };
    let mut compared = 0;
    for ty in TYPES {
        for (s, &(rows, cols, n)) in SHAPES.iter().enumerate() {
            let w = random_blocks(ty, rows, cols, 300 + s as u64);
            let a = random_acts(n, cols / 32, 400 + s as u64);
            let packed = Packed::new(kind(ty).unwrap(), &w, rows, cols);
            let acts = Acts::new(&rows_of(&a));
            let label = |what: &str| format!("{} [{rows}x{cols}]·{n} {what}", ty.name());
            // SAFETY: `engine()` found AMX-INT8, the permission and AVX-512.
            let (hw, emu) =
                unsafe { (tiles_whole(Engine::Amx, &packed, &acts), tiles_whole(Engine::Emulated, &packed, &acts)) };
            assert_bits(&hw, &emu, &label("AMX tiles against the emulation"));
            assert_bits(&hw, &reference(ty, &w, rows, &a), &label("AMX tiles against dot_ref"));
            let mut y = vec![f32::NAN; n * rows];
            matmul(Engine::Amx, &packed, &acts, &mut y);
            assert_bits(&y, &emu, &label("parallel AMX matmul against the emulation"));
            compared += 3 * n * rows;
        }
        // The path a model takes: QTensor's default matmul on AMX, prompt- and decode-sized.
        for n in [1, 4, 70] {
            let (rows, cols) = (64, 576);
            let mut r = Rng::new(n as u64);
            let wf: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
            let q = QTensor::quantize(ty, &wf, rows, cols).unwrap();
            let (mut got, mut want) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            q.matmul_with(&x, n, &mut got, Level::detect());
            q.matmul_amx_or(&x, n, &mut want, Level::Avx512, Some(Engine::Emulated));
            assert_bits(&got, &want, &format!("{} QTensor [{rows}x{cols}]·{n} on AMX", ty.name()));
            compared += n * rows;
        }
    }
    for (s, &(rows, cols, n)) in Q6K_SHAPES.iter().enumerate() {
        let w = random_q6k(rows, cols, 700 + s as u64);
        let a = random_q8k(n, cols / 256, 800 + s as u64);
        let packed = Packed::new(kind(GgmlType::Q6_K).unwrap(), &w, rows, cols);
        let acts = q6k_acts(&a);
        let label = |what: &str| format!("q6_K [{rows}x{cols}]·{n} {what}");
        // SAFETY: `engine()` found AMX-INT8, the permission and AVX-512.
        let (hw, emu) =
            unsafe { (tiles_whole(Engine::Amx, &packed, &acts), tiles_whole(Engine::Emulated, &packed, &acts)) };
        assert_bits(&hw, &emu, &label("AMX tiles against the emulation"));
        assert_bits(&hw, &q6k_reference(&w, rows, &a), &label("AMX tiles against dot_ref"));
        let mut y = vec![f32::NAN; n * rows];
        matmul(Engine::Amx, &packed, &acts, &mut y);
        assert_bits(&y, &emu, &label("parallel AMX matmul against the emulation"));
        compared += 3 * n * rows;
    }
    for n in [1, 4, 70] {
        let (rows, cols) = (64, 1536);
        let mut r = Rng::new(n as u64);
        let wf: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
        let q = QTensor::quantize(GgmlType::Q6_K, &wf, rows, cols).unwrap();
        let (mut got, mut want) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        q.matmul_with(&x, n, &mut got, Level::detect());
        q.matmul_amx_or(&x, n, &mut want, Level::Avx512, Some(Engine::Emulated));
        assert_bits(&got, &want, &format!("q6_K QTensor [{rows}x{cols}]·{n} on AMX"));
        compared += n * rows;
    }
    eprintln!("AMX: {compared} outputs of the real tiles equal the emulation and dot_ref bit for bit");
}

/// Q6_K's (rows, columns, inputs): one to six blocks, rows and inputs off the multiples of 16.
const Q6K_SHAPES: [(usize, usize, usize); 9] = [
    (16, 256, 1),
    (37, 256, 2),
    (45, 512, 3),
    (64, 256, 4),
    (37, 768, 5),
    (40, 1536, 17),
    (70, 256, 33),
    (32, 1536, 16),
    (96, 512, 70),
];

/// Random Q6_K blocks: every quant bit pattern, scales over the whole i8 range, f16 d of both signs.
fn random_q6k(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let bb = GgmlType::Q6_K.block_bytes();
    let mut w = vec![0u8; rows * cols / 256 * bb];
    for blk in w.chunks_exact_mut(bb) {
        for b in blk.iter_mut() {
            *b = r.next_u64() as u8;
        }
        blk[208..210].copy_from_slice(&f16_bytes(r.normal() as f32 * 0.002));
    }
    w
}

/// Random Q8_K rows: the whole i8 range (−128 too), random d.
fn random_q8k(n: usize, nb: usize, seed: u64) -> Vec<Vec<BlockQ8K>> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| {
            (0..nb)
                .map(|_| {
                    let mut qs = [0i8; 256];
                    for q in &mut qs {
                        *q = r.next_u64() as i8;
                    }
                    BlockQ8K { d: r.uniform() as f32 * 0.05, qs, bsums: [0; 16] }
                })
                .collect()
        })
        .collect()
}

/// Q8_K rows in the chunks `Acts` takes for Q6_K.
fn q6k_acts(a: &[Vec<BlockQ8K>]) -> Acts {
    let chunks: Vec<Vec<BlockQ8>> = a.iter().map(|r| q6k::chunks_of(r)).collect();
    Acts::new(&rows_of(&chunks))
}

/// y (n × rows) by `q6k::dot_ref`.
fn q6k_reference(w: &[u8], rows: usize, a: &[Vec<BlockQ8K>]) -> Vec<f32> {
    let rb = w.len() / rows;
    let mut y = vec![0f32; a.len() * rows];
    for (i, ai) in a.iter().enumerate() {
        for j in 0..rows {
            y[i * rows + j] = q6k::dot_ref(&w[j * rb..(j + 1) * rb], ai);
        }
    }
    y
}

/// The two int8 planes of every scaled weight s·(q − 32) (s over the whole i8 range, q − 32 over
/// [−32, 31]) give it back exactly, within their ranges.
#[test]
fn q6k_planes_hold_every_scaled_weight() {
    for s in -128i32..=127 {
        for q in -32i32..=31 {
            let (h, l) = q6k::split(s * q);
            assert_eq!(64 * h as i32 + l as i32, s * q, "s {s}, q {q}");
            assert!((-32..=31).contains(&l) && (-64..=64).contains(&h), "s {s}, q {q}: h {h}, l {l}");
        }
    }
}

#[test]
fn q6k_on_the_amx_path_sums_in_the_reference_order_bit_for_bit() {
    let simd = avx512_detected();
    if !simd {
        smelt_testing::skip(smelt_testing::Need::Cpu, "no AVX-512 VNNI: only the portable emulation is checked");
    }
    for (s, &(rows, cols, n)) in Q6K_SHAPES.iter().enumerate() {
        let w = random_q6k(rows, cols, 500 + s as u64);
        let a = random_q8k(n, cols / 256, 600 + s as u64);
        let want = q6k_reference(&w, rows, &a);
        let packed = Packed::new(kind(GgmlType::Q6_K).unwrap(), &w, rows, cols);
        let acts = q6k_acts(&a);
        let label = |what: &str| format!("q6_K [{rows}x{cols}]·{n} {what}");
        let mut y = vec![f32::NAN; n * rows];
        matmul(Engine::Portable, &packed, &acts, &mut y);
        assert_bits(&y, &want, &label("portable emulation"));
        if simd {
            matmul(Engine::Emulated, &packed, &acts, &mut y);
            assert_bits(&y, &want, &label("emulated tiles / few-input kernel"));
            // SAFETY: AVX-512 VNNI checked.
            assert_bits(&unsafe { tiles_whole(Engine::Emulated, &packed, &acts) }, &want, &label("tiles, one task"));
        }
    }
}

/// Through `QTensor` as a model runs it: the AMX order (emulated) equals `dot_ref` on the Q8_K
/// rows of `quantize_row_q8_K_ref`, and stays within 1e-5 of the terms' size of the AVX-512 path.
#[test]
fn q6k_through_qtensor_takes_the_amx_order_near_the_avx512_path() {
    if !avx512_detected() {
        smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX-512 F/BW/VL/VNNI");
        return;
    }
    let cols = 768;
    for (rows, n) in [(64, 1), (96, 4), (64, 5), (32, 70)] {
        let mut r = Rng::new(rows as u64 + n as u64);
        let wf: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| r.normal() as f32).collect();
        let q = QTensor::quantize(GgmlType::Q6_K, &wf, rows, cols).unwrap();
        let (mut amx, mut avx) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        q.matmul_amx_or(&x, n, &mut amx, Level::Avx512, Some(Engine::Emulated));
        q.matmul_amx_or(&x, n, &mut avx, Level::Avx512, None);
        let a: Vec<Vec<BlockQ8K>> =
            (0..n).map(|i| crate::quant::act::quantize_q8k(&x[i * cols..(i + 1) * cols])).collect();
        assert_bits(&amx, &q6k_reference(q.bytes(), rows, &a), &format!("q6_K [{rows}x{cols}]·{n} through QTensor"));
        let rb = q.bytes().len() / rows;
        for i in 0..n {
            for j in 0..rows {
                let wr = &q.bytes()[j * rb..(j + 1) * rb];
                let mut size = 0f64;
                let mut qv = [0i8; 256];
                for (blk, ab) in wr.chunks_exact(rb / (cols / 256)).zip(&a[i]) {
                    crate::quant::q6_k::unpack(blk, &mut qv);
                    let t: f64 =
                        (0..256).map(|e| (blk[192 + e / 16] as i8 as f64 * qv[e] as f64 * ab.qs[e] as f64).abs()).sum();
                    size += t * (f16_at(&blk[208..]) as f64 * ab.d as f64).abs();
                }
                let (u, v) = (amx[i * rows + j] as f64, avx[i * rows + j] as f64);
                assert!((u - v).abs() <= 1e-5 * size.max(u.abs()), "q6_K ({i}, {j}): AMX order {u:e}, AVX-512 {v:e}");
            }
        }
    }
}
