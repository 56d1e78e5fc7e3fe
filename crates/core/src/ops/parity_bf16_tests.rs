//! CUDA parity tests for bf16 storage (mixed precision): every op, forward and backward, with
//! bf16 inputs on the device against the CPU reference run on the same values (the inputs
//! rounded to bf16 on the host, then computed in f32). Fresh seeds and poisoned outputs as in
//! `parity_tests.rs`, whose helpers these share; each result's dtype is checked too.
//!
//! Thresholds (NMSE = ‖gpu − cpu‖² / ‖cpu‖²):
//! - `BF16_STORE` = 1e-5 for an output stored in bf16 and computed in f32 from the same inputs:
//!   the one rounding to bf16 (8 significant bits, round to nearest even) has an NMSE of
//!   2.2e-6 to 2.8e-6 on normal, uniform and log-normal data (measured), so 1e-5 admits up to
//!   three roundings (the bias add rounds twice) while a wrong element, a missed conversion or
//!   an f32 kernel reading bf16 bytes lands at 1e-2 or above.
//! - `F32_NMSE` = 1e-10 for f32 results (rstd, lse, the loss, the residual stream, rmsnorm's
//!   dw, the embedding and bias gradients): same input values, only the summation order differs.
//! - `BF16_MM_F32` = 1e-9 for the f32 weight gradient of a bf16-operand cuBLASLt product:
//!   products of bf16 values are exact in f32, and tensor-core f32 accumulation in its own
//!   order (and rounding) stays far below one bf16 rounding.
//! - `ATTN_TC` = 2e-5 for the tensor-core attention kernels (bf16, head dim 64 and 128): the
//!   probabilities P and their gradient dS are rounded to bf16 as operands of P·V, Pᵀ·dO, dS·K
//!   and dSᵀ·Q, one rounding more than the scalar kernels (which keep them f32) before the
//!   output's own. Each such sum's error is a random walk of relative 2⁻⁹ steps, so about one
//!   more rounding's NMSE (~2.5e-6): ~5e-6 expected, 2e-5 allowed; a wrong mask, a missed tile
//!   or a fragment in the wrong place lands at 1e-3 or above.
//! - `BF16_CHAIN` = 1e-4 for composite paths where several bf16 roundings feed each other (the
//!   chunked head + loss: bf16 logits → bf16 dlogits → bf16 dh).

use super::parity_tests::{close, dev, ids, randn, seed, up, BF16_NMSE as BF16_CHAIN, F32_NMSE};
use crate::cuda::{self, MatmulPrecision};
use crate::ops;
use crate::rng::Rng;
use crate::{DType, Device, Tensor};

const BF16_STORE: f64 = 1e-5;
const BF16_MM_F32: f64 = 1e-9;
const ATTN_TC: f64 = 2e-5;

/// The tolerance for a bf16 attention result at head dim `hd`: which kernels run decides it.
fn attn_tol(hd: usize) -> f64 {
    let gpu = cuda::gpu(0).expect("a CUDA device (the caller has one)");
    if ops::attention::cuda::uses_tensor_cores(&gpu, DType::BF16, hd) {
        ATTN_TC
    } else {
        BF16_STORE
    }
}

/// The values of `t` rounded to bf16, as an f32 host tensor: the CPU reference's inputs.
fn bf(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

/// `t` rounded to bf16 and stored as bf16 on `d`.
fn upb(t: &Tensor, d: Device) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_device(d).unwrap()
}

/// The result's dtype, then its NMSE against the CPU.
fn check(label: &str, gpu: &Tensor, dtype: DType, cpu: &Tensor, tol: f64) {
    assert_eq!(gpu.dtype(), dtype, "{label}: the result should be stored as {dtype:?}");
    close(label, gpu, cpu, tol);
}

/// Mixed precision for the life of the guard (rmsnorm's output and `linear` follow it); back to
/// f32, the parity tests' default, when dropped, even by a failing assertion.
struct Mixed;
impl Mixed {
    fn on() -> Mixed {
        cuda::set_matmul_precision(MatmulPrecision::Bf16);
        Mixed
    }
}
impl Drop for Mixed {
    fn drop(&mut self) {
        cuda::set_matmul_precision(MatmulPrecision::F32)
    }
}

#[test]
fn parity_bf16_elementwise_casts_and_embedding() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (a, b) = (randn(&mut r, &[37, 19], 1.0), randn(&mut r, &[37, 19], 1.0));
    let (ag, bg) = (upb(&a, d), upb(&b, d));
    let (ac, bc) = (bf(&a), bf(&b));
    check(
        "bf16 add",
        &ops::elementwise::add(&ag, &bg).unwrap(),
        DType::BF16,
        &ops::elementwise::add(&ac, &bc).unwrap(),
        BF16_STORE,
    );
    check(
        "bf16 mul",
        &ops::elementwise::mul(&ag, &bg).unwrap(),
        DType::BF16,
        &ops::elementwise::mul(&ac, &bc).unwrap(),
        BF16_STORE,
    );
    check(
        "bf16 scale",
        &ops::elementwise::scale(&ag, 0.37).unwrap(),
        DType::BF16,
        &ops::elementwise::scale(&ac, 0.37).unwrap(),
        BF16_STORE,
    );
    let mut want = a.clone();
    ops::elementwise::add_assign(&mut want, &bc).unwrap();
    let mut acc = up(&a, d);
    ops::elementwise::add_assign(&mut acc, &bg).unwrap();
    check("add_assign f32 += bf16", &acc, DType::F32, &want, F32_NMSE);
    let mut want = ac.clone();
    ops::elementwise::add_assign(&mut want, &bc).unwrap();
    let mut acc = ag.clone();
    ops::elementwise::add_assign(&mut acc, &bg).unwrap();
    check("add_assign bf16 += bf16", &acc, DType::BF16, &want, BF16_STORE);
    // The device cast rounds exactly as the host does (nearest even), and back is exact.
    let down = ops::elementwise::cast(&up(&a, d), DType::BF16).unwrap();
    check("cast f32 -> bf16", &down, DType::BF16, &ac, 0.0);
    assert_eq!(
        down.to_device(Device::Cpu).unwrap().to_le_bytes().unwrap(),
        a.to_dtype(DType::BF16).unwrap().to_le_bytes().unwrap(),
        "device and host bf16 rounding differ"
    );
    check("cast bf16 -> f32", &ops::elementwise::cast(&down, DType::F32).unwrap(), DType::F32, &ac, 0.0);
    check("to_dtype on the device", &up(&a, d).to_dtype(DType::BF16).unwrap(), DType::BF16, &ac, 0.0);

    let (v, c, n) = (50, 24, 300);
    let table = randn(&mut r, &[v, c], 1.0);
    let id = ids(&mut r, n, v);
    let dout = randn(&mut r, &[n, c], 1.0);
    // A gather from bf16 rows (the last-position gather of bf16 hidden states) copies exactly.
    check(
        "embedding fwd bf16 table",
        &ops::embedding::embedding(&upb(&table, d), &id).unwrap(),
        DType::BF16,
        &ops::embedding::embedding(&bf(&table), &id).unwrap(),
        0.0,
    );
    check(
        "embedding fwd f32 table",
        &ops::embedding::embedding(&up(&table, d), &id).unwrap(),
        DType::F32,
        &ops::embedding::embedding(&table, &id).unwrap(),
        0.0,
    );
    let want = ops::embedding::embedding_backward(&table, &id, &bf(&dout)).unwrap();
    check(
        "embedding bwd bf16 dout (host ids)",
        &ops::embedding::embedding_backward(&up(&table, d), &id, &upb(&dout, d)).unwrap(),
        DType::F32,
        &want,
        0.0,
    );
    check(
        "embedding bwd bf16 dout (device ids)",
        &ops::embedding::embedding_backward(&up(&table, d), &up(&id, d), &upb(&dout, d)).unwrap(),
        DType::F32,
        &want,
        0.0,
    );
}

#[test]
fn parity_bf16_rmsnorm_and_fused_residual() {
    let Some(d) = dev() else { return };
    let _mixed = Mixed::on();
    let mut r = Rng::new(seed());
    // Few rows (several warps a row) and many (one warp a row), vectorised (c % 8 == 0) or not.
    for (n, c) in [(70, 48), (5, 1000), (300, 256), (1, 2048), (3, 4100), (1100, 768), (1030, 100)] {
        let (x, res, w, dy) = (
            randn(&mut r, &[n, c], 1.0),
            randn(&mut r, &[n, c], 1.0),
            randn(&mut r, &[c], 1.0),
            randn(&mut r, &[n, c], 1.0),
        );
        let wg = up(&w, d);
        // The f32 residual stream normalised into a bf16 matmul input (the model's attn_norm).
        let (yc, rc) = ops::rmsnorm::rmsnorm(&x, &w, 1e-5).unwrap();
        let (yg, rg) = ops::rmsnorm::rmsnorm(&up(&x, d), &wg, 1e-5).unwrap();
        check(&format!("rmsnorm f32 -> bf16 {n}x{c}"), &yg, DType::BF16, &yc, BF16_STORE);
        check("rmsnorm rstd", &rg, DType::F32, &rc, F32_NMSE);
        // bf16 in, bf16 out (q/k norms of Qwen3-style models).
        let (ycb, rcb) = ops::rmsnorm::rmsnorm(&bf(&x), &w, 1e-5).unwrap();
        let (ygb, rgb) = ops::rmsnorm::rmsnorm(&upb(&x, d), &wg, 1e-5).unwrap();
        check("rmsnorm bf16 -> bf16", &ygb, DType::BF16, &ycb, BF16_STORE);
        check("rmsnorm bf16 rstd", &rgb, DType::F32, &rcb, F32_NMSE);
        // Backward: dx keeps x's dtype, dw is f32.
        let (dxc, dwc) = ops::rmsnorm::rmsnorm_backward(&x, &w, &rc, &bf(&dy)).unwrap();
        let (dxg, dwg) = ops::rmsnorm::rmsnorm_backward(&up(&x, d), &wg, &rg, &upb(&dy, d)).unwrap();
        check("rmsnorm dx (x f32, dy bf16)", &dxg, DType::F32, &dxc, F32_NMSE);
        check("rmsnorm dw (x f32, dy bf16)", &dwg, DType::F32, &dwc, F32_NMSE);
        let (dxc, dwc) = ops::rmsnorm::rmsnorm_backward(&bf(&x), &w, &rcb, &bf(&dy)).unwrap();
        let (dxg, dwg) = ops::rmsnorm::rmsnorm_backward(&upb(&x, d), &wg, &rgb, &upb(&dy, d)).unwrap();
        check("rmsnorm dx (bf16)", &dxg, DType::BF16, &dxc, BF16_STORE);
        check("rmsnorm dw (bf16)", &dwg, DType::F32, &dwc, F32_NMSE);
        // Fused: f32 stream + bf16 branch → f32 stream, bf16 normalised output (the policy).
        let (hc, yc, _) = ops::rmsnorm::add_rmsnorm(&x, &bf(&res), &w, 1e-5).unwrap();
        let (hg, yg, _) = ops::rmsnorm::add_rmsnorm(&up(&x, d), &upb(&res, d), &wg, 1e-5).unwrap();
        check("add_rmsnorm h (f32 + bf16)", &hg, DType::F32, &hc, F32_NMSE);
        check("add_rmsnorm y", &yg, DType::BF16, &yc, BF16_STORE);
        // A bf16 stream: h is rounded to bf16 and y normalises the rounded h.
        let hcb = bf(&ops::elementwise::add(&bf(&x), &bf(&res)).unwrap());
        let (ycb, _) = ops::rmsnorm::rmsnorm(&hcb, &w, 1e-5).unwrap();
        let (hgb, ygb, _) = ops::rmsnorm::add_rmsnorm(&upb(&x, d), &upb(&res, d), &wg, 1e-5).unwrap();
        check("add_rmsnorm h (bf16 + bf16)", &hgb, DType::BF16, &hcb, F32_NMSE);
        check("add_rmsnorm y (bf16 stream)", &ygb, DType::BF16, &ycb, BF16_STORE);
        // The fused backward (dh = dx + gh, dr = dh as bf16) against the unfused kernels on the
        // GPU (rmsnorm_backward, add_assign, cast), for an f32 and a bf16 stream. Not bit for bit:
        // on the H200 (2026-12-02, docs/gpu-runs/2026-12-02-table-h200-step.txt) the f32 stream's
        // dh differed from the unfused sum in the last bits, so the check is NMSE at each dtype's
        // tolerance (the model-level GPU tests, f32 steps = CPU steps included, passed in that run).
        let gh = randn(&mut r, &[n, c], 1.0);
        for (h, ghd, rdt) in [(hg.clone(), up(&gh, d), DType::BF16), (hgb.clone(), upb(&gh, d), DType::BF16)] {
            let (_, rs) = ops::rmsnorm::rmsnorm(&h, &wg, 1e-5).unwrap();
            let dyb = upb(&dy, d);
            let (dh, dr, dw) = ops::rmsnorm::add_rmsnorm_backward(&h, &wg, &rs, &dyb, &ghd, rdt).unwrap();
            let (mut dh0, dw0) = ops::rmsnorm::rmsnorm_backward(&h, &wg, &rs, &dyb).unwrap();
            ops::elementwise::add_assign(&mut dh0, &ghd).unwrap();
            let dr0 = ops::elementwise::cast(&dh0, rdt).unwrap();
            let label = format!("add_rmsnorm bwd fused ({:?} stream)", h.dtype());
            assert_eq!((dh.dtype(), dr.dtype()), (h.dtype(), rdt), "{label}: dtypes");
            let dh_tol = if h.dtype() == DType::F32 { F32_NMSE } else { BF16_STORE };
            close(&format!("{label}: dh"), &dh, &dh0, dh_tol);
            close(&format!("{label}: dr"), &dr, &dr0, BF16_STORE);
            close(&format!("{label}: dw"), &dw, &dw0, F32_NMSE);
        }
    }
}

/// RMSNorm with each row read once into registers (the default for rows of up to 2048 values at
/// one warp a row, and for decode's few rows) against the two-pass kernels: every output bit for
/// bit, forward with and without the residual add, backward with and without the stream's
/// gradient, f32 and bf16 storage, rows of 576 to 2048 values (one warp a row past 1024 rows;
/// several warps a row below), and 4096 (the two-pass form in both runs). Past 1024 rows the
/// backward's dw comes from the row kernel's 16-row partials (`rmsnorm_bwd_rows`): the same
/// terms summed in other groups, so within f32 rounding (F32_NMSE) of the two-pass dw.
#[test]
fn parity_rmsnorm_rows_in_registers_equal_two_passes() {
    use ops::rmsnorm::cuda::set_resident;
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().as_f32().unwrap().to_vec();
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            set_resident(None)
        }
    }
    let _reset = Reset;
    for (n, c) in [(1030, 2048), (1100, 896), (1024, 576), (1040, 768), (3, 2048), (1, 896), (1030, 4096)] {
        let x = randn(&mut r, &[n, c], 1.0);
        let (res, w, dy, gh) = (
            randn(&mut r, &[n, c], 1.0),
            randn(&mut r, &[c], 1.0),
            randn(&mut r, &[n, c], 1.0),
            randn(&mut r, &[n, c], 1.0),
        );
        let wg = up(&w, d);
        for (stream, branch, dyd, ghd) in [
            (up(&x, d), up(&res, d), up(&dy, d), up(&gh, d)),
            (up(&x, d), upb(&res, d), upb(&dy, d), up(&gh, d)),
            (upb(&x, d), upb(&res, d), upb(&dy, d), upb(&gh, d)),
        ] {
            let run = |resident: bool| {
                set_resident(Some(resident));
                let (y, rstd) = ops::rmsnorm::rmsnorm(&stream, &wg, 1e-5).unwrap();
                let (dx, dw) = ops::rmsnorm::rmsnorm_backward(&stream, &wg, &rstd, &dyd).unwrap();
                let (h, y2, rstd2) = ops::rmsnorm::add_rmsnorm(&stream, &branch, &wg, 1e-5).unwrap();
                let (dh, dr, dw2) =
                    ops::rmsnorm::add_rmsnorm_backward(&h, &wg, &rstd2, &dyd, &ghd, branch.dtype()).unwrap();
                [y, rstd, dx, dw, h, y2, rstd2, dh, dr, dw2].map(|t| host(&t))
            };
            let (two, one) = (run(false), run(true));
            let label = format!("{n}x{c} stream {:?} branch {:?} dy {:?}", stream.dtype(), branch.dtype(), dyd.dtype());
            for (i, what) in
                ["y", "rstd", "dx", "dw", "h", "add y", "add rstd", "dh", "dr", "add dw"].iter().enumerate()
            {
                if what.ends_with("dw") && n >= 1024 && c <= 2048 {
                    // The row kernel sums dw over chunks of 16 rows (the two-pass form over
                    // n/256): the same terms, grouped otherwise.
                    let dw = |v: &[f32]| Tensor::from_f32(v.to_vec(), &[c]).unwrap();
                    close(&format!("{label}: {what}"), &dw(&one[i]), &dw(&two[i]), F32_NMSE);
                    continue;
                }
                let diff = two[i].iter().zip(&one[i]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(diff, 0, "{label}: {what} differs in {diff} of {} values", two[i].len());
            }
        }
    }
}

#[test]
fn parity_bf16_rope_and_swiglu() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (b, t, h, hd) = (2, 9, 3, 16);
    for layout in [ops::rope::RopeLayout::HalfSplit, ops::rope::RopeLayout::Interleaved] {
        let table = ops::rope::RopeTable::new(ops::rope::freqs::default_inv_freq(10000.0, hd), 1.0, layout);
        let x = randn(&mut r, &[b, t, h, hd], 1.0);
        check(
            &format!("rope fwd bf16 {layout:?}"),
            &ops::rope::rope(&upb(&x, d), &table, 5).unwrap(),
            DType::BF16,
            &ops::rope::rope(&bf(&x), &table, 5).unwrap(),
            BF16_STORE,
        );
        check(
            &format!("rope bwd bf16 {layout:?}"),
            &ops::rope::rope_backward(&upb(&x, d), &table, 5).unwrap(),
            DType::BF16,
            &ops::rope::rope_backward(&bf(&x), &table, 5).unwrap(),
            BF16_STORE,
        );
    }
    let (g, u, dy) = (randn(&mut r, &[33, 70], 2.0), randn(&mut r, &[33, 70], 1.0), randn(&mut r, &[33, 70], 1.0));
    let (gg, ug) = (upb(&g, d), upb(&u, d));
    check(
        "swiglu fwd bf16",
        &ops::swiglu::swiglu(&gg, &ug).unwrap(),
        DType::BF16,
        &ops::swiglu::swiglu(&bf(&g), &bf(&u)).unwrap(),
        BF16_STORE,
    );
    let (dgc, duc) = ops::swiglu::swiglu_backward(&bf(&g), &bf(&u), &bf(&dy)).unwrap();
    let (dgg, dug) = ops::swiglu::swiglu_backward(&gg, &ug, &upb(&dy, d)).unwrap();
    check("swiglu dg bf16", &dgg, DType::BF16, &dgc, BF16_STORE);
    check("swiglu du bf16", &dug, DType::BF16, &duc, BF16_STORE);
}

/// SwiGLU's backward adding into existing gradient sums (`swiglu_backward_acc_with`, in the kernel: one that
/// reads each sum and writes it back, as the autograd pass runs it when gate and up already
/// have a gradient, e.g. from a LoRA down projection's adapter branch) gives the bits of the
/// backward then an add each, in f32 and bf16: both sums given, one, none, a sum of another
/// dtype (the product then the add), and a sum shared with another tensor (copied, the other
/// left as it was). Lengths with a tail past whole 16-byte vectors.
#[test]
fn parity_swiglu_backward_accumulated() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().as_f32().unwrap().to_vec();
    for dt in [DType::F32, DType::BF16] {
        let on = |t: &Tensor| up(t, d).to_dtype(dt).unwrap();
        let (g, u, dy) = (randn(&mut r, &[33, 70], 2.0), randn(&mut r, &[33, 70], 1.0), randn(&mut r, &[33, 70], 1.0));
        let (s0g, s0u) = (randn(&mut r, &[33, 70], 1.0), randn(&mut r, &[33, 70], 1.0));
        let (gg, ug, dyg) = (on(&g), on(&u), on(&dy));
        let (dg, du) = ops::swiglu::swiglu_backward(&gg, &ug, &dyg).unwrap();
        let want = |start: &Option<Tensor>, grad: &Tensor| match start {
            Some(s) => {
                let mut s = s.clone();
                ops::elementwise::add_assign(&mut s, grad).unwrap();
                host(&s)
            }
            None => host(grad),
        };
        let other = up(&s0u, d).to_dtype(if dt == DType::F32 { DType::BF16 } else { DType::F32 }).unwrap();
        for (label, sg, su) in [
            ("both sums", Some(on(&s0g)), Some(on(&s0u))),
            ("gate's sum only", Some(on(&s0g)), None),
            ("no sums", None, None),
            ("up's sum of another dtype", Some(on(&s0g)), Some(other)),
        ] {
            let (want_g, want_u) = (want(&sg, &dg), want(&su, &du));
            let (mut sg, mut su) = (sg, su);
            ops::swiglu::cuda::swiglu_backward_acc_with(&gg, &ug, &dyg, &mut sg, &mut su, true).unwrap();
            for (what, got, want) in [("dg", &sg, &want_g), ("du", &su, &want_u)] {
                let got = host(got.as_ref().expect("a gradient sum"));
                let n = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(n, 0, "swiglu backward accumulated {dt:?}, {label}: {what} differs in {n} of {}", got.len());
            }
        }
        // A sum shared with another tensor: written through a copy, the other unchanged.
        let shared = on(&s0g);
        let before = host(&shared);
        let (mut sg, mut su) = (Some(shared.clone()), None);
        ops::swiglu::cuda::swiglu_backward_acc_with(&gg, &ug, &dyg, &mut sg, &mut su, true).unwrap();
        assert_eq!(host(&shared), before, "{dt:?}: the tensor sharing the sum was written");
        assert_eq!(host(sg.as_ref().unwrap()), want(&Some(on(&s0g)), &dg), "{dt:?}: the shared sum's copy");
    }
}

#[test]
fn parity_bf16_cross_entropy() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let (n, v) = (37, 5000);
    let z = randn(&mut r, &[n, v], 3.0);
    let mut t: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    t[3] = ops::cross_entropy::IGNORE;
    let t = Tensor::from_u32(t, &[n]).unwrap();
    let zg = upb(&z, d);
    let (lc, sc, cc) = ops::cross_entropy::cross_entropy(&bf(&z), &t).unwrap();
    let (lg, sg, cg) = ops::cross_entropy::cross_entropy(&zg, &t).unwrap();
    assert_eq!(cc, cg);
    check("ce loss (bf16 logits)", &lg, DType::F32, &lc, F32_NMSE);
    check("ce lse (bf16 logits)", &sg, DType::F32, &sc, F32_NMSE);
    check(
        "ce dlogits bf16",
        &ops::cross_entropy::cross_entropy_backward(&zg, &t, &sg, 0.7, cg).unwrap(),
        DType::BF16,
        &ops::cross_entropy::cross_entropy_backward(&bf(&z), &t, &sc, 0.7, cc).unwrap(),
        BF16_STORE,
    );
}

#[test]
fn parity_bf16_chunked_linear_cross_entropy() {
    let Some(d) = dev() else { return };
    let _mixed = Mixed::on();
    let mut r = Rng::new(seed());
    let (n, c, v) = (45, 32, 3000);
    // h as the model hands it over (bf16); w an f32 master whose values are bf16-exact, so the
    // CPU sees the operands the GPU multiplies.
    let (h, w) = (bf(&randn(&mut r, &[n, c], 1.0)), bf(&randn(&mut r, &[v, c], 0.2)));
    let t = ids(&mut r, n, v);
    // Slices of 700 ids (scalar accesses: 700 % 8 != 0) and of 1000 (16-byte accesses).
    for vocab in [700, 1000] {
        let run = |h: &Tensor, w: &Tensor| {
            let mut g = crate::Graph::training();
            let (hv, wv) = (g.leaf(h.clone(), true), g.leaf(w.clone(), true));
            let loss = g.linear_cross_entropy(&hv, &wv, &t, 16, vocab).unwrap();
            let l = loss.tensor().clone();
            let gr = g.backward(&loss).unwrap();
            (l, gr.get(&hv).unwrap().clone(), gr.get(&wv).unwrap().clone())
        };
        let (lc, dhc, dwc) = run(&h, &w);
        let (lg, dhg, dwg) = run(&upb(&h, d), &up(&w, d));
        check(&format!("linear+ce chunked loss (bf16 logits, slices of {vocab})"), &lg, DType::F32, &lc, BF16_CHAIN);
        check(&format!("linear+ce chunked dh (slices of {vocab})"), &dhg, DType::BF16, &dhc, BF16_CHAIN);
        check(&format!("linear+ce chunked dw (slices of {vocab})"), &dwg, DType::F32, &dwc, BF16_CHAIN);
    }
}

#[test]
fn parity_bf16_attention() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    // The shapes of parity_attention (a KV-cache offset with spare rows: a bf16 cache).
    for (b, tq, tk, s, h, kvh, hd, window) in super::parity_tests::ATTN_SHAPES {
        attn_case(&mut r, d, (b, tq, tk, s, h, kvh, hd, window));
    }
}

/// Query blocks long enough, and grids large enough, that on Hopper the default forward is the
/// wgmma one with K and V by TMA (`attn_wgwt3_fwd_d64` from 2048 rows and two blocks an SM: 264
/// blocks here; the mma.sync kernel elsewhere) against the CPU: causal with GQA, a window at a
/// length that is no multiple of its 192-row blocks, and a cache offset with spare rows (forward
/// only there).
#[test]
fn parity_bf16_attention_long_blocks() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for shape in [
        (2, 2048, 2048, 2048, 12, 4, 64, None),
        (1, 2100, 2100, 2100, 24, 24, 64, Some(300)),
        (2, 2048, 2100, 2112, 12, 4, 64, None),
    ] {
        attn_case(&mut r, d, shape);
    }
}

/// One bf16 attention case against the CPU on the same (bf16-rounded) values: out and lse, and,
/// for a training shape (no cache offset), dq, dk and dv.
fn attn_case(
    r: &mut Rng,
    d: Device,
    (b, tq, tk, s, h, kvh, hd, window): (usize, usize, usize, usize, usize, usize, usize, Option<usize>),
) {
    let q = randn(r, &[b, tq, h, hd], 1.0);
    let k = randn(r, &[b, s, kvh, hd], 1.0);
    let v = randn(r, &[b, s, kvh, hd], 1.0);
    let (qg, kg, vg) = (upb(&q, d), upb(&k, d), upb(&v, d));
    let (qc, kc, vc) = (bf(&q), bf(&k), bf(&v));
    let tol = attn_tol(hd);
    let path = if tol == ATTN_TC { "tensor cores" } else { "scalar" };
    let label = format!("attn bf16 b{b} q{tq} k{tk} s{s} h{h}/{kvh} d{hd} w{window:?} ({path})");
    let sc = 1.0 / (hd as f32).sqrt();
    let (oc, lc) = ops::attention::attention(&qc, &kc, &vc, tk, window, sc).unwrap();
    let (og, lg) = ops::attention::attention(&qg, &kg, &vg, tk, window, sc).unwrap();
    check(&format!("{label} out"), &og, DType::BF16, &oc, tol);
    check(&format!("{label} lse"), &lg, DType::F32, &lc, F32_NMSE);
    if tq != tk || s != tk {
        return;
    }
    // The backward reads the stored (bf16) output; the CPU gets the same values.
    let dout = randn(r, &[b, tq, h, hd], 1.0);
    let o_seen = og.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let (dqc, dkc, dvc) =
        ops::attention::attention_backward(&qc, &kc, &vc, &o_seen, &lc, &bf(&dout), window, sc).unwrap();
    let (dqg, dkg, dvg) =
        ops::attention::attention_backward(&qg, &kg, &vg, &og, &lg, &upb(&dout, d), window, sc).unwrap();
    check(&format!("{label} dq"), &dqg, DType::BF16, &dqc, tol);
    check(&format!("{label} dk"), &dkg, DType::BF16, &dkc, tol);
    check(&format!("{label} dv"), &dvg, DType::BF16, &dvc, tol);
}

/// B rows of T positions packed with examples of `lens` (cycled, row r starting at lens[r]) until
/// each row is full.
fn packed_segments(b: usize, t: usize, lens: &[usize]) -> ops::attention::Segments {
    let mut starts = Vec::with_capacity(b * t);
    for row in 0..b {
        let (mut i, mut e) = (0usize, row);
        while i < t {
            let n = lens[e % lens.len()].min(t - i);
            starts.extend(std::iter::repeat_n(i as u32, n));
            i += n;
            e += 1;
        }
    }
    ops::attention::Segments::new(b, t, starts).unwrap()
}

/// Packed rows (`--packing`) on the tensor-core kernels against the CPU on the same bf16 values:
/// examples of uneven lengths (some shorter than a tile, one crossing several), a window, head
/// dims 64 and 128; out, lse, dq, dk and dv. And RoPE at per-token positions (f32; both
/// layouts) forward and backward.
#[test]
fn parity_bf16_attention_packed() {
    use ops::attention::{attention_packed, attention_packed_backward};
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for (b, t, h, kvh, hd, window, lens) in [
        (2, 150, 4, 2, 64, None, vec![5, 70, 1, 74]),
        (1, 300, 8, 2, 64, Some(40), vec![100, 3, 130, 67]),
        (2, 97, 4, 1, 128, None, vec![33, 64]),
    ] {
        let seg = packed_segments(b, t, &lens);
        let q = randn(&mut r, &[b, t, h, hd], 1.0);
        let k = randn(&mut r, &[b, t, kvh, hd], 1.0);
        let v = randn(&mut r, &[b, t, kvh, hd], 1.0);
        let dout = randn(&mut r, &[b, t, h, hd], 1.0);
        let sc = 1.0 / (hd as f32).sqrt();
        let tol = attn_tol(hd);
        let label = format!("packed attn b{b} t{t} h{h}/{kvh} d{hd} w{window:?}");
        let (oc, lc) = attention_packed(&bf(&q), &bf(&k), &bf(&v), window, sc, &seg).unwrap();
        let (og, lg) = attention_packed(&upb(&q, d), &upb(&k, d), &upb(&v, d), window, sc, &seg).unwrap();
        check(&format!("{label} out"), &og, DType::BF16, &oc, tol);
        check(&format!("{label} lse"), &lg, DType::F32, &lc, F32_NMSE);
        let o_seen = og.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let (dqc, dkc, dvc) =
            attention_packed_backward(&bf(&q), &bf(&k), &bf(&v), &o_seen, &lc, &bf(&dout), window, sc, &seg).unwrap();
        let (dqg, dkg, dvg) = attention_packed_backward(
            &upb(&q, d),
            &upb(&k, d),
            &upb(&v, d),
            &og,
            &lg,
            &upb(&dout, d),
            window,
            sc,
            &seg,
        )
        .unwrap();
        check(&format!("{label} dq"), &dqg, DType::BF16, &dqc, tol);
        check(&format!("{label} dk"), &dkg, DType::BF16, &dkc, tol);
        check(&format!("{label} dv"), &dvg, DType::BF16, &dvc, tol);
        // RoPE at the examples' positions, f32, forward and back.
        let table = ops::rope::RopeTable::new(
            ops::rope::freqs::default_inv_freq(10000.0, hd),
            1.0,
            if hd == 64 { ops::rope::RopeLayout::HalfSplit } else { ops::rope::RopeLayout::Interleaved },
        );
        let pos = seg.positions();
        let x = randn(&mut r, &[b, t, h, hd], 1.0);
        for sign in [1.0f32, -1.0] {
            let f = |x: &Tensor| {
                if sign > 0.0 {
                    ops::rope::rope_positions(x, &table, &pos).unwrap()
                } else {
                    ops::rope::rope_positions_backward(x, &table, &pos).unwrap()
                }
            };
            check(&format!("{label} rope_positions sign {sign}"), &f(&up(&x, d)), DType::F32, &f(&x), F32_NMSE);
        }
    }
}

/// The tensor-core kernels (bf16, head dim 64 and 128) at shapes that cross their tiles:
/// T not a multiple of the 64-row tile, several key and query tiles (full and masked ones),
/// causal + GQA, sliding windows (down to 1: each query sees only itself), a KV-cache offset with spare
/// rows, one-query decoding, and the dk/dv blocks past the last visible query.
#[test]
fn parity_bf16_attention_tensor_cores() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    for case in [
        (2, 130, 130, 130, 4, 2, 64, None),
        (1, 300, 300, 300, 8, 2, 64, None),
        (1, 200, 200, 200, 6, 2, 128, Some(50)),
        (2, 150, 150, 150, 4, 1, 64, Some(70)),
        // Window 1: each query sees only itself (forward only: out = v exactly, and dS = 0
        // analytically, so dq and dk would compare rounding noise with rounding noise).
        (1, 77, 80, 80, 4, 4, 128, Some(1)),
        (1, 77, 77, 77, 4, 4, 128, Some(2)),
        (2, 64, 64, 64, 2, 2, 128, None),
        (2, 37, 150, 160, 4, 2, 64, Some(100)),
        (1, 100, 230, 256, 8, 2, 128, None),
        (2, 1, 90, 96, 4, 1, 128, None),
        (1, 1, 200, 200, 4, 2, 64, Some(64)),
    ] {
        attn_case(&mut r, d, case);
    }
}

#[test]
fn parity_bf16_linear() {
    let Some(d) = dev() else { return };
    let _mixed = Mixed::on();
    let mut r = Rng::new(seed());
    for (n, k, m) in [(67, 96, 130), (5, 256, 64), (300, 64, 200)] {
        // x and dy bf16 activations; w an f32 master with bf16-exact values (see the chunked
        // loss test); bias f32.
        let (x, w, bias, dy) = (
            bf(&randn(&mut r, &[n, k], 1.0)),
            bf(&randn(&mut r, &[m, k], 0.1)),
            randn(&mut r, &[m], 1.0),
            bf(&randn(&mut r, &[n, m], 1.0)),
        );
        let (xg, wg, bg, dyg) = (upb(&x, d), up(&w, d), up(&bias, d), upb(&dy, d));
        let label = format!("linear bf16 {n}x{k}x{m}");
        check(
            &format!("{label} fwd"),
            &ops::matmul::linear(&xg, &wg, None).unwrap(),
            DType::BF16,
            &ops::matmul::linear(&x, &w, None).unwrap(),
            BF16_STORE,
        );
        check(
            &format!("{label} fwd + bias"),
            &ops::matmul::linear(&xg, &wg, Some(&bg)).unwrap(),
            DType::BF16,
            &ops::matmul::linear(&x, &w, Some(&bias)).unwrap(),
            BF16_STORE,
        );
        let (dxc, dwc, dbc) = ops::matmul::linear_backward(&x, &w, &dy, true, true).unwrap();
        let (dxg, dwg, dbg) = ops::matmul::linear_backward(&xg, &wg, &dyg, true, true).unwrap();
        check(&format!("{label} dx"), &dxg.unwrap(), DType::BF16, dxc.as_ref().unwrap(), BF16_STORE);
        check(&format!("{label} dw"), &dwg, DType::F32, &dwc, BF16_MM_F32);
        check(&format!("{label} db"), &dbg.unwrap(), DType::F32, dbc.as_ref().unwrap(), F32_NMSE);
        // The weight's bf16 copy is made once and kept on its buffer until the weight is
        // written, which drops it (AdamW rewrites it instead: parity_bf16_adamw_keeps_copy).
        assert!(wg.cuda_buf().unwrap().bf16_shadow.get().is_some(), "{label}: no cached bf16 copy of the weight");
        let mut w2 = wg.clone();
        drop(wg);
        ops::elementwise::add_assign(&mut w2, &up(&Tensor::zeros(&[m, k]), d)).unwrap();
        assert!(
            w2.cuda_buf().unwrap().bf16_shadow.get().is_none(),
            "{label}: a written weight kept its stale bf16 copy"
        );
    }
}

/// Mixed storage dtypes where an op needs one are errors that name the op, never a kernel run
/// on misread bytes.
#[test]
fn parity_dtype_mismatches_are_errors() {
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let a = randn(&mut r, &[4, 8], 1.0);
    let (af, ab) = (up(&a, d), upb(&a, d));
    let err = |r: anyhow::Result<Tensor>, op: &str| {
        let e = format!("{:#}", r.expect_err("expected an error"));
        println!("{op}: {e}");
        assert!(e.contains(op), "the error should name {op}: {e}");
    };
    err(ops::swiglu::swiglu(&af, &ab), "swiglu");
    err(ops::elementwise::add(&af, &ab), "add");
    let q = upb(&randn(&mut r, &[1, 3, 2, 8], 1.0), d);
    let kv = up(&randn(&mut r, &[1, 3, 2, 8], 1.0), d);
    err(ops::attention::attention(&q, &kv, &kv, 3, None, 0.5).map(|x| x.0), "attention");
    err(ops::rmsnorm::rmsnorm(&af, &upb(&randn(&mut r, &[8], 1.0), d), 1e-5).map(|x| x.0), "rmsnorm weight");
    err(
        ops::embedding::embedding_backward(
            &ab,
            &Tensor::from_u32(vec![1, 2], &[2]).unwrap(),
            &up(&randn(&mut r, &[2, 8], 1.0), d),
        ),
        "embedding_backward",
    );
    // Under f32 precision a bf16 operand is refused (an f32 run stays f32 throughout).
    cuda::set_matmul_precision(MatmulPrecision::F32);
    err(ops::matmul::linear(&ab, &af, None), "linear");
    let mut cache = up(&Tensor::zeros(&[64]), d);
    let e = format!("{:#}", cache.write_at(0, &ab).expect_err("write_at of bf16 rows into an f32 cache"));
    assert!(e.contains("write_at"), "{e}");
}

/// AdamW writes the bf16 copy of each weight that has one from the updated f32 value (so no
/// cast pass follows the step): the copy after a step is the new master rounded to bf16, at the
/// same address; a weight without a copy gets none.
#[test]
fn parity_bf16_adamw_keeps_copy() {
    let Some(d) = dev() else { return };
    let _mixed = Mixed::on();
    let mut r = Rng::new(seed());
    let o = ops::adamw::AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let (m, k) = (40, 24);
    let x = upb(&bf(&randn(&mut r, &[3, k], 1.0)), d);
    let mut p = vec![up(&randn(&mut r, &[m, k], 0.1), d), up(&randn(&mut r, &[m], 0.1), d)];
    ops::matmul::linear(&x, &p[0], None).unwrap(); // makes the weight's copy
    let before = p[0].cuda_buf().unwrap().bf16_shadow.get().unwrap().cuda_buf().unwrap().ptr();
    let g: Vec<Tensor> = p.iter().map(|t| up(&randn(&mut r, t.shape(), 1.0), d)).collect();
    let mut mm: Vec<Tensor> = p.iter().map(|t| up(&Tensor::zeros(t.shape()), d)).collect();
    let mut vv = mm.clone();
    ops::adamw::cuda::adamw_multi(&o, 1, &[true, false], &mut p, &g, &mut mm, &mut vv, None).unwrap();
    let copy = p[0].cuda_buf().unwrap().bf16_shadow.get().expect("AdamW dropped the weight's bf16 copy").clone();
    assert_eq!(copy.cuda_buf().unwrap().ptr(), before, "the copy moved");
    let want = p[0].to_dtype(DType::BF16).unwrap().to_device(Device::Cpu).unwrap();
    assert_eq!(
        copy.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().as_f32().unwrap(),
        want.to_dtype(DType::F32).unwrap().as_f32().unwrap(),
        "the bf16 copy is not the updated weight rounded"
    );
    assert!(p[1].cuda_buf().unwrap().bf16_shadow.get().is_none(), "a bias with no copy got one");
}

/// The kernels `SMELT_CUDA_ATTN_MT=1`, `SMELT_CUDA_ATTN_DKDV=smem` and `SMELT_CUDA_ATTN_PC=1`
/// pick (the one-tile forward at head dim 64, dk/dv reading K and V from shared memory, one
/// (head, batch) pair's tiles after another) give the bits of the default ones (two 16-row
/// tiles a warp, K and V in registers, the heaviest tiles of the grid first), forward and
/// backward: each row's operations run in the same order in all (causal, a window, a cache
/// offset with spare rows, T not a multiple of any block's rows, GQA). So do the occupancy
/// variants (`TC_D64_FWD`, `TC_D64_DQ`, `TC_D64_DKDV`: other launch bounds, 32-wide tiles).
#[test]
fn parity_bf16_attention_two_tiles_a_warp() {
    use ops::attention::cuda::{
        attention_backward_with, attention_with, tc_kernels, TC_D64_DKDV, TC_D64_DQ, TC_D64_FWD,
    };
    let Some(d) = dev() else { return };
    let mut r = Rng::new(seed());
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().as_f32().unwrap().to_vec();
    for (b, tq, tk, s, h, kvh, window) in
        [(2, 130, 130, 130, 4, 2, None), (1, 300, 300, 300, 8, 2, Some(70)), (1, 70, 200, 210, 4, 1, None)]
    {
        let dm = ops::attention::AttnDims { b, tq, tk, s, h, kvh, d: 64, window };
        let q = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let k = upb(&randn(&mut r, &[b, s, kvh, 64], 1.0), d);
        let v = upb(&randn(&mut r, &[b, s, kvh, 64], 1.0), d);
        let dout = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let run = |forms: ops::attention::cuda::TcForms| {
            let [fwd, dq, dkdv] = tc_kernels(64, forms, false);
            let (o, l) = attention_with(&q, &k, &v, dm, 0.125, &fwd, None).unwrap();
            let (gq, gk, gv) =
                attention_backward_with(&q, &k, &v, &o, &l, &dout, dm, 0.125, (&dq, &dkdv), None).unwrap();
            [host(&o), host(&l), host(&gq), host(&gk), host(&gv)]
        };
        let base = run(ops::attention::cuda::TcForms { pc: Some(3), ..Default::default() });
        let mut others = vec![(
            "one tile, dk/dv from shared memory, one pair a chunk".to_string(),
            ops::attention::cuda::TcForms { one_tile_fwd: true, dkdv_smem: true, pc: Some(1), ..Default::default() },
        )];
        let n = [TC_D64_FWD.len(), TC_D64_DQ.len(), TC_D64_DKDV.len()].into_iter().max().unwrap_or(0);
        for i in 0..n {
            let (f, q_, kv) = (TC_D64_FWD.get(i), TC_D64_DQ.get(i), TC_D64_DKDV.get(i));
            let names: Vec<&str> = [f, q_, kv].iter().flatten().map(|t| t.name).collect();
            others.push((
                names.join(" "),
                ops::attention::cuda::TcForms { fwd: f, dq: q_, dkdv: kv, ..Default::default() },
            ));
        }
        let label = format!("b{b} q{tq} k{tk} s{s} h{h}/{kvh} w{window:?}");
        for (form, forms) in others {
            let two = run(forms);
            for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                let n = base[i].iter().zip(&two[i]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(n, 0, "{label} {form}: {what} differs in {n} of {} values", base[i].len());
            }
        }
    }
}

/// The dS path (`TcForms::ds`, the default for training at head dim 64: dk/dv stores each
/// tile's dS, dq is one product a tile from it) against the three-product dq kernel on the
/// same inputs: out, lse, dk and dv bit for bit (the same kernels, delta from its own kernel in
/// the same order), dq within a few flipped bf16 roundings, and bit for bit where the keys start at 0 (causal,
/// no window, no packing: the same 16-key sums in the same order); every form (dq one or two
/// tiles a warp, dk/dv storing its words itself or staged and bulk-copied) alike. Causal with T not a
/// multiple of 64 (an odd number of 64-query tiles, so a 128-row dq block with one tile past
/// the end), GQA, a window, packed rows (examples shorter than a tile, one crossing several),
/// and a cache offset (Tq ≠ Tk: the dS path declines and the default pair runs). dq with one
/// and with two 16-row tiles a warp. The buffers are poisoned (NaN), so a dS tile read that
/// dk/dv did not write shows.
#[test]
fn parity_bf16_attention_ds_path() {
    use ops::attention::cuda::{attention_backward_with, attention_with, packed_bounds, tc_kernels, DsForm, TcForms};
    let Some(d) = dev() else { return };
    let gpu = cuda::gpu(0).unwrap();
    let mut r = Rng::new(seed());
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().as_f32().unwrap().to_vec();
    for (b, tq, tk, h, kvh, window, lens) in [
        (2, 130, 130, 4, 2, None, None),
        (1, 256, 256, 8, 8, None, None),
        (1, 300, 300, 8, 2, Some(70), None),
        (2, 150, 150, 4, 2, None, Some(vec![5, 70, 1, 74])),
        (1, 300, 300, 8, 2, Some(40), Some(vec![100, 3, 130, 67])),
        (1, 70, 200, 4, 1, None, None),
        // The LoRA shape's grouping: 7 query heads a KV head (head splits of 2, 3 and 7 parts:
        // uneven, all parts non-empty).
        (1, 130, 130, 14, 2, None, None),
    ] {
        let dm = ops::attention::AttnDims { b, tq, tk, s: tk, h, kvh, d: 64, window };
        let q = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let k = upb(&randn(&mut r, &[b, tk, kvh, 64], 1.0), d);
        let v = upb(&randn(&mut r, &[b, tk, kvh, 64], 1.0), d);
        let dout = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let seg = lens.as_ref().map(|l| packed_segments(b, tq, l));
        let bounds = seg.as_ref().map(|s| packed_bounds(&gpu, DType::BF16, &dm, s).unwrap());
        let run = |forms: TcForms| {
            let [fwd, dq, dkdv] = tc_kernels(64, forms, false);
            let (o, l) = attention_with(&q, &k, &v, dm, 0.125, &fwd, bounds.as_deref()).unwrap();
            let (gq, gk, gv) =
                attention_backward_with(&q, &k, &v, &o, &l, &dout, dm, 0.125, (&dq, &dkdv), bounds.as_deref()).unwrap();
            [host(&o), host(&l), host(&gq), host(&gk), host(&gv)]
        };
        let base = run(TcForms::default());
        let label = format!("b{b} q{tq} k{tk} h{h}/{kvh} w{window:?} packed {lens:?}");
        let from_zero = window.is_none() && lens.is_none();
        for (form, forms) in [
            ("dS path", TcForms { ds: Some(DsForm::Plain), hsplit: 1, ..Default::default() }),
            ("dS path, dq one tile a warp", TcForms { ds: Some(DsForm::OneTile), hsplit: 1, ..Default::default() }),
            ("dS path, staged stores", TcForms { ds: Some(DsForm::Staged), hsplit: 1, ..Default::default() }),
        ] {
            let two = run(forms);
            for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                let n = base[i].iter().zip(&two[i]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                let (mut e, mut s) = (0f64, 0f64);
                for (a, b) in base[i].iter().zip(&two[i]) {
                    e += (*a as f64 - *b as f64).powi(2);
                    s += (*a as f64).powi(2);
                }
                let nmse = e / s.max(1e-300);
                println!("{label} {form}: {what} differs in {n} of {} values, NMSE {nmse:.3e}", base[i].len());
                if *what == "dq" && !from_zero {
                    // f32 sums in another grouping: a few bf16 roundings flip (one ulp, 2⁻⁸
                    // relative: ~1e-10 NMSE each in these sizes).
                    assert!(
                        nmse <= 1e-8 && n * 1000 <= base[i].len(),
                        "{label} {form}: dq NMSE {nmse:.3e}, {n} values differ, against the three-product kernel"
                    );
                } else {
                    assert_eq!(n, 0, "{label} {form}: {what} differs in {n} of {} values", base[i].len());
                }
            }
        }
        // dk/dv over parts of each GQA group's query heads (`hsplit`, f32 parts summed in part
        // order; 0: `auto_hsplit`, one head a part at these small grids): out, lse and dq bit
        // for bit the staged form's (dS tiles are per head, so unchanged), dk and dv within a few
        // flipped bf16 roundings (the f32 sums grouped by part).
        let staged = if h / kvh >= 2 {
            run(TcForms { ds: Some(DsForm::Staged), hsplit: 1, ..Default::default() })
        } else {
            continue;
        };
        for hsplit in [0usize, 2, 3, 7, 8] {
            let two = run(TcForms { ds: Some(DsForm::Staged), hsplit, ..Default::default() });
            for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                let n = staged[i].iter().zip(&two[i]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                let (mut e, mut s) = (0f64, 0f64);
                for (a, b) in staged[i].iter().zip(&two[i]) {
                    e += (*a as f64 - *b as f64).powi(2);
                    s += (*a as f64).powi(2);
                }
                let nmse = e / s.max(1e-300);
                println!(
                    "{label} head split {hsplit}: {what} differs in {n} of {} values, NMSE {nmse:.3e}",
                    staged[i].len()
                );
                if i >= 3 {
                    assert!(
                        nmse <= 1e-5,
                        "{label} head split {hsplit}: {what} NMSE {nmse:.3e} against one block a KV head"
                    );
                } else {
                    assert_eq!(
                        n,
                        0,
                        "{label} head split {hsplit}: {what} differs in {n} of {} values",
                        staged[i].len()
                    );
                }
            }
        }
    }
}

/// The device and its GPU when it is a Hopper (compute capability 9.0, which `wgmma` needs);
/// otherwise the test skips, saying so.
fn hopper() -> Option<(Device, std::sync::Arc<cuda::Gpu>)> {
    let d = dev()?;
    let gpu = cuda::gpu(0).unwrap();
    if gpu.arch != (9, 0) {
        smelt_testing::skip(
            smelt_testing::Need::Gpu,
            format!("wgmma needs compute capability 9.0, this GPU has {:?}", gpu.arch),
        );
        return None;
    }
    Some((d, gpu))
}

/// The two shared-memory operand layouts of the Hopper `wgmma` attention kernels
/// (attention_tc.cu "Hopper": B K-major for S = A·Bᵀ, B N-major for O += P·M) on one
/// m64n64k16 product against the f64 product of the same bf16 values, then the wgmma forward,
/// dq and dk/dv against the mma.sync kernels on the same inputs (causal, a window, a cache
/// offset with spare rows, GQA; a different f32 summation inside the tensor cores, so within
/// ATTN_TC of each other, not bit for bit; `parity_bf16_attention_tensor_cores` bounds the
/// default kernels, wgmma on Hopper, against the CPU). The kernels are known to fail that
/// comparison: it is reported, and fails the test only under SMELT_CUDA_ATTN_WG=1 (see the end).
/// Compute capability 9.0 only (skips elsewhere, saying so).
#[test]
fn parity_wgmma_attention_layouts_and_kernels() {
    use ops::attention::cuda::{attention_backward_with, attention_with, tc_kernels, TcForms, WG_MODULE, WG_SRC};
    let Some((d, gpu)) = hopper() else { return };
    let mut r = Rng::new(seed());
    let a = randn(&mut r, &[64, 16], 1.0).to_dtype(DType::BF16).unwrap();
    let bt = randn(&mut r, &[64, 16], 1.0).to_dtype(DType::BF16).unwrap();
    let af = a.to_dtype(DType::F32).unwrap().as_f32().unwrap().to_vec();
    let bf_ = bt.to_dtype(DType::F32).unwrap().as_f32().unwrap().to_vec();
    let ad = a.to_device(d).unwrap();
    let bd = bt.to_device(d).unwrap();
    let out = cuda::DeviceBuf::alloc(&gpu, DType::F32, 2 * 4096).unwrap();
    {
        use cudarc::driver::{LaunchConfig, PushKernelArg};
        let f = gpu.function(WG_MODULE, WG_SRC, "attn_wg_probe").unwrap();
        let (ab, bb) = (ad.cuda_buf().unwrap(), bd.cuda_buf().unwrap());
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&ab.data).arg(&bb.data).arg(&out.data);
        let c = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(c) }.unwrap();
    }
    let got = Tensor::from_device_buf(out, &[2, 4096]).unwrap().to_device(Device::Cpu).unwrap();
    let got = got.as_f32().unwrap();
    for (which, name) in [(0, "B K-major"), (1, "B N-major")] {
        let (mut worst, mut at) = (0f64, (0, 0));
        for i in 0..64 {
            for n in 0..64 {
                let want: f64 = (0..16).map(|k| af[i * 16 + k] as f64 * bf_[n * 16 + k] as f64).sum();
                let e = (got[which * 4096 + i * 64 + n] as f64 - want).abs() / (1.0 + want.abs());
                if e > worst {
                    (worst, at) = (e, (i, n));
                }
            }
        }
        println!("wgmma m64n64k16, {name}: worst relative error {worst:.2e} at row {} col {}", at.0, at.1);
        assert!(worst < 1e-5, "wgmma with {name}: row {} col {} is off by {worst:.2e}", at.0, at.1);
    }
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let mut failed = Vec::new();
    for (b, tq, tk, s, h, kvh, window) in
        [(2, 130, 130, 130, 4, 2, None), (1, 300, 300, 300, 8, 2, Some(70)), (1, 70, 200, 210, 4, 1, None)]
    {
        let dm = ops::attention::AttnDims { b, tq, tk, s, h, kvh, d: 64, window };
        let q = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let k = upb(&randn(&mut r, &[b, s, kvh, 64], 1.0), d);
        let v = upb(&randn(&mut r, &[b, s, kvh, 64], 1.0), d);
        let dout = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let run = |wgmma: bool| {
            let [fwd, dq, dkdv] = tc_kernels(64, TcForms { wgmma, ..Default::default() }, true);
            let (o, l) = attention_with(&q, &k, &v, dm, 0.125, &fwd, None).unwrap();
            let (gq, gk, gv) =
                attention_backward_with(&q, &k, &v, &o, &l, &dout, dm, 0.125, (&dq, &dkdv), None).unwrap();
            [host(&o), host(&l), host(&gq), host(&gk), host(&gv)]
        };
        let (mma, wg) = (run(false), run(true));
        let label = format!("b{b} q{tq} k{tk} s{s} h{h}/{kvh} w{window:?}");
        for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
            // every comparison before any fails: one run reports on all three kernels
            let l = format!("{label}: {what} wgmma vs mma.sync");
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| close(&l, &wg[i], &mma[i], ATTN_TC)));
            if res.is_err() {
                failed.push(l);
            }
        }
    }
    // The synchronous wgmma kernels are known to be wrong (docs/CUDA.md: the forward's rows that
    // see more than one key tile; 15 of 15 comparisons failed on the H200 on 2026-12-05) and run
    // only under SMELT_CUDA_ATTN_WG=1, which warns. Their comparisons are reported above every
    // run; they fail this test only when that variable asks for the kernels, so the suite
    // stays a signal for what runs by default (the operand layouts above are always checked).
    if !failed.is_empty() {
        let on = std::env::var("SMELT_CUDA_ATTN_WG").is_ok_and(|v| v == "1");
        println!(
            "KNOWN BROKEN: the synchronous wgmma kernels (SMELT_CUDA_ATTN_WG=1, off by default): {} comparisons failed{}",
            failed.len(),
            if on { "" } else { " (not failing the test: SMELT_CUDA_ATTN_WG=1 makes it fail)" }
        );
        assert!(!on, "{} comparisons failed: {}", failed.len(), failed.join("; "));
    }
}

/// The pipelined `wgmma` kernels (attention_wg.cu's wgp_fwd, wgp_dq, wgp_dkdv: WG_D64_FWD,
/// WG_D64_DQ, WG_D64_DKDV, one to three warpgroups a block sharing the streamed tiles) against
/// the default mma.sync kernels on the same bf16 inputs: out, lse, dq, dk, dv within ATTN_TC
/// (the tensor cores sum each k16 step in their own order), at T up to 1030 (many tiles),
/// windows, GQA, a cache offset and rows past the end of the last block (a whole warpgroup of
/// them at T 130 and 1030). Every comparison is made before any fails, so one run reports on
/// every kernel. Compute capability 9.0 only (skips elsewhere, saying so).
#[test]
fn parity_wgmma_pipelined_kernels() {
    use ops::attention::cuda::{
        attention_backward_with, attention_with, tc_kernels, TcForms, WG_D64_DKDV, WG_D64_DQ, WG_D64_FWD,
    };
    let Some((d, _)) = hopper() else { return };
    let mut r = Rng::new(seed());
    let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let mut failed = Vec::new();
    let mut check = |label: String, got: &Tensor, want: &Tensor| {
        let res =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| close(&label, &host(got), &host(want), ATTN_TC)));
        if res.is_err() {
            failed.push(label);
        }
    };
    // The pipelined forwards and dk/dv (WG_D64_FWD, WG_D64_DKDV: one to three warpgroups a
    // block sharing the streamed tiles) against the mma.sync kernels: many tiles, rows past the end of the last block
    // (a whole warpgroup of them at T 130 and 1030), windows, GQA, a cache offset.
    for (b, tq, tk, s, h, kvh, window) in [
        (1, 40, 40, 40, 2, 1, None), // one key tile at every width: the pipelines' peeled last tile alone
        (2, 130, 130, 130, 4, 2, None),
        (1, 300, 300, 300, 8, 2, Some(70)),
        (1, 70, 200, 210, 4, 1, None),
        (1, 1030, 1030, 1030, 2, 1, None),
        (2, 1000, 1000, 1000, 3, 3, Some(333)),
    ] {
        let dm = ops::attention::AttnDims { b, tq, tk, s, h, kvh, d: 64, window };
        let q = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let k = upb(&randn(&mut r, &[b, s, kvh, 64], 1.0), d);
        let v = upb(&randn(&mut r, &[b, s, kvh, 64], 1.0), d);
        let [mma, _, _] = tc_kernels(64, TcForms::default(), true);
        let (om, lm) = attention_with(&q, &k, &v, dm, 0.125, &mma, None).unwrap();
        let label = format!("b{b} q{tq} k{tk} s{s} h{h}/{kvh} w{window:?}");
        for w in WG_D64_FWD {
            let [fwd, _, _] = tc_kernels(64, TcForms { wg_fwd: Some(w), ..Default::default() }, true);
            assert_eq!(fwd.name, w.name);
            // Named before the launch: a kernel that traps (wgw_fwd's mbarrier waits) loses the
            // context, and every later call fails with it.
            println!("{label}: {}", w.name);
            let (o, l) = attention_with(&q, &k, &v, dm, 0.125, &fwd, None).unwrap();
            check(format!("{label}: out {} vs mma.sync", w.name), &o, &om);
            check(format!("{label}: lse {} vs mma.sync", w.name), &l, &lm);
        }
        let dout = upb(&randn(&mut r, &[b, tq, h, 64], 1.0), d);
        let [_, dq, dkdv] = tc_kernels(64, TcForms::default(), true);
        let (gqm, gkm, gvm) =
            attention_backward_with(&q, &k, &v, &om, &lm, &dout, dm, 0.125, (&dq, &dkdv), None).unwrap();
        for w in WG_D64_DKDV {
            let [_, dq, dkdv] = tc_kernels(64, TcForms { wg_dkdv: Some(w), ..Default::default() }, true);
            assert_eq!(dkdv.name, w.name);
            println!("{label}: {}", w.name); // named before the launch, as the forwards
            let (gq, gk, gv) =
                attention_backward_with(&q, &k, &v, &om, &lm, &dout, dm, 0.125, (&dq, &dkdv), None).unwrap();
            check(format!("{label}: dk {} vs mma.sync", w.name), &gk, &gkm);
            check(format!("{label}: dv {} vs mma.sync", w.name), &gv, &gvm);
            if w.ds {
                // The dS path's dq reads the dS tiles this dk/dv stored (Tq = Tk; otherwise both
                // fall back to the default pair).
                check(format!("{label}: dq from {}'s dS vs mma.sync", w.name), &gq, &gqm);
            }
        }
        for w in WG_D64_DQ {
            let [_, dq, dkdv] = tc_kernels(64, TcForms { wg_dq: Some(w), ..Default::default() }, true);
            assert_eq!(dq.name, w.name);
            let (gq, gk, gv) =
                attention_backward_with(&q, &k, &v, &om, &lm, &dout, dm, 0.125, (&dq, &dkdv), None).unwrap();
            check(format!("{label}: dq {} vs mma.sync", w.name), &gq, &gqm);
            // dk/dv read the delta this dq kernel stored
            check(format!("{label}: dk after {}", w.name), &gk, &gkm);
            check(format!("{label}: dv after {}", w.name), &gv, &gvm);
        }
    }
    assert!(failed.is_empty(), "{} comparisons failed: {}", failed.len(), failed.join("; "));
}
