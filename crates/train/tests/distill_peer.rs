//! The distillation loss of `smelt distill` against PyTorch + transformers
//! (scripts/distill_peer.py) on the same student, teacher and batch, at step 0: the loss
//! τ²·KL(teacher ‖ student) + α·CE ≤ 1e-5 relative and every student gradient ≤ 1e-5 relative
//! (‖smelt − torch‖ / ‖torch‖, the reference in float64), with the teacher run on the fly
//! (every logit) and from its top-k logits. Rows hold positions outside the loss (a prompt,
//! padding), which both terms must leave out. Skips loudly when the venv lacks torch/transformers.

mod common;

use smelt_core::ops::cross_entropy::IGNORE;
use smelt_core::ops::distill::{DistillLoss, TeacherLogits};
use smelt_core::rng::Rng;
use smelt_core::Tensor;
use smelt_model::{Model, ModelConfig};
use smelt_train::distill::{teacher_logits, top_k};
use smelt_train::Layout;
use std::process::Command;

const V: usize = 96;

/// A Llama with weights large enough that its distributions are far from uniform.
fn model(dim: usize, layers: usize, seed: u64) -> Model {
    let mut cfg = ModelConfig::llama(V, dim, layers, 4, 2, dim * 5 / 2);
    cfg.max_pos = 64;
    common::visible_weights(Model::init(cfg, seed).unwrap(), seed + 100)
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in got.iter().zip(want) {
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn distill_loss_and_gradients_match_pytorch() {
    let Some(py) = smelt_testing::peer_python("torch, transformers, safetensors") else { return };
    let dir = std::env::temp_dir().join(format!("smelt-distill-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (student, teacher) = (model(64, 2, 3), model(96, 3, 7));
    std::fs::create_dir_all(dir.join("student")).unwrap();
    std::fs::create_dir_all(dir.join("teacher")).unwrap();
    student.save(&dir.join("student")).unwrap();
    teacher.save(&dir.join("teacher")).unwrap();
    // 3 rows × 20: row 0 all in the loss, row 1 a 6-token prompt outside it, row 2 padded after 13.
    let (b, t) = (3, 20);
    let mut rng = Rng::new(5);
    let ids: Vec<u32> = (0..b * (t + 1)).map(|_| rng.below(V as u64) as u32).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in 0..b {
        let row = &ids[r * (t + 1)..(r + 1) * (t + 1)];
        x.extend_from_slice(&row[..t]);
        y.extend((0..t).map(|i| match (r, i) {
            (1, i) if i < 6 => IGNORE,
            (2, i) if i >= 13 => IGNORE,
            _ => row[i + 1],
        }));
    }
    let (xt, yt) = (Tensor::from_u32(x.clone(), &[b, t]).unwrap(), Tensor::from_u32(y.clone(), &[b, t]).unwrap());
    let o = DistillLoss { temperature: 2.0, alpha: 0.5 };
    let full = teacher_logits(&teacher, &xt, None).unwrap();
    let k = 7;
    let (top_ids, top) = top_k(full.as_f32().unwrap(), V, k);
    let cases = [
        ("full", TeacherLogits { ids: None, logits: full.clone() }),
        (
            "topk",
            TeacherLogits {
                ids: Some(Tensor::from_u32(top_ids.clone(), &[b * t, k]).unwrap()),
                logits: Tensor::from_f32(top.clone(), &[b * t, k]).unwrap(),
            },
        ),
    ];
    let yj: Vec<Vec<i64>> =
        y.chunks(t).map(|r| r.iter().map(|&v| if v == IGNORE { -100 } else { v as i64 }).collect()).collect();
    let spec = serde_json::json!({
        "temperature": o.temperature, "alpha": o.alpha,
        "inputs": x.chunks(t).collect::<Vec<_>>(), "targets": yj,
        "cases": [
            {"name": "full", "topk": null},
            {"name": "topk", "topk": {"ids": top_ids.chunks(k).collect::<Vec<_>>(), "logits": top.chunks(k).collect::<Vec<_>>()}},
        ],
    });
    std::fs::write(dir.join("cases.json"), spec.to_string()).unwrap();
    let out =
        Command::new(&py).arg(smelt_testing::repo_root().join("scripts/distill_peer.py")).arg(&dir).output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/distill_peer.py failed:\n{so}\n{se}");
    println!("{so}");
    let want_loss: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref_loss.json")).unwrap()).unwrap();
    let micro = [(xt.clone(), yt.clone())];
    for (name, teacher) in cases {
        let layout = Layout { distill: Some(o), teacher: vec![teacher], ..Layout::default() };
        let (loss, grads) = smelt_train::gradients(&student, &micro, &layout).unwrap();
        let want = want_loss[name].as_f64().unwrap();
        let lrel = (loss - want).abs() / want.abs();
        let refs = smelt_model::io::read_safetensors(&dir.join(format!("ref_{name}.safetensors"))).unwrap();
        assert_eq!(refs.len(), student.names.len(), "{name}: parameter count");
        let mut worst = (0f64, String::new());
        for (n, g) in student.names.iter().zip(&grads) {
            let r = rel(g.as_f32().unwrap(), refs[n].as_f32().unwrap());
            if r > worst.0 {
                worst = (r, n.clone());
            }
        }
        println!(
            "{name}: loss {loss:.10} vs PyTorch {want:.10} (rel {lrel:.2e}); worst gradient {} at {:.2e}",
            worst.1, worst.0
        );
        assert!(lrel <= 1e-5, "{name}: loss {loss} vs {want}");
        assert!(worst.0 <= 1e-5, "{name}: gradient {} off by {:.2e}", worst.1, worst.0);
        // The check can fail: the plain next-token loss of the same batch is another number.
        let (plain, _) = smelt_train::gradients(&student, &micro, &Layout::default()).unwrap();
        assert!((plain - want).abs() / want > 1e-3, "{name}: the distillation loss equals the plain loss");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
