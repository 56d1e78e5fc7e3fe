//! SFT's loss and gradients against PyTorch + transformers (scripts/sft_peer.py) on the same
//! examples and the same small random model, saved as a Hugging Face folder: padded rows,
//! packed rows, and gradient accumulation over micro-batches of unequal loss-token counts,
//! each at step 0, loss ≤ 1e-5 relative and every gradient tensor within 1e-4 of its peer's
//! largest entry. The reference runs each example alone in float64 (positions from 0, no
//! padding, no neighbours): what packing, masking and the token-count normalisation of
//! accumulation must add up to. Skips loudly (`Need::Input`) when the project's venv lacks
//! torch/transformers (scripts/install_torch.sh installs them).

mod common;

use smelt_core::ops::attention::Segments;
use smelt_core::rng::Rng;
use smelt_core::Tensor;
use smelt_data::sft::{Example, SftPlan, IGNORE};
use smelt_model::{Model, ModelConfig};
use smelt_train::Layout;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const SEQ: usize = 48;

/// A 2-layer GQA Llama with weights large enough that tokens' losses differ visibly.
fn model() -> Model {
    let mut cfg = ModelConfig::llama(96, 64, 2, 4, 2, 160);
    cfg.max_pos = 256;
    common::visible_weights(Model::init(cfg, 3).unwrap(), 17)
}

/// Examples of 4..=27 tokens (so packed rows of SEQ hold two or three): a prompt outside the loss, then a completion in it (the last
/// one entirely in the loss, one with a masked gap).
fn examples() -> Vec<Example> {
    let mut rng = Rng::new(5);
    (0..9)
        .map(|i| {
            let n = 4 + rng.below(24) as usize;
            let ids: Vec<u32> = (0..n).map(|_| rng.below(96) as u32).collect();
            let prompt = 1 + rng.below((n - 2) as u64) as usize;
            let mut loss: Vec<bool> = (0..n).map(|j| i == 8 || j >= prompt).collect();
            if i == 3 {
                loss[n - 2] = false;
            }
            Example { ids, loss }
        })
        .collect()
}

/// (inputs, targets) of an example as a batch row holds it, targets −100 outside the loss.
fn row(x: &[u32], y: &[u32]) -> serde_json::Value {
    let y: Vec<i64> = y.iter().map(|&t| if t == IGNORE { -100 } else { t as i64 }).collect();
    serde_json::json!([x, y])
}

struct Case {
    name: &'static str,
    micro: Vec<(Tensor, Tensor)>,
    segments: Vec<Option<Arc<Segments>>>,
    examples: Vec<serde_json::Value>,
}

/// The first update of a plan over `examples` (file order, no shuffle): `accum` batches of
/// `batch` rows. The examples it covers are read back out of the rows (packed rows split at
/// their segment starts) and must be the first k examples, in order.
fn case(name: &'static str, ex: &[Example], batch: usize, accum: usize, packing: bool) -> Case {
    let plan = SftPlan::new(ex, batch, SEQ, packing, false, 0, 0).unwrap();
    let (mut micro, mut segments, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..accum as u64 {
        let b = plan.batch(k);
        for r in 0..b.rows {
            let (x, y) = (&b.inputs[r * b.t..(r + 1) * b.t], &b.targets[r * b.t..(r + 1) * b.t]);
            let cuts: Vec<usize> = match &b.starts {
                Some(st) => {
                    let st = &st[r * b.t..(r + 1) * b.t];
                    (0..b.t).filter(|&i| st[i] as usize == i).chain([b.t]).collect()
                }
                // A padded row is one example: up to its last loss target, then padding.
                None => vec![0, y.iter().rposition(|&t| t != IGNORE).unwrap() + 1],
            };
            for w in cuts.windows(2) {
                if y[w[0]..w[1]].iter().any(|&t| t != IGNORE) {
                    seen.push((x[w[0]..w[1]].to_vec(), y[w[0]..w[1]].to_vec()));
                }
            }
        }
        segments.push(match b.starts {
            Some(st) => Some(Arc::new(Segments::new(b.rows, b.t, st).unwrap())),
            None => None,
        });
        micro.push((
            Tensor::from_u32(b.inputs, &[b.rows, b.t]).unwrap(),
            Tensor::from_u32(b.targets, &[b.rows, b.t]).unwrap(),
        ));
    }
    for (i, (x, y)) in seen.iter().enumerate() {
        let e = &ex[i];
        let n = e.ids.len();
        let want_y: Vec<u32> = (1..n).map(|j| if e.loss[j] { e.ids[j] } else { IGNORE }).collect();
        // A padded row's tail after the last target is padding or unscored example tokens: compare the scored part.
        assert_eq!(x[..], e.ids[..x.len()], "{name}: example {i} inputs");
        assert_eq!(y[..], want_y[..y.len()], "{name}: example {i} targets");
        assert!(want_y[y.len()..].iter().all(|&t| t == IGNORE), "{name}: example {i} lost targets");
    }
    let examples = seen.iter().map(|(x, y)| row(x, y)).collect();
    Case { name, micro, segments, examples }
}

#[test]
fn sft_loss_and_gradients_match_pytorch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(py) = smelt_testing::peer_python("torch, transformers, safetensors") else { return };
    let dir: PathBuf = std::env::temp_dir().join(format!("smelt-sft-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("model")).unwrap();
    let model = model();
    model.save(&dir.join("model")).unwrap();
    let ex = examples();
    let cases = [
        case("padded", &ex, 3, 1, false),
        case("padded_accum", &ex, 2, 3, false),
        case("packed", &ex, 2, 1, true),
        case("packed_accum", &ex, 1, 3, true),
    ];
    let spec = serde_json::json!({"cases": cases.iter().map(|c| serde_json::json!({"name": c.name, "examples": c.examples})).collect::<Vec<_>>()});
    std::fs::write(dir.join("cases.json"), spec.to_string()).unwrap();
    let o = Command::new(&py).arg(root.join("scripts/sft_peer.py")).arg(&dir).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "scripts/sft_peer.py failed:\n{out}\n{err}");
    println!("{out}");
    let want_loss: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ref_loss.json")).unwrap()).unwrap();

    for c in &cases {
        let layout = Layout::token_weighted(&c.micro, c.segments.clone()).unwrap();
        let (loss, grads) = smelt_train::gradients(&model, &c.micro, &layout).unwrap();
        let want = want_loss[c.name].as_f64().unwrap();
        let rel = (loss - want).abs() / want.abs();
        let refs = smelt_model::io::read_safetensors(&dir.join(format!("ref_{}.safetensors", c.name))).unwrap();
        assert_eq!(refs.len(), model.names.len(), "{}: parameter count", c.name);
        let mut worst = (0f64, String::new());
        for (name, g) in model.names.iter().zip(&grads) {
            let r = refs[name].as_f32().unwrap();
            let g = g.as_f32().unwrap();
            let scale = r.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            let diff = g.iter().zip(r).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            if diff / scale > worst.0 {
                worst = (diff / scale, name.clone());
            }
        }
        println!("{}: loss {loss:.10} vs PyTorch {want:.10} (rel {rel:.2e}); worst gradient {} at {:.2e} of its largest entry", c.name, worst.1, worst.0);
        assert!(rel <= 1e-5, "{}: loss {loss} vs {want}", c.name);
        assert!(worst.0 <= 1e-4, "{}: gradient {} off by {:.2e} of its scale", c.name, worst.1, worst.0);
        if c.segments.iter().any(Option::is_some) {
            // And so can this: the same rows without their boundaries (positions running on,
            // attention across examples) are another number.
            let unbounded = Layout { segments: Vec::new(), ..layout.clone() };
            let (mixed, _) = smelt_train::gradients(&model, &c.micro, &unbounded).unwrap();
            let off = (mixed - want).abs() / want;
            println!("{}: the rows without example boundaries would give {mixed:.10} (rel {off:.2e})", c.name);
            assert!(off > 1e-4, "{}: packing's boundaries made no difference", c.name);
        }
        if c.micro.len() > 1 {
            // The check can fail: a mean of per-micro-batch means is a different number here.
            let (plain, _) =
                smelt_train::gradients(&model, &c.micro, &Layout { segments: c.segments.clone(), ..Layout::default() })
                    .unwrap();
            let off = (plain - want).abs() / want;
            println!("{}: a mean of per-micro-batch means would be {plain:.10} (rel {off:.2e})", c.name);
            assert!(off > 1e-4, "{}: micro-batches too alike to tell the normalisations apart", c.name);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
