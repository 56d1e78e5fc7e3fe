use smelt_core::Tensor;
use smelt_infer::trace;
use smelt_model::{Logits, Model, ModelConfig};

#[test]
fn trace_names_every_stage_and_ends_with_the_logits() {
    let m = Model::init(ModelConfig::llama(40, 32, 2, 4, 2, 64), 3).unwrap();
    let ids = [1u32, 5, 7];
    let stages = trace(&m, &ids).unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "inp_embd",
        "attn_norm-0",
        "Qcur-0",
        "Kcur_rope-1",
        "kqv_out-1",
        "ffn_swiglu-0",
        "l_out-1",
        "result_norm",
        "result_output",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let logits = m.logits(&Tensor::from_u32(ids.to_vec(), &[1, 3]).unwrap(), None, Logits::All).unwrap();
    assert_eq!(stages.last().unwrap().tensor.as_f32().unwrap(), logits.as_f32().unwrap());
    assert_eq!(stages.iter().find(|s| s.name == "Vcur-0").unwrap().tensor.shape(), &[3, 16]);
}
