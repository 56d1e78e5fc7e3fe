//! CUDA parity tests: every op's kernels against the CPU reference, forward and backward.
//!
//! Inputs are fresh random each run (the seed is printed; `SMELT_PARITY_SEED` replays one);
//! every device output buffer is poisoned with NaN before its kernel runs, so an element a
//! kernel forgets to write fails the comparison. Comparison: NMSE = ‖gpu − cpu‖² / ‖cpu‖²
//! against a per-precision threshold. Without a GPU each test reports a skip and passes (CI
//! has none); under `SMELT_REQUIRE_GPU=1` (the GPU suite) it fails instead. `kernels_compile` needs only NVRTC, not a GPU. The bf16-storage
//! cases (mixed precision) are in `parity_bf16_tests.rs`, with these helpers. Some tests set the
//! process-wide precision: run with `--test-threads=1` (the GPU suite does).

use crate::cuda;
use crate::ops;
use crate::rng::Rng;
use crate::{Device, Tensor};

/// f32 kernels against the f32 CPU code: only summation order differs.
pub(super) const F32_NMSE: f64 = 1e-10;
/// bf16 matmul operands (f32 accumulation) against the unrounded f32 CPU reference.
pub(super) const BF16_NMSE: f64 = 1e-4;

pub(super) fn dev() -> Option<Device> {
    match cuda::gpu(0) {
        Ok(_) => {
            cuda::set_poison(true);
            cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
            Some(Device::Cuda(0))
        }
        Err(e) => {
            smelt_testing::skip(smelt_testing::Need::Gpu, format!("no CUDA device ({e:#})"));
            None
        }
    }
}

pub(super) fn seed() -> u64 {
    let s = std::env::var("SMELT_PARITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("seed {s} (SMELT_PARITY_SEED={s} replays it)");
    s
}

pub(super) fn randn(r: &mut Rng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32((0..n).map(|_| r.normal() as f32 * scale).collect(), shape).unwrap()
}

pub(super) fn ids(r: &mut Rng, n: usize, v: usize) -> Tensor {
    Tensor::from_u32((0..n).map(|_| r.below(v as u64) as u32).collect(), &[n]).unwrap()
}

pub(super) fn up(t: &Tensor, d: Device) -> Tensor {
    t.to_device(d).unwrap()
}

/// Asserts NMSE(gpu, cpu) ≤ tol; NaN (an unwritten or broken element) always fails.
pub(super) fn close(label: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) {
    assert_eq!(gpu.shape(), cpu.shape(), "{label}: shape");
    let nmse = smelt_testing::nmse(&gpu.to_vec_f32().unwrap(), &cpu.to_vec_f32().unwrap());
    println!("{label:<40} {:<5} nmse {nmse:.3e} (tol {tol:.0e})", format!("{:?}", gpu.dtype()).to_lowercase());
    assert!(nmse.is_finite() && nmse <= tol, "{label}: NMSE {nmse:e} > {tol:e} (or NaN: an element was not written)");
}

#[test]
fn kernels_compile() {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        smelt_testing::skip(smelt_testing::Need::Gpu, "NVRTC not found");
        return;
    }
    let arch = cuda::gpu(0).map(|g| g.arch).unwrap_or((9, 0));
    // Every kernel the launchers ask for, by base name and the dtype lists they pass to
    // `cuda::kname` (f = f32, b = bf16): a name the .cu's instantiation macros do not produce
    // would only fail at run time, on a GPU.
    let x = |bases: &[&str], combos: &[&str]| -> Vec<String> {
        let mut v = Vec::new();
        for b in bases {
            for c in combos {
                let dts: Vec<crate::DType> =
                    c.chars().map(|ch| if ch == 'f' { crate::DType::F32 } else { crate::DType::BF16 }).collect();
                v.push(cuda::kname(b, &dts, "kernels_compile").unwrap());
            }
        }
        v
    };
    let one = ["f", "b"];
    let two = ["ff", "fb", "bf", "bb"];
    let three = ["fff", "ffb", "fbf", "fbb", "bff", "bfb", "bbf", "bbb"];
    let plain = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The paged pool's kernels: activation dtype, then pool storage.
    let pool_pairs = |k: &str| {
        ["f32_f32", "f32_bf16", "f32_f16", "bf16_f32", "bf16_bf16", "bf16_f16"].map(|c| format!("{k}_{c}")).to_vec()
    };
    for (name, src, kernels) in [
        ("adamw", ops::adamw::cuda::SRC, plain(&["sumsq_multi_f32", "norm_finalize", "adamw_multi_f32"])),
        (
            "attention",
            ops::attention::cuda::SRC,
            x(&["attn_fwd", "attn_bwd_delta", "attn_bwd_dq", "attn_bwd_dkdv"], &one),
        ),
        (
            "attention_decode",
            ops::attention::cuda::DEC_SRC,
            [
                x(&["attn_decode", "attn_decode_rope", "attn_decode_combine", "kv_write"], &one),
                plain(&["decode_pos_add"]),
                pool_pairs("paged_attn"),
            ]
            .concat(),
        ),
        ("attention_paged", ops::attention::cuda::PAGED_SRC, pool_pairs("paged_rope_kv")),
        (
            "decode_layers",
            ops::decode_layers::cuda::SRC,
            plain(&["decode_layers_bf16", "decode_layers_b2_bf16", "decode_layers_quant"]),
        ),
        (
            "attention_tc",
            ops::attention::cuda::TC_SRC,
            plain(
                &[
                    "attn_tc_fwd_d64",
                    "attn_tc_fwd1_d64",
                    "attn_tc_dqk32b4_d64",
                    "attn_tc_dkdv0b3_d64",
                    "attn_tc_dkdv0_d64",
                    "attn_tc_fwd_d128",
                    "attn_tc_dq_d128",
                    "attn_tc_dkdv_d128",
                    "attn_tc_dkdv_sum",
                ]
                .into_iter()
                .chain(
                    [
                        ops::attention::cuda::TC_D64_FWD,
                        ops::attention::cuda::TC_D64_DQ,
                        ops::attention::cuda::TC_D64_DKDV,
                    ]
                    .iter()
                    .flat_map(|t| t.iter().map(|v| v.name)),
                )
                .collect::<Vec<_>>(),
            ),
        ),
        (
            "cross_entropy",
            ops::cross_entropy::cuda::SRC,
            [x(&["ce_fwd", "ce_bwd"], &one), plain(&["ce_mean_f32"])].concat(),
        ),
        (
            "cross_entropy_chunks",
            ops::cross_entropy::cuda::CHUNKS_SRC,
            [x(&["ce_chunk_fwd", "ce_chunk_bwd"], &one), plain(&["ce_chunk_finish_f32", "ce_nll_f64"])].concat(),
        ),
        (
            "elementwise",
            ops::elementwise::cuda::SRC,
            [
                x(&["add", "mul", "scale", "copy_cols"], &one),
                x(&["add_assign", "extend_cols"], &two),
                plain(&["f32_to_bf16", "bf16_to_f32"]),
            ]
            .concat(),
        ),
        ("dropout", ops::dropout::cuda::SRC, x(&["dropout"], &one)),
        (
            "embedding",
            ops::embedding::cuda::SRC,
            [
                x(&["embedding_fwd", "embedding_bwd_grouped", "embedding_bwd_sorted"], &one),
                plain(&["embedding_sort_pos"]),
            ]
            .concat(),
        ),
        ("matmul", ops::matmul::cuda::SRC, x(&["add_bias", "col_sum_part"], &one)),
        (
            "gemv",
            ops::matmul::cuda::GEMV_SRC,
            [
                x(&["gemv3", "gemv_swiglu", "gemvg3", "gemvg_swiglu"], &one),
                plain(&["gemv3_norm_bf16", "gemv_swiglu_norm_bf16", "gemvg3_norm_bf16", "gemvg_swiglu_norm_bf16"]),
            ]
            .concat(),
        ),
        (
            "qmatmul",
            ops::qmatmul::cuda::SRC,
            ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]
                .iter()
                .flat_map(|f| {
                    [
                        "qmatvec_",
                        "qdequant_f32_",
                        "qdequant_bf16_",
                        "qgather_f32_",
                        "qmatvec_bf16_",
                        "mmvqg3_bf16_",
                        "mmvqg_swiglu_bf16_",
                        "mmvqg3_n1_bf16_",
                        "mmvqg_swiglu_n1_bf16_",
                        "mmvqg_swiglu_norm_n1_bf16_",
                        "mmvqg3_norm_n1_bf16_",
                    ]
                    .map(|k| format!("{k}{f}"))
                })
                .chain(
                    ["mmvqg3_bf16_", "mmvqg3_n1_bf16_", "mmvqg3_norm_n1_bf16_"]
                        .iter()
                        .flat_map(|k| ["Q4_K_Q6_K", "Q5_0_Q8_0"].map(|p| format!("{k}{p}"))),
                )
                .collect(),
        ),
        (
            "rmsnorm",
            ops::rmsnorm::cuda::SRC,
            [
                x(&["rmsnorm_fwd"], &three),
                x(&["rmsnorm_bwd_dx", "rmsnorm_bwd_dw_part"], &two),
                x(&["rmsnorm_bwd_dx_add", "rmsnorm_bwd_rows"], &three),
                plain(&["sum_partials_f32", "sum_partials_warps_f32"]),
            ]
            .concat(),
        ),
        ("rope", ops::rope::cuda::SRC, x(&["rope", "rope_kv"], &one)),
        ("sample", ops::sample::cuda::SRC, plain(&["sample_f32", "sample_mark"])),
        ("swiglu", ops::swiglu::cuda::SRC, x(&["swiglu_fwd", "swiglu_bwd"], &one)),
    ] {
        if name == "attention_tc" && arch.0 < 8 {
            println!(
                "{name}: skipped (bf16 mma.sync and cp.async need compute capability 8.0, this GPU is {}.{})",
                arch.0, arch.1
            );
            continue;
        }
        let ptx = match cuda::compile::compile(name, src, arch) {
            Ok(p) => p,
            Err(e) => panic!("{e:#}"),
        };
        for k in &kernels {
            assert!(ptx.contains(&format!(".entry {k}(")), "{name}.cu has no kernel {k}");
        }
        // `SMELT_DUMP_PTX=DIR`: the PTX for ptxas's register and spill report without a GPU
        // (`ptxas -arch=sm_90 -v DIR/gemv.ptx`).
        if let Some(dir) = std::env::var_os("SMELT_DUMP_PTX") {
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.ptx")), &ptx).unwrap();
        }
        println!("{name}: {} kernels", kernels.len());
    }
    // The Hopper module (wgmma): compiled for sm_90a whatever this machine's GPU.
    let (name, src) = (ops::attention::cuda::WG_MODULE, ops::attention::cuda::WG_SRC);
    let ptx = cuda::compile::compile(name, src, (9, 0)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ptx.contains(".target sm_90a"), "{name}: not compiled for sm_90a");
    for k in ["attn_wg_fwd_d64", "attn_wg_dq_d64", "attn_wg_dkdv_d64", "attn_wg_probe", "attn_tc_dkdv_d64"] {
        assert!(ptx.contains(&format!(".entry {k}(")), "{name} has no kernel {k}");
    }
    if let Some(dir) = std::env::var_os("SMELT_DUMP_PTX") {
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.ptx")), &ptx).unwrap();
    }
    println!("{name}: wgmma kernels");
}

/// Column blocks (`concat_cols`, `narrow_cols`: LoRA's [x | down] and its gradient's split) copy
/// exactly, f32 and bf16, with widths that take the 16-byte path (multiples of 8) and widths that
/// do not (odd ones, so element by element).
#[test]
fn parity_concat_and_narrow_columns() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (rows, widths) in [(37usize, vec![16usize, 48]), (5, vec![3, 7, 1]), (1030, vec![896, 32])] {
        for dt in [crate::DType::F32, crate::DType::BF16] {
            let parts: Vec<Tensor> =
                widths.iter().map(|&w| randn(&mut r, &[rows, w], 1.0).to_dtype(dt).unwrap()).collect();
            let host: Vec<&Tensor> = parts.iter().collect();
            let want = ops::elementwise::concat_cols(&host).unwrap();
            let dev_parts: Vec<Tensor> = parts.iter().map(|p| p.to_device(d).unwrap()).collect();
            let got = ops::elementwise::concat_cols(&dev_parts.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(got.dtype(), dt);
            assert_eq!(got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap(), "concat {rows} × {widths:?} {dt:?}");
            let mut c0 = 0;
            for (p, &w) in parts.iter().zip(&widths) {
                let back = ops::elementwise::narrow_cols(&got, c0, w).unwrap();
                assert_eq!(back.to_vec_f32().unwrap(), p.to_vec_f32().unwrap(), "narrow {c0}..{} {dt:?}", c0 + w);
                c0 += w;
            }
        }
    }
}

/// [w | 0 … b … 0] (`extend_cols`, the LoRA one-product form's combined weight) equals the CPU's
/// and the concatenation it replaces, bit for bit, for every pair of w and b dtypes, b at the
/// start, middle and end of the extra columns, row lengths with and without the 16-byte path.
#[test]
fn parity_extend_columns() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (rows, k, nb, off, width) in
        [(37usize, 896usize, 16usize, 16usize, 48usize), (5, 7, 3, 0, 5), (300, 64, 16, 16, 32)]
    {
        for (dw, db) in [
            (crate::DType::F32, crate::DType::F32),
            (crate::DType::BF16, crate::DType::F32),
            (crate::DType::BF16, crate::DType::BF16),
            (crate::DType::F32, crate::DType::BF16),
        ] {
            let w = randn(&mut r, &[rows, k], 1.0).to_dtype(dw).unwrap();
            let b = randn(&mut r, &[rows, nb], 1.0).to_dtype(db).unwrap();
            let want = ops::elementwise::extend_cols(&w, &b, off, width).unwrap();
            let got =
                ops::elementwise::extend_cols(&w.to_device(d).unwrap(), &b.to_device(d).unwrap(), off, width).unwrap();
            assert_eq!(got.dtype(), dw);
            assert_eq!(
                got.to_vec_f32().unwrap(),
                want.to_vec_f32().unwrap(),
                "extend {rows} × {k} + {width}, b at {off} {dw:?}/{db:?}"
            );
            let z = |c: usize| Tensor::zeros(&[rows, c]).to_dtype(dw).unwrap();
            let bw = b.to_dtype(dw).unwrap();
            let (z0, z1) = (z(off), z(width - off - nb));
            let parts: Vec<&Tensor> = [(&w, k), (&z0, off), (&bw, nb), (&z1, width - off - nb)]
                .into_iter()
                .filter(|p| p.1 > 0)
                .map(|p| p.0)
                .collect();
            let cat = ops::elementwise::concat_cols(&parts).unwrap();
            assert_eq!(
                want.to_vec_f32().unwrap(),
                cat.to_vec_f32().unwrap(),
                "extend_cols against concat_cols {dw:?}/{db:?}"
            );
        }
    }
}

/// Dropout draws the CPU's mask on the device: f32 bit for bit, bf16 as the CPU op on the same
/// (bf16-rounded) values within one rounding.
#[test]
fn parity_dropout() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let x = randn(&mut r, &[301, 77], 1.0);
    for (p, s) in [(0.1f32, 7u64), (0.5, 123_456_789_012), (0.0, 3)] {
        let (g, c) = (ops::dropout::dropout(&up(&x, d), p, s).unwrap(), ops::dropout::dropout(&x, p, s).unwrap());
        assert_eq!(g.to_vec_f32().unwrap(), c.to_vec_f32().unwrap(), "dropout f32 p {p}: not the CPU's mask");
        let xb = up(&x, d).to_dtype(crate::DType::BF16).unwrap();
        let cb = ops::dropout::dropout(&Tensor::from_f32(xb.to_vec_f32().unwrap(), x.shape()).unwrap(), p, s).unwrap();
        let gb = ops::dropout::dropout(&xb, p, s).unwrap();
        assert_eq!(gb.dtype(), crate::DType::BF16);
        close(&format!("dropout bf16 p {p}"), &gb, &cb, 1e-5);
    }
}

#[test]
fn parity_elementwise_and_embedding() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (a, b) = (randn(&mut r, &[37, 19], 1.0), randn(&mut r, &[37, 19], 1.0));
    close(
        "add",
        &ops::elementwise::add(&up(&a, d), &up(&b, d)).unwrap(),
        &ops::elementwise::add(&a, &b).unwrap(),
        F32_NMSE,
    );
    close(
        "mul",
        &ops::elementwise::mul(&up(&a, d), &up(&b, d)).unwrap(),
        &ops::elementwise::mul(&a, &b).unwrap(),
        F32_NMSE,
    );
    close(
        "scale",
        &ops::elementwise::scale(&up(&a, d), 0.37).unwrap(),
        &ops::elementwise::scale(&a, 0.37).unwrap(),
        F32_NMSE,
    );
    let mut ga = up(&a, d);
    ops::elementwise::add_assign(&mut ga, &up(&b, d)).unwrap();
    let mut ca = a.clone();
    ops::elementwise::add_assign(&mut ca, &b).unwrap();
    close("add_assign", &ga, &ca, F32_NMSE);

    let (v, c, n) = (50, 24, 300); // n > v: ids repeat, so the backward's scatter-add collides
    let table = randn(&mut r, &[v, c], 1.0);
    let id = ids(&mut r, n, v);
    let dout = randn(&mut r, &[n, c], 1.0);
    close(
        "embedding fwd",
        &ops::embedding::embedding(&up(&table, d), &id).unwrap(),
        &ops::embedding::embedding(&table, &id).unwrap(),
        F32_NMSE,
    );
    let want = ops::embedding::embedding_backward(&table, &id, &dout).unwrap();
    // Host ids: the sorted, segmented kernel adds in the CPU's order, so the result is exact.
    let got = ops::embedding::embedding_backward(&up(&table, d), &id, &up(&dout, d)).unwrap();
    close("embedding bwd (host ids)", &got, &want, 0.0);
    // Device ids (a captured step's batch): the rows grouped on the device, the same sums.
    close(
        "embedding bwd (device ids)",
        &ops::embedding::embedding_backward(&up(&table, d), &up(&id, d), &up(&dout, d)).unwrap(),
        &want,
        0.0,
    );
    // Over several of the sort's 1024-id tiles and a block's 32 rows, few and many repeats.
    for (v, n) in [(7, 2500), (5000, 3333), (32000, 16384)] {
        let (c, table) = (40, randn(&mut r, &[v, 40], 1.0));
        let (id, dout) = (ids(&mut r, n, v), randn(&mut r, &[n, c], 1.0));
        let want = ops::embedding::embedding_backward(&table, &id, &dout).unwrap();
        let on_host = ops::embedding::embedding_backward(&up(&table, d), &id, &up(&dout, d)).unwrap();
        let on_device = ops::embedding::embedding_backward(&up(&table, d), &up(&id, d), &up(&dout, d)).unwrap();
        close(&format!("embedding bwd {n} host ids of {v}"), &on_host, &want, 0.0);
        close(&format!("embedding bwd {n} device ids of {v}"), &on_device, &want, 0.0);
    }
}

#[test]
fn parity_rmsnorm_and_fused_residual() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    // Few rows (several warps a row) and many (one warp a row), vectorised (c % 8 == 0) or not.
    for (n, c) in [(70, 48), (5, 1000), (300, 256), (1, 2048), (3, 4100), (1100, 768), (1030, 100)] {
        let (x, res, w, dy) = (
            randn(&mut r, &[n, c], 1.0),
            randn(&mut r, &[n, c], 1.0),
            randn(&mut r, &[c], 1.0),
            randn(&mut r, &[n, c], 1.0),
        );
        let (yc, rc) = ops::rmsnorm::rmsnorm(&x, &w, 1e-5).unwrap();
        let (yg, rg) = ops::rmsnorm::rmsnorm(&up(&x, d), &up(&w, d), 1e-5).unwrap();
        close(&format!("rmsnorm fwd {n}x{c}"), &yg, &yc, F32_NMSE);
        close("rmsnorm rstd", &rg, &rc, F32_NMSE);
        let (dxc, dwc) = ops::rmsnorm::rmsnorm_backward(&x, &w, &rc, &dy).unwrap();
        let (dxg, dwg) = ops::rmsnorm::rmsnorm_backward(&up(&x, d), &up(&w, d), &rg, &up(&dy, d)).unwrap();
        close("rmsnorm dx", &dxg, &dxc, F32_NMSE);
        close("rmsnorm dw", &dwg, &dwc, F32_NMSE);
        let (hc, yc, _) = ops::rmsnorm::add_rmsnorm(&x, &res, &w, 1e-5).unwrap();
        let (hg, yg, _) = ops::rmsnorm::add_rmsnorm(&up(&x, d), &up(&res, d), &up(&w, d), 1e-5).unwrap();
        close("add_rmsnorm h", &hg, &hc, F32_NMSE);
        close("add_rmsnorm y", &yg, &yc, F32_NMSE);
        // Its backward with the stream's own gradient added in the dx kernel (CUDA fuses it).
        let gh = randn(&mut r, &[n, c], 1.0);
        let (_, rc) = ops::rmsnorm::rmsnorm(&hc, &w, 1e-5).unwrap();
        let (_, rg) = ops::rmsnorm::rmsnorm(&hg, &up(&w, d), 1e-5).unwrap();
        let (dhc, drc, dwc) = ops::rmsnorm::add_rmsnorm_backward(&hc, &w, &rc, &dy, &gh, crate::DType::F32).unwrap();
        let (dhg, drg, dwg) =
            ops::rmsnorm::add_rmsnorm_backward(&hg, &up(&w, d), &rg, &up(&dy, d), &up(&gh, d), crate::DType::F32)
                .unwrap();
        close("add_rmsnorm bwd dh", &dhg, &dhc, F32_NMSE);
        close("add_rmsnorm bwd dr", &drg, &drc, F32_NMSE);
        close("add_rmsnorm bwd dw", &dwg, &dwc, F32_NMSE);
    }
}

#[test]
fn parity_rope_and_swiglu() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (b, t, h) = (2, 9, 3);
    // Head dim 16: 16-byte vectors of pairs; 12: one pair a thread (12 is not a multiple of 8).
    for (hd, layout) in [16, 12].into_iter().flat_map(|hd| {
        [ops::rope::RopeLayout::HalfSplit, ops::rope::RopeLayout::Interleaved].into_iter().map(move |l| (hd, l))
    }) {
        let table = ops::rope::RopeTable::new(ops::rope::freqs::default_inv_freq(10000.0, hd), 1.0, layout);
        let x = randn(&mut r, &[b, t, h, hd], 1.0);
        close(
            &format!("rope fwd {layout:?} d{hd}"),
            &ops::rope::rope(&up(&x, d), &table, 5).unwrap(),
            &ops::rope::rope(&x, &table, 5).unwrap(),
            F32_NMSE,
        );
        close(
            &format!("rope bwd {layout:?} d{hd}"),
            &ops::rope::rope_backward(&up(&x, d), &table, 5).unwrap(),
            &ops::rope::rope_backward(&x, &table, 5).unwrap(),
            F32_NMSE,
        );
    }
    // rope_into_cache: one launch on the GPU = rope, rope and two kv_writes there (bit for bit),
    // and the CPU's within f32 rounding; host and device positions; prefill (t > 1) and decode.
    for (hd, layout, t, pos) in [
        (16, ops::rope::RopeLayout::HalfSplit, 3, 2usize),
        (12, ops::rope::RopeLayout::Interleaved, 1, 6),
        (16, ops::rope::RopeLayout::Interleaved, 1, 0),
    ] {
        let (b, h, kvh, cap) = (2, 4, 2, 9);
        let table = ops::rope::RopeTable::new(ops::rope::freqs::default_inv_freq(10000.0, hd), 1.0, layout);
        let (q, k, v) = (
            randn(&mut r, &[b, t, h, hd], 1.0),
            randn(&mut r, &[b, t, kvh, hd], 1.0),
            randn(&mut r, &[b, t, kvh, hd], 1.0),
        );
        let cache = randn(&mut r, &[b, cap, kvh, hd], 1.0);
        let (mut kc, mut vc) = (cache.clone(), cache.clone());
        let qc = ops::rope::rope_into_cache(&q, &k, &v, &table, &mut kc, &mut vc, ops::Pos::Host(pos)).unwrap();
        let at = up(&Tensor::from_u32(vec![pos as u32], &[1]).unwrap(), d);
        for (label, p) in [("host", ops::Pos::Host(pos)), ("device", ops::Pos::Device { at: &at, cap })] {
            let (mut kg, mut vg) = (up(&cache, d), up(&cache, d));
            let qg =
                ops::rope::rope_into_cache(&up(&q, d), &up(&k, d), &up(&v, d), &table, &mut kg, &mut vg, p).unwrap();
            let l = format!("rope_into_cache {layout:?} d{hd} t{t} {label}");
            close(&format!("{l} q"), &qg, &qc, F32_NMSE);
            close(&format!("{l} k cache"), &kg, &kc, F32_NMSE);
            assert_eq!(vg.to_vec_f32().unwrap(), vc.to_vec_f32().unwrap(), "{l}: v cache");
            let (mut ku, mut vu) = (up(&cache, d), up(&cache, d));
            let qu = ops::rope::rope(&up(&q, d), &table, pos).unwrap();
            ops::attention::kv_write(&mut ku, &ops::rope::rope(&up(&k, d), &table, pos).unwrap(), p).unwrap();
            ops::attention::kv_write(&mut vu, &up(&v, d), p).unwrap();
            assert_eq!(qg.to_vec_f32().unwrap(), qu.to_vec_f32().unwrap(), "{l}: q differs from rope's");
            assert_eq!(kg.to_vec_f32().unwrap(), ku.to_vec_f32().unwrap(), "{l}: k cache differs from rope + kv_write");
            assert_eq!(vg.to_vec_f32().unwrap(), vu.to_vec_f32().unwrap(), "{l}: v cache differs from kv_write");
        }
    }
    let (g, u, dy) = (randn(&mut r, &[33, 70], 2.0), randn(&mut r, &[33, 70], 1.0), randn(&mut r, &[33, 70], 1.0));
    close(
        "swiglu fwd",
        &ops::swiglu::swiglu(&up(&g, d), &up(&u, d)).unwrap(),
        &ops::swiglu::swiglu(&g, &u).unwrap(),
        F32_NMSE,
    );
    let (dgc, duc) = ops::swiglu::swiglu_backward(&g, &u, &dy).unwrap();
    let (dgg, dug) = ops::swiglu::swiglu_backward(&up(&g, d), &up(&u, d), &up(&dy, d)).unwrap();
    close("swiglu dg", &dgg, &dgc, F32_NMSE);
    close("swiglu du", &dug, &duc, F32_NMSE);
}

#[test]
fn parity_cross_entropy() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (n, v) = (37, 5000);
    let z = randn(&mut r, &[n, v], 3.0);
    let mut t: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    t[3] = ops::cross_entropy::IGNORE;
    let t = Tensor::from_u32(t, &[n]).unwrap();
    let (lc, sc, cc) = ops::cross_entropy::cross_entropy(&z, &t).unwrap();
    let (lg, sg, cg) = ops::cross_entropy::cross_entropy(&up(&z, d), &t).unwrap();
    assert_eq!(cc, cg);
    close("ce loss", &lg, &lc, F32_NMSE);
    close("ce lse", &sg, &sc, F32_NMSE);
    close(
        "ce dlogits",
        &ops::cross_entropy::cross_entropy_backward(&up(&z, d), &t, &sg, 0.7, cg).unwrap(),
        &ops::cross_entropy::cross_entropy_backward(&z, &t, &sc, 0.7, cc).unwrap(),
        F32_NMSE,
    );
    // Perplexity scoring: f64 sums on the device, only the per-row values come back.
    let (nc, ng) =
        (ops::cross_entropy::nll_rows(&z, &t).unwrap(), ops::cross_entropy::nll_rows(&up(&z, d), &t).unwrap());
    let worst = nc.iter().zip(&ng).map(|(a, b)| (a - b).abs() / a.abs().max(1e-300)).fold(0f64, f64::max);
    println!("nll_rows f64 (device)         max rel diff {worst:.3e} (tol 1e-12)");
    assert!(worst < 1e-12 && ng[3] == 0.0, "nll_rows: {worst:e}");
}

#[test]
fn parity_chunked_linear_cross_entropy() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (n, c, v) = (45, 32, 3000);
    let (h, w) = (randn(&mut r, &[n, c], 1.0), randn(&mut r, &[v, c], 0.2));
    let mut t = ids(&mut r, n, v).as_u32().unwrap().to_vec();
    t[7] = ops::cross_entropy::IGNORE;
    let t = Tensor::from_u32(t, &[n]).unwrap();
    let run = |h: &Tensor, w: &Tensor, rows: usize, vocab: usize| {
        let mut g = crate::Graph::training();
        let (hv, wv) = (g.leaf(h.clone(), true), g.leaf(w.clone(), true));
        let loss = g.linear_cross_entropy(&hv, &wv, &t, rows, vocab).unwrap();
        let l = loss.tensor().clone();
        let gr = g.backward(&loss).unwrap();
        (l, gr.get(&hv).unwrap().clone(), gr.get(&wv).unwrap().clone())
    };
    let whole = run(&h, &w, n, v);
    // Rows only; vocabulary slices of 700 ids (the last one partial); both; tiny slices.
    for (rows, vocab) in [(16, v), (n, 700), (16, 700), (9, 64)] {
        let (lc, dhc, dwc) = run(&h, &w, rows, vocab);
        let (lg, dhg, dwg) = run(&up(&h, d), &up(&w, d), rows, vocab);
        let label = format!("linear+ce {rows}x{vocab}");
        close(&format!("{label} loss"), &lg, &lc, F32_NMSE);
        close(&format!("{label} dh"), &dhg, &dhc, F32_NMSE);
        close(&format!("{label} dw"), &dwg, &dwc, F32_NMSE);
        close(&format!("{label} loss vs whole"), &lg, &whole.0, F32_NMSE);
        close(&format!("{label} dw vs whole"), &dwg, &whole.2, F32_NMSE);
    }
}

/// Frozen weights (a LoRA base, a tied head not trained): `linear`'s backward is the dx-only
/// product (`linear_dx`), the chunked loss gives no dW (and, with one row chunk, reuses the
/// forward's logits); dh on the device against the CPU.
#[test]
fn parity_frozen_linear_and_head() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (n, c, f, v) = (45, 32, 48, 3000);
    let (x, w, head) = (randn(&mut r, &[n, c], 1.0), randn(&mut r, &[f, c], 0.2), randn(&mut r, &[v, f], 0.2));
    let t = ids(&mut r, n, v);
    let run = |x: &Tensor, w: &Tensor, head: &Tensor, rows: usize| {
        let mut g = crate::Graph::training();
        let (xv, wv, hv) = (g.leaf(x.clone(), true), g.leaf(w.clone(), false), g.leaf(head.clone(), false));
        let h = g.linear(&xv, &wv, None).unwrap();
        let loss = g.linear_cross_entropy(&h, &hv, &t, rows, 700).unwrap();
        let l = loss.tensor().clone();
        let gr = g.backward(&loss).unwrap();
        assert!(gr.get(&wv).is_none() && gr.get(&hv).is_none(), "frozen weights get no gradient");
        (l, gr.get(&xv).unwrap().clone())
    };
    for rows in [n, 16] {
        let (lc, dxc) = run(&x, &w, &head, rows);
        let (lg, dxg) = run(&up(&x, d), &up(&w, d), &up(&head, d), rows);
        close(&format!("frozen linear+ce rows {rows} loss"), &lg, &lc, F32_NMSE);
        close(&format!("frozen linear+ce rows {rows} dx"), &dxg, &dxc, F32_NMSE);
    }
}

/// The whole sampling step on the device against the CPU reference: the definition is exact
/// on both (integer masses, the CPU's exp repeated operation for operation), so for the same
/// logits and uniform numbers every id must agree, at every vocabulary size up to Qwen's.
#[test]
fn parity_sample() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    use ops::sample::{sample, SampleParams, Seen};
    let mut grid = Vec::new();
    for &temperature in &[0.0f32, 0.7, 1.0, 2.0] {
        for &top_k in &[0usize, 1, 5, 40, 100_000_000] {
            for &top_p in &[1.0f32, 0.95, 0.5] {
                for &min_p in &[0.0f32, 0.05] {
                    for &repetition_penalty in &[1.0f32, 1.3] {
                        grid.push(SampleParams { temperature, top_k, top_p, min_p, repetition_penalty });
                    }
                }
            }
        }
    }
    let (mut agree, mut total) = (0usize, 0usize);
    for (v, rows, every) in [(1usize, 2usize, 1usize), (7, 3, 1), (1000, 4, 1), (32_000, 2, 3), (151_936, 2, 7)] {
        for coarse in [true, false] {
            // Coarse logits tie often (ties go to the lower id); fine ones almost never do.
            let step = if coarse { 0.25 } else { 1e-5 };
            let z: Vec<f32> = (0..rows * v).map(|_| ((r.normal() * 4.0 / step).round() * step) as f32).collect();
            let z = Tensor::from_f32(z, &[rows, v]).unwrap();
            let zg = up(&z, d);
            let context: Vec<Vec<u32>> =
                (0..rows).map(|_| (0..50).map(|_| r.below(v as u64) as u32).collect()).collect();
            for p in grid.iter().step_by(every) {
                let us: Vec<f64> = (0..rows).map(|_| r.uniform()).collect();
                let (mut sc, mut sg) = (Seen::new(rows, v, Device::Cpu).unwrap(), Seen::new(rows, v, d).unwrap());
                for (row, ctx) in context.iter().enumerate() {
                    sc.mark(row, ctx).unwrap();
                    sg.mark(row, ctx).unwrap();
                }
                let want = sample(&z, Some(&mut sc), p, &us).unwrap();
                let got = sample(&zg, Some(&mut sg), p, &us).unwrap();
                let (want, got) =
                    (want.as_u32().unwrap().to_vec(), got.to_device(Device::Cpu).unwrap().as_u32().unwrap().to_vec());
                total += rows;
                agree += want.iter().zip(&got).filter(|(a, b)| a == b).count();
                assert_eq!(got, want, "v {v} coarse {coarse} {p:?} u {us:?}");
                for (row, &id) in got.iter().enumerate() {
                    assert!(sg.contains(row, id).unwrap(), "the picked id {id} was not marked seen");
                }
            }
        }
    }
    println!("sample: {agree}/{total} ids agree with the CPU reference (vocabularies up to 151936)");
    // Speed of one step at Qwen's vocabulary (the default CLI filters, and the full vocabulary).
    let z = up(&randn(&mut r, &[1, 151_936], 3.0), d);
    for p in [
        SampleParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repetition_penalty: 1.1 },
        SampleParams { temperature: 1.0, top_p: 0.9, ..Default::default() },
    ] {
        let mut seen = Seen::new(1, 151_936, d).unwrap();
        let t0 = std::time::Instant::now();
        for i in 0..50 {
            sample(&z, Some(&mut seen), &p, &[i as f64 / 50.0]).unwrap().to_device(Device::Cpu).unwrap();
        }
        println!(
            "sample step at V=151936 {p:?}: {:.1} us (incl. the 4-byte read back)",
            t0.elapsed().as_secs_f64() / 50.0 * 1e6
        );
    }
}

/// Attention shapes (b, tq, tk, s, h, kvh, hd, window): plain, GQA, long (many tiles), a
/// window, a cache offset with spare rows (inference), head_dim 128 and 96.
#[allow(clippy::type_complexity)]
pub(super) const ATTN_SHAPES: [(usize, usize, usize, usize, usize, usize, usize, Option<usize>); 6] = [
    (2, 5, 5, 5, 4, 4, 16, None),
    (2, 70, 70, 70, 8, 2, 64, None),
    (1, 100, 100, 100, 4, 2, 32, Some(17)),
    (2, 3, 40, 48, 4, 1, 64, None),
    (1, 40, 40, 40, 2, 2, 128, None),
    (2, 37, 37, 37, 6, 3, 96, Some(20)),
];

/// The server's paged pool: `paged_rope_kv` (rotation and the pool write through row indices)
/// and `paged_attention` (each row over its own sequence's keys through a shuffled block table)
/// against the CPU reference, in two steps (the cached positions: 320 rows, the kernel's
/// unsplit path; then new rows: a decode row past the 256-key split, a prompt, a chunk after
/// cached positions: its split path), with and without a window, for each activation dtype and
/// pool storage, both pair layouts.
/// `Tensor::write_range` on the device: a host slice uploaded into place and a device slice
/// copied into place (a replayed decode step's inputs: one upload into a staging buffer, then
/// device copies out of it), against the same writes on the CPU, element for element.
#[test]
fn parity_write_range() {
    let Some(d) = dev() else { return };
    let host: Vec<u32> = (0..40).map(|i| i * 3 + 1).collect();
    let src = Tensor::from_u32(host.clone(), &[40]).unwrap();
    let mut staging = Tensor::zeros_typed(&[48], d, crate::DType::U32).unwrap();
    staging.write_at(4, &src).unwrap();
    let mut want = [0u32; 48];
    want[4..44].copy_from_slice(&host);
    let got = staging.to_device(Device::Cpu).unwrap();
    assert_eq!(got.as_u32().unwrap(), &want[..], "host → device upload into place");
    let mut dst = Tensor::zeros_typed(&[10], d, crate::DType::U32).unwrap();
    dst.write_range(2, &staging, 10, 6).unwrap();
    let got = dst.to_device(Device::Cpu).unwrap();
    let mut want_dst = [0u32; 10];
    want_dst[2..8].copy_from_slice(&want[10..16]);
    assert_eq!(got.as_u32().unwrap(), &want_dst[..], "device slice → device, into place");
    assert!(dst.write_range(8, &staging, 0, 6).is_err(), "past the end is an error");
    println!("write_range: upload and device slice copies exact");
}

#[test]
fn parity_paged_attention() {
    use crate::ops::attention::{paged_attention, paged_rope_kv, Heads, PagedRows};
    use crate::ops::rope::{freqs, RopeLayout, RopeTable};
    use crate::DType;
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (h, kvh, hd, bs, blocks) = (8, 2, 64, 16, 48);
    let mut order: Vec<u32> = (0..blocks as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, r.below(i as u64 + 1) as usize);
    }
    // (cached positions, new rows) per sequence; tables cut from the shuffled order.
    let seqs = [(300usize, 1usize), (0, 40), (20, 5)];
    let mut tables = Vec::new();
    let mut at = 0;
    for &(c, n) in &seqs {
        let b = (c + n).div_ceil(bs);
        tables.push(order[at..at + b].to_vec());
        at += b;
    }
    let rows_of = |step: usize, dev: Device| -> PagedRows {
        let (mut pos, mut dst, mut toff, mut flat) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (s, &(c, n)) in seqs.iter().enumerate() {
            let range = if step == 0 { 0..c } else { c..c + n };
            for p in range {
                pos.push(p as u32);
                dst.push(tables[s][p / bs] * bs as u32 + (p % bs) as u32);
                toff.push(flat.len() as u32);
            }
            flat.extend_from_slice(&tables[s]);
        }
        PagedRows::new(pos, dst, toff, flat, bs, blocks, dev).unwrap()
    };
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        let table = RopeTable::new(freqs::default_inv_freq(10000.0, hd), 1.0, layout);
        for (dt, ct, tol) in [
            (DType::F32, DType::F32, F32_NMSE),
            (DType::F32, DType::F16, 1e-5),
            (DType::F32, DType::BF16, BF16_NMSE),
            (DType::BF16, DType::BF16, BF16_NMSE),
            (DType::BF16, DType::F16, BF16_NMSE),
            (DType::BF16, DType::F32, BF16_NMSE),
        ] {
            let l = format!("paged {layout:?} {dt:?} rows, {ct:?} pool");
            let shape = [blocks * bs, kvh, hd];
            let (mut kc, mut vc) = (Tensor::zeros(&shape), Tensor::zeros(&shape));
            let (mut kg, mut vg) =
                (Tensor::zeros_typed(&shape, d, ct).unwrap(), Tensor::zeros_typed(&shape, d, ct).unwrap());
            for step in 0..2 {
                let (rc, rg) = (rows_of(step, Device::Cpu), rows_of(step, d));
                let n = rc.rows();
                // Inputs as the activation dtype holds them; the CPU reads those values as f32.
                let input = |r: &mut Rng, heads: usize| {
                    let t = randn(r, &[n, heads, hd], 1.0).to_dtype(dt).unwrap();
                    (t.to_dtype(DType::F32).unwrap(), t.to_device(d).unwrap())
                };
                let ((qc, qg), (kcn, kgn), (vcn, vgn)) = (input(&mut r, h), input(&mut r, kvh), input(&mut r, kvh));
                let qrc = paged_rope_kv(&qc, &kcn, &vcn, &table, &mut kc, &mut vc, &rc).unwrap();
                let qrg = paged_rope_kv(&qg, &kgn, &vgn, &table, &mut kg, &mut vg, &rg).unwrap();
                let l = format!("{l}, step {step} ({n} rows)");
                close(&format!("{l}: rotated q"), &qrg, &qrc, tol);
                close(&format!("{l}: key pool"), &kg, &kc, tol);
                close(&format!("{l}: value pool"), &vg, &vc, tol);
                for window in [None, Some(64)] {
                    let heads = Heads { h, kvh, d: hd, window };
                    let oc = paged_attention(&qrc, &kc, &vc, &rc, heads, 0.125).unwrap();
                    let og = paged_attention(&qrg, &kg, &vg, &rg, heads, 0.125).unwrap();
                    assert_eq!(og.dtype(), dt, "{l}: the output keeps q's dtype");
                    close(&format!("{l}: attention, window {window:?}"), &og, &oc, tol);
                }
            }
        }
    }
}

#[test]
fn parity_attention() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (b, tq, tk, s, h, kvh, hd, window) in ATTN_SHAPES {
        let q = randn(&mut r, &[b, tq, h, hd], 1.0);
        let k = randn(&mut r, &[b, s, kvh, hd], 1.0);
        let v = randn(&mut r, &[b, s, kvh, hd], 1.0);
        let label = format!("attn b{b} q{tq} k{tk} s{s} h{h}/{kvh} d{hd} w{window:?}");
        let sc = 1.0 / (hd as f32).sqrt();
        let (oc, lc) = ops::attention::attention(&q, &k, &v, tk, window, sc).unwrap();
        let (og, lg) = ops::attention::attention(&up(&q, d), &up(&k, d), &up(&v, d), tk, window, sc).unwrap();
        close(&format!("{label} out"), &og, &oc, F32_NMSE);
        close(&format!("{label} lse"), &lg, &lc, F32_NMSE);
        if tq != tk || s != tk {
            continue; // the backward is for training shapes
        }
        let dout = randn(&mut r, &[b, tq, h, hd], 1.0);
        let (dqc, dkc, dvc) = ops::attention::attention_backward(&q, &k, &v, &oc, &lc, &dout, window, sc).unwrap();
        let (dqg, dkg, dvg) =
            ops::attention::attention_backward(&up(&q, d), &up(&k, d), &up(&v, d), &og, &lg, &up(&dout, d), window, sc)
                .unwrap();
        close(&format!("{label} dq"), &dqg, &dqc, F32_NMSE);
        close(&format!("{label} dk"), &dkg, &dkc, F32_NMSE);
        close(&format!("{label} dv"), &dvg, &dvc, F32_NMSE);
    }
}

/// Decode attention (one query per sequence, split over the keys) against the CPU's exact
/// training forward, with the position on the host and on the device (the two must agree bit
/// for bit: a captured decode step replays the uncaptured one), and the cache write and
/// position step a captured step uses.
#[test]
fn parity_attention_decode() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    // (b, valid keys, capacity, h, kvh, hd, window): one split, several, several with a window.
    for (b, tk, cap, h, kvh, hd, window) in [
        (1, 7, 16, 4, 2, 64, None),
        (2, 300, 700, 8, 2, 64, None),
        (1, 600, 1100, 6, 3, 128, Some(300)),
        (2, 257, 257, 4, 4, 96, None),
    ] {
        let label = format!("decode b{b} k{tk}/{cap} h{h}/{kvh} d{hd} w{window:?}");
        let q = randn(&mut r, &[b, 1, h, hd], 1.0);
        let k = randn(&mut r, &[b, cap, kvh, hd], 1.0);
        let v = randn(&mut r, &[b, cap, kvh, hd], 1.0);
        let sc = 1.0 / (hd as f32).sqrt();
        let (oc, _) = ops::attention::attention(&q, &k, &v, tk, window, sc).unwrap();
        let (qg, kg, vg) = (up(&q, d), up(&k, d), up(&v, d));
        let host = ops::attention::attention_decode(&qg, &kg, &vg, ops::Pos::Host(tk - 1), window, sc).unwrap();
        close(&format!("{label} host position"), &host, &oc, F32_NMSE);
        let at = up(&Tensor::from_u32(vec![(tk - 1) as u32], &[1]).unwrap(), d);
        let dev_pos = ops::Pos::Device { at: &at, cap };
        let on_dev = ops::attention::attention_decode(&qg, &kg, &vg, dev_pos, window, sc).unwrap();
        assert_eq!(
            host.to_device(Device::Cpu).unwrap().as_f32().unwrap(),
            on_dev.to_device(Device::Cpu).unwrap().as_f32().unwrap(),
            "{label}: device position differs from host position"
        );
    }
    // kv_write at a device position, then the position moves on.
    let (b, cap, kvh, hd, t) = (2, 9, 2, 8, 3);
    let new = randn(&mut r, &[b, t, kvh, hd], 1.0);
    let mut cc = Tensor::zeros(&[b, cap, kvh, hd]);
    ops::attention::kv_write(&mut cc, &new, ops::Pos::Host(4)).unwrap();
    let mut cg = up(&Tensor::zeros(&[b, cap, kvh, hd]), d);
    let mut at = up(&Tensor::from_u32(vec![2], &[1]).unwrap(), d);
    ops::attention::pos_add(&mut at, 2).unwrap();
    ops::attention::kv_write(&mut cg, &up(&new, d), ops::Pos::Device { at: &at, cap }).unwrap();
    assert_eq!(cg.to_device(Device::Cpu).unwrap().as_f32().unwrap(), cc.as_f32().unwrap(), "kv_write");
    assert_eq!(at.to_device(Device::Cpu).unwrap().as_u32().unwrap(), &[4], "pos_add");
}

/// A decode step's rotation, cache write and attention in one launch (`attn_decode_rope`) give
/// what `rope_into_cache` then `attention_decode` give, bit for bit: the output and both caches,
/// f32 and bf16, both RoPE layouts, GQA, a window, head dims 64, 96 and 128.
#[test]
fn parity_rope_attention_decode_in_one_launch() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (b, pos, cap, h, kvh, hd, window, layout) in [
        (1, 6, 16, 4, 2, 64, None, ops::rope::RopeLayout::Interleaved),
        (2, 299, 700, 8, 2, 64, None, ops::rope::RopeLayout::HalfSplit),
        (1, 599, 1100, 6, 3, 128, Some(300), ops::rope::RopeLayout::HalfSplit),
        (2, 0, 257, 4, 4, 96, None, ops::rope::RopeLayout::Interleaved),
    ] {
        let table = ops::rope::RopeTable::new(ops::rope::freqs::default_inv_freq(10000.0, hd), 1.0, layout);
        let q = randn(&mut r, &[b, 1, h, hd], 1.0);
        let k = randn(&mut r, &[b, 1, kvh, hd], 1.0);
        let v = randn(&mut r, &[b, 1, kvh, hd], 1.0);
        let cache = randn(&mut r, &[b, cap, kvh, hd], 1.0);
        let sc = 1.0 / (hd as f32).sqrt();
        for dt in [crate::DType::F32, crate::DType::BF16] {
            let label = format!("rope+decode b{b} pos{pos}/{cap} h{h}/{kvh} d{hd} w{window:?} {layout:?} {dt:?}");
            let on = |t: &Tensor| up(t, d).to_dtype(dt).unwrap();
            let at = up(&Tensor::from_u32(vec![pos as u32], &[1]).unwrap(), d);
            let p = ops::Pos::Device { at: &at, cap };
            let (mut kc, mut vc) = (on(&cache), on(&cache));
            let qr = ops::rope::rope_into_cache(&on(&q), &on(&k), &on(&v), &table, &mut kc, &mut vc, p).unwrap();
            let want = ops::attention::attention_decode(&qr, &kc, &vc, p, window, sc).unwrap();
            let (mut kf, mut vf) = (on(&cache), on(&cache));
            let got = ops::attention::rope_attention_decode(
                &on(&q),
                &on(&k),
                &on(&v),
                &table,
                &mut kf,
                &mut vf,
                p,
                window,
                sc,
            )
            .unwrap();
            let bits = |t: &Tensor| t.to_vec_f32().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got), bits(&want), "{label}: output");
            assert_eq!(bits(&kf), bits(&kc), "{label}: key cache");
            assert_eq!(bits(&vf), bits(&vc), "{label}: value cache");
        }
    }
}

#[test]
fn parity_linear_f32_and_bf16() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (n, k, m) = (67, 96, 130);
    let (x, w, bias, dy) = (
        randn(&mut r, &[n, k], 1.0),
        randn(&mut r, &[m, k], 0.1),
        randn(&mut r, &[m], 1.0),
        randn(&mut r, &[n, m], 1.0),
    );
    let yc = ops::matmul::linear(&x, &w, Some(&bias)).unwrap();
    let (dxc, dwc, dbc) = ops::matmul::linear_backward(&x, &w, &dy, true, true).unwrap();
    for (p, tol) in [(cuda::MatmulPrecision::F32, F32_NMSE), (cuda::MatmulPrecision::Bf16, BF16_NMSE)] {
        cuda::set_matmul_precision(p);
        let yg = ops::matmul::linear(&up(&x, d), &up(&w, d), Some(&up(&bias, d))).unwrap();
        close(&format!("linear fwd {p:?}"), &yg, &yc, tol);
        let (dxg, dwg, dbg) = ops::matmul::linear_backward(&up(&x, d), &up(&w, d), &up(&dy, d), true, true).unwrap();
        close(&format!("linear dx {p:?}"), &dxg.unwrap(), dxc.as_ref().unwrap(), tol);
        close(&format!("linear dw {p:?}"), &dwg, &dwc, tol);
        close(&format!("linear db {p:?}"), &dbg.unwrap(), dbc.as_ref().unwrap(), F32_NMSE);
    }
    cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
}

/// The distillation loss on the device against the CPU: the whole-vocabulary teacher and a
/// top-k one (ids scattered), an ignored row, f32 logits and bf16 ones (mixed precision; the
/// CPU then takes the same rounded values), the loss, its two parts and dz.
#[test]
fn parity_distill() {
    use ops::distill::{distill, distill_backward, DistillLoss, TeacherLogits};
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (n, v, k) = (9, 1000, 7);
    let o = DistillLoss { temperature: 2.0, alpha: 0.5 };
    let z = randn(&mut r, &[n, v], 3.0);
    let mut y: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    y[4] = ops::cross_entropy::IGNORE;
    let targets = Tensor::from_u32(y, &[n]).unwrap();
    let full = TeacherLogits { ids: None, logits: randn(&mut r, &[n, v], 3.0) };
    let top_ids: Vec<u32> = (0..n).flat_map(|i| (0..k).map(move |j| ((i * 37 + j * 101) % v) as u32)).collect();
    let top =
        TeacherLogits { ids: Some(Tensor::from_u32(top_ids, &[n, k]).unwrap()), logits: randn(&mut r, &[n, k], 2.0) };
    let bf = |t: &Tensor| t.to_dtype(crate::DType::BF16).unwrap();
    for (label, t) in [("full", &full), ("top-k", &top)] {
        for half in [false, true] {
            let zc = if half { bf(&z).to_dtype(crate::DType::F32).unwrap() } else { z.clone() };
            let zg = up(&if half { bf(&z) } else { z.clone() }, d);
            let (lc, pc, sc) = distill(&zc, t, &targets, &o).unwrap();
            let dzc = distill_backward(&zc, t, &targets, &o, &sc, 0.7).unwrap();
            let (lg, pg, sg) = distill(&zg, t, &targets, &o).unwrap();
            let dzg = distill_backward(&zg, t, &targets, &o, &sg, 0.7).unwrap();
            let (a, b) = (lg.to_vec_f32().unwrap()[0] as f64, lc.to_vec_f32().unwrap()[0] as f64);
            println!("distill {label} bf16 {half}: loss gpu {a} cpu {b}, parts gpu {pg:?} cpu {pc:?}");
            let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-12);
            assert!(rel(a, b) <= 1e-5 && rel(pg[0], pc[0]) <= 1e-5 && rel(pg[1], pc[1]) <= 1e-5, "{label} bf16 {half}");
            assert_eq!(dzg.dtype(), zg.dtype(), "dz has the logits' dtype");
            let tol = if half { 1e-5 } else { 1e-10 };
            close(&format!("distill {label} bf16 {half} dz"), &dzg.to_dtype(crate::DType::F32).unwrap(), &dzc, tol);
        }
    }
}

/// Muon on the device against the CPU reference: a wide and a tall matrix (transposed for
/// Newton–Schulz), with and without weight decay, two updates with a clip coefficient below 1,
/// then a skipped one (a non-finite gradient) that must change nothing.
#[test]
fn parity_muon() {
    use ops::muon::{muon_multi, Muon};
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let o = Muon { lr: 0.02, momentum: 0.95, weight_decay: 0.1 };
    let shapes = [[48, 80], [96, 40]];
    let mut pc: Vec<Tensor> = shapes.iter().map(|s| randn(&mut r, s, 0.1)).collect();
    let mut pg: Vec<Tensor> = pc.iter().map(|t| up(t, d)).collect();
    let mut mc: Vec<Tensor> = shapes.iter().map(|s| Tensor::zeros(s)).collect();
    let mut mg: Vec<Tensor> = mc.iter().map(|t| up(t, d)).collect();
    let decay = [true, false];
    for step in 0..3 {
        let mut gc: Vec<Tensor> = shapes.iter().map(|s| randn(&mut r, s, 1.0)).collect();
        if step == 2 {
            gc[1] = Tensor::from_f32(vec![f32::NAN; 96 * 40], &[96, 40]).unwrap();
        }
        let gg: Vec<Tensor> = gc.iter().map(|t| up(t, d)).collect();
        let nc = ops::adamw::grad_norm(&gc.iter().collect::<Vec<_>>(), 5.0, None).unwrap();
        let ng = ops::adamw::grad_norm(&gg.iter().collect::<Vec<_>>(), 5.0, None).unwrap();
        muon_multi(&o, &decay, &mut pc, &gc, &mut mc, Some(&nc)).unwrap();
        muon_multi(&o, &decay, &mut pg, &gg, &mut mg, Some(&ng)).unwrap();
        for i in 0..2 {
            close(&format!("muon step {step} param {:?}", shapes[i]), &pg[i], &pc[i], 1e-9);
            close(&format!("muon step {step} momentum {:?}", shapes[i]), &mg[i], &mc[i], 1e-12);
        }
    }
}

/// `linear_add` (c + x·wᵀ + bias, the product reading c on the device) against the CPU's
/// linear then add, in both precisions, through a training graph: the addend's gradient is the
/// output's, x's and w's those of the plain linear; and at decode size (the matvec path).
#[test]
fn parity_linear_add() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (n, k, m) in [(67, 96, 130), (3, 64, 40)] {
        let (x, w, bias, c) = (
            randn(&mut r, &[n, k], 1.0),
            randn(&mut r, &[m, k], 0.1),
            randn(&mut r, &[m], 1.0),
            randn(&mut r, &[n, m], 1.0),
        );
        let dy = randn(&mut r, &[n, m], 1.0);
        let run = |x: &Tensor, w: &Tensor, bias: &Tensor, c: &Tensor, dy: &Tensor| {
            let mut g = crate::Graph::training();
            let (xv, wv, bv, cv) =
                (g.leaf(x.clone(), true), g.leaf(w.clone(), true), g.leaf(bias.clone(), true), g.leaf(c.clone(), true));
            let y = g.linear_add(&xv, &wv, Some(&bv), &cv).unwrap();
            let yt = y.tensor().to_device(Device::Cpu).unwrap().to_dtype(crate::DType::F32).unwrap();
            let dy = dy.to_dtype(y.tensor().dtype()).unwrap();
            let gr = g.backward_from(&[y], &[Some(dy)]).unwrap();
            let get = |v| gr.get(v).unwrap().to_device(Device::Cpu).unwrap().to_dtype(crate::DType::F32).unwrap();
            [yt, get(&xv), get(&wv), get(&bv), get(&cv)]
        };
        let want = run(&x, &w, &bias, &c, &dy);
        for (p, tol) in [(cuda::MatmulPrecision::F32, F32_NMSE), (cuda::MatmulPrecision::Bf16, BF16_NMSE)] {
            cuda::set_matmul_precision(p);
            let got = run(&up(&x, d), &up(&w, d), &up(&bias, d), &up(&c, d), &up(&dy, d));
            for (i, what) in ["y", "dx", "dw", "db", "dc"].iter().enumerate() {
                close(&format!("linear_add n {n} {what} {p:?}"), &got[i], &want[i], tol);
            }
        }
        cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
    }
}

/// An input read by three products — a frozen weight, a trained one with a bias, a frozen one
/// through `linear_add` — gets the sum of their input gradients, on the GPU by products that add
/// into the sum themselves (cuBLASLt's beta = 1, `linear_dx_acc`), against the CPU's products
/// then adds, in both precisions; and with `SMELT_CUDA_DX_ACC`'s fallback shape (a sum of another
/// dtype) too, through the autograd pass.
#[test]
fn parity_linear_dx_accumulated() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (n, k, m) in [(67, 96, 130), (3, 64, 40)] {
        let x = randn(&mut r, &[n, k], 1.0);
        let (w1, w2, b2, w3) = (
            randn(&mut r, &[m, k], 0.1),
            randn(&mut r, &[m, k], 0.1),
            randn(&mut r, &[m], 1.0),
            randn(&mut r, &[m, k], 0.1),
        );
        let (c, dy) = (randn(&mut r, &[n, m], 1.0), randn(&mut r, &[n, m], 1.0));
        // x in the precision's activation dtype (bf16 under mixed precision, as a model's are),
        // so the products add into a sum of their own dtype.
        let run = |t: &dyn Fn(&Tensor) -> Tensor, xdt: crate::DType| {
            let mut g = crate::Graph::training();
            let xv = g.leaf(t(&x).to_dtype(xdt).unwrap(), true);
            let (w1v, w2v, b2v, w3v, cv) = (
                g.leaf(t(&w1), false),
                g.leaf(t(&w2), true),
                g.leaf(t(&b2), true),
                g.leaf(t(&w3), false),
                g.leaf(t(&c), true),
            );
            let y1 = g.linear(&xv, &w1v, None).unwrap();
            let y2 = g.linear(&xv, &w2v, Some(&b2v)).unwrap();
            let y3 = g.linear_add(&xv, &w3v, None, &cv).unwrap();
            let s = g.add(&y1, &y2).unwrap();
            let s = g.add(&s, &y3).unwrap();
            let dys = t(&dy).to_dtype(s.tensor().dtype()).unwrap();
            let gr = g.backward_from(&[s], &[Some(dys)]).unwrap();
            let get = |v| gr.get(v).unwrap().to_device(Device::Cpu).unwrap().to_dtype(crate::DType::F32).unwrap();
            [get(&xv), get(&w2v), get(&b2v), get(&cv)]
        };
        let want = run(&|t: &Tensor| t.clone(), crate::DType::F32);
        for (p, tol, xdt) in [
            (cuda::MatmulPrecision::F32, F32_NMSE, crate::DType::F32),
            (cuda::MatmulPrecision::Bf16, BF16_NMSE, crate::DType::BF16),
        ] {
            cuda::set_matmul_precision(p);
            let got = run(&|t: &Tensor| up(t, d), xdt);
            for (i, what) in ["dx (three products summed)", "dw", "db", "dc"].iter().enumerate() {
                close(&format!("linear dx accumulated n {n} {what} {p:?}"), &got[i], &want[i], tol);
            }
        }
        cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
        // A sum of another dtype than the product's (f32 into a bf16 product): the product, then
        // the add.
        cuda::set_matmul_precision(cuda::MatmulPrecision::Bf16);
        let dyb = up(&dy, d).to_dtype(crate::DType::BF16).unwrap();
        let mut acc = Some(up(&x, d));
        ops::matmul::linear_dx_acc(&dyb, &up(&w1, d), x.shape(), &mut acc).unwrap();
        let mut want_sum = x.clone();
        ops::elementwise::add_assign(&mut want_sum, &ops::matmul::linear_dx(&dy, &w1, x.shape()).unwrap()).unwrap();
        let got = acc.unwrap().to_device(Device::Cpu).unwrap().to_dtype(crate::DType::F32).unwrap();
        close(&format!("linear dx into an f32 sum n {n}"), &got, &want_sum, BF16_NMSE);
        cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
    }
}

/// The decode-size products (≤ 4 rows: the GEMV kernels, several weights or the SwiGLU in one
/// launch) against the CPU, in both precisions, with a bias, and with a row length that is not a
/// whole number of 16-byte vectors (the scalar loop).
#[test]
fn parity_gemv_linear_many_and_swiglu() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    // Decode's long rows too (k 2048, 8200: several rounds of 8 loads a lane; 4100 bf16 is not a
    // whole number of 16-byte vectors, so it takes the scalar loop).
    for (n, k) in [(1, 96), (2, 200), (4, 64), (3, 37), (1, 2048), (2, 8200), (1, 4100)] {
        let x = randn(&mut r, &[n, k], 1.0);
        let (wq, wk, wv) = (randn(&mut r, &[48, k], 0.1), randn(&mut r, &[16, k], 0.1), randn(&mut r, &[16, k], 0.1));
        let bq = randn(&mut r, &[48], 1.0);
        let (wg, wu) = (randn(&mut r, &[40, k], 0.1), randn(&mut r, &[40, k], 0.1));
        let want = ops::matmul::linear_many(&x, &[(&wq, Some(&bq)), (&wk, None), (&wv, None)]).unwrap();
        let want_ff = ops::matmul::linear_swiglu(&x, &wg, &wu).unwrap();
        for (p, tol) in [(cuda::MatmulPrecision::F32, F32_NMSE), (cuda::MatmulPrecision::Bf16, BF16_NMSE)] {
            cuda::set_matmul_precision(p);
            let dt = if p == cuda::MatmulPrecision::F32 { crate::DType::F32 } else { crate::DType::BF16 };
            let xg = up(&x, d).to_dtype(dt).unwrap();
            let (wqg, wkg, wvg, bqg) = (up(&wq, d), up(&wk, d), up(&wv, d), up(&bq, d));
            let got = ops::matmul::linear_many(&xg, &[(&wqg, Some(&bqg)), (&wkg, None), (&wvg, None)]).unwrap();
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                close(&format!("linear_many n{n} k{k} {p:?} #{j}"), g, w, tol);
                let one = ops::matmul::linear(&xg, [&wqg, &wkg, &wvg][j], [Some(&bqg), None, None][j]).unwrap();
                assert_eq!(
                    one.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap(),
                    g.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap(),
                    "linear_many n{n} k{k} {p:?} #{j}: not what linear gives"
                );
            }
            let ff = ops::matmul::linear_swiglu(&xg, &up(&wg, d), &up(&wu, d)).unwrap();
            close(&format!("linear_swiglu n{n} k{k} {p:?}"), &ff, &want_ff, tol);
        }
    }
    // A vocabulary head's shape (one weight of ≥ 16384 short rows: row groups, not a warp a row).
    let (x, w) = (randn(&mut r, &[1, 576], 1.0), randn(&mut r, &[16384, 576], 0.1));
    let want = ops::matmul::linear(&x, &w, None).unwrap();
    for (p, tol) in [(cuda::MatmulPrecision::F32, F32_NMSE), (cuda::MatmulPrecision::Bf16, BF16_NMSE)] {
        cuda::set_matmul_precision(p);
        let dt = if p == cuda::MatmulPrecision::F32 { crate::DType::F32 } else { crate::DType::BF16 };
        let got = ops::matmul::linear(&up(&x, d).to_dtype(dt).unwrap(), &up(&w, d), None).unwrap();
        close(&format!("linear head 16384 × 576 {p:?}"), &got, &want, tol);
    }
    cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
}

/// A decode step's residual add and RMSNorm made inside the GEMV launch that follows it (one
/// row, mixed precision; `matmul::add_rmsnorm_linear_many`/`add_rmsnorm_swiglu`): the new stream
/// and the products bit for bit what `add_rmsnorm` then `linear_many`/`linear_swiglu` give, for
/// the warp-a-row GEMV (k 512, 576, 2048: one to four warps in rmsnorm's row) and the row
/// groups (k 4096), with weights whose rows do not fill whole blocks.
#[test]
fn parity_gemv_after_add_rmsnorm_in_one_launch() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    cuda::set_matmul_precision(cuda::MatmulPrecision::Bf16);
    let eps = 1e-5;
    for k in [512, 576, 2048, 4096] {
        let x = up(&randn(&mut r, &[1, k], 2.0), d);
        let br = up(&randn(&mut r, &[1, k], 1.0), d).to_dtype(crate::DType::BF16).unwrap();
        let nw = up(&randn(&mut r, &[k], 1.0), d);
        let (wq, wk, wv) = (
            up(&randn(&mut r, &[70, k], 0.1), d),
            up(&randn(&mut r, &[24, k], 0.1), d),
            up(&randn(&mut r, &[20, k], 0.1), d),
        );
        let bq = up(&randn(&mut r, &[70], 1.0), d);
        let (wg, wu) = (up(&randn(&mut r, &[50, k], 0.1), d), up(&randn(&mut r, &[50, k], 0.1), d));
        let (h0, y0, _) = ops::rmsnorm::add_rmsnorm(&x, &br, &nw, eps).unwrap();
        let qkv = [(&wq, Some(&bq)), (&wk, None), (&wv, None)];
        let want = ops::matmul::linear_many(&y0, &qkv).unwrap();
        let (h1, got) =
            ops::matmul::add_rmsnorm_linear_many(&x, &br, &nw, eps, &qkv).unwrap().expect("one row fuses on CUDA");
        let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap();
        assert_eq!(host(&h1), host(&h0), "k {k}: the stream");
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(host(a), host(b), "k {k}: product {j}");
        }
        let want = ops::matmul::linear_swiglu(&y0, &wg, &wu).unwrap();
        let (h2, got) = ops::matmul::add_rmsnorm_swiglu(&x, &br, &nw, eps, &wg, &wu).unwrap().expect("fuses");
        assert_eq!(host(&h2), host(&h0), "k {k}: the stream (gate/up)");
        assert_eq!(host(&got), host(&want), "k {k}: gate/up");
        println!("k {k}: fused add + norm + products equal the unfused ones bit for bit");
    }
    cuda::set_matmul_precision(cuda::MatmulPrecision::F32);
}

/// ZeRO-1's norm on the GPU: the f64 sum of squares (`grad_sumsq`) and the state from it
/// (`norm_from_sumsq`) give `grad_norm_state` bit for bit when the "ranks" are one; two halves'
/// sums added on the host give the whole norm; a rank's non-finite flag shared by a mean over
/// the ranks reaches every rank.
#[test]
fn parity_grad_norm_across_ranks() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let shapes: [&[usize]; 4] = [&[300, 70], &[5], &[4097], &[3, 4096]];
    let gg: Vec<Tensor> = shapes.iter().map(|s| up(&randn(&mut r, s, 1.0), d)).collect();
    let refs: Vec<&Tensor> = gg.iter().collect();
    let loss = up(&Tensor::scalar(2.5), d);
    let whole = ops::adamw::cuda::grad_norm_state(&refs, 3.0, Some(&loss)).unwrap().to_vec_f32().unwrap();
    let one = ops::adamw::grad_norm_across(&refs, 3.0, Some(&loss), |_| Ok(())).unwrap();
    assert_eq!(one.state.to_vec_f32().unwrap(), whole, "one rank's state is grad_norm's");
    // Two "ranks", one holding the first two tensors, the other the rest.
    let half = |ts: &[&Tensor]| crate::dist::f64_values(&ops::adamw::cuda::grad_sumsq(ts).unwrap()).unwrap()[0];
    let other = half(&refs[2..]);
    let two = ops::adamw::grad_norm_across(&refs[..2], 3.0, Some(&loss), |s| {
        let mine = crate::dist::f64_values(s)?[0];
        *s = crate::dist::f64_words(&[mine + other], d)?;
        Ok(())
    })
    .unwrap();
    let (n2, n1) = (two.read().unwrap().0, one.read().unwrap().0);
    println!("norm over two halves {n2}, whole {n1}");
    assert!(((n2 - n1) / n1).abs() < 1e-6);
    // An overflowing update on one rank: the mean of the flags (1 here, 0 there) is non-zero.
    let o = ops::adamw::AdamW { lr: 1e39, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 };
    let mut st = ops::adamw::grad_norm_across(&refs, 0.0, None, |_| Ok(())).unwrap();
    let mut p: Vec<Tensor> = gg.clone();
    let (mut m, mut v): (Vec<Tensor>, Vec<Tensor>) =
        (gg.iter().map(|g| g.zeros_like().unwrap()).collect(), gg.iter().map(|g| g.zeros_like().unwrap()).collect());
    let decay = vec![false; gg.len()];
    ops::adamw::adamw_multi(&o, 1, &decay, &mut p, &gg, &mut m, &mut v, Some(&st)).unwrap();
    st.share_nonfinite_flag(|f| {
        f[0] = ops::elementwise::scale(&f[0], 0.5)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(st.state.to_vec_f32().unwrap()[3], 0.5);
    assert!(!ops::adamw::params_finite(&p, &st).unwrap());
}

#[test]
fn parity_adamw_and_grad_norm() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    // Blocks of 4096 elements find their tensor by a binary search: several tensors, partial
    // and exact final blocks, single-block ones between many-block ones.
    let shapes: [&[usize]; 6] = [&[300, 70], &[5], &[4097], &[8192], &[1], &[3, 4096]];
    let o = ops::adamw::AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let decay = [true, false, true, true, false, true];
    let mut pc: Vec<Tensor> = shapes.iter().map(|s| randn(&mut r, s, 1.0)).collect();
    let gc: Vec<Tensor> = shapes.iter().map(|s| randn(&mut r, s, 1.0)).collect();
    let mut mc: Vec<Tensor> = shapes.iter().map(|s| randn(&mut r, s, 0.1)).collect();
    let mut vc: Vec<Tensor> =
        shapes.iter().map(|s| randn(&mut r, s, 0.1)).map(|t| ops::elementwise::mul(&t, &t).unwrap()).collect();
    let (mut pg, gg, mut mg, mut vg): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = (
        pc.iter().map(|t| up(t, d)).collect(),
        gc.iter().map(|t| up(t, d)).collect(),
        mc.iter().map(|t| up(t, d)).collect(),
        vc.iter().map(|t| up(t, d)).collect(),
    );
    // Clip to half the norm, then step: the CPU scales the gradients on the host.
    let norm_c = ops::adamw::global_norm(&gc.iter().collect::<Vec<_>>()).unwrap();
    let mut gcl = gc.clone();
    ops::adamw::clip_grad_norm(&mut gcl, norm_c / 2.0).unwrap();
    for i in 0..shapes.len() {
        ops::adamw::adamw_step(&o, 3, decay[i], &mut pc[i], &gcl[i], &mut mc[i], &mut vc[i]).unwrap();
    }
    let st = ops::adamw::cuda::grad_norm_state(&gg.iter().collect::<Vec<_>>(), norm_c / 2.0, None).unwrap();
    let stv = st.to_vec_f32().unwrap();
    println!("grad norm gpu {} cpu {norm_c}", stv[0]);
    assert!(((stv[0] as f64 - norm_c) / norm_c).abs() < 1e-6 && stv[2] == 0.0);
    ops::adamw::cuda::adamw_multi(&o, 3, &decay, &mut pg, &gg, &mut mg, &mut vg, Some(&st)).unwrap();
    for i in 0..shapes.len() {
        close(&format!("adamw p[{i}]"), &pg[i], &pc[i], F32_NMSE);
        close(&format!("adamw m[{i}]"), &mg[i], &mc[i], F32_NMSE);
        close(&format!("adamw v[{i}]"), &vg[i], &vc[i], F32_NMSE);
    }
    assert_eq!(st.to_vec_f32().unwrap()[3], 0.0, "a finite update raised the non-finite flag");
    // The step's scalars read from a device tensor (a captured step) give the same update bit
    // for bit as the step number given to the launcher.
    let (mut p2, mut m2, mut v2) = (pg.clone(), mg.clone(), vg.clone());
    let deep = |ts: &mut Vec<Tensor>| {
        for t in ts.iter_mut() {
            *t = up(&t.to_device(crate::Device::Cpu).unwrap(), d);
        }
    };
    deep(&mut p2);
    deep(&mut m2);
    deep(&mut v2);
    let st2 = ops::adamw::cuda::grad_norm_state(&gg.iter().collect::<Vec<_>>(), 1.0, None).unwrap();
    let st3 = ops::adamw::cuda::grad_norm_state(&gg.iter().collect::<Vec<_>>(), 1.0, None).unwrap();
    ops::adamw::cuda::adamw_multi(&o, 7, &decay, &mut pg, &gg, &mut mg, &mut vg, Some(&st2)).unwrap();
    let sc = up(&Tensor::from_f32(ops::adamw::step_scalars(&o, 7).to_vec(), &[3]).unwrap(), d);
    let at = ops::adamw::Step::Scalars(&sc);
    ops::adamw::cuda::adamw_multi_at(&o, at, &decay, &mut p2, &gg, &mut m2, &mut v2, Some(&st3)).unwrap();
    for i in 0..shapes.len() {
        close(&format!("adamw p[{i}], device scalars"), &p2[i], &pg[i], 0.0);
        close(&format!("adamw m[{i}], device scalars"), &m2[i], &mg[i], 0.0);
        close(&format!("adamw v[{i}], device scalars"), &v2[i], &vg[i], 0.0);
    }
    // An update that overflows raises the non-finite flag (the trainer then stops, saving nothing).
    let huge = ops::adamw::AdamW { lr: 1e39, ..o };
    let st = ops::adamw::cuda::grad_norm_state(&gg.iter().collect::<Vec<_>>(), 0.0, None).unwrap();
    ops::adamw::cuda::adamw_multi(&huge, 4, &decay, &mut pg, &gg, &mut mg, &mut vg, Some(&st)).unwrap();
    assert_eq!(st.to_vec_f32().unwrap()[3], 1.0, "an overflowing update did not raise the non-finite flag");
    // A non-finite gradient sets the skip flag and leaves the parameters alone.
    let bad = vec![up(&Tensor::full(&[3], f32::NAN), d)];
    let st = ops::adamw::cuda::grad_norm_state(&bad.iter().collect::<Vec<_>>(), 1.0, None).unwrap();
    let mut p1 = vec![up(&Tensor::full(&[3], 1.0), d)];
    let (mut m1, mut v1) = (vec![up(&Tensor::zeros(&[3]), d)], vec![up(&Tensor::zeros(&[3]), d)]);
    ops::adamw::cuda::adamw_multi(&o, 1, &[true], &mut p1, &bad, &mut m1, &mut v1, Some(&st)).unwrap();
    assert_eq!(p1[0].to_vec_f32().unwrap(), vec![1.0; 3]);
}
