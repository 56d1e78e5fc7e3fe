//! DPO's loss, its logged rewards and its gradients against PyTorch + transformers
//! (scripts/dpo_peer.py) on the same pairs, with a policy and a reference model that differ,
//! both saved as Hugging Face folders: the reference log-probabilities smelt computes up front,
//! then the first update of one micro-batch of pairs and of two (gradient accumulation, 3 + 2
//! pairs), each loss and metric ≤ 1e-5 relative (a reward: relative to β·|logps|, the size of
//! the log-probabilities it is the difference of) and every gradient tensor within 1e-4 of its
//! peer's largest entry. The reference runs each sequence alone in float64 (no padding).
//! Skips loudly (`Need::Input`) when the project's venv lacks torch/transformers.

use smelt_core::rng::Rng;
use smelt_core::Tensor;
use smelt_data::dpo::{Pair, PairPlan};
use smelt_data::sft::{Example, IGNORE};
use smelt_model::{Model, ModelConfig};
use smelt_train::dpo::DpoLayout;
use smelt_train::Layout;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const BETA: f64 = 0.3;

/// A 2-layer GQA Llama with random weights of scale `w` around `center` (seeded).
fn random_model(seed: u64, around: Option<&Model>) -> Model {
    let mut cfg = ModelConfig::llama(96, 64, 2, 4, 2, 160);
    cfg.max_pos = 256;
    let base = Model::init(cfg, 3).unwrap();
    let mut rng = Rng::new(seed);
    let params = base
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v: Vec<f32> = (0..p.numel())
                .map(|j| {
                    let z = rng.normal() as f32;
                    match around {
                        // The reference: the policy moved a little, so the rewards are not 0.
                        Some(m) => m.params[i].as_f32().unwrap()[j] + 0.03 * z,
                        None if p.shape().len() == 1 => 1.0 + 0.1 * z,
                        None => 0.12 * z,
                    }
                })
                .collect();
            Tensor::from_f32(v, p.shape()).unwrap()
        })
        .collect();
    base.with_params(params).unwrap()
}

/// Five pairs: a shared prompt of 2..=9 tokens outside the loss, completions of 1..=12 tokens.
fn pairs() -> Vec<Pair> {
    let mut rng = Rng::new(5);
    let mut tokens = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(96) as u32).collect() };
    (0..5)
        .map(|i| {
            let prompt = tokens(2 + (i * 3) % 8);
            let mut ex = |n: usize| {
                let ids: Vec<u32> = prompt.iter().copied().chain(tokens(n)).collect();
                let loss = (0..ids.len()).map(|j| j >= prompt.len()).collect();
                Example { ids, loss }
            };
            Pair { chosen: ex(1 + (i * 5) % 12), rejected: ex(1 + (i * 7 + 3) % 12) }
        })
        .collect()
}

fn row(x: &[u32], y: &[u32]) -> serde_json::Value {
    let y: Vec<i64> = y.iter().map(|&t| if t == IGNORE { -100 } else { t as i64 }).collect();
    serde_json::json!([x, y])
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn dpo_loss_rewards_and_gradients_match_pytorch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(py) = smelt_testing::peer_python("torch, transformers, safetensors") else { return };
    let dir: PathBuf = std::env::temp_dir().join(format!("smelt-dpo-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = random_model(17, None);
    let reference = random_model(29, Some(&policy));
    for m in ["policy", "reference"] {
        std::fs::create_dir_all(dir.join(m)).unwrap();
    }
    policy.save(&dir.join("policy")).unwrap();
    reference.save(&dir.join("reference")).unwrap();

    // Batches of 3 pairs in file order: the 1-micro-batch case is pairs 0..3, the accumulated
    // one pairs 0..3 then 3..5 (unequal micro-batches, weighted by their pairs).
    let pairs = pairs();
    let plan = PairPlan::new(&pairs, 3, 64, false, 0, 0).unwrap();
    let case = |accum: u64| -> (Vec<(Tensor, Tensor)>, Vec<Vec<usize>>) {
        (0..accum)
            .map(|k| {
                let b = plan.batch(k);
                let rows = 2 * b.pairs.len();
                let xy = (
                    Tensor::from_u32(b.inputs, &[rows, b.t]).unwrap(),
                    Tensor::from_u32(b.targets, &[rows, b.t]).unwrap(),
                );
                (xy, b.pairs)
            })
            .unzip()
    };
    let cases = [("one", case(1)), ("accum", case(2))];
    let spec = serde_json::json!({"beta": BETA, "cases": cases.iter().map(|(name, (_, idx))| {
        let ps: Vec<serde_json::Value> = idx.iter().flatten().map(|&i| {
            let (c, r) = plan.pair(i);
            serde_json::json!([row(&c.0, &c.1), row(&r.0, &r.1)])
        }).collect();
        serde_json::json!({"name": name, "pairs": ps})
    }).collect::<Vec<_>>()});
    std::fs::write(dir.join("cases.json"), spec.to_string()).unwrap();
    let o = Command::new(&py).arg(root.join("scripts/dpo_peer.py")).arg(&dir).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "scripts/dpo_peer.py failed:\n{out}\n{err}");
    println!("{out}");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref.json")).unwrap()).unwrap();

    for (name, (micro, idx)) in &cases {
        let w = &want[*name];
        // The reference log-probabilities, as the run computes them before step 0.
        let mut refs = Vec::new();
        let mut k = 0;
        for ((x, y), ids) in micro.iter().zip(idx) {
            let lp = smelt_train::dpo::logps(&reference, x, y).unwrap();
            let n = ids.len();
            let r: Vec<(f64, f64)> = (0..n).map(|j| (lp[j], lp[n + j])).collect();
            for &(c, rj) in &r {
                let peer = &w["reference"][k];
                let worst = rel(c, peer[0].as_f64().unwrap()).max(rel(rj, peer[1].as_f64().unwrap()));
                assert!(worst <= 1e-5, "{name}: reference log-probs of pair {k}: ({c}, {rj}) vs {peer}");
                k += 1;
            }
            refs.push(r);
        }
        let counts: Vec<usize> = idx.iter().map(Vec::len).collect();
        let total: usize = counts.iter().sum();
        let dpo = Arc::new(DpoLayout { beta: BETA, reference: refs });
        let layout = Layout {
            segments: Vec::new(),
            weights: Some(counts.iter().map(|&n| n as f64 / total as f64).collect()),
            dpo: Some(dpo.clone()),
            ..Layout::default()
        };
        let (loss, grads, stats) = smelt_train::gradients_and_stats(&policy, micro, &layout).unwrap();
        let stats = stats.unwrap();
        let wl = w["loss"].as_f64().unwrap();
        let mut worst_metric = (rel(loss, wl), "loss".to_string());
        for (k, v) in stats.means("") {
            let p = w[&k].as_f64().unwrap();
            // A reward is β times a difference of two log-probabilities up to ~100× larger than
            // it: its error is measured against what it is computed from, β·|logps|, when
            // that is the larger (f32 log-probs of ~30 carry ~1e-6 of rounding).
            let lp = w["logps/chosen"].as_f64().unwrap().abs().min(w["logps/rejected"].as_f64().unwrap().abs());
            let scale = if k.starts_with("rewards/") && k != "rewards/accuracies" { BETA * lp } else { 0.0 };
            let e = (v - p).abs() / p.abs().max(scale);
            println!("{name}: {k} {v:.10} vs PyTorch {p:.10}");
            if e > worst_metric.0 {
                worst_metric = (e, k);
            }
        }
        let refs = smelt_model::io::read_safetensors(&dir.join(format!("ref_{name}.safetensors"))).unwrap();
        assert_eq!(refs.len(), policy.names.len(), "{name}: parameter count");
        let mut worst = (0f64, String::new());
        for (pname, g) in policy.names.iter().zip(&grads) {
            let r = refs[pname].as_f32().unwrap();
            let g = g.as_f32().unwrap();
            let scale = r.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            let diff = g.iter().zip(r).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            if diff / scale > worst.0 {
                worst = (diff / scale, pname.clone());
            }
        }
        println!(
            "{name}: loss {loss:.10} vs PyTorch {wl:.10}; worst metric {} at {:.2e}; worst gradient {} at {:.2e} of its largest entry",
            worst_metric.1, worst_metric.0, worst.1, worst.0
        );
        assert!(stats.accuracies > 0.0 && stats.accuracies < stats.pairs as f64, "{name}: all pairs alike: {stats:?}");
        assert!(worst_metric.0 <= 1e-5, "{name}: {} off by {:.2e}", worst_metric.1, worst_metric.0);
        assert!(worst.0 <= 1e-4, "{name}: gradient {} off by {:.2e} of its scale", worst.1, worst.0);
        // The check can fail: the policy scored against itself (no reference), or a mean of
        // per-micro-batch means, is another number.
        let own: Vec<Vec<(f64, f64)>> = micro
            .iter()
            .zip(idx)
            .map(|((x, y), ids)| {
                let lp = smelt_train::dpo::logps(&policy, x, y).unwrap();
                (0..ids.len()).map(|j| (lp[j], lp[ids.len() + j])).collect()
            })
            .collect();
        let selfref = Layout { dpo: Some(Arc::new(DpoLayout { beta: BETA, reference: own })), ..layout.clone() };
        let (l0, _) = smelt_train::gradients(&policy, micro, &selfref).unwrap();
        println!("{name}: against the policy itself the loss would be {l0:.10} (ln 2)");
        assert!(
            (l0 - std::f64::consts::LN_2).abs() < 1e-6 && rel(l0, wl) > 1e-3,
            "{name}: the reference made no difference"
        );
        if micro.len() > 1 {
            let plain = Layout { weights: None, ..layout.clone() };
            let (lp, _) = smelt_train::gradients(&policy, micro, &plain).unwrap();
            println!("{name}: a mean of per-micro-batch means would be {lp:.10} (rel {:.2e})", rel(lp, wl));
            assert!(rel(lp, wl) > 1e-4, "{name}: micro-batches too alike to tell the weightings apart");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
