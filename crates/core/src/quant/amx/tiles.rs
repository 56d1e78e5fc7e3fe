//! The AMX tile operations the kernel uses, twice: [`Hw`], the instructions themselves (inline
//! assembly: `ldtilecfg`, `tileloadd`, `tdpbssd`, `tilestored`, `tilezero`), and
//! [`Emu`], the same operations in plain Rust on the same bytes, so that the kernel runs (and is
//! tested) on a CPU without AMX. The kernel is generic over [`Tmul`]; nothing else differs.
//!
//! One tile configuration serves every format (ggml's `ggml_tile_config_init`): the K step is a
//! 32-element block, so A tiles are 16 rows × 32 bytes, B tiles 8 rows × 64 bytes (K/4 rows of
//! 16 outputs × 4 bytes: AMX's VNNI layout), C tiles 16 × 16 i32. Registers: B in tmm0-1, A in
//! tmm2-3, C in tmm4-7 (C = 4 + a + 2·b for A register 2 + a and B register b).

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
pub(super) struct TileCfg {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// The one configuration: B 8 × 64 bytes, A 16 × 32, C 16 × 64 (16 i32).
pub(super) const CFG: TileCfg = {
    let mut colsb = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        (rows[t], colsb[t]) = match t {
            0 | 1 => (8, 64),
            2 | 3 => (16, 32),
            _ => (16, 64),
        };
        t += 1;
    }
    TileCfg { palette: 1, start_row: 0, reserved: [0; 14], colsb, rows }
};

/// The tile operations, on registers named by const parameters (0-7).
///
/// # Safety
/// After `configure`, on the same thread; pointers valid for the configured tile shape at the
/// given stride; for [`Hw`], a CPU with AMX-INT8 and the OS's permission.
pub(super) trait Tmul {
    /// Makes the tiles hold `CFG` (on this thread).
    unsafe fn configure(&mut self);
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize);
    unsafe fn zero<const T: u8>(&mut self);
    /// C += A·B with signed bytes on both sides (`tdpbssd`).
    unsafe fn dpbssd<const C: u8, const A: u8, const B: u8>(&mut self);
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize);
}

/// The instructions. Only constructed where `super::enabled` found AMX-INT8 and the permission.
pub(super) struct Hw;

thread_local! {
    /// Whether this thread's tiles hold `CFG`.
    static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Tmul for Hw {
    /// `ldtilecfg` on a thread's first task only, and the tiles are never released (ggml's
    /// `ggml_tile_config_init`): nothing else in the process uses them, and `ldtilecfg` plus
    /// `tilerelease` around every task cost ~3 µs a task on the H200 host's Xeon (a 512-input
    /// 1536 × 576 Q8_0 matmul at one thread: 3.70 → 2.59 ms without them).
    #[inline(always)]
    unsafe fn configure(&mut self) {
        if !CONFIGURED.get() {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &CFG as *const TileCfg, options(nostack, readonly, preserves_flags));
            CONFIGURED.set(true);
        }
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        // The operand order of `tileloadd tmmN, [base + stride]` puts the register first.
        match T {
            0 => {
                std::arch::asm!("tileloadd tmm0, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly, preserves_flags))
            }
            1 => {
                std::arch::asm!("tileloadd tmm1, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly, preserves_flags))
            }
            2 => {
                std::arch::asm!("tileloadd tmm2, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly, preserves_flags))
            }
            3 => {
                std::arch::asm!("tileloadd tmm3, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly, preserves_flags))
            }
            _ => unreachable!("tile {T} is not an A or B register"),
        }
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        match T {
            4 => std::arch::asm!("tilezero tmm4", options(nostack, nomem, preserves_flags)),
            5 => std::arch::asm!("tilezero tmm5", options(nostack, nomem, preserves_flags)),
            6 => std::arch::asm!("tilezero tmm6", options(nostack, nomem, preserves_flags)),
            7 => std::arch::asm!("tilezero tmm7", options(nostack, nomem, preserves_flags)),
            _ => unreachable!("tile {T} is not a C register"),
        }
    }
    #[inline(always)]
    unsafe fn dpbssd<const C: u8, const A: u8, const B: u8>(&mut self) {
        match (C, A, B) {
            (4, 2, 0) => std::arch::asm!("tdpbssd tmm4, tmm2, tmm0", options(nostack, nomem, preserves_flags)),
            (5, 3, 0) => std::arch::asm!("tdpbssd tmm5, tmm3, tmm0", options(nostack, nomem, preserves_flags)),
            (6, 2, 1) => std::arch::asm!("tdpbssd tmm6, tmm2, tmm1", options(nostack, nomem, preserves_flags)),
            (7, 3, 1) => std::arch::asm!("tdpbssd tmm7, tmm3, tmm1", options(nostack, nomem, preserves_flags)),
            _ => unreachable!("tdpbssd tmm{C}, tmm{A}, tmm{B}: not a register triple the kernel uses"),
        }
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        match T {
            4 => {
                std::arch::asm!("tilestored [{p} + {s}*1], tmm4", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            5 => {
                std::arch::asm!("tilestored [{p} + {s}*1], tmm5", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            6 => {
                std::arch::asm!("tilestored [{p} + {s}*1], tmm6", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            7 => {
                std::arch::asm!("tilestored [{p} + {s}*1], tmm7", p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags))
            }
            _ => unreachable!("tile {T} is not a C register"),
        }
    }
}

/// The tile registers in memory and the instructions' arithmetic in Rust (Intel SDM, `TDPBSSD`:
/// for m < rows(C), n < colsb(C)/4, k < colsb(A)/4: C[m][n] += Σ_{t<4} A[m][4k+t]·B[k][4n+t],
/// bytes sign-extended, i32 wrapping). Loads fill `rows` × `colsb` bytes and zero the rest, as
/// the hardware does.
pub(super) struct Emu {
    t: [[[u8; 64]; 16]; 8],
    configured: bool,
}

impl Emu {
    pub(super) fn new() -> Emu {
        Emu { t: [[[0; 64]; 16]; 8], configured: false }
    }

    fn shape(&self, t: u8) -> (usize, usize) {
        assert!(self.configured, "tile operation before ldtilecfg");
        (CFG.rows[t as usize] as usize, CFG.colsb[t as usize] as usize)
    }
}

impl Tmul for Emu {
    unsafe fn configure(&mut self) {
        // ldtilecfg zeroes every tile.
        *self = Emu { t: [[[0; 64]; 16]; 8], configured: true };
    }
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for (r, row) in self.t[T as usize].iter_mut().enumerate() {
            *row = [0; 64];
            if r < rows {
                row[..colsb].copy_from_slice(std::slice::from_raw_parts(p.add(r * stride), colsb));
            }
        }
    }
    unsafe fn zero<const T: u8>(&mut self) {
        self.shape(T);
        self.t[T as usize] = [[0; 64]; 16];
    }
    unsafe fn dpbssd<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (m_rows, c_colsb) = self.shape(C);
        let (a_rows, a_colsb) = self.shape(A);
        let (b_rows, b_colsb) = self.shape(B);
        let k4 = a_colsb / 4;
        assert!(a_rows == m_rows && b_rows == k4 && b_colsb == c_colsb, "tdpbssd: tile shapes do not fit");
        let (a, b) = (self.t[A as usize], self.t[B as usize]);
        let c = &mut self.t[C as usize];
        for m in 0..m_rows {
            for n in 0..c_colsb / 4 {
                let mut acc = i32::from_le_bytes(c[m][4 * n..4 * n + 4].try_into().unwrap());
                for k in 0..k4 {
                    for t in 0..4 {
                        let p = (a[m][4 * k + t] as i8 as i32) * (b[k][4 * n + t] as i8 as i32);
                        acc = acc.wrapping_add(p);
                    }
                }
                c[m][4 * n..4 * n + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(self.t[T as usize][r].as_ptr(), p.add(r * stride), colsb);
        }
    }
}
