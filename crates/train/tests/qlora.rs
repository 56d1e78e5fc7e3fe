//! QLoRA: a LoRA adapter trained on a base whose matrices stay quantised in memory (as a GGUF
//! base loads). The adapter's gradients are those of the dequantised base up to the quantised
//! kernel's 8-bit activations, training lowers the loss, and the base is never touched.

use smelt_core::ops::adamw::AdamW;
use smelt_core::quant::{GgmlType, QTensor};
use smelt_core::{DType, Graph, Tensor};
use smelt_model::{Adapter, LoraConfig, Model, ModelConfig};
use smelt_train::optim::AdamWState;

/// A small model with every matrix (embedding and projections) quantised to Q8_0.
fn quantised() -> (Model, Model) {
    let mut c = ModelConfig::llama(96, 64, 2, 4, 2, 128);
    c.tie_embeddings = true;
    let plain = Model::init(c, 4).unwrap();
    let q: Vec<Tensor> = plain
        .params
        .iter()
        .map(|p| match p.shape() {
            [r, k] => QTensor::quantize(GgmlType::Q8_0, p.as_f32().unwrap(), *r, *k).unwrap().into_tensor(),
            _ => p.clone(),
        })
        .collect();
    let qm = plain.with_params(q).unwrap();
    let deq = qm.dequantized().unwrap();
    (qm, deq)
}

fn adapter(m: &Model) -> Adapter {
    let cfg = LoraConfig::new(4, 8.0, 0.0, &LoraConfig::parse_targets("all-linear").unwrap(), false).unwrap();
    let mut a = Adapter::init(&m.cfg, cfg, 2);
    for (i, t) in a.params.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        for (j, v) in t.f32_mut().unwrap().iter_mut().enumerate() {
            *v = ((i * 131 + j) as f32 * 0.77).sin() * 0.05;
        }
    }
    a
}

fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..65).map(|i| (i * 29 % 93 + 2) as u32).collect();
    (Tensor::from_u32(ids[..64].to_vec(), &[2, 32]).unwrap(), Tensor::from_u32(ids[1..].to_vec(), &[2, 32]).unwrap())
}

fn lora_grads(m: &Model) -> (f32, Vec<Vec<f32>>) {
    let (x, y) = batch();
    let mut g = Graph::training();
    let p = m.param_vars(&mut g, true);
    let loss = m.loss(&mut g, &p, &x, &y, false).unwrap();
    let l = loss.tensor().to_vec_f32().unwrap()[0];
    let mut gr = g.backward(&loss).unwrap();
    (l, m.trainable_vars(&p).iter().map(|v| gr.take(v).unwrap().to_vec_f32().unwrap()).collect())
}

#[test]
fn qlora_gradients_match_the_dequantised_base_and_training_leaves_it_quantised() {
    let (mut qm, mut deq) = quantised();
    qm.attach(adapter(&qm)).unwrap();
    deq.attach(adapter(&deq)).unwrap();
    let ((lq, gq), (ld, gd)) = (lora_grads(&qm), lora_grads(&deq));
    assert!(((lq - ld) / ld).abs() < 1e-3, "loss {lq} on the quantised base vs {ld} dequantised");
    // Relative to each gradient's largest entry; the quantised forward rounds activations to 8
    // bits (llama.cpp's CPU kernels), hence not to rounding level.
    for (i, (a, b)) in gq.iter().zip(&gd).enumerate() {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(e < 2e-2, "LoRA tensor {i}: relative gradient error {e}");
    }

    let base_bytes: Vec<Vec<u8>> = qm.params.iter().map(|p| p.to_le_bytes().unwrap()).collect();
    let mut opt = AdamWState::new(qm.trainable());
    let hp = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let micro = vec![batch()];
    let first = smelt_train::step(&mut qm, &mut opt, &hp, &micro, 1.0, false).unwrap().loss;
    let mut last = first;
    for _ in 0..8 {
        last = smelt_train::step(&mut qm, &mut opt, &hp, &micro, 1.0, false).unwrap().loss;
    }
    assert!(last < first - 0.05, "QLoRA training lowers the loss: {first} → {last}");
    assert!(qm.params.iter().filter(|p| p.shape().len() == 2).all(|p| p.dtype() == DType::Quant));
    let after: Vec<Vec<u8>> = qm.params.iter().map(|p| p.to_le_bytes().unwrap()).collect();
    assert!(after == base_bytes, "the quantised base changed");
}
