//! `process` on real text: filters remove what they should, exact and near dedup catch
//! constructed duplicates and leave unrelated text alone, output is deterministic.
mod common;

use common::*;
use smelt_data::process::filters::{check, FilterConfig, Rule};
use smelt_data::process::minhash::{estimated_jaccard, MinHasher};
use smelt_data::process::{process, Dedup, ProcessConfig};

/// Replace the words at `at` by other words. Each changed word alters the 5 word-5-grams that
/// contain it, so in an n-word text k scattered changes give Jaccard ≈ (n-5k)/(n+5k): 0.8 allows
/// about n/45 changes.
fn perturb(text: &str, at: &[usize]) -> String {
    text.split(' ').enumerate().map(|(i, w)| if at.contains(&i) { "CHANGED" } else { w }).collect::<Vec<_>>().join(" ")
}

#[test]
fn corpus_prose_passes_and_junk_is_caught_by_its_rule() {
    let cfg = FilterConfig::default();
    let paras = paragraphs(60);
    assert!(paras.len() > 100);
    let passed = paras.iter().filter(|p| check(&cfg, p).is_none()).count();
    assert!(passed * 100 >= paras.len() * 90, "only {passed}/{} prose paragraphs pass", paras.len());
    let p = paras.iter().find(|p| check(&cfg, p).is_none()).unwrap();
    let cases: Vec<(String, Rule)> = vec![
        (p[..100].to_string(), Rule::TooShort),
        (p.repeat(2000), Rule::TooLong),
        (format!("{p}\nLorem ipsum dolor sit amet."), Rule::LoremIpsum),
        (
            format!(
                "{p}\nClick here to continue.\nThis website uses cookies.\nPlease enable JavaScript.\nPrivacy policy."
            ),
            Rule::Boilerplate,
        ),
        (format!("{p} {}", "<div>{{$x}}</div> ".repeat(p.len() / 20)), Rule::SymbolRatio),
        (format!("{p} {}", "0x1F 2048 65536 ".repeat(p.len() / 20)), Rule::DigitRatio),
        // a number after every other word: few digits, but a third of the words have no letter
        (
            p.split(' ')
                .enumerate()
                .map(|(i, w)| if i % 2 == 0 { format!("{w} {}", i % 10) } else { w.to_string() })
                .collect::<Vec<_>>()
                .join(" "),
            Rule::AlphaWords,
        ),
        (format!("{p} {}", "a b c d e ".repeat(p.len() / 8)), Rule::WordLength),
        (
            p.split(' ').map(|w| w.trim_end_matches(['.', ',', ':', ')', '?'])).collect::<Vec<_>>().join("\n"),
            Rule::PunctLines,
        ),
        (format!("{p}\n{}", "Call now for details.\n".repeat(5)), Rule::RepeatedLines),
        (format!("{p} {}.", "kernel memory ".repeat(p.len() / 25)), Rule::TopNgram),
        (format!("{p} {p}"), Rule::DupNgram),
    ];
    for (text, want) in cases {
        assert_eq!(check(&cfg, &text), Some(want), "{}", &text[..200.min(text.len())]);
    }
}

#[test]
fn minhash_separates_near_duplicates_from_unrelated_text() {
    let m = MinHasher::new(128);
    let paras = paragraphs(150);
    let a = &paras[0];
    let near = perturb(a, &[3, 60]); // 2 of 150+ words: J ≈ 0.87
    let sa = m.signature(a);
    assert!(estimated_jaccard(&sa, &m.signature(&near)) >= 0.8);
    for other in &paragraphs(60)[..200] {
        if other == a {
            continue;
        }
        assert!(estimated_jaccard(&sa, &m.signature(other)) < 0.2);
    }
}

#[test]
fn dedup_pipeline_keeps_first_of_each_cluster() {
    let d = tmpdir("process-dedup");
    let paras = paragraphs(100);
    let originals: Vec<String> = paras[..40].to_vec();
    let mut docs = originals.clone();
    // exact duplicates up to case and whitespace
    docs.push(originals[3].to_uppercase().replace(' ', " \t "));
    docs.push(originals[5].clone());
    // near duplicates: a few words changed
    docs.push(perturb(&originals[7], &[5]));
    docs.push(perturb(&originals[9], &[40, 41]));
    // heavily edited (every 4th word): no longer a near duplicate at 0.8
    let far = perturb(&originals[11], &(0..200).step_by(4).collect::<Vec<_>>());
    docs.push(far.clone());
    write_jsonl(&d.join("in.jsonl"), &docs);

    let mut cfg = ProcessConfig::new(vec![d.join("in.jsonl").display().to_string()], d.join("out.jsonl"));
    // judge only dedup here: the filters are tested above
    cfg.filters = FilterConfig { min_chars: 0, ..FilterConfig::default() };
    cfg.filters.max_dup_ngram_frac = None;
    cfg.filters.max_top_ngram_frac = None;
    let r = process(&cfg, &|_, _| {}).unwrap();
    let kept = read_jsonl(&d.join("out.jsonl"));
    let filtered: u64 = r.filtered.iter().map(|c| c.removed).sum();
    assert_eq!(filtered, 0, "{r}");
    assert_eq!((r.exact_duplicates, r.near_duplicates), (2, 2), "{r}");
    let mut want = originals.clone();
    want.push(far);
    assert_eq!(kept, want);

    // exact only: the near duplicates stay
    cfg.dedup = Dedup::Exact;
    cfg.output = d.join("exact.jsonl");
    let r = process(&cfg, &|_, _| {}).unwrap();
    assert_eq!((r.exact_duplicates, r.near_duplicates, r.kept_documents), (2, 0, 43));

    // deterministic whatever the batch size
    cfg.dedup = Dedup::Both;
    cfg.batch_docs = 3;
    cfg.output = d.join("again.jsonl");
    process(&cfg, &|_, _| {}).unwrap();
    assert_eq!(std::fs::read(d.join("out.jsonl")).unwrap(), std::fs::read(d.join("again.jsonl")).unwrap());
}

#[test]
fn report_counts_add_up_on_the_corpus() {
    let d = tmpdir("process-report");
    let docs = documents(6);
    write_jsonl(&d.join("in.jsonl"), &docs);
    let cfg = ProcessConfig::new(vec![d.join("in.jsonl").display().to_string()], d.join("out.jsonl"));
    let r = process(&cfg, &|_, _| {}).unwrap();
    let removed: u64 = r.filtered.iter().map(|c| c.removed).sum::<u64>() + r.exact_duplicates + r.near_duplicates;
    assert_eq!(r.input_documents, docs.len() as u64);
    assert_eq!(r.kept_documents + removed, r.input_documents);
    assert_eq!(read_jsonl(&d.join("out.jsonl")).len() as u64, r.kept_documents);
    // technical prose: most of it is kept
    assert!(r.kept_documents * 10 > r.input_documents * 8, "{r}");
    smelt_data::process::write_report(&r, &d.join("report.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["input_documents"], r.input_documents);
    assert!(j["dedup"]["bands"].as_u64().unwrap() * j["dedup"]["rows"].as_u64().unwrap() <= 128);
}
