use smelt_infer::{generate, GenerateConfig, SamplingConfig};
use smelt_model::{Model, ModelConfig};

#[test]
fn greedy_generation_is_deterministic_and_stops_on_eos() {
    let m = Model::init(ModelConfig::llama(40, 32, 2, 4, 4, 64), 9).unwrap();
    let cfg = GenerateConfig { max_tokens: 20, sampling: SamplingConfig::default(), stop_ids: vec![] };
    let a = generate(&m, &[1, 2, 3], &cfg, |_| {}).unwrap();
    let b = generate(&m, &[1, 2, 3], &cfg, |_| {}).unwrap();
    assert_eq!(a.ids.len(), 20);
    assert_eq!(a.ids, b.ids);
    // Stop on the 5th generated token: output holds the 4 before it.
    let stop = a.ids[4];
    let first = a.ids.iter().position(|&t| t == stop).unwrap();
    let c = generate(&m, &[1, 2, 3], &GenerateConfig { stop_ids: vec![stop], ..cfg }, |_| {}).unwrap();
    assert!(c.stopped_on_eos);
    assert_eq!(c.ids, a.ids[..first].to_vec());
    // Sampling with a seed is reproducible.
    let s = GenerateConfig {
        max_tokens: 10,
        sampling: SamplingConfig { temperature: 1.0, seed: 4, ..Default::default() },
        stop_ids: vec![],
    };
    assert_eq!(generate(&m, &[5], &s, |_| {}).unwrap().ids, generate(&m, &[5], &s, |_| {}).unwrap().ids);
}
