//! Q8_0, Q4_0, Q4_1 and Q6_K matmuls on Intel AMX (the int8 tile multiplier of Sapphire Rapids and
//! later Xeons), in the float order of llama.cpp's AMX build (`ggml-cpu/amx/mmq.cpp`), which is
//! not the order of its AVX-512 build that `tile512`/`avx512.rs` follow: per output
//!
//! ```text
//! acc = 0; for each 32-element block: acc = fma(f32(Σ w·a), d_w·d_a, acc)
//!                                     (Q4_1: then acc = fma(m_w, s_a, acc))
//! ```
//!
//! where Σ w·a is the block's exact integer sum (what a C tile holds), d_w·d_a one f32 product,
//! m_w the weight block's min and s_a the Q8_1 activation block's d·Σq. [`dot_ref`] is that order
//! written out, the reference the kernels are tested against bit for bit. Q6_K against Q8_K
//! activations is the same with 256-element blocks (its exact isum formed from two packed int8
//! planes: `q6k.rs`).
//!
//! Where it runs (`X86Path::Amx` in `qtensor`): on x86-64 with AVX-512 (`Level::Avx512`) where
//! CPUID reports AMX-TILE and AMX-INT8 and Linux grants the tile state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process), for the matrices
//! ggml's AMX buffer takes: Q8_0, Q4_0, Q4_1, Q6_K with a multiple of 32 rows; at every input count
//! (more than four inputs the tiles, fewer `kernel::few`), so each output's bits do not depend on
//! how many rows are multiplied together. `SMELT_AMX=0` turns it off: the AVX-512 path, whose
//! outputs are llama.cpp's AVX-512 build's bit for bit. Q5_0 stays there: ggml has no AMX kernel
//! for it. If CPUID or the permission fails the AVX-512 path runs too; that is said once on
//! stderr where the CPU has AMX (or `SMELT_PROFILE=1`/`SMELT_AMX=1` asked). `SMELT_AMX=emulate`
//! runs this order without AMX (the tiles emulated), on any CPU with AVX-512 VNNI.
//!
//! Files: `tiles.rs` (the instructions and their emulation), `pack.rs` (operand layouts),
//! `kernel.rs` (the kernels), `q6k.rs` (Q6_K's layout and kernels). [`Engine`] picks the real tiles or the emulation (tests).

mod kernel;
mod pack;
mod q6k;
#[cfg(test)]
mod tests;
mod tiles;

pub(crate) use pack::{Acts, Packed};

#[cfg(test)]
use super::act::BlockQ8;
#[cfg(test)]
use super::f16_at;
use super::GgmlType;
use std::sync::OnceLock;

/// How the tile kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The AMX instructions (only where [`engine`] found them); `kernel::few` below five inputs.
    Amx,
    /// The same kernel with the tile instructions emulated (`tiles::Emu`), AVX-512 for the rest;
    /// `kernel::few` below five inputs. Needs AVX-512 F/BW/VL/VNNI only (tests, `SMELT_AMX=emulate`).
    Emulated,
    /// Emulated tiles and scalar float code, at every input count: no SIMD at all.
    Portable,
}

/// The format constant of `ty` where AMX takes it.
pub(crate) fn kind(ty: GgmlType) -> Option<u8> {
    match ty {
        GgmlType::Q8_0 => Some(pack::Q8_0),
        GgmlType::Q4_0 => Some(pack::Q4_0),
        GgmlType::Q4_1 => Some(pack::Q4_1),
        GgmlType::Q6_K => Some(pack::Q6_K),
        _ => None,
    }
}

/// Whether a [rows, _] matrix of `ty` takes the AMX path where it is on: ggml's AMX buffer
/// holds only matrices whose output count is a multiple of 32 (`TILE_N * 2`, its
/// `supports_op`); others run its AVX-512 path there, and smelt's.
pub(crate) fn takes(ty: GgmlType, rows: usize) -> bool {
    kind(ty).is_some() && rows.is_multiple_of(32)
}

/// `Some(Engine::Amx)` where the AMX path is on (see the module doc), else None; decided once.
/// `SMELT_AMX=emulate` gives `Engine::Emulated` on a CPU with AVX-512 VNNI but no AMX: the AMX
/// order there (prompts slowly: the tiles in scalar Rust), to compare with an AMX machine.
pub(crate) fn engine() -> Option<Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        let var = std::env::var("SMELT_AMX").ok();
        let say = var.is_some() || crate::profile::enabled();
        let avx512 = super::simd::Level::detect() == super::simd::Level::Avx512;
        match var.as_deref() {
            Some("0") => return None,
            Some("emulate") if avx512 => {
                eprintln!("smelt: SMELT_AMX=emulate: Q8_0/Q4_0/Q4_1/Q6_K matmuls in the AMX order, tiles emulated");
                return Some(Engine::Emulated);
            }
            _ => {}
        }
        match (cpu_has_amx_int8(), avx512) {
            (false, _) => {
                if say {
                    eprintln!("smelt: no AMX-INT8 on this CPU (or no AVX-512 for SMELT_AMX=emulate); AMX unused");
                }
                None
            }
            (true, false) => {
                if say {
                    eprintln!("smelt: AMX-INT8 present but AVX-512 is off (SMELT_NO_AVX512/SMELT_NO_SIMD); AMX unused");
                }
                None
            }
            (true, true) => match request_tile_permission() {
                Ok(()) => {
                    if say {
                        eprintln!(
                            "smelt: AMX-INT8 tiles on for Q8_0/Q4_0/Q4_1/Q6_K matmuls (SMELT_AMX=0 turns them off)"
                        );
                    }
                    Some(Engine::Amx)
                }
                Err(e) => {
                    eprintln!(
                        "smelt: the CPU has AMX-INT8 but the OS refused the tile state ({e}); the AVX-512 matmuls run"
                    );
                    None
                }
            },
        }
    })
}

/// CPUID leaf 7, subleaf 0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
fn cpu_has_amx_int8() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID exists on every x86-64 CPU; leaf 7 is read only where the CPU reports it.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

/// Linux hands the 8 KiB tile state to a process only on request (kernel 5.16 and later).
#[cfg(target_os = "linux")]
fn request_tile_permission() -> Result<(), String> {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with an integer argument; it changes only this process's permissions.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA): {}", std::io::Error::last_os_error()))
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> Result<(), String> {
    Err("no tile-state permission call on this OS in smelt".into())
}

/// y (n × `w.rows`, row i at y[i·rows]) = the n activation rows of `acts` times wᵀ, on the pool:
/// one to four inputs `kernel::few` over blocks of output groups, more the tile kernel in
/// `gemm_tasks`' tasks (32 outputs × 64 inputs). `Engine::Portable` takes the tiles for any n.
pub(crate) fn matmul(engine: Engine, w: &Packed, acts: &Acts, y: &mut [f32]) {
    let (n, m) = (acts.n, w.rows);
    let nb = if w.kind == pack::Q6_K { 8 * w.nb } else { w.nb };
    assert!(y.len() >= n * m && acts.nb == nb, "amx matmul: {} outputs for {n} × {m}", y.len());
    if n <= 4 && engine != Engine::Portable {
        let out = crate::par::SendPtr(y.as_mut_ptr());
        // Groups of 16 rows.
        let per = crate::par::few_rows_block(w.rows).div_ceil(16);
        crate::par::for_each(w.groups.div_ceil(per), |t| {
            let (g0, g1) = (t * per, ((t + 1) * per).min(w.groups));
            // SAFETY: `engine` is not Portable, so AVX-512 VNNI was checked (Amx: `engine()`;
            // Emulated: the caller's promise); task t writes outputs 16·g0.. of every row only.
            unsafe { few(w, (g0, g1), acts, out.get().add(16 * g0), m, 1) };
        });
        return;
    }
    super::qtensor::gemm_tasks(m, n, y, |r, i, o| {
        // SAFETY: the engine's CPU needs as `Engine` says; `o` is `gemm_tasks`'.
        unsafe { gemm_task(engine, w, r, acts, i, o, m) }
    });
}

pub(crate) use kernel::{few, gemm_task};

/// Element `e` of a Q8_0/Q4_0/Q4_1 block's integers as the tiles multiply them (Q4_0's nibbles
/// less 8, Q4_1's as they are).
#[cfg(test)]
pub(crate) fn weight_q(ty: GgmlType, blk: &[u8], e: usize) -> i32 {
    match ty {
        GgmlType::Q8_0 => blk[2 + e] as i8 as i32,
        _ => {
            let qs = &blk[ty.block_bytes() - 16..];
            let nib = if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 } as i32;
            if ty == GgmlType::Q4_0 {
                nib - 8
            } else {
                nib
            }
        }
    }
}

/// One output in the AMX order (the module doc), from the file's block bytes: the reference the
/// kernels are tested against.
#[cfg(test)]
pub(crate) fn dot_ref(ty: GgmlType, w: &[u8], a: &[BlockQ8]) -> f32 {
    let bb = ty.block_bytes();
    let mut acc = 0f32;
    for (blk, ab) in w.chunks_exact(bb).zip(a) {
        let mut isum = 0i32;
        for e in 0..32 {
            isum += weight_q(ty, blk, e) * ab.qs[e] as i32;
        }
        acc = (isum as f32).mul_add(f16_at(blk) * ab.d, acc);
        if ty == GgmlType::Q4_1 {
            acc = f16_at(&blk[2..]).mul_add(ab.s, acc);
        }
    }
    acc
}
