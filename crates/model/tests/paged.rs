//! The batched forward over the paged KV cache against the contiguous cache, one sequence at
//! a time: the same logits bit for bit, whatever else shares the step.

use smelt_core::Tensor;
use smelt_model::{KvCache, KvPool, Logits, Model, ModelConfig, SeqStep};

fn model() -> Model {
    let mut c = ModelConfig::llama(64, 64, 2, 4, 2, 96);
    c.tie_embeddings = false;
    Model::init(c, 5).unwrap()
}

/// Logits (as bits) of `prompt` then each of `decode`, through the contiguous cache alone.
fn alone(m: &Model, prompt: &[u32], decode: &[u32]) -> Vec<Vec<u32>> {
    let mut cache = KvCache::new(&m.cfg, 1, prompt.len() + decode.len());
    let bits = |t: Tensor| t.as_f32().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut out = vec![bits(
        m.logits(&Tensor::from_u32(prompt.to_vec(), &[1, prompt.len()]).unwrap(), Some(&mut cache), Logits::Last)
            .unwrap(),
    )];
    for &id in decode {
        out.push(bits(
            m.logits(&Tensor::from_u32(vec![id], &[1, 1]).unwrap(), Some(&mut cache), Logits::Last).unwrap(),
        ));
    }
    out
}

#[test]
fn batched_steps_over_scattered_blocks_equal_each_sequence_alone() {
    batched_steps_equal_each_sequence_alone(&model(), "f32");
}

/// The same with every matrix quantised to a 32-element block format: on x86 their kernels keep
/// rows apart by themselves (`rows_independent`), so the step stacks every sequence's rows,
/// prompts and decode rows alike, into one product, and must still give each its own logits.
#[test]
fn quantised_batched_steps_equal_each_sequence_alone() {
    use smelt_core::quant::{GgmlType, QTensor};
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0] {
        let plain = model();
        let q: Vec<Tensor> = plain
            .params
            .iter()
            .map(|p| match p.shape() {
                [r, k] => QTensor::quantize(ty, p.as_f32().unwrap(), *r, *k).unwrap().into_tensor(),
                _ => p.clone(),
            })
            .collect();
        batched_steps_equal_each_sequence_alone(&plain.with_params(q).unwrap(), ty.name());
    }
}

fn batched_steps_equal_each_sequence_alone(m: &Model, what: &str) {
    let v = m.cfg.vocab_size;
    let prompts: [Vec<u32>; 3] = [
        (0..9).map(|i| (i * 7 % 64) as u32).collect(),
        (0..3).map(|i| (i * 5 + 1) as u32).collect(),
        (0..21).map(|i| (i * 11 % 64) as u32).collect(),
    ];
    let decode: Vec<u32> = vec![3, 17, 40, 2, 9, 63];
    // Block size 4; tables interleaved and out of order.
    let mut pool = KvPool::new(m, 64, 4).unwrap();
    let tables: [Vec<u32>; 3] = [vec![7, 2, 11, 0], vec![15, 1, 3], vec![4, 14, 5, 13, 6, 12, 8, 10]];
    let want: Vec<Vec<Vec<u32>>> = prompts.iter().map(|p| alone(m, p, &decode)).collect();
    // Sequence 2 joins one step late; every step mixes prompts and decode tokens.
    let mut got: Vec<Vec<Vec<u32>>> = vec![Vec::new(); 3];
    let mut pos = [0usize; 3];
    for step in 0..=decode.len() {
        let mut who = Vec::new();
        let mut steps = Vec::new();
        for s in 0..3 {
            let start = if s == 2 { 1 } else { 0 };
            if step < start || step - start > decode.len() - usize::from(s == 2) {
                continue;
            }
            let tokens: &[u32] = if step == start { &prompts[s] } else { &decode[step - start - 1..step - start] };
            steps.push(SeqStep { tokens, pos0: pos[s], table: &tables[s] });
            who.push((s, tokens.len()));
        }
        let logits = m.logits_paged(&steps, &mut pool).unwrap();
        let l = logits.as_f32().unwrap();
        assert_eq!(l.len(), who.len() * v);
        for (i, &(s, n)) in who.iter().enumerate() {
            got[s].push(l[i * v..(i + 1) * v].iter().map(|x| x.to_bits()).collect());
            pos[s] += n;
        }
    }
    for s in 0..3 {
        assert!(!got[s].is_empty());
        for (i, g) in got[s].iter().enumerate() {
            assert!(g == &want[s][i], "{what}: sequence {s}, step {i}: paged logits differ from the contiguous cache");
        }
    }
}

#[test]
fn a_short_block_table_is_an_error() {
    let m = model();
    let mut pool = KvPool::new(&m, 16, 4).unwrap();
    let e = m.logits_paged(&[SeqStep { tokens: &[1, 2, 3, 4, 5], pos0: 0, table: &[0] }], &mut pool).unwrap_err();
    assert!(format!("{e:#}").contains("blocks"), "{e:#}");
    let e = m.logits_paged(&[SeqStep { tokens: &[1], pos0: 0, table: &[9] }], &mut pool).unwrap_err();
    assert!(format!("{e:#}").contains("outside the pool"), "{e:#}");
}

#[test]
fn packed_kv_types_stay_close_to_f32_in_less_memory() {
    use smelt_model::KvType;
    let m = model();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 13 % 64) as u32).collect();
    let table: Vec<u32> = vec![3, 0, 2, 1];
    let run = |kind: KvType| {
        let mut pool = KvPool::with_type(&m, 64, 16, kind).unwrap();
        let mut out = m
            .logits_paged(&[SeqStep { tokens: &prompt, pos0: 0, table: &table }], &mut pool)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        for (i, id) in [5u32, 9, 60].into_iter().enumerate() {
            let l = m.logits_paged(&[SeqStep { tokens: &[id], pos0: 40 + i, table: &table }], &mut pool).unwrap();
            out.extend(l.to_vec_f32().unwrap());
        }
        (out, pool.bytes())
    };
    let (want, f32_bytes) = run(KvType::F32);
    for (kind, tol, shrink) in [(KvType::F16, 2e-3, 2.0), (KvType::BF16, 2e-2, 2.0), (KvType::Q8_0, 3e-2, 3.7)] {
        let (got, bytes) = run(kind);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = want.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(err <= tol * scale, "{kind:?}: max |Δlogit| {err} vs scale {scale}");
        assert!(err > 0.0, "{kind:?}: no rounding at all?");
        assert!(f32_bytes as f64 / bytes as f64 >= shrink, "{kind:?}: {bytes} bytes vs {f32_bytes}");
    }
    // A row that is not whole q8_0 blocks is refused by name.
    let mut c = ModelConfig::llama(64, 48, 1, 4, 2, 96);
    c.tie_embeddings = false;
    let odd = Model::init(c, 1).unwrap();
    let e = KvPool::with_type(&odd, 32, 16, KvType::Q8_0).err().unwrap();
    assert!(format!("{e:#}").contains("kv-cache-type q8_0"), "{e:#}");
}

/// Chunked prefill (the server's `--prefill-chunk`): a prompt computed a chunk a step (each
/// chunk of at least 8 rows, as the engine cuts them), beside another sequence's decode rows,
/// gives the logits the whole prompt gives in one step, bit for bit, and so do the decode steps
/// after it.
#[test]
fn a_prompt_computed_in_chunks_gives_the_logits_of_the_whole_prompt() {
    let m = model();
    let v = m.cfg.vocab_size;
    let long: Vec<u32> = (0..47).map(|i| (i * 13 % 64) as u32).collect();
    let short: Vec<u32> = vec![5, 9, 1];
    let decode: Vec<u32> = vec![8, 30, 61];
    let want_long = alone(&m, &long, &decode);
    let want_short = alone(&m, &short, &[3, 4, 7, 2, 6, 11, 12, 13]);
    for chunks in [vec![16, 16, 15], vec![8, 31, 8], vec![39, 8], vec![20, 27]] {
        let mut pool = KvPool::new(&m, 128, 4).unwrap();
        let (t_long, t_short): (Vec<u32>, Vec<u32>) = ((0..16).rev().collect(), (16..32).collect());
        // Step 0: the short prompt alone; then its decode rows beside each chunk of the long one.
        let l = m.logits_paged(&[SeqStep { tokens: &short, pos0: 0, table: &t_short }], &mut pool).unwrap();
        let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert!(bits(l.as_f32().unwrap()) == want_short[0]);
        let short_next = [3u32, 4, 7, 2, 6, 11, 12, 13];
        let (mut at, mut s_pos) = (0, short.len());
        for (c, &n) in chunks.iter().enumerate() {
            let steps = [
                SeqStep { tokens: &short_next[c..c + 1], pos0: s_pos, table: &t_short },
                SeqStep { tokens: &long[at..at + n], pos0: at, table: &t_long },
            ];
            let l = m.logits_paged(&steps, &mut pool).unwrap();
            let l = l.as_f32().unwrap();
            assert!(bits(&l[..v]) == want_short[c + 1], "chunks {chunks:?}: the decode row beside chunk {c} differs");
            at += n;
            s_pos += 1;
            if at == long.len() {
                assert!(
                    bits(&l[v..]) == want_long[0],
                    "chunks {chunks:?}: the last chunk's logits differ from the whole prompt's"
                );
            }
        }
        for (i, &id) in decode.iter().enumerate() {
            let l = m.logits_paged(&[SeqStep { tokens: &[id], pos0: at + i, table: &t_long }], &mut pool).unwrap();
            assert!(bits(l.as_f32().unwrap()) == want_long[i + 1], "chunks {chunks:?}: decode step {i} differs");
        }
    }
}
