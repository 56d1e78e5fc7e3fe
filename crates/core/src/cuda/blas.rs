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
    /// Earlier tunings of this GPU and cuBLASLt version (see `tune_count`).
    tuned: Mutex<Tuned>,
}

/// The algorithm each tuned product shape chose, as its index in the heuristic's list, kept in
/// `cublaslt-tune.tsv` in the kernel cache folder: a later process (a resumed run) takes the same
/// algorithms, so its products give the same bits, and does not time them again.
struct Tuned {
    file: Option<std::path::PathBuf>,
    prefix: String,
    chosen: HashMap<String, usize>,
}

impl Tuned {
    fn load(stream: &CudaStream) -> Tuned {
        let gpu = stream.context().name().unwrap_or_else(|_| "unknown GPU".into());
        let prefix = format!("{gpu}\tcublasLt {}", unsafe { sys::cublasLtGetVersion() });
        let file = super::compile::cache_dir().map(|d| d.join("cublaslt-tune.tsv"));
        let chosen = file.as_ref().map(|f| Self::read(f, &prefix)).unwrap_or_default();
        Tuned { file, prefix, chosen }
    }

    /// The file's choices for this GPU and version. A key's first line wins (processes that
    /// tuned one shape at once all adopt the one written first, see `keep`); a line that does
    /// not parse, or an index past any heuristic list (`MAX_TUNE`), is skipped.
    fn read(f: &std::path::Path, prefix: &str) -> HashMap<String, usize> {
        let mut chosen = HashMap::new();
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Some((key, i)) = line.rsplit_once('\t') {
                if let (true, Ok(i)) = (key.starts_with(prefix), i.parse::<usize>()) {
                    if i < MAX_TUNE {
                        chosen.entry(key.to_string()).or_insert(i);
                    }
                }
            }
        }
        chosen
    }

    fn key(&self, g: &Gemm, op: Operand, out: Operand) -> String {
        let (ta, tb, m, n, k, lda, ldb, ldc) = g.key();
        format!("{}\t{m}x{n}x{k} ld {lda} {ldb} {ldc} t {ta} {tb} {op:?}->{out:?}", self.prefix)
    }

    /// Remembers this process's choice `i` for `key` and returns the one to use: if another
    /// process (a rank of the same run, started together) has written the key meanwhile, its
    /// choice, so that all adopt the file's first line as a later resume will; else `i`,
    /// appended to the file (one short line: an append is atomic, so processes do not tear
    /// it). A file that cannot be written is not an error: the choice lasts for this process.
    fn keep(&mut self, key: String, i: usize) -> usize {
        let mut i = i;
        if let Some(f) = &self.file {
            use std::io::Write;
            match Self::read(f, &self.prefix).get(&key) {
                Some(&first) => i = first,
                None => {
                    let _ = std::fs::create_dir_all(f.parent().unwrap_or(f));
                    if let Ok(mut w) = std::fs::OpenOptions::new().create(true).append(true).open(f) {
                        let _ = w.write_all(format!("{key}\t{i}\n").as_bytes());
                    }
                }
            }
        }
        self.chosen.insert(key, i);
        i
    }
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

static TUNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets plans made from now on time the heuristic's candidates (`tune_count`) and read the
/// tuning cache: a training run's products repeat every step, so the fastest pays back; an
/// inference process (serve's varied prefill lengths) keeps the heuristic's first, untimed.
pub fn enable_tuning() {
    TUNING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// How many of the heuristic's algorithms a large product's plan times on its first call, keeping
/// the fastest, once `enable_tuning` was called (1 before): 8, or `SMELT_CUBLASLT_TUNE=N` (0 or 1: the heuristic's first, untimed). Worth
/// 2-3% of a training step at the 124M and 1B shapes on an H200 (2026-12-04); the choice is
/// kept on disk (`Tuned`) so a resumed run uses the same algorithms.
/// `SMELT_CUBLASLT_TUNE_LOG=1` prints each shape's times.
fn tune_count() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if !TUNING.load(std::sync::atomic::Ordering::Relaxed) {
        return 1;
    }
    *N.get_or_init(|| {
        std::env::var("SMELT_CUBLASLT_TUNE").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(8).min(MAX_TUNE)
    })
}

/// The most algorithms a plan asks the heuristic for (and the largest index the cache file may
/// hold).
const MAX_TUNE: usize = 32;

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
        let tuned = Mutex::new(Tuned::load(&stream));
        Ok(Lt { handle, workspace, stream, plans: Mutex::new(HashMap::new()), tuned })
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
                        self.plan(g, op, out, (a, b, c_in.unwrap_or(c)))
                            .with_context(|| format!("cuBLASLt plan for {op:?} operands, {out:?} result, {g:?}"))?,
                    );
                    plans.insert((g, op, out), p.clone());
                    p
                }
            }
        };
        self.launch(&g, &plan, &plan.algo, (a, b, c_in.unwrap_or(c)), c).map_err(e("matmul"))?;
        if super::profile::enabled() {
            let base = match (op, out) {
                (Operand::F32, _) => "cublasLt f32",
                (Operand::Bf16, Operand::F32) => "cublasLt bf16->f32",
                (Operand::Bf16, Operand::Bf16) => "cublasLt bf16->bf16",
            };
            super::profile::record(&super::profile::gemm_label(base, g.m, g.n, g.k, g.ta, g.tb, g.beta != 0.0));
        }
        Ok(())
    }

    /// `ptrs` (A, B, C) are the first call's operands: with `SMELT_CUBLASLT_TUNE=N` the plan
    /// times the heuristic's first N algorithms on them (into a scratch D, so C is left as it
    /// is) and keeps the fastest, for products of at least 2^30 multiply-adds outside a graph
    /// capture.
    unsafe fn plan(&self, g: Gemm, op: Operand, out: Operand, ptrs: (u64, u64, u64)) -> Result<Plan> {
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
        // With tuning off (`SMELT_CUBLASLT_TUNE=0`) the cache is not read either: the
        // heuristic's first, as before tuning existed.
        let key = {
            let t = self.tuned.lock().map_err(|_| anyhow!("cuBLASLt tuning cache poisoned"))?;
            let key = t.key(&g, op, out);
            (t.chosen.get(&key).copied().filter(|_| tune_count() > 1), key)
        };
        let big = g.m.saturating_mul(g.n).saturating_mul(g.k) >= 1 << 30;
        let capturing = !matches!(
            self.stream.capture_status(),
            Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        );
        let tune = if tune_count() > 1 && big && !capturing && key.0.is_none() { tune_count() } else { 1 };
        let want = key.0.map_or(tune, |i| i + 1);
        let mut found: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(want);
        let mut count = 0i32;
        sys::cublasLtMatmulAlgoGetHeuristic(
            self.handle,
            desc.0,
            la.0,
            lb.0,
            lc.0,
            lc.0,
            pref.0,
            want as i32,
            found.as_mut_ptr(),
            &mut count,
        )
        .result()
        .map_err(e("no algorithm"))?;
        found.set_len(count.clamp(0, want as i32) as usize);
        // A failed candidate keeps its place (the cached index counts it) and is never chosen.
        if found.first().is_none_or(|h| h.state != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS) {
            bail!("cuBLASLt: the heuristic offered no algorithm");
        }
        let ok = |i: usize| found.get(i).is_some_and(|h| h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        let mut plan = Plan { la, lb, lc, desc, algo: found[0].algo };
        match key.0 {
            Some(i) if ok(i) => plan.algo = found[i].algo,
            Some(_) => {}
            None if found.len() > 1 => {
                // Timing needs a scratch D: where memory is too tight for it, the heuristic's
                // first, not kept (a later process may time it).
                if let Ok((best, times)) = self.time_algos(&g, out, &plan, &found, ptrs) {
                    let mut t = self.tuned.lock().map_err(|_| anyhow!("cuBLASLt tuning cache poisoned"))?;
                    let used = t.keep(key.1.clone(), best);
                    if std::env::var_os("SMELT_CUBLASLT_TUNE_LOG").is_some() {
                        let ms: Vec<String> =
                            times.iter().map(|t| if t.is_finite() { format!("{t:.3}") } else { "-".into() }).collect();
                        eprintln!(
                            "cuBLASLt tune {}: #{best} of {} (ms: {}), using #{used}",
                            key.1,
                            found.len(),
                            ms.join(" ")
                        );
                    }
                    if ok(used) {
                        plan.algo = found[used].algo;
                    }
                }
            }
            None => {}
        }
        Ok(plan)
    }

    /// One cuBLASLt call of `plan` with `algo`: D = alpha·op(A)·op(B) + beta·C on the handle's
    /// stream and workspace (`abc`: A, B, C; `d`: D).
    unsafe fn launch(
        &self,
        g: &Gemm,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        (a, b, c): (u64, u64, u64),
        d: u64,
    ) -> std::result::Result<(), cudarc::cublaslt::result::CublasError> {
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
            c as *const c_void,
            plan.lc.0,
            d as *mut c_void,
            plan.lc.0,
            algo,
            w as *mut c_void,
            WORKSPACE,
            self.stream.cu_stream() as sys::cudaStream_t,
        )
    }

    /// Each candidate's time (ms, the mean of 3 runs after one warm-up; infinite when it fails)
    /// on the operands `ptrs`, writing a scratch D; and the fastest's index.
    unsafe fn time_algos(
        &self,
        g: &Gemm,
        out: Operand,
        plan: &Plan,
        found: &[sys::cublasLtMatmulHeuristicResult_t],
        (a, b, c): (u64, u64, u64),
    ) -> Result<(usize, Vec<f32>)> {
        let bytes = (g.ldc as usize) * (g.n as usize) * if out == Operand::F32 { 4 } else { 2 };
        let scratch = self.stream.alloc::<u8>(bytes).map_err(e("tuning scratch"))?;
        let (d, _gd) = scratch.device_ptr(&self.stream);
        let run = |algo: &sys::cublasLtMatmulAlgo_t| self.launch(g, plan, algo, (a, b, c), d);
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(found.len());
        for h in found {
            if h.state != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                times.push(f32::INFINITY);
                continue;
            }
            let t = (|| -> Option<f32> {
                run(&h.algo).ok()?;
                let start = self.stream.record_event(timing).ok()?;
                for _ in 0..3 {
                    run(&h.algo).ok()?;
                }
                let end = self.stream.record_event(timing).ok()?;
                start.elapsed_ms(&end).ok().map(|ms| ms / 3.0)
            })();
            times.push(t.unwrap_or(f32::INFINITY));
        }
        self.stream.synchronize().map_err(e("tuning"))?;
        let best = (0..times.len()).min_by(|&i, &j| times[i].total_cmp(&times[j])).unwrap_or(0);
        Ok((best, times))
    }
}
