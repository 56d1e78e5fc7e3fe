//! cuBLASLt, for the one matmul shape family `linear` needs. cudarc's safe wrapper wants A, B
//! and C of one type; mixed precision needs bf16 A/B with an f32 C (weight gradients) or a
//! bf16 C (activations), so this calls the `result` layer directly. Accumulation is f32
//! always. Column-major, as cuBLAS is: `linear`'s `cuda.rs` maps row-major
//! products onto it.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

pub struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    /// Descriptors and the chosen algorithm per problem shape: building them and asking the
    /// heuristic costs tens of microseconds, more than a small product itself (decode).
    plans: Mutex<HashMap<(Gemm, Operand, Operand), Arc<Plan>>>,
}

/// Everything `cublasLtMatmul` needs besides the pointers, for one problem shape.
struct Plan {
    la: Layout,
    lb: Layout,
    lc: Layout,
    desc: Desc,
    algo: sys::cublasLtMatmulAlgo_t,
}
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

// The handle is used from one stream; cuBLASLt handles are thread-safe to share.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

/// Element type of the A/B operands, or of C/D (accumulation is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    F32,
    Bf16,
}

/// One column-major product D(m×n) = alpha·op(A)·op(B) + beta·C, with D = C in place.
/// A is stored `a_rows × a_cols` (ld = lda), likewise B; op = transpose when `ta`/`tb`.
/// alpha and beta are passed at launch; they are not part of the plan's key.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub ta: bool,
    pub tb: bool,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub lda: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub alpha: f32,
    pub beta: f32,
}

impl PartialEq for Gemm {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Gemm {}
impl std::hash::Hash for Gemm {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}
impl Gemm {
    fn key(&self) -> (bool, bool, u64, u64, u64, i64, i64, i64) {
        (self.ta, self.tb, self.m, self.n, self.k, self.lda, self.ldb, self.ldc)
    }
}

const WORKSPACE: usize = 32 << 20;

struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_matrix_layout(self.0);
        }
    }
}
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_matmul_desc(self.0);
        }
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_matmul_pref(self.0);
        }
    }
}

fn e<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
    move |err| anyhow!("cuBLASLt {what}: {err:?}")
}

impl Lt {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        if !unsafe { sys::is_culib_present() } {
            bail!("cuBLASLt (libcublasLt.so.13) could not be loaded: add the CUDA 13 libraries to LD_LIBRARY_PATH");
        }
        let handle = result::create_handle().map_err(e("create"))?;
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE) }.map_err(e("workspace"))?;
        Ok(Lt { handle, workspace, stream, plans: Mutex::new(HashMap::new()) })
    }

    /// Runs `g` on raw device pointers: D = alpha·op(A)·op(B) + beta·C with A, B of type `op`,
    /// C and D of type `out` and one layout; C is `c_in` when given (read once, left as it
    /// is), else D itself. bf16 A/B with an f32 or a bf16 C, or all f32.
    ///
    /// # Safety
    /// The pointers must address buffers on this handle's device large enough for the layouts.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        g: Gemm,
        op: Operand,
        out: Operand,
        a: u64,
        b: u64,
        c: u64,
        c_in: Option<u64>,
    ) -> Result<()> {
        if op == Operand::F32 && out == Operand::Bf16 {
            bail!("cuBLASLt: f32 operands with a bf16 result are not supported (use bf16 operands)");
        }
        let plan = {
            let mut plans = self.plans.lock().map_err(|_| anyhow!("cuBLASLt plan cache poisoned"))?;
            match plans.get(&(g, op, out)) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(
                        self.plan(g, op, out)
                            .with_context(|| format!("cuBLASLt plan for {op:?} operands, {out:?} result, {g:?}"))?,
                    );
                    plans.insert((g, op, out), p.clone());
                    p
                }
            }
        };
        let (w, _g) = self.workspace.device_ptr(&self.stream);
        result::matmul(
            self.handle,
            plan.desc.0,
            &g.alpha as *const f32 as *const c_void,
            &g.beta as *const f32 as *const c_void,
            a as *const c_void,
            plan.la.0,
            b as *const c_void,
            plan.lb.0,
            c_in.unwrap_or(c) as *const c_void,
            plan.lc.0,
            c as *mut c_void,
            plan.lc.0,
            &plan.algo,
            w as *mut c_void,
            WORKSPACE,
            self.stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(e("matmul"))?;
        super::profile::record(match (op, out) {
            (Operand::F32, _) => "cublasLt f32",
            (Operand::Bf16, Operand::F32) => "cublasLt bf16->f32",
            (Operand::Bf16, Operand::Bf16) => "cublasLt bf16->bf16",
        });
        Ok(())
    }

    unsafe fn plan(&self, g: Gemm, op: Operand, out: Operand) -> Result<Plan> {
        let cty = |o: Operand| match o {
            Operand::F32 => sys::cudaDataType_t::CUDA_R_32F,
            Operand::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
        };
        // f32 accumulation and f32 alpha/beta for every combination.
        let (ty, compute) = (cty(op), sys::cublasComputeType_t::CUBLAS_COMPUTE_32F);
        let (ar, ac) = if g.ta { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.tb { (g.n, g.k) } else { (g.k, g.n) };
        let la = Layout(result::create_matrix_layout(ty, ar, ac, g.lda).map_err(e("layout A"))?);
        let lb = Layout(result::create_matrix_layout(ty, br, bc, g.ldb).map_err(e("layout B"))?);
        let lc = Layout(result::create_matrix_layout(cty(out), g.m, g.n, g.ldc).map_err(e("layout C"))?);
        let desc = Desc(result::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F).map_err(e("descriptor"))?);
        for (attr, t) in [
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, g.ta),
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, g.tb),
        ] {
            let v = t as i32;
            result::set_matmul_desc_attribute(desc.0, attr, &v as *const i32 as *const c_void, 4)
                .map_err(e("transpose"))?;
        }
        let pref = Pref(result::create_matmul_pref().map_err(e("preference"))?);
        let ws = WORKSPACE as u64;
        result::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const u64 as *const c_void,
            8,
        )
        .map_err(e("workspace size"))?;
        let heur = result::get_matmul_algo_heuristic(self.handle, desc.0, la.0, lb.0, lc.0, lc.0, pref.0)
            .map_err(e("no algorithm"))?;
        Ok(Plan { la, lb, lc, desc, algo: heur.algo })
    }
}
