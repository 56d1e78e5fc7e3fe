//! Muon on CUDA: not written yet. The step refuses with an error rather than copying the
//! matrices to the host behind the caller's back (a silent fallback would hide a 100× slower
//! step). The CPU reference is `super::muon_update`; a CUDA version is five cuBLASLt GEMMs per
//! Newton–Schulz step plus two elementwise kernels.

use super::Muon;
use crate::ops::adamw::GradNorm;
use crate::Tensor;
use anyhow::{bail, Result};

impl super::MuonKernels for crate::backend::Cuda {
    fn muon(
        &self,
        _o: &Muon,
        _decay: &[bool],
        params: &mut [Tensor],
        _grads: &[Tensor],
        _momentum: &mut [Tensor],
        _norm: Option<&GradNorm>,
    ) -> Result<()> {
        let at = params.first().map(|p| p.device().to_string()).unwrap_or_default();
        bail!("--optimizer muon runs on the CPU only for now (its parameters are on {at}); use --device cpu, or --optimizer adamw on the GPU")
    }
}
