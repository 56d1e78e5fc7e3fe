//! LoRA against PEFT, the real peer. Goldens (committed, no Python needed): adapters PEFT made
//! on the tiny transformers fixtures (`scripts/peft_lora.py goldens`) load here and give PEFT's
//! logits, merged logits, loss and every LoRA gradient. Live (torch + transformers + peft in
//! `.cache/venv`, else a loud skip): an adapter smelt writes loads in `PeftModel.from_pretrained`
//! with no missing or unexpected keys and the same logits and merge; on SmolLM2-135M (fetched)
//! both directions.

use smelt_core::{Graph, Tensor};
use smelt_model::lora::{Adapter, LoraConfig};
use smelt_model::{Logits, Model};
use smelt_testing::{fixture, skip, Need};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CASES: [&str; 4] = ["llama_tied", "mistral_swa", "qwen2_bias", "qwen3_qknorm"];
/// Relative error bound for f32 logits: max |Δ| / max |want|.
const TOL: f64 = 1e-4;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs() as f64)).max(1e-30);
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).abs()).fold(0f64, f64::max) / scale
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    m.logits(&Tensor::from_u32(ids.to_vec(), &[1, ids.len()]).unwrap(), None, Logits::All)
        .unwrap()
        .to_vec_f32()
        .unwrap()
}

fn golden(dir: &Path) -> HashMap<String, Tensor> {
    smelt_model::io::read_safetensors(&dir.join("golden.safetensors")).unwrap()
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.as_i32().unwrap().iter().map(|&i| i as u32).collect()
}

#[test]
fn peft_adapters_give_peft_logits_merge_and_gradients() {
    for case in CASES {
        let (base, adapter) = (fixture(&format!("hf/{case}")), fixture(&format!("lora/{case}")));
        let g = golden(&adapter);
        let ids = ids_of(&g["input_ids"]);
        let mut m = Model::load(&base).unwrap();
        let plain = logits(&m, &ids);
        m.attach_dir(&adapter).unwrap();
        let want = g["logits"].as_f32().unwrap();
        let got = logits(&m, &ids);
        let e = rel_err(&got, want);
        assert!(e <= TOL, "{case}: logits relative error {e:e}");
        println!("{case}: logits against PeftModel: max |Δ| / max |logit| = {e:.2e}");
        // The adapter matters (B is not zero): without it the logits are far off.
        assert!(rel_err(&plain, want) > 100.0 * TOL, "{case}: the adapter changes nothing");

        let merged = m.merged().unwrap();
        assert!(merged.adapter.is_none());
        let e = rel_err(&logits(&merged, &ids), g["merged"].as_f32().unwrap());
        assert!(e <= TOL, "{case}: merged logits relative error {e:e}");
        // The merged folder is an ordinary checkpoint that reloads to the same logits.
        let d = tmp(&format!("merged-{case}"));
        merged.save(&d).unwrap();
        let e = rel_err(&logits(&Model::load(&d).unwrap(), &ids), want);
        assert!(e <= TOL, "{case}: reloaded merged logits relative error {e:e}");

        // Loss and every LoRA gradient against PyTorch autograd (dropout off, as in eval).
        let mut gr = Graph::training();
        let p = m.param_vars(&mut gr, true);
        let n = ids.len() - 1;
        let x = Tensor::from_u32(ids[..n].to_vec(), &[1, n]).unwrap();
        let y = Tensor::from_u32(ids[1..].to_vec(), &[1, n]).unwrap();
        // Dropout is p = 0.1 in mistral_swa's config: PEFT's golden ran in eval mode, so this
        // compares the same function only for the others; mistral's gradients are checked
        // with its dropout switched off below.
        let loss = m.loss(&mut gr, &p, &x, &y, false).unwrap();
        let l = loss.tensor().to_vec_f32().unwrap()[0];
        let want_l = g["loss"].as_f32().unwrap()[0];
        if case != "mistral_swa" {
            assert!(((l - want_l) / want_l).abs() < 1e-5, "{case}: loss {l} vs PEFT {want_l}");
            let mut grads = gr.backward(&loss).unwrap();
            let a = m.adapter.as_ref().unwrap();
            let mut worst = 0f64;
            for (name, v) in a.names().iter().zip(m.trainable_vars(&p)) {
                let got = grads.take(v).unwrap().to_vec_f32().unwrap();
                let want = g.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("{case}: no golden for {name}"));
                let e = rel_err(&got, want.as_f32().unwrap());
                assert!(e <= 1e-3, "{case}: gradient of {name}: relative error {e:e}");
                worst = worst.max(e);
            }
            println!("{case}: loss {l} vs PyTorch {want_l}; worst LoRA gradient relative error {worst:.2e}");
            // The base is frozen: no gradient reaches it.
            for v in &p[..m.params.len()] {
                assert!(grads.take(v).is_none(), "{case}: the base got a gradient");
            }
        }
    }
}

#[test]
fn dropout_runs_only_in_training_and_checkpointing_replays_its_masks() {
    let base = fixture("hf/mistral_swa");
    let mut m = Model::load(&base).unwrap();
    m.attach_dir(&fixture("lora/mistral_swa")).unwrap();
    assert_eq!(m.adapter.as_ref().unwrap().cfg.dropout, 0.1);
    let ids: Vec<u32> = (0..17).map(|i| (i * 37 % 120 + 3) as u32).collect();
    let (x, y) = (
        Tensor::from_u32(ids[..16].to_vec(), &[1, 16]).unwrap(),
        Tensor::from_u32(ids[1..].to_vec(), &[1, 16]).unwrap(),
    );
    let run = |m: &Model, ckpt: bool, grad: bool| {
        let mut g = Graph::training();
        let p = m.param_vars(&mut g, grad);
        let loss = m.loss(&mut g, &p, &x, &y, ckpt).unwrap();
        let l = loss.tensor().to_vec_f32().unwrap()[0];
        if !grad {
            return (l, vec![]);
        }
        let mut gs = g.backward(&loss).unwrap();
        (l, m.trainable_vars(&p).iter().map(|v| gs.take(v).unwrap().to_vec_f32().unwrap()).collect::<Vec<_>>())
    };
    let a = m.adapter.as_ref().unwrap();
    let eval = run(&m, false, false).0;
    a.begin_step(1, 0);
    let (l1, g1) = run(&m, false, true);
    assert_ne!(l1, eval, "training applies dropout");
    a.begin_step(1, 0);
    let (l2, g2) = run(&m, true, true);
    assert_eq!((l1, &g1), (l2, &g2), "a checkpointed block replays the same masks");
    a.begin_step(1, 1);
    assert_ne!(run(&m, false, true).0, l1, "another step, other masks");
    assert_eq!(run(&m, false, false).0, eval, "validation has no dropout");
}

#[test]
fn written_adapters_round_trip_and_bad_ones_are_named() {
    let base = fixture("hf/qwen2_bias");
    let mut m = Model::load(&base).unwrap();
    let cfg = LoraConfig::new(4, 8.0, 0.05, &LoraConfig::parse_targets("q,v,down").unwrap(), true).unwrap();
    let mut a = Adapter::init(&m.cfg, cfg, 3);
    for (i, t) in a.params.iter_mut().enumerate() {
        for (j, v) in t.f32_mut().unwrap().iter_mut().enumerate() {
            *v += ((i * 31 + j) as f32 * 0.37).sin() * 0.1;
        }
    }
    let d = tmp("written");
    a.save(&d, m.cfg.head_dim).unwrap();
    let b = Adapter::load(&d, &m.cfg).unwrap();
    assert_eq!(b.cfg, a.cfg);
    assert_eq!(b.names(), a.names());
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap());
    }
    m.attach(b).unwrap();

    // Another base shape: the first tensor that does not fit is named.
    let other = Model::load(&fixture("hf/qwen3_qknorm")).unwrap();
    let e = format!("{:#}", Adapter::load(&d, &other.cfg).unwrap_err());
    assert!(e.contains("adapter_model.safetensors") && e.contains("q_proj.lora_"), "{e}");
    // A missing tensor, an unexpected one, a config field smelt cannot honour.
    let w = smelt_model::io::read_safetensors(&d.join("adapter_model.safetensors")).unwrap();
    let mut named: Vec<(String, Tensor)> = w.into_iter().collect();
    named.sort_by(|x, y| x.0.cmp(&y.0));
    let gone = named.remove(0).0;
    smelt_model::io::write_safetensors(&d.join("adapter_model.safetensors"), &named, smelt_core::DType::F32, None)
        .unwrap();
    let e = format!("{:#}", Adapter::load(&d, &m.cfg).unwrap_err());
    assert!(e.contains(&gone) && e.contains("missing"), "{e}");
    let extra = "base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight";
    let mut all: Vec<(String, Tensor)> =
        smelt_model::io::read_safetensors(&d.join("adapter_model.safetensors")).unwrap().into_iter().collect();
    let back = a.params[a.names().iter().position(|n| n == &gone).unwrap()].clone();
    all.extend([(gone.clone(), back), (extra.to_string(), Tensor::zeros(&[4, 32]))]);
    smelt_model::io::write_safetensors(&d.join("adapter_model.safetensors"), &all, smelt_core::DType::F32, None)
        .unwrap();
    let e = format!("{:#}", Adapter::load(&d, &m.cfg).unwrap_err());
    assert!(e.contains("unexpected tensor base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"), "{e}");
    let cp = d.join("adapter_config.json");
    let text = std::fs::read_to_string(&cp).unwrap();
    std::fs::write(&cp, text.replace("\"use_dora\": false", "\"use_dora\": true")).unwrap();
    let e = format!("{:#}", Adapter::load(&d, &m.cfg).unwrap_err());
    assert!(e.contains("adapter_config.json") && e.contains("use_dora"), "{e}");
}

/// The project venv's python when torch, transformers and peft import there; else a skip.
fn peft_python() -> Option<PathBuf> {
    let py = smelt_testing::repo_root().join(".cache/venv/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import torch, transformers, peft"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        skip(
            Need::Input,
            "torch, transformers and peft are not in .cache/venv (scripts/install_torch.sh && scripts/venv.sh peft)",
        );
        None
    }
}

fn script(py: &Path, args: &[&str]) -> String {
    let o = Command::new(py).arg(smelt_testing::repo_root().join("scripts/peft_lora.py")).args(args).output().unwrap();
    assert!(o.status.success(), "peft_lora.py {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A random adapter smelt writes for `base`, attached to it, and the `check` arguments that
/// have PEFT load it.
struct Written {
    name: &'static str,
    model: Model,
    ids: Vec<u32>,
    out: PathBuf,
    args: [String; 4],
}

fn smelt_adapter(base: &Path, targets: &str, rslora: bool, ids: &[u32], name: &'static str) -> Written {
    let mut m = Model::load(base).unwrap();
    let cfg = LoraConfig::new(8, 16.0, 0.05, &LoraConfig::parse_targets(targets).unwrap(), rslora).unwrap();
    let mut a = Adapter::init(&m.cfg, cfg, 11);
    for (i, t) in a.params.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        for (j, v) in t.f32_mut().unwrap().iter_mut().enumerate() {
            *v = ((i * 7919 + j) as f32 * 0.61).sin() * 0.05;
        }
    }
    let d = tmp(name);
    a.save(&d, m.cfg.head_dim).unwrap();
    m.attach(a).unwrap();
    let ids_s: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = d.join("peft.safetensors");
    let args = [base.display().to_string(), d.display().to_string(), ids_s.join(","), out.display().to_string()];
    Written { name, model: m, ids: ids.to_vec(), out, args }
}

/// PEFT loads each written adapter (one Python process for all) with no missing or unexpected
/// keys, names exactly the file's tensors, and computes smelt's logits and merge.
fn peft_loads(py: &Path, written: &[Written]) {
    let mut args = vec!["check".to_string()];
    args.extend(written.iter().flat_map(|w| w.args.clone()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = script(py, &args);
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), written.len(), "one report per adapter:\n{report}");
    for (w, line) in written.iter().zip(lines) {
        let (name, m, ids) = (w.name, &w.model, &w.ids);
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["missing"], serde_json::json!([]), "{name}: {line}");
        assert_eq!(r["unexpected"], serde_json::json!([]), "{name}: {line}");
        assert_eq!(r["file_keys"], r["peft_keys"], "{name}: {line}");
        let want = smelt_model::io::read_safetensors(&w.out).unwrap();
        let e = rel_err(&logits(m, ids), want["logits"].as_f32().unwrap());
        assert!(e <= TOL, "{name}: logits relative error {e:e} against PeftModel");
        let em = rel_err(&logits(&m.merged().unwrap(), ids), want["merged"].as_f32().unwrap());
        assert!(em <= TOL, "{name}: merged logits relative error {em:e} against merge_and_unload");
        let n = r["file_keys"].as_array().unwrap().len();
        println!("{name}: PEFT loads smelt's adapter ({n} keys, none missing or unexpected); logits relative error {e:.2e}, merged {em:.2e}");
        if name == "qwen2" && std::env::var_os("SMELT_WRITE_LORA_GOLDENS").is_some() {
            // What CI checks without Python (`smelt_writes_the_adapter_peft_checked`).
            let dst = fixture("lora/smelt_qwen2");
            std::fs::create_dir_all(&dst).unwrap();
            let src = w.out.parent().unwrap();
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                std::fs::copy(src.join(f), dst.join(f)).unwrap();
            }
            std::fs::copy(&w.out, dst.join("peft.safetensors")).unwrap();
            std::fs::write(dst.join("peft_report.json"), line).unwrap();
        }
    }
}

/// The committed `lora/smelt_qwen2` is an adapter smelt wrote that PEFT loaded with no missing
/// or unexpected keys (`peft_report.json`) and ran (`peft.safetensors`), recorded by the live
/// test above under `SMELT_WRITE_LORA_GOLDENS=1`. smelt must still write exactly those bytes
/// and compute PeftModel's logits from them: the smelt → PEFT direction, checked without Python.
#[test]
fn smelt_writes_the_adapter_peft_checked() {
    let ids: Vec<u32> = (0..24).map(|i| (i * 53 % 120 + 3) as u32).collect();
    let w = smelt_adapter(&fixture("hf/qwen2_bias"), "all-linear", true, &ids, "qwen2-golden");
    let (got, want) = (w.out.parent().unwrap(), fixture("lora/smelt_qwen2"));
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let (a, b) = (std::fs::read(got.join(f)).unwrap(), std::fs::read(want.join(f)).unwrap());
        assert!(a == b, "{f}: smelt no longer writes the bytes PEFT was checked on (re-run the live test with SMELT_WRITE_LORA_GOLDENS=1)");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(want.join("peft_report.json")).unwrap()).unwrap();
    assert_eq!((&r["missing"], &r["unexpected"]), (&serde_json::json!([]), &serde_json::json!([])));
    assert_eq!(r["file_keys"], r["peft_keys"]);
    let peft = smelt_model::io::read_safetensors(&want.join("peft.safetensors")).unwrap();
    let e = rel_err(&logits(&w.model, &ids), peft["logits"].as_f32().unwrap());
    assert!(e <= TOL, "logits relative error {e:e} against PeftModel");
    let e = rel_err(&logits(&w.model.merged().unwrap(), &ids), peft["merged"].as_f32().unwrap());
    assert!(e <= TOL, "merged logits relative error {e:e} against merge_and_unload");
}

#[test]
fn peft_loads_smelt_adapters_on_the_test_checkpoints() {
    let Some(py) = peft_python() else { return };
    let ids: Vec<u32> = (0..24).map(|i| (i * 53 % 120 + 3) as u32).collect();
    peft_loads(
        &py,
        &[
            smelt_adapter(&fixture("hf/qwen2_bias"), "all-linear", true, &ids, "qwen2"),
            smelt_adapter(&fixture("hf/llama_tied"), "q,k,v,o", false, &ids, "llama"),
            smelt_adapter(&fixture("hf/qwen3_qknorm"), "gate,up,down,k", false, &ids, "qwen3"),
            smelt_adapter(&fixture("hf/mistral_swa"), "all-linear", false, &ids, "mistral"),
        ],
    );
}

#[test]
fn smollm2_adapters_both_ways() {
    let Some(base) = smelt_testing::input("smollm2/hf") else { return };
    let Some(py) = peft_python() else { return };
    let ids: Vec<u32> = vec![1, 504, 3458, 282, 4649, 314, 253, 2040, 28, 5248, 9095, 30, 378, 1205, 314, 2];
    // PEFT → smelt.
    let d = tmp("smol-peft");
    let ids_s: Vec<String> = ids.iter().map(u32::to_string).collect();
    script(&py, &["make", base.to_str().unwrap(), d.to_str().unwrap(), &ids_s.join(",")]);
    let g = golden(&d);
    let mut m = Model::load(&base).unwrap();
    m.attach_dir(&d).unwrap();
    let e = rel_err(&logits(&m, &ids), g["logits"].as_f32().unwrap());
    assert!(e <= TOL, "SmolLM2: logits relative error {e:e} against PeftModel");
    println!("SmolLM2: PEFT's adapter in smelt: logits relative error {e:.2e}");
    let e = rel_err(&logits(&m.merged().unwrap(), &ids), g["merged"].as_f32().unwrap());
    assert!(e <= TOL, "SmolLM2: merged logits relative error {e:e}");
    // smelt → PEFT.
    peft_loads(&py, &[smelt_adapter(&base, "all-linear", false, &ids, "smol-smelt")]);
}
