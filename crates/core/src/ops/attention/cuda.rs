//! CUDA launchers for flash-style attention: forward with logsumexp, backward as three
//! launches (delta = rowsum(dO∘O), dq, then dk/dv; two on tensor cores, where the dq kernel
//! computes delta). In training on tensor cores at head dim 64 (Tq = Tk) the backward takes
//! the dS path instead: delta, then dk/dv storing every tile's dS (bf16, the causal triangle
//! of 64 × 64 tiles, about B·H·T²/2 values), then dq as one product a tile from it
//! (`SMELT_CUDA_ATTN_DS=0` keeps the three-product dq kernel; measured on the H200: the 1B
//! step 229 → 221 ms). q, k, v (a KV cache
//! included), the output and every gradient share one dtype, f32 or bf16; lse is f32.
//!
//! Two kernel families: bf16 at head dim 64 or 128 runs on tensor cores (attention_tc.cu,
//! FlashAttention-2 tiling with mma.sync); f32 (the exactness mode) and other head dims (80,
//! 96, …) run the scalar kernels of attention.cu. `SMELT_CUDA_ATTN=scalar` forces the scalar
//! kernels for bf16 too (to measure one against the other).

use super::{AttnDims, Heads, PagedRows, Segments};
use crate::cuda::{self, DeviceBuf};
use crate::ops::Pos;
use crate::{DType, Tensor};
use anyhow::{bail, Result};
use cudarc::driver::{sys, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

pub(crate) const SRC: &str = include_str!("attention.cu");
pub(crate) const TC_SRC: &str = include_str!("attention_tc.cu");
/// attention_tc.cu followed by the Hopper (`wgmma`) kernels: one module compiled for sm_90a.
pub(crate) const WG_SRC: &str = concat!(include_str!("attention_tc.cu"), "\n", include_str!("attention_wg.cu"));
/// The module name of WG_SRC (the `_sm90a` suffix selects the compute_90a target).
pub(crate) const WG_MODULE: &str = "attention_tc_sm90a";
pub(crate) const DEC_SRC: &str = include_str!("decode.cu");
pub(crate) const PAGED_SRC: &str = include_str!("paged.cu");

const ROWS: usize = 8;
const TILE: usize = 32;

/// Rows per block of the tensor-core kernels (4 warps × 16).
const TC_ROWS: usize = 64;

/// One tensor-core kernel: its name in attention_tc.cu, the rows a block owns (64 · its 16-row
/// tiles a warp), the width of the tile of the other side it streams (keys for the forward
/// and dq, queries for dk/dv) and the (head, batch) pairs a chunk of its block order spans
/// (`tc_tile` in attention_tc.cu; `i32::MAX`: the whole grid heaviest tiles first).
#[derive(Clone, Debug)]
pub(crate) struct TcKernel {
    pub name: String,
    pub rows: usize,
    pub tile: usize,
    pub pc: i32,
    /// A Hopper `wgmma` kernel (attention_wg.cu, module WG_MODULE): compute capability 9.0
    /// only; its streamed tiles are stored without padding (core matrices).
    pub wg: bool,
    /// Threads a block: 128, or 128 per warpgroup of a pipelined wgmma kernel (`WG_D64_FWD`).
    pub threads: u32,
    /// Buffers of each streamed tile: 2, or a pipelined wgmma kernel's (`WgVariant::bufs`).
    pub bufs: usize,
    /// One of the dS path's pair (`DS_DKDV`, `DS_DQ`): dk/dv that stores dS, dq that reads it.
    pub ds: bool,
    /// The dS path's dk/dv: blocks a GQA group's query heads are split over (1: one block a KV
    /// head; more: f32 parts summed by `attn_tc_dkdv_sum`). `SMELT_CUDA_ATTN_HSPLIT`.
    pub hsplit: usize,
    /// A forward whose K and V tiles come by TMA (`WgVariant::tma`): the launch appends the
    /// two tensor maps (`tma_maps`) to the arguments.
    pub tma: bool,
    /// A persistent forward (`WgVariant::persistent`).
    pub persistent: bool,
}

/// Which forms of the tensor-core kernels run (every choice gives the same bits; the
/// alternatives are kept to time one against the other in one run and for the parity test).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TcForms {
    /// The one-tile forward at head dim 64 (`SMELT_CUDA_ATTN_MT=1`).
    pub one_tile_fwd: bool,
    /// At head dim 64, dk/dv as `attn_tc_dkdv0_d64` (`SMELT_CUDA_ATTN_DKDV=smem`: K and V from
    /// shared memory, no register cap) instead of the default `attn_tc_dkdv0b3_d64`.
    pub dkdv_smem: bool,
    /// (head, batch) pairs per chunk of the block order (`SMELT_CUDA_ATTN_PC`; None: all).
    pub pc: Option<usize>,
    /// At head dim 64, one of `TC_D64_FWD`, `TC_D64_DQ`, `TC_D64_DKDV` in place of the forward, dq or dk/dv kernel
    /// (`SMELT_CUDA_ATTN_FWD`, `SMELT_CUDA_ATTN_DQ`, `SMELT_CUDA_ATTN_DKDV` = its name).
    pub fwd: Option<&'static TcVariant>,
    pub dq: Option<&'static TcVariant>,
    pub dkdv: Option<&'static TcVariant>,
    /// On Hopper at head dim 64, the `wgmma` forms of attention_wg.cu (`SMELT_CUDA_ATTN_WG=1`;
    /// experimental, off by default until the GPU parity tests pass).
    pub wgmma: bool,
    /// On Hopper at head dim 64, one of `WG_D64_FWD` as the forward (`SMELT_CUDA_ATTN_FWD` = its
    /// name; ignored with a warning elsewhere). Experimental, as `wgmma`.
    pub wg_fwd: Option<&'static WgVariant>,
    /// The same for dk/dv: one of `WG_D64_DKDV` (`SMELT_CUDA_ATTN_DKDV` = its name).
    pub wg_dkdv: Option<&'static WgVariant>,
    /// The same for dq: one of `WG_D64_DQ` (`SMELT_CUDA_ATTN_DQ` = its name).
    pub wg_dq: Option<&'static WgVariant>,
    /// At head dim 64 with no other backward kernel named, the dS path in one of its forms:
    /// `Staged` by default (measured fastest), `SMELT_CUDA_ATTN_DS=1` or `1tile` the others,
    /// `SMELT_CUDA_ATTN_DS=0` none (the three-product dq kernel, to compare).
    pub ds: Option<DsForm>,
    /// On Hopper at head dim 64, the dS path's dk/dv on wgmma (`WG_DS_DKDV`) when no backward
    /// kernel is named and the dS path is in its default form; `SMELT_CUDA_ATTN_WGDS=0` keeps
    /// the mma.sync one.
    pub wg_ds: bool,
    /// The dS path's dk/dv over parts of each GQA group's query heads (`SMELT_CUDA_ATTN_HSPLIT=N`;
    /// 1: one block a KV head; at most the group's size). 0 (the default): `auto_hsplit` picks.
    pub hsplit: usize,
}

/// The dS path's dk/dv parts when none is named: one query head a part when the unsplit grid
/// (`blocks`: key tiles × KV heads × batch) fills fewer than 4 waves of the blocks the GPU holds
/// at once (`resident`), else one block a KV head. A wide group over few key tiles is otherwise
/// a grid of a wave or so whose end waits on its longest blocks: at issue 16's LoRA shape
/// (Qwen2.5-0.5B, 14 heads over 2 KV heads, 8 × 2048: 512 blocks against 396 resident on an
/// H100) 7 parts measured +2% a step (114.0-114.3k → 116.6k tok/s, H100, 2026-12-05); at 1B
/// (4 heads a group, 2,048 blocks) 2 parts measured the same as 1, so 1 stays there.
pub(crate) fn auto_hsplit(blocks: usize, resident: usize, grp: usize) -> usize {
    if grp > 1 && blocks < 4 * resident {
        grp
    } else {
        1
    }
}

/// The dS path's forms (attention_tc.cu, tc_dkdv's DS and tc_dq_ds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DsForm {
    /// dk/dv's lanes store their dS words themselves; dq two 16-row tiles a warp.
    Plain,
    /// As Plain, dq one 16-row tile a warp (the same bits).
    OneTile,
    /// dk/dv stages each warp's dS rows in shared memory (stmatrix, swizzled) and copies them
    /// out in one bulk copy (Hopper; elsewhere the lanes store the swizzled words); dq reads
    /// the swizzled tiles (the same bits as Plain).
    Staged,
}

/// The dS path's delta kernel (RW = DS_DELTA_ROWS rows a warp), its dk/dv kernels (Plain,
/// Staged: the default dk/dv's code and launch bounds plus the stores) and dq kernels (two
/// 16-row tiles a warp, one, two reading swizzled tiles), head dim 64 (attention_tc.cu, end).
const DS_DELTA: &str = "attn_tc_delta_d64";
const DS_DKDV: [&str; 2] = ["attn_tc_dkdvds_d64", "attn_tc_dkdvdsb_d64"];
const DS_DQ: [&str; 3] = ["attn_tc_dqds_d64", "attn_tc_dqds1_d64", "attn_tc_dqdsz_d64"];
/// Shared memory the staged dk/dv takes past its tiles: a 2 KiB stage for each of its 4 warps.
const DS_STAGE: usize = 4 * 16 * 64 * 2;
/// Rows a warp of attn_tc_delta_d64 takes (RW there).
const DS_DELTA_ROWS: usize = 4;
/// Blocks of 256 threads an SM the delta kernel is given (it loops over the rows): a full SM.
const DELTA_BLOCKS_PER_SM: usize = 8;
/// The dS tiles' side (DS_T there).
const DS_T: usize = 64;

/// A pipelined `wgmma` kernel of attention_wg.cu (module WG_MODULE): its name, rows a block
/// (64 a warpgroup), threads a block and buffers of each streamed tile (the depth of its copy
/// pipeline; the `wgps` forms are one stage shallower than the `wgp` ones).
#[derive(Debug)]
pub(crate) struct WgVariant {
    pub name: &'static str,
    pub rows: usize,
    pub threads: u32,
    pub bufs: usize,
    /// Rows of a streamed tile (keys in the forward): 64, or 128 for the `wgpn` forwards.
    pub tile: usize,
    /// K and V tiles loaded by TMA (the `wgwt` forwards): the kernel takes two tensor maps last.
    pub tma: bool,
    /// Persistent (the `wgwq` forwards, TMA too): about one block an SM loops over the query
    /// tiles; the kernel takes the grid's query tiles and batches after `pc`, two Q buffers.
    pub persistent: bool,
    /// A dk/dv kernel of the dS path (`attn_wgtds_dkdv_d64`): naming it takes the dS pair with
    /// `attn_tc_dqdsz_d64` as dq.
    pub ds: bool,
}
const fn wv(name: &'static str, rows: usize, bufs: usize) -> WgVariant {
    WgVariant { name, rows, threads: 2 * rows as u32, bufs, tile: 64, tma: false, persistent: false, ds: false }
}
pub(crate) const WG_D64_FWD: &[WgVariant] = &[
    wv("attn_wgp_fwd_d64", 128, 3),
    wv("attn_wgps_fwd_d64", 128, 2),
    wv("attn_wgp3_fwd_d64", 192, 3),
    wv("attn_wgp1_fwd_d64", 64, 3),
    wv("attn_wgp1b3_fwd_d64", 64, 3),
    WgVariant { tile: 128, ..wv("attn_wgpn_fwd_d64", 128, 3) },
    WgVariant { tile: 128, ..wv("attn_wgpn1_fwd_d64", 64, 3) },
    wv("attn_wgpz_fwd_d64", 128, 3),
    WgVariant { tile: 128, ..wv("attn_wgpzn_fwd_d64", 128, 3) },
    // Two computing warpgroups and a copying warp (attention_wg.cu's wgw_fwd).
    WgVariant { threads: 288, ..wv("attn_wgw_fwd_d64", 128, 4) },
    WgVariant { threads: 288, ..wv("attn_wgwp_fwd_d64", 128, 4) },
    WgVariant { threads: 288, tma: true, ..wv("attn_wgwt_fwd_d64", 128, 4) },
    WgVariant { threads: 288, tma: true, ..wv("attn_wgwtp_fwd_d64", 128, 4) },
    WgVariant { threads: 416, tma: true, ..wv("attn_wgwt3_fwd_d64", 192, 4) },
    // The same, end-aligned blocks: the short one first (attention_wg.cu's EA). Not yet run.
    WgVariant { threads: 416, tma: true, ..wv("attn_wgwt3e_fwd_d64", 192, 4) },
    // One computing warpgroup, three blocks an SM. Not yet run.
    WgVariant { threads: 160, tma: true, ..wv("attn_wgwt1_fwd_d64", 64, 3) },
    WgVariant { threads: 288, tma: true, persistent: true, ..wv("attn_wgwq_fwd_d64", 128, 4) },
    WgVariant { threads: 416, tma: true, persistent: true, ..wv("attn_wgwq3_fwd_d64", 192, 4) },
    WgVariant { threads: 288, tile: 128, ..wv("attn_wgwn_fwd_d64", 128, 3) },
    WgVariant { threads: 288, tile: 128, ..wv("attn_wgwnp_fwd_d64", 128, 3) },
];
/// The pipelined `wgmma` dq kernels.
pub(crate) const WG_D64_DQ: &[WgVariant] = &[
    wv("attn_wgp_dq_d64", 128, 4),
    wv("attn_wgps_dq_d64", 128, 3),
    wv("attn_wgp1_dq_d64", 64, 4),
    wv("attn_wgpz_dq_d64", 128, 4),
];
/// The pipelined `wgmma` dk/dv kernels.
pub(crate) const WG_D64_DKDV: &[WgVariant] = &[
    wv("attn_wgp_dkdv_d64", 128, 4),
    wv("attn_wgps_dkdv_d64", 128, 3),
    wv("attn_wgp1_dkdv_d64", 64, 4),
    wv("attn_wgpz_dkdv_d64", 128, 4),
    WgVariant { tma: true, ds: true, ..wv("attn_wgtds_dkdv_d64", 128, 4) },
    // One warpgroup a block, two blocks an SM. Not yet run.
    WgVariant { tma: true, ds: true, ..wv("attn_wgtds1_dkdv_d64", 64, 4) },
];

/// A kernel of attention_tc.cu's other instantiations at head dim 64: its name, rows a block
/// and streamed tile width. Every one gives the bits of the default for its pass (the test
/// `attention_tensor_core_forms_give_identical_bits` checks each).
#[derive(Debug)]
pub(crate) struct TcVariant {
    pub name: &'static str,
    pub rows: usize,
    pub tile: usize,
}
const fn tv(name: &'static str, rows: usize, tile: usize) -> TcVariant {
    TcVariant { name, rows, tile }
}
pub(crate) const TC_D64_FWD: &[TcVariant] = &[tv("attn_tc_fwd1b3_d64", 64, 64), tv("attn_tc_fwd1b4_d64", 64, 64)];
pub(crate) const TC_D64_DQ: &[TcVariant] =
    &[tv("attn_tc_dq_d64", 64, 64), tv("attn_tc_dqk32_d64", 64, 32), tv("attn_tc_dqk32b3_d64", 64, 32)];
pub(crate) const TC_D64_DKDV: &[TcVariant] = &[
    tv("attn_tc_dkdv_d64", 64, 64),
    tv("attn_tc_dkdvb3_d64", 64, 64),
    tv("attn_tc_dkdvq32_d64", 64, 32),
    tv("attn_tc_dkdvq32b3_d64", 64, 32),
    tv("attn_tc_dkdvq32b4_d64", 64, 32),
];

/// The forward, dq and dk/dv kernels for head dim `d`, as instantiated at the end of
/// attention_tc.cu: the forward with two 16-row tiles a warp at head dim 64, one at 128 (two
/// would not fit the registers); the backward with one (two measured slower). At head dim 64
/// the backward's kernels are capped in registers for more resident blocks (measured on the
/// H200, 2026-12-04: dk/dv reading K and V from shared memory at 3 blocks an SM 24.0 ms against
/// 26.2 for K and V in registers at 2, dq with 32-key tiles at 4 blocks 17.1 against 17.6, 1B
/// shape; the large preset likewise); the earlier forms stay as variants. On Hopper (`hopper`:
/// compute capability 9.0) at head dim 64 with `f.wgmma`, the `wgmma` forms of attention_wg.cu.
pub(crate) fn tc_kernels(d: usize, f: TcForms, hopper: bool) -> [TcKernel; 3] {
    let mut ks = tc_kernel_forms(d, f, hopper);
    if f.pc.is_none() {
        ks[1].pc = BWD_PC;
        ks[2].pc = BWD_PC;
    }
    ks
}

/// The backward kernels' block order by default: the heaviest tiles first within chunks of 64
/// (head, batch) pairs, not across the whole grid as the forward. dk/dv re-reads a pair's Q and
/// dO for every key tile; with the whole grid's heaviest tiles first, those reads of one pair
/// run waves apart and miss L2 (ncu, large preset, H100: DRAM 64% busy, L2 hit rate 66%).
/// Measured 2026-12-05 on an H100 (`bench/attn_vs_torch.py`, backward ms, whole grid → 64):
/// 124M 0.434 → 0.421, large 0.570 → 0.545, 1B 1.742 → 1.724, LoRA 0.849 → 0.850; chunks of 4
/// and 16 were slower, 32 level with 64. `SMELT_CUDA_ATTN_PC` sets every kernel's.
const BWD_PC: i32 = 64;

fn tc_kernel_forms(d: usize, f: TcForms, hopper: bool) -> [TcKernel; 3] {
    let pc = f.pc.map_or(i32::MAX, |p| p.clamp(1, i32::MAX as usize) as i32);
    let k = |name: String, rows: usize, tile: usize| TcKernel {
        name,
        rows,
        tile,
        pc,
        wg: false,
        threads: 128,
        bufs: 2,
        ds: false,
        hsplit: 1,
        tma: false,
        persistent: false,
    };
    if hopper && d == 64 && f.wgmma {
        let w = |name: &str| TcKernel { wg: true, ..k(name.into(), TC_ROWS, 64) };
        return [w("attn_wg_fwd_d64"), w("attn_wg_dq_d64"), w("attn_wg_dkdv_d64")];
    }
    let fwd = match (d, f.one_tile_fwd) {
        (64, false) => k("attn_tc_fwd_d64".into(), 2 * TC_ROWS, 64),
        (64, true) => k("attn_tc_fwd1_d64".into(), TC_ROWS, 64),
        _ => k(format!("attn_tc_fwd_d{d}"), TC_ROWS, 64),
    };
    let (dq, dkdv) = match (d, f.dkdv_smem) {
        (64, false) => (k("attn_tc_dqk32b4_d64".into(), TC_ROWS, 32), k("attn_tc_dkdv0b3_d64".into(), TC_ROWS, 64)),
        (64, true) => (k("attn_tc_dqk32b4_d64".into(), TC_ROWS, 32), k("attn_tc_dkdv0_d64".into(), TC_ROWS, 64)),
        _ => (k(format!("attn_tc_dq_d{d}"), TC_ROWS, 32), k(format!("attn_tc_dkdv_d{d}"), TC_ROWS, 32)),
    };
    // A wgmma kernel as its table declares it.
    let wgk = |w: &WgVariant| {
        let k = k(w.name.into(), w.rows, w.tile);
        TcKernel { wg: true, threads: w.threads, bufs: w.bufs, tma: w.tma, persistent: w.persistent, ..k }
    };
    // A named pipelined wgmma kernel (Hopper only), else a named mma.sync one, else the default.
    let pick = |w: Option<&WgVariant>, v: Option<&TcVariant>, dflt: TcKernel| match (d, w, v) {
        (64, Some(w), _) if hopper => wgk(w),
        (64, _, Some(v)) => k(v.name.into(), v.rows, v.tile),
        _ => dflt,
    };
    // A dS-path wgmma dk/dv (Hopper): the dS pair with the swizzled dq. hsplit 0: the head split
    // `auto_hsplit` picks, as for the mma.sync dS dk/dv.
    let wg_ds = |w: &WgVariant| {
        let dkdv = TcKernel { ds: true, hsplit: f.hsplit, ..wgk(w) };
        [pick(f.wg_fwd, f.fwd, fwd.clone()), TcKernel { ds: true, ..k(DS_DQ[2].into(), 2 * TC_ROWS, DS_T) }, dkdv]
    };
    if let (64, Some(w), true) = (d, f.wg_dkdv, hopper) {
        if w.ds {
            // (Naming it takes the dS path whatever SMELT_CUDA_ATTN_DS says.)
            return wg_ds(w);
        }
    }
    let named = f.dq.is_some() || f.dkdv.is_some() || f.wg_dq.is_some() || f.wg_dkdv.is_some() || f.dkdv_smem;
    if let (64, Some(DsForm::Staged), false, true, true) = (d, f.ds, named, hopper, f.wg_ds) {
        // The default dS path on Hopper: dk/dv on wgmma (`WG_DS_DKDV`).
        if let Some(w) = WG_D64_DKDV.iter().find(|w| w.name == WG_DS_DKDV) {
            return wg_ds(w);
        }
    }
    if let (64, Some(form), false) = (d, f.ds, named) {
        let (dq, dkdv) = match form {
            DsForm::Plain => (k(DS_DQ[0].into(), 2 * TC_ROWS, DS_T), DS_DKDV[0]),
            DsForm::OneTile => (k(DS_DQ[1].into(), TC_ROWS, DS_T), DS_DKDV[0]),
            DsForm::Staged => (k(DS_DQ[2].into(), 2 * TC_ROWS, DS_T), DS_DKDV[1]),
        };
        return [
            pick(f.wg_fwd, f.fwd, fwd),
            TcKernel { ds: true, ..dq },
            TcKernel { ds: true, hsplit: f.hsplit, ..k(dkdv.into(), TC_ROWS, DS_T) },
        ];
    }
    [pick(f.wg_fwd, f.fwd, fwd), pick(f.wg_dq, f.dq, dq), pick(f.wg_dkdv, f.dkdv, dkdv)]
}

/// `tc_kernels` as the environment picks them, for the GPU `t` lives on.
fn default_tc_kernels(d: usize, t: &Tensor) -> [TcKernel; 3] {
    let mut forms = env_forms();
    let hopper = t.cuda_buf().is_ok_and(|b| b.gpu.arch == (9, 0));
    warn_forms(forms, hopper);
    forms.wg_ds = forms.wg_ds && hopper && d == 64 && t.cuda_buf().is_ok_and(|b| wg_defaults_wanted(b, d));
    tc_kernels(d, forms, hopper)
}

/// Whether the tensor-core kernels run for this buffer at head dim `d` (bf16, unless
/// `SMELT_CUDA_ATTN=scalar`) and the wgmma defaults built: an f32 model never compiles them.
fn wg_defaults_wanted(b: &DeviceBuf, d: usize) -> bool {
    uses_tensor_cores(&b.gpu, b.dtype, d) && wg_defaults_ok(&b.gpu)
}

/// Whether the wgmma kernels a default would pick (`WG_DS_DKDV`, `WG3_FWD`) build on this GPU's
/// NVRTC: the sm90a module is compiled once, here, and if it fails (an NVRTC that refuses its
/// source; 2026-12-05 one did, for a construct another version took) the mma.sync kernels run,
/// with a warning that says why, rather than every training step failing. A kernel named by
/// `SMELT_CUDA_ATTN_*` is not covered: its launch fails with the compiler's error.
fn wg_defaults_ok(gpu: &cuda::Gpu) -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| match [WG_DS_DKDV, WG3_FWD].iter().try_for_each(|n| gpu.function(WG_MODULE, WG_SRC, n).map(|_| ())) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("warning: the Hopper attention kernels (wgmma, {WG_MODULE}) did not build, so the mma.sync ones run: {e:#}");
            false
        }
    })
}

/// The forward for `dm` as the environment picks it (`default_tc_kernels`), except that on
/// Hopper at head dim 64 with no forward named, query blocks of at least `WG3_MIN_T` rows take
/// `attn_wgwt3_fwd_d64` (three computing warpgroups of 64 rows, K and V by TMA) in place of the
/// mma.sync forward.
fn default_fwd(dm: &AttnDims, t: &Tensor) -> TcKernel {
    let f = env_forms();
    let hopper = t.cuda_buf().is_ok_and(|b| b.gpu.arch == (9, 0));
    let named = f.fwd.is_some() || f.wg_fwd.is_some() || f.one_tile_fwd || f.wgmma;
    let long = WG_D64_FWD.iter().find(|w| w.name == WG3_FWD).filter(|w| {
        // Its one block an SM wants a grid of a few waves: a short prompt's prefill (batch 1, few
        // heads) keeps the mma.sync forward, which runs two blocks an SM.
        let blocks = dm.b * dm.h * dm.tq.div_ceil(w.rows);
        hopper
            && dm.d == 64
            && !named
            && dm.tq >= WG3_MIN_T
            && wg3_default_on()
            && t.cuda_buf()
                .is_ok_and(|b| blocks >= WG3_MIN_WAVES * b.gpu.sm_count.max(1) && wg_defaults_wanted(b, dm.d))
    });
    // As if named (the table's declaration of it), else the default.
    let [fwd, _, _] = match long {
        Some(w) => tc_kernels(dm.d, TcForms { wg_fwd: Some(w), ..f }, hopper),
        None => default_tc_kernels(dm.d, t),
    };
    fwd
}

/// The dS path's dk/dv on Hopper at head dim 64 (`TcForms::wg_ds`): two warpgroups of 64 keys
/// a block on wgmma, Q and dO by TMA, dS stored as the mma.sync kernel stores it, paired with the
/// same dq (`attn_tc_dqdsz_d64`). Measured on an H100 (2026-12-05, docs/PERF.md "the wgmma dk/dv
/// after its instruction cut", backward ms against the mma.sync dS dk/dv in the same call): 124M
/// 0.392 vs 0.431, large 0.507 vs 0.554, 1B 1.382 vs 1.748, the LoRA shape 0.712 vs 0.860; large
/// training 282.7k vs 279.9k tok/s, 1B 75.7k vs 73.8k. Exact within `ATTN_TC` of the mma.sync
/// kernels (`parity_wgmma_pipelined_kernels`), against the CPU as the default
/// (`parity_bf16_attention*`), and the whole GPU suite passed with it.
const WG_DS_DKDV: &str = "attn_wgtds_dkdv_d64";

/// The Hopper forward for long query blocks (`default_fwd`), and where it starts. Measured on
/// an H100 (2026-12-05, docs/PERF.md "every TMA attention form against the CPU", forward ms
/// against the mma.sync kernel in the same call): T 2048 1B 0.491 vs 0.527, the LoRA shape
/// 0.223 vs 0.240; T 1024 large 0.183 vs 0.161, 124M 0.141 vs 0.126 (its 192-row blocks fit
/// T = 1024 badly: the sixth is a third full). Exact against the CPU with it as the default
/// (`parity_bf16_attention*`: causal, GQA, windows, packed rows, cache offsets). The bits differ
/// from the mma.sync forward's (wgmma sums a k16 step in its own order), within `ATTN_TC`.
/// `SMELT_CUDA_ATTN_WG3=0` keeps the mma.sync forward at every length.
const WG3_FWD: &str = "attn_wgwt3_fwd_d64";
const WG3_MIN_T: usize = 2048;
/// Blocks of `WG3_FWD` per SM below which the mma.sync forward runs instead: the training shapes
/// measured have 9 (LoRA) to 21 (1B); a batch-1 prefill of 135M (9 heads) at T 2048 would have
/// under one (99 blocks on 132 SMs), unmeasured, so it keeps the mma.sync kernel.
const WG3_MIN_WAVES: usize = 2;

fn wg3_default_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_ATTN_WG3").map_or(true, |v| v != "0"))
}

/// The kernel forms the environment names (`SMELT_CUDA_ATTN_*`), read once.
fn env_forms() -> TcForms {
    static FORMS: std::sync::OnceLock<TcForms> = std::sync::OnceLock::new();
    *FORMS.get_or_init(|| {
        let var = |n: &str| std::env::var(n).ok();
        // The kernel `n` names: one of `table`'s (mma.sync) or of `wg`'s (pipelined wgmma).
        let named = |n: &str, table: &'static [TcVariant], wg: &'static [WgVariant]| {
            let Some(v) = var(n) else { return (None, None) };
            let (t, w) = (table.iter().find(|t| t.name == v), wg.iter().find(|w| w.name == v));
            if t.is_none() && w.is_none() && v != "smem" {
                let names: Vec<&str> = table.iter().map(|t| t.name).chain(wg.iter().map(|w| w.name)).collect();
                eprintln!("warning: {n}={v} is not one of {} (ignored)", names.join(", "));
            }
            (t, w)
        };
        let (fwd, wg_fwd) = named("SMELT_CUDA_ATTN_FWD", TC_D64_FWD, WG_D64_FWD);
        let (dq, wg_dq) = named("SMELT_CUDA_ATTN_DQ", TC_D64_DQ, WG_D64_DQ);
        let (dkdv, wg_dkdv) = named("SMELT_CUDA_ATTN_DKDV", TC_D64_DKDV, WG_D64_DKDV);
        TcForms {
            one_tile_fwd: var("SMELT_CUDA_ATTN_MT").is_some_and(|v| v == "1"),
            dkdv_smem: var("SMELT_CUDA_ATTN_DKDV").is_some_and(|v| v == "smem"),
            pc: var("SMELT_CUDA_ATTN_PC").and_then(|v| v.parse().ok()),
            fwd,
            dq,
            dkdv,
            wgmma: var("SMELT_CUDA_ATTN_WG").is_some_and(|v| v == "1"),
            wg_fwd,
            wg_dq,
            wg_dkdv,
            ds: match var("SMELT_CUDA_ATTN_DS").as_deref() {
                Some("1") => Some(DsForm::Plain),
                Some("1tile") => Some(DsForm::OneTile),
                Some("bulk") | None => Some(DsForm::Staged),
                Some("0") => None,
                Some(v) => {
                    eprintln!("warning: SMELT_CUDA_ATTN_DS={v} is not 0, 1, 1tile or bulk (ignored)");
                    None
                }
            },
            wg_ds: var("SMELT_CUDA_ATTN_WGDS").is_none_or(|v| v != "0"),
            hsplit: match var("SMELT_CUDA_ATTN_HSPLIT") {
                None => 0,
                Some(v) => v.parse().unwrap_or_else(|_| {
                    eprintln!("warning: SMELT_CUDA_ATTN_HSPLIT={v} is not a number of parts (auto_hsplit picks)");
                    0
                }),
            },
        }
    })
}

/// The warnings for forms that will not run as asked (once each).
fn warn_forms(forms: TcForms, hopper: bool) {
    if forms.wgmma && hopper {
        static WARNED_WG: std::sync::Once = std::sync::Once::new();
        WARNED_WG.call_once(|| {
            eprintln!("warning: SMELT_CUDA_ATTN_WG=1 runs the synchronous wgmma attention kernels, which are known to give wrong results (docs/CUDA.md; parity_wgmma_attention_layouts_and_kernels): use them only to debug them")
        });
    }
    if !hopper && (forms.wg_fwd.is_some() || forms.wg_dq.is_some() || forms.wg_dkdv.is_some()) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!("warning: the wgmma attention kernels named by SMELT_CUDA_ATTN_FWD / _DQ / _DKDV need a Hopper GPU (compute capability 9.0): the default ones run")
        });
    }
}

/// Which kernels run on `gpu`: the tensor-core ones for bf16 at head dim 64 or 128 on compute
/// capability 8.0 or later (bf16 `mma.sync` and `cp.async` need it; unless
/// `SMELT_CUDA_ATTN=scalar`), the scalar ones otherwise.
pub fn uses_tensor_cores(gpu: &cuda::Gpu, dt: DType, d: usize) -> bool {
    static SCALAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let scalar = *SCALAR.get_or_init(|| std::env::var("SMELT_CUDA_ATTN").is_ok_and(|v| v == "scalar"));
    dt == DType::BF16 && (d == 64 || d == 128) && gpu.arch.0 >= 8 && !scalar
}

/// A tensor-core kernel with its dynamic shared memory allowed past the 48 KiB default; a
/// `wgmma` one (`wg`) from the sm_90a module.
fn tc_function(gpu: &cuda::Gpu, name: &str, smem: usize, wg: bool) -> Result<cudarc::driver::CudaFunction> {
    let f = if wg { gpu.function(WG_MODULE, WG_SRC, name)? } else { gpu.function("attention_tc", TC_SRC, name)? };
    f.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem as i32,
    )
    .map_err(|e| anyhow::anyhow!("{name}: shared memory of {smem} bytes: {e:?}"))?;
    Ok(f)
}

/// Shared memory a `wgmma` kernel takes past its tiles: 8 bytes a thread, the slots wg_pin
/// stores to (attention_tc.cu).
fn wg_scratch(wg: bool, threads: u32) -> usize {
    if wg {
        8 * threads as usize
    } else {
        0
    }
}

/// Dynamic shared memory of a dk/dv kernel at head dim d: K and V rows, the streamed Q and dO
/// tiles, their lse and delta, a wgmma kernel's scratch and the dS path's staging.
fn dkdv_smem(k: &TcKernel, d: usize) -> usize {
    let tw = if k.wg { d } else { d + 8 };
    // The staged dS store's 2 KiB a warp: 4 warps, or a wgmma dk/dv's 4 a warpgroup.
    let stage = if k.name == DS_DKDV[1] {
        DS_STAGE
    } else if k.wg && k.ds {
        DS_STAGE * k.threads as usize / 128
    } else {
        0
    };
    (2 * k.rows * (d + 8) + 2 * k.bufs * k.tile * tw) * 2
        + 2 * k.bufs * k.tile * 4
        + wg_scratch(k.wg, k.threads)
        + stage
}

fn tc_cfg(grid: (usize, usize, usize), smem: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0.max(1) as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

fn check(dm: &AttnDims) -> Result<()> {
    if dm.d > 128 || dm.d == 0 {
        bail!("attention on CUDA supports head_dim up to 128, got {}", dm.d);
    }
    Ok(())
}

fn cfg(grid: (usize, usize, usize), smem_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0.max(1) as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (32 * ROWS as u32, 1, 1),
        shared_mem_bytes: (smem_floats * 4) as u32,
    }
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor)> {
    attention_with(q, k, v, dm, scale, &default_fwd(&dm, q), None)
}

/// Packed rows' example bounds on the device for the tensor-core kernels: each position's
/// example start and end (exclusive), u32 (B × T).
pub(crate) struct PackedBounds {
    starts: DeviceBuf,
    ends: DeviceBuf,
}

impl PackedBounds {
    fn new(gpu: &std::sync::Arc<cuda::Gpu>, seg: &Segments) -> Result<PackedBounds> {
        let t = seg.t;
        let mut ends = vec![0u32; seg.starts.len()];
        for r in 0..seg.b {
            let row = &seg.starts[r * t..(r + 1) * t];
            let mut end = t as u32;
            for i in (0..t).rev() {
                ends[r * t + i] = end;
                if row[i] as usize == i {
                    end = i as u32; // i starts its example: positions before it end here
                }
            }
        }
        let up = |v: &[u32]| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            DeviceBuf::from_bytes(gpu, DType::U32, v.len(), &bytes)
        };
        Ok(PackedBounds { starts: up(&seg.starts)?, ends: up(&ends)? })
    }
}

/// The tensor-core kernels take packed rows; the scalar ones (f32 matmuls, other head dims) do not.
/// Every layer's forward and backward of a step share one `Segments`: its bounds are uploaded
/// once and kept until other segments (or another GPU) come (a stream-ordered free when replaced).
pub(crate) fn packed_bounds(
    gpu: &std::sync::Arc<cuda::Gpu>,
    dt: DType,
    dm: &AttnDims,
    seg: &Segments,
) -> Result<std::sync::Arc<PackedBounds>> {
    use std::sync::{Arc, Mutex};
    type Last = Option<(usize, Segments, Arc<PackedBounds>)>;
    static LAST: Mutex<Last> = Mutex::new(None);
    if !uses_tensor_cores(gpu, dt, dm.d) {
        bail!(
            "attention over packed rows (--packing) on CUDA runs on the tensor-core kernels only: bf16 (mixed precision, the default) and head dim 64 or 128 (this is {dt:?}, head dim {})",
            dm.d
        );
    }
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((ordinal, s, b)) = last.as_ref() {
        if *ordinal == gpu.ordinal && s == seg {
            return Ok(b.clone());
        }
    }
    let bounds = Arc::new(PackedBounds::new(gpu, seg)?);
    *last = Some((gpu.ordinal, seg.clone(), bounds.clone()));
    Ok(bounds)
}

/// `attention` with the tensor-core forward kernel given.
pub(crate) fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dm: AttnDims,
    scale: f32,
    fwd: &TcKernel,
    packed: Option<&PackedBounds>,
) -> Result<(Tensor, Tensor)> {
    check(&dm)?;
    let [qb, kb, vb] = cuda::float_bufs([q, k, v], "attention")?;
    let dt = cuda::same_dtype(&[qb, kb, vb], &["q", "k", "v"], "attention")?;
    let gpu = &qb.gpu;
    let out = DeviceBuf::alloc(gpu, dt, q.numel())?;
    let lse = DeviceBuf::alloc(gpu, DType::F32, dm.b * dm.h * dm.tq)?;
    let d = dm.d;
    if uses_tensor_cores(gpu, dt, d) {
        let TcKernel { name, rows, tile: bn, pc, wg, threads, bufs, tma, persistent, .. } = fwd;
        let tw = if *wg { d } else { d + 8 }; // a streamed tile's row: core matrices, or padded
        let qbufs = if *persistent { 2 } else { 1 };
        let smem = (qbufs * rows * (d + 8) + 2 * bufs * bn * tw) * 2 + wg_scratch(*wg, *threads);
        let f = tc_function(gpu, name, smem, *wg)?;
        let a = [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, dm.window.unwrap_or(0) as i32];
        let null = 0u64;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&out.data).arg(&lse.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        match packed {
            Some(p) => b.arg(&p.starts.data),
            None => b.arg(&null),
        };
        b.arg(pc);
        // Persistent: one block an SM (their launch bounds allow no more), at most one an item
        // of the (nx, H, B) grid the other forms launch; none for no items (the kernel would
        // decode item 0 of an empty grid).
        let nx = dm.tq.div_ceil(*rows);
        let items = nx * dm.h * dm.b;
        let (nx32, nz32) = (nx as i32, dm.b as i32);
        if *persistent {
            if items == 0 {
                return Ok((
                    Tensor::from_device_buf(out, q.shape())?,
                    Tensor::from_device_buf(lse, &[dm.b, dm.h, dm.tq])?,
                ));
            }
            b.arg(&nx32).arg(&nz32);
        }
        let maps = if *tma { Some(tma_maps(kb, vb, &dm, *bn)?) } else { None };
        if let Some([km, vm]) = &maps {
            b.arg(km).arg(vm);
        }
        let grid = if *persistent { (items.min(gpu.sm_count.max(1)), 1, 1) } else { (nx, dm.h, dm.b) };
        cuda::launched(unsafe { b.launch(tc_cfg(grid, smem, *threads)) }, name)?;
        return Ok((Tensor::from_device_buf(out, q.shape())?, Tensor::from_device_buf(lse, &[dm.b, dm.h, dm.tq])?));
    }
    if packed.is_some() {
        bail!("attention over packed rows: the scalar kernels do not take example bounds");
    }
    let a =
        [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, d as i32, dm.window.unwrap_or(0) as i32];
    {
        let name = cuda::kname("attn_fwd", &[dt], "attention")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&out.data).arg(&lse.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        let c = cfg((dm.tq.div_ceil(ROWS), dm.h, dm.b), 2 * TILE * (d + 1) + ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    Ok((Tensor::from_device_buf(out, q.shape())?, Tensor::from_device_buf(lse, &[dm.b, dm.h, dm.tq])?))
}

/// A TMA tensor map (cudarc's `CUtensorMap`, 128 bytes aligned to 64 as the kernel's
/// `TmaMap` parameter), passed by value.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct TmaMap(sys::CUtensorMap);
// SAFETY: plain bytes the driver encoded, copied into the kernel's parameter space as they are.
unsafe impl cudarc::driver::DeviceRepr for TmaMap {}

/// A TMA tensor map of one (B, rows, heads, 64) bf16 tensor: rank 3, (heads·64, valid, B) with
/// batches `alloc` rows apart, so a box never crosses into the next batch and rows at or past
/// `valid` (cache rows not yet written, queries past Tq) come back as zeros; boxes of 64
/// columns (one head's 128 bytes) × `box_rows` rows in the 128-byte swizzle (attention_wg.cu's
/// layout).
fn tma_map(
    buf: &DeviceBuf,
    heads: usize,
    valid: usize,
    alloc: usize,
    b: usize,
    box_rows: usize,
    what: &str,
) -> Result<TmaMap> {
    let row = (heads * 64 * 2) as u64;
    let dims = [(heads * 64) as u64, valid as u64, b as u64];
    let strides = [row, row * alloc as u64];
    let boxes = [64u32, box_rows as u32, 1];
    let ones = [1u32; 3];
    let (p, _g) = buf.data.device_ptr(&buf.gpu.stream);
    if p % 16 != 0 {
        bail!("attention: TMA needs {what} 16-byte aligned");
    }
    let mut m = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer is to a live local array of the rank's length; the map is written
    // by the driver.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            m.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            3,
            p as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            ones.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        bail!("attention: encoding the TMA map of {what} failed ({r:?})");
    }
    // SAFETY: the driver returned success, so it wrote the map.
    Ok(TmaMap(unsafe { m.assume_init() }))
}

/// The `wgwt`/`wgwq` forwards' maps of K and V: `bn`-key boxes, keys past Tk zeros.
fn tma_maps(kb: &DeviceBuf, vb: &DeviceBuf, dm: &AttnDims, bn: usize) -> Result<[TmaMap; 2]> {
    if dm.d != 64 {
        bail!("attention: the TMA kernels take head dim 64, not {}", dm.d);
    }
    Ok([tma_map(kb, dm.kvh, dm.tk, dm.s, dm.b, bn, "K")?, tma_map(vb, dm.kvh, dm.tk, dm.s, dm.b, bn, "V")?])
}

/// `attn_wgtds_dkdv_d64`'s maps of Q and dO: 64-query boxes, queries past Tq zeros.
fn tma_maps_q(qb: &DeviceBuf, db: &DeviceBuf, dm: &AttnDims) -> Result<[TmaMap; 2]> {
    if dm.d != 64 {
        bail!("attention: the TMA kernels take head dim 64, not {}", dm.d);
    }
    Ok([tma_map(qb, dm.h, dm.tq, dm.tq, dm.b, 64, "Q")?, tma_map(db, dm.h, dm.tq, dm.tq, dm.b, 64, "dO")?])
}

/// bf16 values of the dS path's buffer: B·H triangles of nt(nt+1)/2 tiles of 64 × 64, nt =
/// ceil(Tq/64) (ds_tile in attention_tc.cu).
fn ds_len(dm: &AttnDims) -> usize {
    let nt = dm.tq.div_ceil(DS_T);
    dm.b * dm.h * (nt * (nt + 1) / 2) * DS_T * DS_T
}

/// Whether the dS path takes this backward: queries and keys the same rows (training: no cache
/// offset) and its buffer within the cap, a sixteenth of the GPU's memory (1B shape, 8 × 2048:
/// 1.1 GB; 2 × 8192: 4.3 GB) or `SMELT_CUDA_ATTN_DS_MIB`. The cap depends on the GPU's total
/// memory, never on what is free, so a captured step decides as its measuring step did.
fn ds_fits(gpu: &cuda::Gpu, dm: &AttnDims) -> bool {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cap =
        *CAP.get_or_init(|| match std::env::var("SMELT_CUDA_ATTN_DS_MIB").ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(mib) => mib << 20,
            None => gpu.ctx.mem_get_info().map_or(1 << 30, |(_, total)| total / 16),
        });
    dm.tq == dm.tk && dm.d == DS_T && ds_len(dm) * 2 <= cap
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    dm: AttnDims,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [_, dq, dkdv] = default_tc_kernels(dm.d, q);
    attention_backward_with(q, k, v, out, lse, dout, dm, scale, (&dq, &dkdv), None)
}

/// `attention_backward` with the tensor-core dq and dk/dv kernels given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    dm: AttnDims,
    scale: f32,
    (kdq, kdkdv): (&TcKernel, &TcKernel),
    packed: Option<&PackedBounds>,
) -> Result<(Tensor, Tensor, Tensor)> {
    check(&dm)?;
    let [qb, kb, vb, ob, db] = cuda::float_bufs([q, k, v, out, dout], "attention_backward")?;
    let dt = cuda::same_dtype(&[qb, kb, vb, ob, db], &["q", "k", "v", "out", "output gradient"], "attention_backward")?;
    let [lb] = cuda::f32_bufs([lse], "attention_backward (lse)")?;
    let gpu = &qb.gpu;
    let kn = |base: &str| cuda::kname(base, &[dt], "attention_backward");
    let d = dm.d;
    let tc = uses_tensor_cores(gpu, dt, d);
    if tc && (kdq.ds || kdkdv.ds) && !(kdq.ds && kdkdv.ds && ds_fits(gpu, &dm)) {
        // Not a call the dS path takes (a cache offset, or its buffer past the cap): the
        // default pair, with the three-product dq kernel.
        let forms = TcForms { pc: Some(kdq.pc.max(1) as usize), ..Default::default() };
        let [_, dq, dkdv] = tc_kernels(d, forms, false);
        return attention_backward_with(q, k, v, out, lse, dout, dm, scale, (&dq, &dkdv), packed);
    }
    let delta = DeviceBuf::alloc(gpu, DType::F32, dm.b * dm.h * dm.tq)?;
    // The tensor-core dq kernel computes delta itself (the same bits) and stores it for dk/dv;
    // the dS path's dq runs last, so there delta has a kernel of its own (the same bits again).
    if !tc || kdq.ds {
        let rows = dm.b * dm.tq * dm.h;
        let (name, per_warp, f) = if tc {
            (DS_DELTA.to_string(), DS_DELTA_ROWS, tc_function(gpu, DS_DELTA, 0, false)?)
        } else {
            let name = kn("attn_bwd_delta")?;
            let f = gpu.function("attention", SRC, &name)?;
            (name, 1, f)
        };
        let (tq, h, d32, rows64) = (dm.tq as i32, dm.h as i32, d as i32, rows as i64);
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&ob.data).arg(&db.data).arg(&delta.data).arg(&tq).arg(&h);
        if !tc {
            b.arg(&d32);
        }
        b.arg(&rows64);
        // tc: the delta kernel's warps stride over the rows, DELTA_BLOCKS_PER_SM blocks an SM.
        let blocks = (rows.div_ceil(per_warp) * 32).div_ceil(256).max(1);
        let blocks = if tc { blocks.min(DELTA_BLOCKS_PER_SM * gpu.sm_count.max(1)) } else { blocks };
        let c = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    if tc {
        let a = [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, dm.window.unwrap_or(0) as i32];
        let null = 0u64;
        let dq = DeviceBuf::alloc(gpu, dt, q.numel())?;
        let dk = DeviceBuf::alloc(gpu, dt, k.numel())?;
        let dv = DeviceBuf::alloc(gpu, dt, v.numel())?;
        let ds = if kdq.ds { Some(DeviceBuf::alloc(gpu, DType::BF16, ds_len(&dm))?) } else { None };
        let launch_dq = || -> Result<()> {
            let TcKernel { name, rows, tile, pc, wg, threads, bufs, .. } = kdq;
            let tw = if *wg { d } else { d + 8 };
            let smem = (3 * rows * (d + 8) + 2 * bufs * tile * tw) * 2 + rows * 4 + wg_scratch(*wg, *threads);
            let f = tc_function(gpu, name, smem, *wg)?;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&db.data).arg(&ob.data).arg(&lb.data);
            b.arg(&delta.data).arg(&dq.data);
            for x in &a {
                b.arg(x);
            }
            b.arg(&scale);
            match packed {
                Some(p) => b.arg(&p.starts.data),
                None => b.arg(&null),
            };
            b.arg(pc);
            cuda::launched(unsafe { b.launch(tc_cfg((dm.tq.div_ceil(*rows), dm.h, dm.b), smem, *threads)) }, name)
        };
        // The dS path's dk/dv over parts of each GQA group (`TcKernel::hsplit`): their f32 sums.
        // Parts of ⌈group/hs⌉ heads, as many as that takes (no empty part: 4 heads in 3 → 2 of 2).
        // None named: `auto_hsplit` from the unsplit grid and the blocks an SM holds.
        let grp = (dm.h / dm.kvh).max(1);
        let want = match kdkdv.hsplit {
            0 if kdkdv.ds && grp > 1 => {
                let smem = dkdv_smem(kdkdv, d);
                let f = tc_function(gpu, &kdkdv.name, smem, kdkdv.wg)?;
                let per_sm = f
                    .occupancy_max_active_blocks_per_multiprocessor(kdkdv.threads, smem, None)
                    .map_err(|e| anyhow::anyhow!("{}: occupancy on {gpu:?}: {e:?}", kdkdv.name))?;
                let blocks = dm.s.div_ceil(kdkdv.rows) * dm.kvh * dm.b;
                auto_hsplit(blocks, per_sm.max(1) as usize * gpu.sm_count, grp)
            }
            n => n,
        };
        let hs = if kdkdv.ds { grp.div_ceil(grp.div_ceil(want.clamp(1, grp))) } else { 1 };
        let part = if hs > 1 { Some(DeviceBuf::alloc(gpu, DType::F32, 2 * hs * k.numel())?) } else { None };
        let launch_dkdv = || -> Result<()> {
            let TcKernel { name, rows, pc, wg, threads, .. } = kdkdv;
            let smem = dkdv_smem(kdkdv, d);
            let f = tc_function(gpu, name, smem, *wg)?;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&qb.data)
                .arg(&kb.data)
                .arg(&vb.data)
                .arg(&db.data)
                .arg(&lb.data)
                .arg(&delta.data)
                .arg(&dk.data)
                .arg(&dv.data);
            for x in &a {
                b.arg(x);
            }
            b.arg(&scale);
            match packed {
                Some(p) => b.arg(&p.starts.data).arg(&p.ends.data),
                None => b.arg(&null).arg(&null),
            };
            b.arg(pc);
            let hs32 = hs as i32;
            if let Some(ds) = &ds {
                b.arg(&ds.data).arg(&hs32);
                match &part {
                    Some(p) => b.arg(&p.data),
                    None => b.arg(&null),
                };
            }
            let maps = if kdkdv.tma { Some(tma_maps_q(qb, db, &dm)?) } else { None };
            if let Some([qm, om]) = &maps {
                b.arg(qm).arg(om);
            }
            cuda::launched(
                unsafe { b.launch(tc_cfg((dm.s.div_ceil(*rows), dm.kvh * hs, dm.b), smem, *threads)) },
                name,
            )?;
            if let Some(p) = &part {
                let f = tc_function(gpu, "attn_tc_dkdv_sum", 0, false)?;
                let (n64, hs32) = (k.numel() as i64, hs as i32);
                let mut b = gpu.stream.launch_builder(&f);
                b.arg(&p.data).arg(&dk.data).arg(&dv.data).arg(&hs32).arg(&n64).arg(&scale);
                cuda::launched(unsafe { b.launch(cuda::grid_for(k.numel(), 256)) }, "attn_tc_dkdv_sum")?;
            }
            Ok(())
        };
        match &ds {
            None => {
                launch_dq()?;
                launch_dkdv()?;
            }
            Some(dsb) => {
                // dk/dv first (it stores dS), then dq from dS.
                launch_dkdv()?;
                let TcKernel { name, rows, pc, .. } = kdq;
                let smem = (2 * DS_T * (d + 8) + 2 * (rows / TC_ROWS) * DS_T * (DS_T + 8)) * 2;
                let f = tc_function(gpu, name, smem, false)?;
                let mut b = gpu.stream.launch_builder(&f);
                b.arg(&kb.data).arg(&dsb.data).arg(&dq.data);
                for x in &a {
                    b.arg(x);
                }
                b.arg(&scale);
                match packed {
                    Some(p) => b.arg(&p.starts.data),
                    None => b.arg(&null),
                };
                b.arg(pc);
                cuda::launched(unsafe { b.launch(tc_cfg((dm.tq.div_ceil(*rows), dm.h, dm.b), smem, 128)) }, name)?;
            }
        }
        return Ok((
            Tensor::from_device_buf(dq, q.shape())?,
            Tensor::from_device_buf(dk, k.shape())?,
            Tensor::from_device_buf(dv, v.shape())?,
        ));
    }
    if packed.is_some() {
        bail!("attention over packed rows: the scalar kernels do not take example bounds");
    }
    let a =
        [dm.tq as i32, dm.tk as i32, dm.s as i32, dm.h as i32, dm.kvh as i32, d as i32, dm.window.unwrap_or(0) as i32];
    let dq = DeviceBuf::alloc(gpu, dt, q.numel())?;
    {
        let name = kn("attn_bwd_dq")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&db.data).arg(&lb.data).arg(&delta.data).arg(&dq.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        let c = cfg((dm.tq.div_ceil(ROWS), dm.h, dm.b), 2 * TILE * (d + 1) + 2 * ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    let dk = DeviceBuf::alloc(gpu, dt, k.numel())?;
    let dv = DeviceBuf::alloc(gpu, dt, v.numel())?;
    {
        let name = kn("attn_bwd_dkdv")?;
        let f = gpu.function("attention", SRC, &name)?;
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data)
            .arg(&kb.data)
            .arg(&vb.data)
            .arg(&db.data)
            .arg(&lb.data)
            .arg(&delta.data)
            .arg(&dk.data)
            .arg(&dv.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale);
        let c = cfg((dm.s.div_ceil(ROWS), dm.kvh, dm.b), 2 * TILE * (d + 1) + 2 * TILE + 2 * ROWS * d);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    Ok((
        Tensor::from_device_buf(dq, q.shape())?,
        Tensor::from_device_buf(dk, k.shape())?,
        Tensor::from_device_buf(dv, v.shape())?,
    ))
}

/// Keys per split of the decode kernel. Fixed (not derived from the position) so that a step
/// whose position is on the device splits exactly as one whose position is on the host: the
/// splits past the position are empty and add exact zeros.
pub(crate) const DEC_CHUNK: usize = 256;
/// Threads per decode block (DEC_THREADS in decode.cu): one key each while scoring a tile.
const DEC_THREADS: u32 = 256;

/// The decode kernels' splits of DEC_CHUNK keys up to `keys` (the capacity for a device
/// position), the buffer their partials go to (unused with one split), and the launch shape
/// (H, splits, rows) of DEC_THREADS threads.
fn decode_splits(
    gpu: &Arc<cuda::Gpu>,
    rows: usize,
    h: usize,
    d: usize,
    keys: usize,
    chunk: usize,
) -> Result<(usize, DeviceBuf, LaunchConfig)> {
    let splits = keys.div_ceil(chunk).max(1);
    let part = DeviceBuf::alloc(gpu, DType::F32, if splits > 1 { rows * h * splits * (d + 2) } else { 1 })?;
    let c = LaunchConfig {
        grid_dim: (h as u32, splits as u32, rows as u32),
        block_dim: (DEC_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((splits, part, c))
}

/// With several splits, `attn_decode_combine` merges their partials into `out` (rows × H × D).
fn decode_combine(
    gpu: &Arc<cuda::Gpu>,
    dt: DType,
    rows: usize,
    h: usize,
    d: usize,
    splits: usize,
    part: &DeviceBuf,
    out: &DeviceBuf,
    what: &str,
) -> Result<()> {
    if splits < 2 {
        return Ok(());
    }
    let name = cuda::kname("attn_decode_combine", &[dt], what)?;
    let f = gpu.function("attention_decode", DEC_SRC, &name)?;
    let (h32, d32, s32) = (h as i32, d as i32, splits as i32);
    let mut b = cuda::launch::Launch::new(gpu, &f, &name);
    b.arg(&part.data).arg(&out.data).arg(&h32).arg(&d32).arg(&s32);
    let c = LaunchConfig { grid_dim: (h as u32, rows as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    cuda::launched(unsafe { b.launch(c) }, &name)
}

/// Decode attention (decode.cu): grid (H, splits, B); splits > 1 write partials that a second
/// launch merges. `dm.tk` is the bound on the keys (the capacity for a device position).
pub fn attention_decode(q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, pos: Pos, scale: f32) -> Result<Tensor> {
    check(&dm)?;
    let [qb, kb, vb] = cuda::float_bufs([q, k, v], "attention_decode")?;
    let dt = cuda::same_dtype(&[qb, kb, vb], &["q", "k", "v"], "attention_decode")?;
    let gpu = &qb.gpu;
    let out = DeviceBuf::alloc(gpu, dt, q.numel())?;
    let (splits, part, c) = decode_splits(gpu, dm.b, dm.h, dm.d, dm.tk, DEC_CHUNK)?;
    let (pptr, phost) = pos.kernel_args("attention_decode position")?;
    let tk = phost + 1;
    let a = [tk, dm.s as i32, dm.h as i32, dm.kvh as i32, dm.d as i32, dm.window.unwrap_or(0) as i32];
    let name = cuda::kname("attn_decode", &[dt], "attention_decode")?;
    let f = gpu.function("attention_decode", DEC_SRC, &name)?;
    let chunk = DEC_CHUNK as i32;
    {
        let mut b = cuda::launch::Launch::new(gpu, &f, &name);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&out.data).arg(&part.data).arg(&pptr);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale).arg(&chunk);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    decode_combine(gpu, dt, dm.b, dm.h, dm.d, splits, &part, &out, "attention_decode")?;
    Tensor::from_device_buf(out, q.shape())
}

/// `rope_into_cache` + `attention_decode` in one launch (`attn_decode_rope`, then
/// `attn_decode_combine` past DEC_CHUNK keys as `attention_decode`) for a device position; a
/// host position takes the two ops.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention_decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &crate::ops::rope::RopeTable,
    kc: &mut Tensor,
    vc: &mut Tensor,
    dm: AttnDims,
    pos: Pos,
    scale: f32,
) -> Result<Tensor> {
    let fused = matches!(pos, Pos::Device { .. }) && std::env::var("SMELT_CUDA_ROPE_ATTN").map_or(true, |v| v != "0");
    if !fused || !dm.d.is_multiple_of(2) {
        let q = crate::ops::rope::rope_into_cache(q, k, v, table, kc, vc, pos)?;
        return attention_decode(&q, kc, vc, dm, pos, scale);
    }
    check(&dm)?;
    let [qb, kb, vb] = cuda::float_bufs([q, k, v], "rope_attention_decode")?;
    let dt = cuda::same_dtype(&[qb, kb, vb], &["q", "k", "v"], "rope_attention_decode")?;
    let gpu = qb.gpu.clone();
    let tab = crate::ops::rope::cuda::device_table(&gpu, table, pos.bound(1)?)?;
    let out = DeviceBuf::alloc(&gpu, dt, q.numel())?;
    // As attention_decode: splits of DEC_CHUNK keys up to the bound (the capacity for a device
    // position), merged by attn_decode_combine, so the same bits (one split would see only the
    // first DEC_CHUNK keys).
    let (splits, part, c) = decode_splits(&gpu, dm.b, dm.h, dm.d, dm.tk, DEC_CHUNK)?;
    let (pptr, _) = pos.kernel_args("rope_attention_decode position")?;
    let kcb = kc.cuda_buf_mut()?;
    if kcb.dtype != dt {
        bail!("rope_attention_decode: {dt:?} rows into a {:?} cache", kcb.dtype);
    }
    let kcp = kcb.ptr();
    let vcb = vc.cuda_buf_mut()?;
    if vcb.dtype != dt {
        bail!("rope_attention_decode: {dt:?} rows into a {:?} cache", vcb.dtype);
    }
    let vcp = vcb.ptr();
    let name = cuda::kname("attn_decode_rope", &[dt], "rope_attention_decode")?;
    let f = gpu.function("attention_decode", DEC_SRC, &name)?;
    let inter = (table.layout == crate::ops::rope::RopeLayout::Interleaved) as i32;
    let a = [inter, dm.s as i32, dm.h as i32, dm.kvh as i32, dm.d as i32, dm.window.unwrap_or(0) as i32];
    let chunk = DEC_CHUNK as i32;
    {
        let mut b = cuda::launch::Launch::new(&gpu, &f, &name);
        b.arg(&qb.data).arg(&kb.data).arg(&vb.data).arg(&kcp).arg(&vcp).arg(&out.data).arg(&part.data).arg(&pptr);
        b.arg(&tab.cos.data).arg(&tab.sin.data);
        for x in &a {
            b.arg(x);
        }
        b.arg(&scale).arg(&chunk);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    decode_combine(&gpu, dt, dm.b, dm.h, dm.d, splits, &part, &out, "rope_attention_decode")?;
    Tensor::from_device_buf(out, q.shape())
}

/// New rows (B, T, KVH, D) into the cache (B, S, KVH, D) at `pos`, one launch for every sequence.
pub fn kv_write(cache: &mut Tensor, new: &Tensor, pos: Pos) -> Result<()> {
    let (pptr, phost) = pos.kernel_args("kv_write position")?;
    let (s, t) = (cache.shape().to_vec(), new.shape()[1]);
    let (nb, cap, row) = (s[0], s[1], s[2] * s[3]);
    let nbuf = new.cuda_buf()?;
    let dt = nbuf.dtype;
    let gpu = nbuf.gpu.clone();
    let cb = cache.cuda_buf_mut()?;
    if cb.dtype != dt {
        bail!("kv_write: {dt:?} rows into a {:?} cache", cb.dtype);
    }
    let name = cuda::kname("kv_write", &[dt], "kv_write")?;
    let f = gpu.function("attention_decode", DEC_SRC, &name)?;
    let (row64, t32, cap32, nb32) = (row as i64, t as i32, cap as i32, nb as i32);
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&cb.data).arg(&nbuf.data).arg(&row64).arg(&t32).arg(&cap32).arg(&nb32).arg(&pptr).arg(&phost);
    cuda::launched(unsafe { b.launch(cuda::grid_for(nb * t * row, 256)) }, &name)
}

/// A paged pool's storage type in kernel names: the activation dtypes, and f16 (the pool only).
fn pool_dtype_name(d: DType, what: &str) -> Result<&'static str> {
    match d {
        DType::F16 => Ok("f16"),
        d => cuda::dtype_name(d, what),
    }
}

/// `paged_rope_kv` (paged.cu): one launch for q, the key pool and the value pool.
pub fn paged_rope_kv(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &crate::ops::rope::RopeTable,
    kp: &mut Tensor,
    vp: &mut Tensor,
    rows: &PagedRows,
) -> Result<Tensor> {
    let [qb, kb, vb] = cuda::float_bufs([q, k, v], "paged_rope_kv")?;
    let dt = cuda::same_dtype(&[qb, kb, vb], &["q", "k", "v"], "paged_rope_kv")?;
    let gpu = qb.gpu.clone();
    let (n, h, d, kvh) = (q.shape()[0], q.shape()[1], q.shape()[2], k.shape()[1]);
    let tab = crate::ops::rope::cuda::device_table(&gpu, table, rows.max_keys)?;
    let [pb, db] = [rows.pos.cuda_buf()?, rows.dst.cuda_buf()?];
    let qo = DeviceBuf::alloc(&gpu, dt, q.numel())?;
    let ct = kp.dtype();
    let name =
        format!("paged_rope_kv_{}_{}", cuda::dtype_name(dt, "paged_rope_kv")?, pool_dtype_name(ct, "paged_rope_kv")?);
    let (kpp, vpp) = (kp.cuda_buf_mut()?.ptr(), vp.cuda_buf_mut()?.ptr());
    let f = gpu.function("attention_paged", PAGED_SRC, &name)?;
    let inter = (table.layout == crate::ops::rope::RopeLayout::Interleaved) as i32;
    let ints = [n as i32, h as i32, kvh as i32, d as i32, inter];
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data)
            .arg(&kb.data)
            .arg(&vb.data)
            .arg(&qo.data)
            .arg(&kpp)
            .arg(&vpp)
            .arg(&tab.cos.data)
            .arg(&tab.sin.data)
            .arg(&pb.data)
            .arg(&db.data);
        for x in &ints {
            b.arg(x);
        }
        let total = n * (h * d / 2 + kvh * d / 2 + kvh * d);
        cuda::launched(unsafe { b.launch(cuda::grid_for(total, 256)) }, &name)?;
    }
    Tensor::from_device_buf(qo, q.shape())
}

/// Rows × heads from which a paged step is parallel enough without splitting its keys.
const PAGED_NO_SPLIT: usize = 2048;

/// `paged_attn` (decode.cu), split over the keys in `DEC_CHUNK`s as the decode kernel is, and
/// decode.cu's combine when a row's keys span several. A step of many rows (a long prompt, a
/// large batch) is not split: its rows × heads already fill the GPU, and the partials would
/// take rows × heads × splits × (D + 2) floats.
pub fn paged_attention(
    q: &Tensor,
    kp: &Tensor,
    vp: &Tensor,
    rows: &PagedRows,
    heads: Heads,
    scale: f32,
) -> Result<Tensor> {
    if heads.d > 128 || heads.d == 0 {
        bail!("paged attention on CUDA supports head_dim up to 128, got {}", heads.d);
    }
    let [qb] = cuda::float_bufs([q], "paged_attention")?;
    let (kb, vb) = (kp.cuda_buf()?, vp.cuda_buf()?);
    if kb.dtype != vb.dtype || kb.gpu.ordinal != qb.gpu.ordinal {
        bail!("paged_attention: key pool {:?} and value pool {:?} must share a dtype and q's GPU", kb.dtype, vb.dtype);
    }
    let dt = qb.dtype;
    let gpu = &qb.gpu;
    let n = rows.rows();
    let out = DeviceBuf::alloc(gpu, dt, q.numel())?;
    let chunk = if n * heads.h >= PAGED_NO_SPLIT { rows.max_keys.max(1) } else { DEC_CHUNK };
    let (splits, part, c) = decode_splits(gpu, n, heads.h, heads.d, rows.max_keys, chunk)?;
    let name = format!(
        "paged_attn_{}_{}",
        cuda::dtype_name(dt, "paged_attention")?,
        pool_dtype_name(kb.dtype, "paged_attention")?
    );
    let f = gpu.function("attention_decode", DEC_SRC, &name)?;
    let [pb, ob, tb] = [rows.pos.cuda_buf()?, rows.toff.cuda_buf()?, rows.tables.cuda_buf()?];
    let ints =
        [rows.block_size as i32, heads.h as i32, heads.kvh as i32, heads.d as i32, heads.window.unwrap_or(0) as i32];
    let chunk = chunk as i32;
    {
        let mut b = gpu.stream.launch_builder(&f);
        b.arg(&qb.data)
            .arg(&kb.data)
            .arg(&vb.data)
            .arg(&out.data)
            .arg(&part.data)
            .arg(&pb.data)
            .arg(&ob.data)
            .arg(&tb.data);
        for x in &ints {
            b.arg(x);
        }
        b.arg(&scale).arg(&chunk);
        cuda::launched(unsafe { b.launch(c) }, &name)?;
    }
    decode_combine(gpu, dt, n, heads.h, heads.d, splits, &part, &out, "paged_attention")?;
    Tensor::from_device_buf(out, q.shape())
}

impl super::AttentionKernels for crate::backend::Cuda {
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<(Tensor, Tensor)> {
        attention(q, k, v, dm, scale)
    }
    /// The tensor-core forward with each query's keys starting at its example's start.
    fn attention_packed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dm: AttnDims,
        scale: f32,
        seg: &Segments,
    ) -> Result<(Tensor, Tensor)> {
        let qb = q.cuda_buf()?;
        let bounds = packed_bounds(&qb.gpu, qb.dtype, &dm, seg)?;
        attention_with(q, k, v, dm, scale, &default_fwd(&dm, q), Some(&bounds))
    }
    #[allow(clippy::too_many_arguments)]
    fn attention_packed_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dm: AttnDims,
        scale: f32,
        seg: &Segments,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let qb = q.cuda_buf()?;
        let bounds = packed_bounds(&qb.gpu, qb.dtype, &dm, seg)?;
        let [_, dq, dkdv] = default_tc_kernels(dm.d, q);
        attention_backward_with(q, k, v, out, lse, dout, dm, scale, (&dq, &dkdv), Some(&bounds))
    }
    /// The training kernel's forward (its lse dropped); one query per sequence (decode) takes
    /// the split-key decode kernel, as a captured step does.
    fn attention_infer(&self, q: &Tensor, k: &Tensor, v: &Tensor, dm: AttnDims, scale: f32) -> Result<Tensor> {
        if dm.tq == 1 {
            return attention_decode(q, k, v, dm, Pos::Host(dm.tk - 1), scale);
        }
        Ok(attention(q, k, v, dm, scale)?.0)
    }
    fn kv_write(&self, cache: &mut Tensor, new: &Tensor, pos: Pos) -> Result<()> {
        kv_write(cache, new, pos)
    }
    fn paged_rope_kv(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &crate::ops::rope::RopeTable,
        kp: &mut Tensor,
        vp: &mut Tensor,
        rows: &PagedRows,
    ) -> Result<Tensor> {
        paged_rope_kv(q, k, v, table, kp, vp, rows)
    }
    fn paged_attention(
        &self,
        q: &Tensor,
        kp: &Tensor,
        vp: &Tensor,
        rows: &PagedRows,
        heads: Heads,
        scale: f32,
    ) -> Result<Tensor> {
        paged_attention(q, kp, vp, rows, heads, scale)
    }
    fn attention_decode(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dm: AttnDims,
        pos: Pos,
        scale: f32,
    ) -> Result<Tensor> {
        attention_decode(q, k, v, dm, pos, scale)
    }
    fn rope_attention_decode(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        table: &crate::ops::rope::RopeTable,
        kc: &mut Tensor,
        vc: &mut Tensor,
        dm: AttnDims,
        pos: Pos,
        scale: f32,
    ) -> Result<Tensor> {
        rope_attention_decode(q, k, v, table, kc, vc, dm, pos, scale)
    }
    fn pos_add(&self, pos: &mut Tensor, n: usize) -> Result<()> {
        let b = pos.cuda_buf_mut()?;
        let gpu = b.gpu.clone();
        let f = gpu.function("attention_decode", DEC_SRC, "decode_pos_add")?;
        let n32 = n as i32;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&b.data).arg(&n32);
        cuda::launched(unsafe { l.launch(LaunchConfig::for_num_elems(1)) }, "decode_pos_add")
    }
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        dm: AttnDims,
        scale: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        attention_backward(q, k, v, out, lse, dout, dm, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        auto_hsplit, dkdv_smem, tc_kernels, DsForm, TcForms, BWD_PC, DS_DQ, TC_D64_DKDV, WG_D64_DKDV, WG_D64_FWD,
        WG_DS_DKDV,
    };

    /// Every named wgmma kernel launches with its own threads and buffers (a dS-path dk/dv once
    /// took the mma.sync defaults, 128 threads and 2 buffers, and would have run half its
    /// warpgroups in too little shared memory), and the TMA dS dk/dv's shared memory covers its
    /// layout: K and V rows, 4 Q and dO slots, lse and delta, 8 warps' dS stages, 4 barriers.
    #[test]
    fn named_wgmma_kernels_launch_as_declared() {
        for w in WG_D64_FWD {
            let [f, _, _] = tc_kernels(64, TcForms { wg_fwd: Some(w), ..Default::default() }, true);
            assert_eq!(
                (f.name.as_str(), f.threads, f.bufs, f.tma, f.persistent),
                (w.name, w.threads, w.bufs, w.tma, w.persistent)
            );
        }
        for w in WG_D64_DKDV {
            let [_, dq, k] = tc_kernels(64, TcForms { wg_dkdv: Some(w), ..Default::default() }, true);
            assert_eq!((k.name.as_str(), k.threads, k.bufs, k.tma, k.ds), (w.name, w.threads, w.bufs, w.tma, w.ds));
            assert_eq!(dq.ds, w.ds, "{}: a dS dk/dv pairs with the dS dq", w.name);
            if w.ds {
                // K and V rows, Q and dO tiles, lse and delta, 2 KiB of dS stage a warp, the TMA barriers.
                let (rows, nb) = (w.rows, w.bufs);
                let layout = (2 * rows * 72 + 2 * nb * 64 * 64) * 2 + 2 * nb * 64 * 4 + rows / 16 * 2048 + nb * 8;
                assert!(dkdv_smem(&k, 64) >= layout, "{}: {} < {layout}", w.name, dkdv_smem(&k, 64));
            }
        }
    }

    /// The default dS path on Hopper takes the wgmma dk/dv with the swizzled dq, as named; before
    /// Hopper, with `wg_ds` off, with another dS form or a kernel named, the mma.sync dk/dv.
    #[test]
    fn hopper_ds_path_takes_the_wgmma_dkdv() {
        let ds = TcForms { ds: Some(DsForm::Staged), wg_ds: true, ..Default::default() };
        let [_, dq, k] = tc_kernels(64, ds, true);
        let w = WG_D64_DKDV.iter().find(|w| w.name == WG_DS_DKDV).unwrap();
        assert_eq!(
            (k.name.as_str(), k.threads, k.bufs, k.tma, k.ds, k.wg),
            (w.name, w.threads, w.bufs, true, true, true)
        );
        assert_eq!((dq.name.as_str(), dq.ds), (DS_DQ[2], true));
        assert_eq!(k.pc, BWD_PC);
        for (forms, hopper) in [
            (ds, false),
            (TcForms { wg_ds: false, ..ds }, true),
            (TcForms { ds: Some(DsForm::Plain), ..ds }, true),
            (TcForms { dkdv: Some(&TC_D64_DKDV[0]), ..ds }, true),
        ] {
            let [_, _, k] = tc_kernels(64, forms, hopper);
            assert!(!k.wg, "{forms:?} hopper {hopper}: {}", k.name);
        }
        let [_, _, k] = tc_kernels(128, ds, true);
        assert!(!k.wg, "head dim 128: {}", k.name);
    }

    /// The measured shapes on a 132-SM GPU with 3 dk/dv blocks an SM (396 resident): issue 16's
    /// LoRA shape splits its 7-head groups, 1B (4 heads a group, 2,048 blocks) and groups of one
    /// head do not.
    #[test]
    fn auto_hsplit_splits_only_grids_of_few_waves() {
        assert_eq!(auto_hsplit(32 * 2 * 8, 396, 7), 7);
        assert_eq!(auto_hsplit(32 * 8 * 8, 396, 4), 1);
        assert_eq!(auto_hsplit(16 * 16 * 16, 396, 1), 1);
        assert_eq!(auto_hsplit(4, 396, 1), 1);
        assert_eq!(auto_hsplit(32 * 8, 396, 4), 4);
    }
}
