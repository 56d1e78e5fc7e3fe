//! `--optimizer muon` against PyTorch (scripts/muon_peer.py: Keller Jordan's `muon_update` and
//! `zeropower_via_newtonschulz5` as his repository has them, in f32; torch.optim.AdamW for the
//! rest; torch's clip_grad_norm_ first): three steps of `Optimizer::step` on the same
//! parameters and gradients, wide, tall and square matrices on Muon and a matrix and a vector on
//! AdamW, every parameter and momentum buffer ≤ 1e-5 relative (‖smelt − torch‖ / ‖torch‖).
//! Skips loudly when the venv lacks torch.

use smelt_core::ops::adamw::{grad_norm, AdamW};
use smelt_core::ops::muon::Muon;
use smelt_core::rng::Rng;
use smelt_core::Tensor;
use smelt_train::optim::{Hyper, Optimizer, OptimizerKind};
use std::process::Command;

#[test]
fn muon_steps_match_pytorch() {
    let Some(py) = smelt_testing::peer_python("torch") else { return };
    let dir = std::env::temp_dir().join(format!("smelt-muon-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // (name, shape, on Muon)
    let specs: [(&str, &[usize], bool); 5] = [
        ("embed", &[16, 8], false),
        ("wide", &[8, 24], true),
        ("tall", &[24, 8], true),
        ("square", &[12, 12], true),
        ("norm", &[8], false),
    ];
    let mut rng = Rng::new(29);
    let mut rand = |n: usize, s: f64| (0..n).map(|_| (s * rng.normal()) as f32).collect::<Vec<f32>>();
    let mut params: Vec<Tensor> =
        specs.iter().map(|(_, sh, _)| Tensor::from_f32(rand(sh.iter().product(), 0.5), sh).unwrap()).collect();
    let steps: Vec<Vec<Vec<f32>>> =
        (0..3).map(|_| specs.iter().map(|(_, sh, _)| rand(sh.iter().product(), 0.3)).collect()).collect();
    let (clip, adamw) = (1.0, AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
    let muon = Muon { lr: 0.02, momentum: 0.95, weight_decay: 0.1 };
    let case = serde_json::json!({
        "muon": {"lr": muon.lr, "momentum": muon.momentum, "weight_decay": muon.weight_decay},
        "adamw": {"lr": adamw.lr, "betas": [adamw.beta1, adamw.beta2], "eps": adamw.eps, "weight_decay": adamw.weight_decay},
        "clip": clip,
        "params": specs.iter().zip(&params).map(|((n, sh, m), p)| serde_json::json!({
            "name": n, "shape": sh, "muon": m, "data": p.as_f32().unwrap()})).collect::<Vec<_>>(),
        "grads": steps,
    });
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let o = Command::new(&py).arg(smelt_testing::repo_root().join("scripts/muon_peer.py")).arg(&dir).output().unwrap();
    assert!(o.status.success(), "scripts/muon_peer.py failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref.json")).unwrap()).unwrap();

    let matrices: Vec<bool> = specs.iter().map(|s| s.2).collect();
    let mut opt = Optimizer::new(OptimizerKind::Muon, &params, &matrices);
    let hp = Hyper { adamw, muon: Some(muon) };
    let decay = vec![true; specs.len()];
    for g in &steps {
        let grads: Vec<Tensor> = g.iter().zip(&specs).map(|(v, s)| Tensor::from_f32(v.clone(), s.1).unwrap()).collect();
        let gn = grad_norm(&grads.iter().collect::<Vec<_>>(), clip, None).unwrap();
        assert!(gn.read().unwrap().1 < 1.0, "the case should clip");
        opt.step(&hp, &mut params, &grads, &decay, Some(&gn)).unwrap();
    }
    let names: Vec<String> = specs.iter().map(|s| s.0.to_string()).collect();
    let mut got: Vec<(String, Tensor)> = names.iter().cloned().zip(params.iter().cloned()).collect();
    got.extend(opt.named(&names).into_iter().filter(|(n, _)| n.ends_with(".momentum_buffer")));
    assert_eq!(got.len(), 8, "5 parameters and 3 momentum buffers");
    for (name, t) in &got {
        let w: Vec<f64> = want[name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} missing"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let g = t.as_f32().unwrap();
        let (mut num, mut den) = (0f64, 0f64);
        for (&a, &b) in g.iter().zip(&w) {
            num += (a as f64 - b).powi(2);
            den += b * b;
        }
        let rel = (num / den).sqrt();
        println!("{name}: relative difference {rel:.2e}");
        assert!(rel <= 1e-5, "{name}: {rel:.2e} from PyTorch");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
