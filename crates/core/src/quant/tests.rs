//! Block formats against gguf-py (tests/data/quant_golden.gguf, made by
//! scripts/gguf_goldens.py): dequantisation bit for bit, quantisation byte for byte where
//! gguf-py can quantise; quantised dot products against dequantise-then-f32-dot; every SIMD
//! level against the scalar build; the NEON kernels against llama.cpp's own ARM kernels
//! (tests/data/neon_golden*.bin, made by scripts/neon_goldens.sh), bit for bit. The aarch64
//! tests run under qemu-user on x86-64: `scripts/test_aarch64.sh -p smelt-gguf --lib`.

use super::simd::Level;
use super::QuantMatrix;
use super::*;
use smelt_gguf::GgufFile;

fn golden() -> GgufFile {
    GgufFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/quant_golden.gguf")).unwrap()
}

fn f32s(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let (ty, b) = g.tensor_bytes(t).unwrap();
    assert_eq!(ty, GgmlType::F32);
    dequantize(ty, b, b.len() / 4).unwrap()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let g = golden();
    for ty in GgmlType::ALL {
        let t = g.tensor(&format!("deq.{}", ty.name().to_uppercase())).unwrap();
        let (got_ty, b) = g.tensor_bytes(t).unwrap();
        assert_eq!(got_ty, ty);
        let want = f32s(&g, &format!("deq.{}.f32", ty.name().to_uppercase()));
        let got = dequantize(ty, b, want.len()).unwrap();
        let bad =
            got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan())).count();
        assert_eq!(bad, 0, "{}: {bad} of {} values differ from gguf-py", ty.name(), want.len());
    }
}

#[test]
fn quantize_matches_gguf_py_byte_for_byte() {
    let g = golden();
    let src = f32s(&g, "qsrc");
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0] {
        let (_, want) = g.tensor_bytes(g.tensor(&format!("q.{}", ty.name().to_uppercase())).unwrap()).unwrap();
        let got = quantize(ty, &src, 512).unwrap();
        let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{}: {bad} of {} bytes differ from gguf-py", ty.name(), want.len());
    }
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = crate::rng::Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

#[test]
fn k_quants_round_trip_closely() {
    // Q4_K and Q6_K quantisers (ports of llama.cpp's reference) against their own dequantiser.
    let x = rand(4 * 512, 1);
    for (ty, tol) in [(GgmlType::Q4_K, 0.12), (GgmlType::Q6_K, 0.03), (GgmlType::Q8_0, 0.01), (GgmlType::Q4_0, 0.15)] {
        let q = quantize(ty, &x, 512).unwrap();
        let y = dequantize(ty, &q, x.len()).unwrap();
        let rms = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / x.len() as f32).sqrt();
        assert!(rms < tol, "{}: rms error {rms}", ty.name());
    }
}

#[test]
fn quantised_matmul_matches_dequantised_f32_and_simd_matches_scalar() {
    let (rows, cols, n) = (37, 512, 3);
    eprintln!("Level::detect() = {:?}; SIMD levels checked against scalar: {:?}", Level::detect(), simd_levels());
    let w = rand(rows * cols, 2);
    let x = rand(n * cols, 3);
    for ty in GgmlType::ALL {
        let q = QTensor::quantize(ty, &w, rows, cols).unwrap();
        let mut wd = vec![0f32; rows * cols];
        for r in 0..rows {
            q.dequantize_row(r, &mut wd[r * cols..(r + 1) * cols]);
        }
        let mut y = vec![0f32; n * rows];
        q.matmul_with(&x, n, &mut y, Level::Scalar);
        for i in 0..n {
            // The activation row as the kernel sees it: quantised to Q8_0/Q8_1/Q8_K and back.
            let xr = &x[i * cols..(i + 1) * cols];
            let xa: Vec<f32> = match ty {
                GgmlType::F32 => xr.to_vec(),
                // Rounded to the weight type, as llama.cpp does (`float_formats::matmul`).
                GgmlType::F16 | GgmlType::BF16 => dequantize(ty, &quantize(ty, xr, cols).unwrap(), cols).unwrap(),
                GgmlType::Q4_K | GgmlType::Q6_K => {
                    act::quantize_q8k(xr).iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect()
                }
                _ => act::quantize_q8(xr).iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect(),
            };
            for j in 0..rows {
                let mut want: f64 = (0..cols).map(|c| xa[c] as f64 * wd[j * cols + c] as f64).sum();
                if ty == GgmlType::Q4_1 {
                    // Q4_1's min term uses s = d·Σq stored as f16 (as llama.cpp's Q8_1 does).
                    let row = &q.bytes()[j * q4_1::BYTES * cols / 32..];
                    for (b, ab) in act::quantize_q8(xr).iter().enumerate() {
                        let sum: f64 = xa[32 * b..32 * b + 32].iter().map(|&v| v as f64).sum();
                        want += f16_at(&row[b * q4_1::BYTES + 2..]) as f64 * (ab.s as f64 - sum);
                    }
                }
                let got = y[i * rows + j] as f64;
                assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{}: {got} vs {want}", ty.name());
            }
            // And the quantised product stays near the exact one (8-bit activations).
            let exact: f64 = (0..cols).map(|c| xr[c] as f64 * wd[c] as f64).sum();
            assert!((y[i * rows] as f64 - exact).abs() < 0.6, "{}: {} vs exact {exact}", ty.name(), y[i * rows]);
        }
        // SIMD kernels: the same integer sums, added in another float order; AVX-512 (four rows
        // per pass, 37 rows: a remainder too) is AVX2's arithmetic exactly.
        simd_matches_scalar(&q, &x, n, &y, ty.name());
    }
}

/// Every SIMD level's matmul of `x` (n rows) against the scalar result `y` (relative 1e-5), and
/// AVX-512 against AVX2 bit for bit when both run here.
fn simd_matches_scalar(q: &QTensor, x: &[f32], n: usize, y: &[f32], label: &str) {
    simd_matches_scalar_within(q, x, n, y, label, 1e-5)
}

/// `simd_matches_scalar` with relative tolerance `tol` against the scalar order.
fn simd_matches_scalar_within(q: &QTensor, x: &[f32], n: usize, y: &[f32], label: &str, tol: f32) {
    let mut per_level = Vec::new();
    for level in simd_levels() {
        let mut ys = vec![0f32; y.len()];
        q.matmul_with(x, n, &mut ys, level);
        for (a, b) in y.iter().zip(&ys) {
            assert!((a - b).abs() <= tol * (1.0 + a.abs()), "{label}: SIMD {level:?} gives {b}, scalar {a}");
        }
        per_level.push((level, ys));
    }
    if let [(Level::Avx2, a), (Level::Avx512, b)] = &per_level[..] {
        for (u, v) in a.iter().zip(b) {
            assert_eq!(u.to_bits(), v.to_bits(), "{label}: AVX2 {u:e}, AVX-512 {v:e}");
        }
    }
}

/// The SIMD kernels against the scalar ones on the shapes that select llama.cpp's other x86
/// paths (`X86Path`): 40 output rows (a multiple of 8: repacked Q4_0/Q4_K, GEMM for the first
/// 8 input rows with the 4x8 Q8_K quantiser, GEMV for the 9th), ≥ 8 input rows (tiled Q6_K, and
/// Q4_K where the rows are not a multiple of 8), and one input row. 37 × 13 and 70 × 70 put the
/// AVX-512 register tiles (`tile512`, more than four inputs) through every edge: 4 × 8, 1 × 8,
/// 4 × 4 and 1 × 4 (`tile_pairs`), 4 × 1 and 1 × 1 (`tile`), and tasks cut along both axes.
#[test]
fn simd_matches_scalar_on_every_llama_cpp_path() {
    let cols = 512;
    for (rows, n) in [(40, 9), (37, 9), (40, 1), (40, 4), (37, 13), (70, 70)] {
        let w = rand(rows * cols, 5);
        let x = rand(n * cols, 6);
        for ty in GgmlType::ALL {
            let q = QTensor::quantize(ty, &w, rows, cols).unwrap();
            let mut y = vec![0f32; n * rows];
            q.matmul_with(&x, n, &mut y, Level::Scalar);
            // Level::Avx512 runs AVX-512 kernels only where their order is AVX2's, AVX2's
            // kernels elsewhere: bit-identical on every path. Against the scalar order: 4,900
            // outputs of 70 × 70 include a few with more cancellation (one Q4_1 output off by
            // 1.4e-5 relative), hence the wider bound there.
            let tol = if n * rows > 1000 { 1e-4 } else { 1e-5 };
            simd_matches_scalar_within(&q, &x, n, &y, &format!("{} [{rows}x{cols}]·{n}", ty.name()), tol);
        }
    }
}

/// `matmul_rows_alone` (the server's batched decode rows) gives each row exactly what `matmul`
/// of that row alone gives, for every format, with enough rows for the AVX-512 register tiles
/// (which the 32-element formats take there) and the tiled/repacked K-quant paths (which they
/// must not take).
#[test]
fn rows_alone_equal_each_row_alone_bit_for_bit() {
    let cols = 512;
    for (rows, n) in [(40, 9), (37, 13), (64, 32)] {
        let w = rand(rows * cols, 8);
        let x = rand(n * cols, 9);
        for ty in GgmlType::ALL {
            let q = QTensor::quantize(ty, &w, rows, cols).unwrap();
            let mut together = vec![0f32; n * rows];
            q.matmul_rows_alone(&x, n, &mut together);
            for i in 0..n {
                let mut alone = vec![0f32; rows];
                q.matmul(&x[i * cols..(i + 1) * cols], 1, &mut alone);
                let got = &together[i * rows..(i + 1) * rows];
                let bad = got.iter().zip(&alone).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(
                    bad,
                    0,
                    "{} [{rows}x{cols}]: row {i} of {n}: {bad} outputs differ from the row alone",
                    ty.name()
                );
            }
        }
    }
}

/// A decode step's q/k/v (or gate/up) in one parallel call (`matmul_few_many`) gives each
/// matrix its own `matmul`'s bits, for every format, the float formats (F16/BF16) included,
/// with one to four inputs and row counts that cut unevenly into the call's blocks.
#[test]
fn few_rows_of_several_matrices_in_one_call_equal_each_matmul_bit_for_bit() {
    let cols = 256;
    for ty in GgmlType::ALL {
        let qs: Vec<QTensor> = [(64, 1), (37, 2), (96, 3)]
            .iter()
            .map(|&(rows, seed)| QTensor::quantize(ty, &rand(rows * cols, seed), rows, cols).unwrap())
            .collect();
        let refs: Vec<&QTensor> = qs.iter().collect();
        for n in 1..=4 {
            let x = rand(n * cols, 10 + n as u64);
            let ys = super::matmul_few_many(&refs, &x, n)
                .unwrap_or_else(|| panic!("{} · {n}: no one-call product", ty.name()));
            for (q, y) in qs.iter().zip(&ys) {
                let mut want = vec![0f32; n * q.dims().0];
                q.matmul(&x, n, &mut want);
                let bad = y.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(
                    bad,
                    0,
                    "{} [{}x{cols}] · {n}: {bad} outputs differ from its own matmul",
                    ty.name(),
                    q.dims().0
                );
            }
        }
    }
}

/// llama.cpp's 4x8 Q8_K quantiser differs from `quantize_row_q8_K_ref` only in the sign it picks
/// when +amax and −amax both occur: the same products d·q either way.
#[test]
fn q8k_4x8_quantiser_differs_only_in_the_sign_of_a_tie() {
    let mut x = rand(512, 7);
    let (a, b) = (act::quantize_q8k(&x), act::quantize_q8k_4x8(&x));
    assert!(a.iter().zip(&b).all(|(a, b)| a.d == b.d && a.qs == b.qs && a.bsums == b.bsums));
    x[0] = -3.0;
    x[5] = 3.0;
    let (a, b) = (act::quantize_q8k(&x), act::quantize_q8k_4x8(&x));
    assert_eq!((a[0].qs[0], a[0].qs[5], b[0].qs[0], b[0].qs[5]), (-127, 127, 127, -127));
    assert_eq!(a[0].d, -b[0].d);
    assert!(a[0].qs.iter().zip(&b[0].qs).all(|(p, q)| *p == -*q));
    assert!(a[1].qs == b[1].qs && a[1].d == b[1].d);
}

/// The SIMD levels this CPU can run (both NEON variants where it has dotprod), and the one
/// `Level::detect` picks.
fn simd_levels() -> Vec<Level> {
    let detected = Level::detect();
    #[cfg(target_arch = "aarch64")]
    if detected != Level::Scalar {
        let mut l = vec![Level::Neon];
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            l.push(Level::NeonDotprod);
        }
        return l;
    }
    #[cfg(target_arch = "x86_64")]
    if detected == Level::Avx512 {
        return vec![Level::Avx2, Level::Avx512];
    }
    vec![detected]
}

/// One record of tests/data/neon_golden.bin (see scripts/neon_goldens.c): an activation row, a
/// weight row, llama.cpp's quantisation of the activations and llama.cpp's ARM dot product.
#[allow(dead_code)]
struct LlamaArm {
    ty: GgmlType,
    x: Vec<f32>,
    w: Vec<u8>,
    act: Vec<u8>,
    dot: f32,
    dot_dotprod: f32,
}

fn llama_arm_goldens() -> Vec<LlamaArm> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let b = std::fs::read(format!("{dir}neon_golden.bin")).unwrap();
    let dots = std::fs::read(format!("{dir}neon_golden_dotprod.bin")).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let (mut out, mut o) = (Vec::new(), 0);
    while o < b.len() {
        let ty = GgmlType::from_id(u32_at(o)).unwrap();
        let n = u32_at(o + 4) as usize;
        o += 8;
        let x: Vec<f32> = b[o..o + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        o += 4 * n;
        let wn = ty.row_bytes(n).unwrap();
        let an = n / ty.block_size()
            * match ty {
                GgmlType::Q4_K | GgmlType::Q6_K => 292,
                GgmlType::Q4_1 => 36,
                _ => 34,
            };
        let (w, act) = (b[o..o + wn].to_vec(), b[o + wn..o + wn + an].to_vec());
        o += wn + an;
        let dot = f32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        o += 4;
        let k = out.len() * 4;
        out.push(LlamaArm { ty, x, w, act, dot, dot_dotprod: f32::from_le_bytes(dots[k..k + 4].try_into().unwrap()) });
    }
    assert_eq!(out.len() * 4, dots.len(), "neon_golden_dotprod.bin has another number of records");
    out
}

/// llama.cpp's block_q8_0 / block_q8_1 bytes of our activation blocks.
#[allow(dead_code)]
fn q8_bytes(a: &[act::BlockQ8], with_s: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for b in a {
        v.extend_from_slice(&f16_bytes(b.d));
        if with_s {
            v.extend_from_slice(&f16_bytes(b.s));
        }
        v.extend(b.qs.iter().map(|&q| q as u8));
    }
    v
}

fn q8k_bytes(a: &[act::BlockQ8K]) -> Vec<u8> {
    let mut v = Vec::new();
    for b in a {
        v.extend_from_slice(&b.d.to_le_bytes());
        v.extend(b.qs.iter().map(|&q| q as u8));
        for s in b.bsums {
            v.extend_from_slice(&s.to_le_bytes());
        }
    }
    v
}

#[allow(dead_code)]
fn parse_q8(b: &[u8], with_s: bool) -> Vec<act::BlockQ8> {
    b.chunks_exact(if with_s { 36 } else { 34 })
        .map(|c| {
            let o = if with_s { 4 } else { 2 };
            act::BlockQ8 {
                d: f16_at(c),
                s: if with_s { f16_at(&c[2..]) } else { 0.0 },
                qs: std::array::from_fn(|j| c[o + j] as i8),
            }
        })
        .collect()
}

#[allow(dead_code)]
fn parse_q8k(b: &[u8]) -> Vec<act::BlockQ8K> {
    b.chunks_exact(292)
        .map(|c| act::BlockQ8K {
            d: f32::from_le_bytes(c[..4].try_into().unwrap()),
            qs: std::array::from_fn(|j| c[4 + j] as i8),
            bsums: std::array::from_fn(|j| i16::from_le_bytes([c[260 + 2 * j], c[261 + 2 * j]])),
        })
        .collect()
}

#[test]
fn q8k_activation_quantiser_matches_llama_cpp_byte_for_byte() {
    // quantize_row_q8_K_ref, which llama.cpp's ARM and x86 builds both use.
    let mut n = 0;
    for g in llama_arm_goldens().iter().filter(|g| matches!(g.ty, GgmlType::Q4_K | GgmlType::Q6_K)) {
        assert_eq!(q8k_bytes(&act::quantize_q8k(&g.x)), g.act, "{} row of {}", g.ty.name(), g.x.len());
        n += 1;
    }
    assert!(n > 0);
}

#[allow(dead_code)]
fn scalar_dot(ty: GgmlType, w: &[u8], a8: &[act::BlockQ8], ak: &[act::BlockQ8K]) -> f32 {
    match ty {
        GgmlType::Q8_0 => q8_0::dot(w, a8),
        GgmlType::Q4_0 => q4_0::dot(w, a8),
        GgmlType::Q4_1 => q4_1::dot(w, a8),
        GgmlType::Q5_0 => q5_0::dot(w, a8),
        GgmlType::Q4_K => q4_k::dot(w, ak),
        GgmlType::Q6_K => q6_k::dot(w, ak),
        _ => unreachable!(),
    }
}

#[allow(dead_code)]
const TYPES: [GgmlType; 6] =
    [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K];

/// Random block bytes (every nibble, bit and scale pattern) with finite f16 scales.
#[allow(dead_code)]
fn random_blocks(ty: GgmlType, nb: usize, r: &mut crate::rng::Rng) -> Vec<u8> {
    let mut w: Vec<u8> = (0..nb * ty.block_bytes()).map(|_| r.next_u64() as u8).collect();
    for b in w.chunks_exact_mut(ty.block_bytes()) {
        let mut put = |o: usize, v: f64| b[o..o + 2].copy_from_slice(&f16_bytes(v as f32));
        match ty {
            GgmlType::Q4_1 => {
                put(0, 0.01 * r.uniform());
                put(2, -0.1 * r.uniform());
            }
            GgmlType::Q4_K => {
                put(0, 0.002 * r.uniform());
                put(2, 0.002 * r.uniform());
            }
            GgmlType::Q6_K => put(208, 0.001 * r.normal()),
            _ => put(0, 0.02 * r.normal()),
        }
    }
    w
}

#[cfg(target_arch = "aarch64")]
mod neon_kernels {
    use super::super::neon;
    use super::*;

    fn dot(ty: GgmlType, dotprod: bool, w: &[u8], a8: &[act::BlockQ8], ak: &[act::BlockQ8K]) -> f32 {
        // SAFETY: NEON is baseline; the dotprod variant is only asked for where the CPU has it.
        unsafe {
            macro_rules! k {
                ($f:ident, $a:expr) => {
                    if dotprod {
                        neon::$f::<true>(w, $a)
                    } else {
                        neon::$f::<false>(w, $a)
                    }
                };
            }
            match ty {
                GgmlType::Q8_0 => k!(dot_q8_0, a8),
                GgmlType::Q4_0 => k!(dot_q4_0, a8),
                GgmlType::Q4_1 => k!(dot_q4_1, a8),
                GgmlType::Q5_0 => k!(dot_q5_0, a8),
                GgmlType::Q4_K => k!(dot_q4_k, ak),
                GgmlType::Q6_K => k!(dot_q6_k, ak),
                _ => unreachable!(),
            }
        }
    }

    fn variants() -> Vec<bool> {
        let dp = std::arch::is_aarch64_feature_detected!("dotprod");
        eprintln!("dotprod {}", if dp { "present: testing both NEON variants" } else { "absent: plain NEON only" });
        if dp {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    #[test]
    fn neon_kernels_match_scalar_on_random_blocks() {
        let mut r = crate::rng::Rng::new(11);
        for dotprod in variants() {
            for ty in TYPES {
                for nb in [1, 2, 3, 8, 17] {
                    for _ in 0..20 {
                        let n = nb * ty.block_size();
                        let w = random_blocks(ty, nb, &mut r);
                        let x: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
                        // Activations from the scalar quantisers, full-range random bytes for Q8_K.
                        let a8 = if ty.block_size() == 32 { act::quantize_q8(&x) } else { vec![] };
                        let mut ak = act::quantize_q8k(&x);
                        for b in &mut ak {
                            for q in &mut b.qs {
                                *q = r.next_u64() as i8;
                            }
                            for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                                *s = c.iter().map(|&q| q as i16).sum();
                            }
                        }
                        let want = scalar_dot(ty, &w, &a8, &ak);
                        let got = dot(ty, dotprod, &w, &a8, &ak);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{} × {nb} blocks, dotprod {dotprod}: NEON {got}, scalar {want}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn neon_matches_llama_cpp_arm_kernels_bit_for_bit() {
        let goldens = llama_arm_goldens();
        for dotprod in variants() {
            let mut n = 0;
            for g in &goldens {
                let is_k = matches!(g.ty, GgmlType::Q4_K | GgmlType::Q6_K);
                let with_s = g.ty == GgmlType::Q4_1;
                // The activation quantiser: llama.cpp's ARM quantize_row_q8_0 / q8_1.
                if !is_k {
                    assert_eq!(
                        q8_bytes(&neon::quantize_q8(&g.x), with_s),
                        g.act,
                        "{}: Q8 activations of {} values",
                        g.ty.name(),
                        g.x.len()
                    );
                }
                // The dot product, on llama.cpp's own activation blocks.
                let (a8, ak) = if is_k { (vec![], parse_q8k(&g.act)) } else { (parse_q8(&g.act, with_s), vec![]) };
                let got = dot(g.ty, dotprod, &g.w, &a8, &ak);
                let want = if dotprod { g.dot_dotprod } else { g.dot };
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{} × {} values, dotprod {dotprod}: smelt {got:e}, llama.cpp {want:e}",
                    g.ty.name(),
                    g.x.len()
                );
                n += 1;
            }
            eprintln!("dotprod {dotprod}: {n} dot products bit-identical to llama.cpp's ARM build");
        }
        // The two llama.cpp builds do differ (lane split), so the dotprod half tests something.
        assert!(goldens.iter().any(|g| g.dot.to_bits() != g.dot_dotprod.to_bits()));
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_kernels {
    use super::super::simd::avx512_detected;
    use super::super::{avx2, avx512};
    use super::*;

    fn avx2_dot(ty: GgmlType, w: &[u8], a8: &[act::BlockQ8], ak: &[act::BlockQ8K]) -> f32 {
        // SAFETY: only called after the AVX2 check in `have_avx2`.
        unsafe {
            match ty {
                GgmlType::Q8_0 => avx2::dot_q8_0(w, a8),
                GgmlType::Q4_0 => avx2::dot_q4_0(w, a8),
                GgmlType::Q4_1 => avx2::dot_q4_1(w, a8),
                GgmlType::Q5_0 => avx2::dot_q5_0(w, a8),
                GgmlType::Q4_K => avx2::dot_q4_k(w, ak),
                GgmlType::Q6_K => avx2::dot_q6_k(w, ak),
                _ => unreachable!(),
            }
        }
    }

    fn avx512_dots<const R: usize>(
        ty: GgmlType,
        w: &[u8],
        rb: usize,
        a8: &[act::BlockQ8],
        ak: &[act::BlockQ8K],
    ) -> [f32; R] {
        assert!(avx512_detected());
        // SAFETY: checked just above.
        unsafe {
            match ty {
                GgmlType::Q8_0 => avx512::dot_q8_0::<R>(w, rb, a8),
                GgmlType::Q4_0 => avx512::dot_q4_0::<R>(w, rb, a8),
                GgmlType::Q4_1 => avx512::dot_q4_1::<R>(w, rb, a8),
                GgmlType::Q5_0 => avx512::dot_q5_0::<R>(w, rb, a8),
                GgmlType::Q4_K => avx512::dot_q4_k::<R>(w, rb, ak),
                GgmlType::Q6_K => avx512::dot_q6_k::<R>(w, rb, ak),
                _ => unreachable!(),
            }
        }
    }

    fn have_avx2() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// Where the AVX-512 kernel sums in the order of the AVX2 vec_dot kernel (`qtensor`'s
    /// `avx512_same_order`): every type, Q6_K included (both subtract its −32 offset from the
    /// integer lanes, as llama.cpp does).
    fn same_order(_ty: GgmlType) -> bool {
        true
    }

    /// The AVX2 Q8_0/Q8_1 activation quantiser against the plain loop, field for field, on
    /// normal values, rows with zeros, all-zero blocks and ties (values whose product with id is
    /// k + ½).
    #[test]
    fn avx2_q8_quantiser_matches_the_plain_loop() {
        if !have_avx2() {
            return;
        }
        let mut r = crate::rng::Rng::new(14);
        for case in 0..200 {
            let mut x: Vec<f32> = (0..32 * 9).map(|_| r.normal() as f32 * 10f32.powi(case % 5 - 2)).collect();
            for v in x[32..64].iter_mut() {
                *v = 0.0;
            }
            for (j, v) in x[64..96].iter_mut().enumerate() {
                *v = (j as f32 - 15.5) * if case % 2 == 0 { 1.0 } else { -0.25 };
            }
            for v in x[96..128].iter_mut().step_by(3) {
                *v = 0.0;
            }
            // amax 127: id = 1, so the halves are exact ties.
            for (j, v) in x[128..160].iter_mut().enumerate() {
                *v = if j == 0 { 127.0 } else { j as f32 - 16.5 };
            }
            // SAFETY: AVX2 checked above.
            let (a, b) = (act::quantize_q8_generic(&x), unsafe { act::quantize_q8_avx2(&x) });
            for (p, q) in a.iter().zip(&b) {
                assert_eq!((p.d.to_bits(), p.s.to_bits(), p.qs), (q.d.to_bits(), q.s.to_bits(), q.qs), "case {case}");
            }
        }
    }

    /// Several matrices' products in one job (`matmul_many_tiles`: q/k/v, gate/up) equal each
    /// matrix's own `matmul` bit for bit, for the four 32-element formats, with row counts that
    /// are and are not multiples of the task blocks and inputs past one 64-input block.
    #[test]
    fn many_matrices_in_one_job_equal_each_matmul_bit_for_bit() {
        if !avx512_detected() {
            smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX-512 F/BW/VL/VNNI");
            return;
        }
        let cols = 256;
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0] {
            for n in [5, 37, 70] {
                let qs: Vec<QTensor> = [(70, 1), (24, 2), (37, 3)]
                    .iter()
                    .map(|&(rows, seed)| QTensor::quantize(ty, &rand(rows * cols, seed), rows, cols).unwrap())
                    .collect();
                let refs: Vec<&QTensor> = qs.iter().collect();
                let x = rand(n * cols, 9);
                let Some(ys) = super::super::matmul_many_tiles(&refs, &x, n) else {
                    // Q4_0 with a multiple of 8 rows takes llama.cpp's repacked path instead.
                    assert_eq!(ty, GgmlType::Q4_0, "{} takes the tiles", ty.name());
                    continue;
                };
                for (q, y) in qs.iter().zip(&ys) {
                    let mut want = vec![0f32; n * q.dims().0];
                    q.matmul(&x, n, &mut want);
                    let bad = y.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(bad, 0, "{} {:?} · {n}: {bad} outputs differ", ty.name(), q.dims());
                }
            }
        }
        // F16 (x rounded once for all, `float_formats::matmul_many_f16`): rows a multiple of 4,
        // as its tinyBLAS order asks, 72 of them past two 32-row task blocks.
        for n in [5, 37, 70] {
            let qs: Vec<QTensor> = [(72, 1), (24, 2), (36, 3)]
                .iter()
                .map(|&(rows, seed)| QTensor::quantize(GgmlType::F16, &rand(rows * cols, seed), rows, cols).unwrap())
                .collect();
            let refs: Vec<&QTensor> = qs.iter().collect();
            let x = rand(n * cols, 9);
            let ys = super::super::matmul_many_tiles(&refs, &x, n).expect("F16 takes the tiles");
            for (q, y) in qs.iter().zip(&ys) {
                let mut want = vec![0f32; n * q.dims().0];
                q.matmul(&x, n, &mut want);
                let bad = y.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(bad, 0, "f16 {:?} · {n}: {bad} outputs differ", q.dims());
            }
        }
    }

    /// Gate and up gated tile by tile (`swiglu_many_tiles`) equal the two products then
    /// `swiglu_into` bit for bit, for the 32-element formats and F16, rows past two task blocks
    /// and inputs past one.
    #[test]
    fn gate_and_up_gated_tile_by_tile_equal_the_products_then_swiglu() {
        use crate::float::Float;
        if !avx512_detected() {
            smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX-512 F/BW/VL/VNNI");
            return;
        }
        let (rows, cols) = (72, 256);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::F16] {
            let g = QTensor::quantize(ty, &rand(rows * cols, 1), rows, cols).unwrap();
            let u = QTensor::quantize(ty, &rand(rows * cols, 2), rows, cols).unwrap();
            for n in [5, 37, 70] {
                let x = rand(n * cols, 9);
                let y = super::super::swiglu_many_tiles(&g, &u, &x, n)
                    .unwrap_or_else(|| panic!("{} · {n}: no gated product", ty.name()));
                let (mut gy, mut uy) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                g.matmul(&x, n, &mut gy);
                u.matmul(&x, n, &mut uy);
                let mut want = vec![0f32; n * rows];
                f32::swiglu_into(&mut want, &gy, &uy);
                let bad = y.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(bad, 0, "{} · {n}: {bad} gated outputs differ", ty.name());
            }
        }
    }

    /// `tile512::tile_pairs` (zmm, two inputs a register) and `tile_eight` (eight prepared
    /// inputs) against `tile` (ymm) bit for bit, for the four 32-element formats: 4 × 8, 1 × 8,
    /// 4 × 4 and 1 × 4 tiles, 1 to 16 blocks, random
    /// block bytes, activations over the whole i8 range with random scales and sums, rows at a
    /// stride longer than a row and the last row's slice cut to its blocks.
    #[test]
    fn zmm_tiles_match_the_ymm_tiles_bit_for_bit() {
        use super::super::tile512::{self as t, tile, tile_pairs};
        if !have_avx2() || !avx512_detected() {
            smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX2 or AVX-512 F/BW/VL/VNNI");
            return;
        }
        fn check<const K: u8>(ty: GgmlType, r: &mut crate::rng::Rng) {
            let bytes = t::block_bytes(K);
            for nb in [1, 2, 3, 16] {
                let rb = nb * bytes + 7;
                let mut w = vec![0u8; 4 * rb];
                for j in 0..4 {
                    w[j * rb..j * rb + nb * bytes].copy_from_slice(&random_blocks(ty, nb, r));
                }
                let acts: Vec<Vec<act::BlockQ8>> = (0..8)
                    .map(|_| {
                        (0..nb)
                            .map(|_| {
                                let mut qs = [0i8; 32];
                                qs.iter_mut().for_each(|q| *q = r.next_u64() as i8);
                                act::BlockQ8 { d: r.normal() as f32, s: 40.0 * r.normal() as f32, qs }
                            })
                            .collect()
                    })
                    .collect();
                let a8: [&[act::BlockQ8]; 8] = std::array::from_fn(|c| &acts[c][..]);
                let a4: [&[act::BlockQ8]; 4] = std::array::from_fn(|c| &acts[c][..]);
                // SAFETY: AVX-512 F/BW/VL/VNNI detected; the slices hold the rows' blocks.
                unsafe {
                    let p48 = tile_pairs::<K, 4, 8>(&w, rb, a8);
                    let p18 = tile_pairs::<K, 1, 8>(&w[3 * rb..3 * rb + nb * bytes], rb, a8);
                    let p44 = tile_pairs::<K, 4, 4>(&w, rb, a4);
                    let p14 = tile_pairs::<K, 1, 4>(&w[2 * rb..2 * rb + nb * bytes], rb, a4);
                    let t44 = tile::<K, 4, 4>(&w, rb, a4);
                    let e = t::eight(a8);
                    t::check_eight::<K>(4, &w, rb, nb);
                    let e48 = t::tile_eight::<K, 4>(&w, rb, &e);
                    let e18 = t::tile_eight::<K, 1>(&w[3 * rb..3 * rb + nb * bytes], rb, &e);
                    for j in 0..4 {
                        for c in 0..8 {
                            let one = tile::<K, 1, 1>(&w[j * rb..], rb, [a8[c]])[0][0].to_bits();
                            let what = format!("{} {nb} blocks, row {j}, input {c}", ty.name());
                            assert_eq!(p48[j][c].to_bits(), one, "4 x 8: {what}");
                            assert_eq!(e48[j][c].to_bits(), one, "prepared 4 x 8: {what}");
                            if j == 3 {
                                assert_eq!(p18[0][c].to_bits(), one, "1 x 8: {what}");
                                assert_eq!(e18[0][c].to_bits(), one, "prepared 1 x 8: {what}");
                            }
                            if c < 4 {
                                assert_eq!(p44[j][c].to_bits(), one, "4 x 4: {what}");
                                assert_eq!(t44[j][c].to_bits(), one, "ymm 4 x 4: {what}");
                                if j == 2 {
                                    assert_eq!(p14[0][c].to_bits(), one, "1 x 4: {what}");
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut r = crate::rng::Rng::new(21);
        check::<{ t::Q8_0 }>(GgmlType::Q8_0, &mut r);
        check::<{ t::Q4_0 }>(GgmlType::Q4_0, &mut r);
        check::<{ t::Q4_1 }>(GgmlType::Q4_1, &mut r);
        check::<{ t::Q5_0 }>(GgmlType::Q5_0, &mut r);
    }

    /// The AVX-512 repacked Q4_K GEMV against the AVX2 one bit for bit (and the AVX2 one-row
    /// kernel of that order), on random block bytes (every scale/min pattern), full-range random
    /// Q8_K values, 1 to 17 super-blocks, rows at a stride longer than a row.
    #[test]
    fn avx512_q4_k_repack_gemv_matches_avx2_bit_for_bit() {
        if !have_avx2() || !avx512_detected() {
            smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX2 or AVX-512 F/BW/VL/VNNI");
            return;
        }
        let ty = GgmlType::Q4_K;
        let mut r = crate::rng::Rng::new(13);
        for nb in [1, 2, 3, 6, 17] {
            for _ in 0..20 {
                let rb = nb * ty.block_bytes() + 16;
                let rows: Vec<Vec<u8>> = (0..8).map(|_| random_blocks(ty, nb, &mut r)).collect();
                let mut w = vec![0u8; 8 * rb];
                for (j, row) in rows.iter().enumerate() {
                    w[j * rb..j * rb + row.len()].copy_from_slice(row);
                }
                let x: Vec<f32> = (0..nb * 256).map(|_| r.normal() as f32).collect();
                let mut ak = act::quantize_q8k(&x);
                for b in &mut ak {
                    for q in &mut b.qs {
                        *q = r.next_u64() as i8;
                    }
                    for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                        *s = c.iter().map(|&q| q as i16).sum();
                    }
                }
                // SAFETY: features checked above.
                let (wide, narrow) =
                    unsafe { (avx512::dot8_q4_k_repack(&w, rb, &ak), avx2::dot8_q4_k_repack::<false>(&w, rb, &ak)) };
                for (j, row) in rows.iter().enumerate() {
                    // SAFETY: as above.
                    let one = unsafe { avx2::dot_q4_k_repack(row, &ak) };
                    assert_eq!(
                        wide[j].to_bits(),
                        narrow[j].to_bits(),
                        "{nb} blocks, row {j}: AVX-512 {:e}, AVX2 {:e}",
                        wide[j],
                        narrow[j]
                    );
                    assert_eq!(
                        narrow[j].to_bits(),
                        one.to_bits(),
                        "{nb} blocks, row {j}: 8 rows {:e}, one {one:e}",
                        narrow[j]
                    );
                }
            }
        }
    }

    /// The four-input K-quant kernels for prefill (`dot8x4_q4_k_repack_gemm`,
    /// `dot8x4_q6_k_tiled`, AVX2 and, where the CPU has it, AVX-512 VNNI) against their
    /// one-input kernels bit for bit, on random block bytes
    /// (every scale pattern) and full-range random Q8_K values, 1 to 17 super-blocks.
    #[test]
    fn four_input_k_quant_kernels_match_one_input_bit_for_bit() {
        if !have_avx2() {
            smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut r = crate::rng::Rng::new(17);
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            for nb in [1, 2, 6, 17] {
                for _ in 0..10 {
                    let rb = nb * ty.block_bytes() + 16;
                    let mut w = vec![0u8; 8 * rb];
                    for j in 0..8 {
                        w[j * rb..j * rb + nb * ty.block_bytes()].copy_from_slice(&random_blocks(ty, nb, &mut r));
                    }
                    let acts: Vec<Vec<act::BlockQ8K>> = (0..4)
                        .map(|_| {
                            let x: Vec<f32> = (0..nb * 256).map(|_| r.normal() as f32).collect();
                            let mut ak = act::quantize_q8k(&x);
                            for b in &mut ak {
                                for q in &mut b.qs {
                                    *q = r.next_u64() as i8;
                                }
                                for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                                    *s = c.iter().map(|&q| q as i16).sum();
                                }
                            }
                            ak
                        })
                        .collect();
                    let four = [&acts[0][..], &acts[1][..], &acts[2][..], &acts[3][..]];
                    // SAFETY: features checked above.
                    let got = unsafe {
                        if ty == GgmlType::Q4_K {
                            avx2::dot8x4_q4_k_repack_gemm(&w, rb, four)
                        } else {
                            avx2::dot8x4_q6_k_tiled(&w, rb, four)
                        }
                    };
                    if avx512_detected() {
                        // SAFETY: AVX-512 F/BW/VL/VNNI detected.
                        let wide = unsafe {
                            if ty == GgmlType::Q4_K {
                                avx512::dot8x4_q4_k_repack_gemm(&w, rb, four)
                            } else {
                                avx512::dot8x4_q6_k_tiled(&w, rb, four)
                            }
                        };
                        for (j, (g, v)) in got.iter().zip(&wide).enumerate() {
                            for r8 in 0..8 {
                                assert_eq!(
                                    g[r8].to_bits(),
                                    v[r8].to_bits(),
                                    "{} {nb} blocks, input {j}, row {r8}: AVX2 {:e}, AVX-512 {:e}",
                                    ty.name(),
                                    g[r8],
                                    v[r8]
                                );
                            }
                        }
                    }
                    for (j, a) in acts.iter().enumerate() {
                        // SAFETY: as above.
                        let one = unsafe {
                            if ty == GgmlType::Q4_K {
                                avx2::dot8_q4_k_repack::<true>(&w, rb, a)
                            } else {
                                avx2::dot8_q6_k_tiled(&w, rb, a)
                            }
                        };
                        for r8 in 0..8 {
                            assert_eq!(
                                got[j][r8].to_bits(),
                                one[r8].to_bits(),
                                "{} {nb} blocks, input {j}, row {r8}: four inputs {:e}, one {:e}",
                                ty.name(),
                                got[j][r8],
                                one[r8]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Each AVX-512 kernel, four rows per pass and one, against the AVX2 vec_dot kernel bit for
    /// bit where the float orders are the same (`same_order`), and against the scalar kernel
    /// (relative 1e-5), on random block bytes and activations (full-range random Q8_K bytes),
    /// 1 to 17 blocks.
    #[test]
    fn avx512_kernels_match_avx2_bit_for_bit_and_scalar() {
        if !have_avx2() || !avx512_detected() {
            smelt_testing::skip(smelt_testing::Need::Cpu, "this CPU lacks AVX2 or AVX-512 F/BW/VL/VNNI");
            return;
        }
        let mut r = crate::rng::Rng::new(12);
        let (mut n_dots, mut n_bits) = (0, 0);
        for ty in TYPES {
            for nb in [1, 2, 3, 8, 17] {
                for _ in 0..20 {
                    let n = nb * ty.block_size();
                    // Four rows with a stride longer than a row (as a sub-matrix would have).
                    let rb = nb * ty.block_bytes() + 8;
                    let rows: Vec<Vec<u8>> = (0..4).map(|_| random_blocks(ty, nb, &mut r)).collect();
                    let mut w = vec![0u8; 4 * rb];
                    for (j, row) in rows.iter().enumerate() {
                        w[j * rb..j * rb + row.len()].copy_from_slice(row);
                    }
                    let x: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
                    let a8 = if ty.block_size() == 32 { act::quantize_q8(&x) } else { vec![] };
                    let mut ak = act::quantize_q8k(&x);
                    for b in &mut ak {
                        for q in &mut b.qs {
                            *q = r.next_u64() as i8;
                        }
                        for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                            *s = c.iter().map(|&q| q as i16).sum();
                        }
                    }
                    let four = avx512_dots::<4>(ty, &w, rb, &a8, &ak);
                    for (j, row) in rows.iter().enumerate() {
                        let [one] = avx512_dots::<1>(ty, row, row.len(), &a8, &ak);
                        let want = avx2_dot(ty, row, &a8, &ak);
                        let scalar = scalar_dot(ty, row, &a8, &ak);
                        if same_order(ty) {
                            assert_eq!(
                                four[j].to_bits(),
                                want.to_bits(),
                                "{} × {nb} blocks, row {j} of 4: AVX-512 {:e}, AVX2 {want:e}",
                                ty.name(),
                                four[j]
                            );
                            assert_eq!(
                                one.to_bits(),
                                want.to_bits(),
                                "{} × {nb} blocks, one row: AVX-512 {one:e}, AVX2 {want:e}",
                                ty.name()
                            );
                            n_bits += 1;
                        } else {
                            assert_eq!(
                                four[j].to_bits(),
                                one.to_bits(),
                                "{} × {nb} blocks, row {j}: four rows per pass {:e}, one {one:e}",
                                ty.name(),
                                four[j]
                            );
                        }
                        // Relative to Σ|w·a| as well: the K-quants subtract two large sums
                        // (Q6_K's −32 offset, Q4_K's mins), so the result can be far smaller
                        // than the terms whose rounding it carries.
                        let mut wd = vec![0f32; n];
                        dequantize_row(ty, row, &mut wd);
                        let ad: Vec<f32> = if ty.block_size() == 32 {
                            a8.iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect()
                        } else {
                            ak.iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect()
                        };
                        let mass: f32 = wd.iter().zip(&ad).map(|(w, a)| (w * a).abs()).sum();
                        assert!(
                            (one - scalar).abs() <= 1e-5 * (1.0 + scalar.abs().max(mass)),
                            "{} × {nb} blocks: AVX-512 {one}, scalar {scalar}, Σ|w·a| {mass}",
                            ty.name()
                        );
                        n_dots += 1;
                    }
                }
            }
        }
        eprintln!("{n_dots} AVX-512 dot products within 1e-5 of scalar, {n_bits} of them bit-identical to AVX2 (the types of the same order)");
    }
}

#[test]
fn imatrix_quantize_matches_llama_cpp_byte_for_byte() {
    // tests/data/imatrix_golden.gguf: llama.cpp's own ggml_quantize_chunk with an imatrix
    // (scripts/gguf_imatrix_goldens.py), on rows of 512 and 576 columns.
    let g = GgufFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/imatrix_golden.gguf")).unwrap();
    let mut checked = 0;
    for cols in [512usize, 576] {
        let src = f32s(&g, &format!("src.{cols}"));
        let w = f32s(&g, &format!("imatrix.{cols}"));
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let Some(t) = g.tensor(&format!("q.{}.{cols}", ty.name().to_uppercase())) else { continue };
            let (got_ty, want) = g.tensor_bytes(t).unwrap();
            assert_eq!(got_ty, ty);
            let got = quantize_with(ty, &src, cols, Some(&w)).unwrap();
            assert_eq!(got.len(), want.len());
            let rb = ty.row_bytes(cols).unwrap();
            let bad: Vec<usize> =
                (0..got.len() / rb).filter(|&r| got[r * rb..(r + 1) * rb] != want[r * rb..(r + 1) * rb]).collect();
            assert!(bad.is_empty(), "{} at {cols} columns: rows {bad:?} differ from llama.cpp", ty.name());
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
    // The weights change the result (else the test would not test them), except for Q8_0.
    let src = f32s(&g, "src.512");
    let w = f32s(&g, "imatrix.512");
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        assert_ne!(quantize_with(ty, &src, 512, Some(&w)).unwrap(), quantize(ty, &src, 512).unwrap(), "{}", ty.name());
    }
}

#[test]
fn imatrix_quantisers_lower_the_weighted_error() {
    // On Gaussian rows, weighting a few columns heavily must lower the error on those columns.
    let (rows, cols) = (16, 512);
    let x = rand(rows * cols, 7);
    let mut w = vec![1f32; cols];
    for c in (0..cols).step_by(7) {
        w[c] = 100.0;
    }
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let err = |q: &[u8]| {
            let y = dequantize(ty, q, x.len()).unwrap();
            x.iter().zip(&y).enumerate().map(|(i, (a, b))| (w[i % cols] * (a - b) * (a - b)) as f64).sum::<f64>()
        };
        let (plain, weighted) =
            (err(&quantize(ty, &x, cols).unwrap()), err(&quantize_with(ty, &x, cols, Some(&w)).unwrap()));
        assert!(
            weighted < plain,
            "{}: weighted error {weighted} not below the reference quantiser's {plain}",
            ty.name()
        );
    }
}
