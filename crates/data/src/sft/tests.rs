use super::*;
use serde_json::json;

/// SmolLM2's template (ChatML with a default system prompt), the byte-level tokenizer with
/// `<|im_start|>`/`<|im_end|>` written as bytes: ids 0..256 are bytes, 256 is EOS.
const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<s>sys</s>\n' }}{% endif %}{{'<s>' + message['role'] + '\n' + message['content'] + '</s>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}";

fn fmt<'a>(tok: &'a Tokenizer, tmpl: &'a ChatTemplate, train_on_prompt: bool) -> Format<'a> {
    // '>' (byte 62) closes "</s>": treat it as the end-of-turn id for these tests.
    Format { tokenizer: tok, template: Some(tmpl), end_of_turn: vec![62], eos: Some(256), train_on_prompt }
}

/// The trained bytes of an example, as text.
fn trained(e: &Example) -> String {
    let b: Vec<u8> =
        e.ids.iter().zip(&e.loss).filter(|(_, &l)| l).filter(|(&i, _)| i < 256).map(|(&i, _)| i as u8).collect();
    String::from_utf8(b).unwrap()
}

#[test]
fn shapes_and_masks() {
    let tok = Tokenizer::byte_level();
    let tmpl = ChatTemplate::new(CHATML, "", "");
    let f = fmt(&tok, &tmpl, false);

    let e = f.example(&json!({"text": "hi"})).unwrap();
    assert_eq!(e.ids, vec![104, 105, 256]);
    assert_eq!(e.loss, vec![true; 3]);

    let e = f.example(&json!({"prompt": "Q:", "completion": "A"})).unwrap();
    assert_eq!(e.ids, vec![b'Q' as u32, b':' as u32, b'A' as u32, 256]);
    assert_eq!(e.loss, vec![false, false, true, true]);

    let conv = json!({"messages": [
        {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]});
    let e = f.example(&conv).unwrap();
    // Each assistant turn: its content and the end-of-turn "</s>", not the "\n" after it, not
    // the "<s>assistant\n" header (the generation prompt).
    assert_eq!(trained(&e), "a1</s>a2</s>");
    let text: String = e.ids.iter().map(|&i| i as u8 as char).collect();
    assert_eq!(text, "<s>sys</s>\n<s>user\nu1</s>\n<s>assistant\na1</s>\n<s>user\nu2</s>\n<s>assistant\na2</s>\n");

    let pc =
        json!({"prompt": [{"role": "user", "content": "u1"}], "completion": [{"role": "assistant", "content": "a1"}]});
    let e = f.example(&pc).unwrap();
    assert_eq!(trained(&e), "a1</s>");

    let all = fmt(&tok, &tmpl, true).example(&conv).unwrap();
    assert!(all.loss.iter().all(|&l| l));
}

#[test]
fn errors_name_the_line_and_field() {
    let tok = Tokenizer::byte_level();
    let tmpl = ChatTemplate::new(CHATML, "", "");
    let f = fmt(&tok, &tmpl, false);
    let dir = std::env::temp_dir().join(format!("smelt-sft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.jsonl");
    let cases = [
        ("{\"text\": 3}", "field \"text\": expected a string, got a number"),
        ("{\"messages\": [{\"role\": \"user\"}]}", "field \"messages\"[0].content: expected a string, got null"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "no assistant message"),
        ("{\"prompt\": \"x\"}", "field \"completion\" is missing"),
        ("{\"prompt\": \"x\", \"completion\": [] }", "expected two strings or two message lists"),
        ("{\"foo\": 1}", "no \"text\", \"messages\" or \"prompt\"/\"completion\" field"),
        ("{not json", "not valid JSON"),
    ];
    for (line, want) in cases {
        std::fs::write(&p, format!("{{\"text\": \"ok\"}}\n\n{line}\n")).unwrap();
        let e = format!("{:#}", f.read_jsonl(&p).unwrap_err());
        assert!(e.contains(&format!("{}:3", p.display())), "{e}");
        assert!(e.contains(want), "{e}");
    }
    std::fs::write(&p, b"{\"text\": \"ok\"}\n\n{\"text\": \"a\xff\"}\n").unwrap();
    let e = format!("{:#}", f.read_jsonl(&p).unwrap_err());
    assert!(e.contains(&format!("{}:3: not valid UTF-8", p.display())), "{e}");
    // Several bad lines: the first in file order is reported.
    std::fs::write(&p, "{\"text\": \"ok\"}\n{\"text\": 1}\n{\"text\": 2}\n{\"text\": 3}\n").unwrap();
    for _ in 0..5 {
        let e = format!("{:#}", f.read_jsonl(&p).unwrap_err());
        assert!(e.contains(&format!("{}:2:", p.display())), "{e}");
    }
    let no_tmpl = Format { template: None, ..fmt(&tok, &tmpl, false) };
    let e =
        format!("{:#}", no_tmpl.example(&json!({"messages": [{"role": "assistant", "content": "x"}]})).unwrap_err());
    assert!(e.contains("chat template"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn ex(ids: &[u32], loss: &[bool]) -> Example {
    Example { ids: ids.to_vec(), loss: loss.to_vec() }
}

#[test]
fn padded_batches_mask_prompt_and_padding() {
    let exs = [ex(&[1, 2, 3, 4], &[false, false, true, true]), ex(&[5, 6], &[false, true])];
    let plan = SftPlan::new(&exs, 2, 16, false, false, 0, 0).unwrap();
    let b = plan.batch(0);
    assert_eq!((b.rows, b.t), (2, 3));
    assert_eq!(b.inputs, vec![1, 2, 3, 5, 0, 0]);
    assert_eq!(b.targets, vec![IGNORE, 3, 4, 6, IGNORE, IGNORE]);
    assert_eq!(b.loss_tokens, 3);
    assert!(b.starts.is_none());
}

#[test]
fn packing_restarts_segments_and_never_splits() {
    let exs = [
        ex(&[1, 2, 3], &[true; 3]),
        ex(&[4, 5, 6, 7], &[true; 4]),
        ex(&[8, 9], &[true; 2]),
        ex(&[10, 11, 12, 13, 14, 15, 16], &[true; 7]),
    ];
    // seq_len 5: [1,2 | 4,5,6] [8 | ...] the 7-token example is cut to 6 tokens (5 inputs).
    let plan = SftPlan::new(&exs, 8, 5, true, false, 0, 0).unwrap();
    assert_eq!(plan.truncated, 1);
    let b = plan.batch(0);
    assert_eq!((b.rows, b.t), (3, 5));
    assert_eq!(b.inputs, vec![1, 2, 4, 5, 6, 8, 0, 0, 0, 0, 10, 11, 12, 13, 14]);
    assert_eq!(b.starts.unwrap(), vec![0, 0, 2, 2, 2, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(b.targets[5..10], [9, IGNORE, IGNORE, IGNORE, IGNORE]);
}

#[test]
fn batches_are_a_pure_function_of_the_step_and_cover_each_epoch() {
    let exs: Vec<Example> = (0..10).map(|i| ex(&[i, i + 1, i + 2], &[true; 3])).collect();
    let plan = SftPlan::new(&exs, 3, 8, false, true, 7, 0).unwrap();
    assert_eq!(plan.batches_per_epoch(), 4);
    let epoch = |e: u64| {
        let mut firsts: Vec<u32> = (0..4)
            .flat_map(|i| {
                let b = plan.batch(e * 4 + i);
                (0..b.rows).map(move |r| b.inputs[r * b.t]).collect::<Vec<_>>()
            })
            .collect();
        firsts.sort();
        firsts
    };
    assert_eq!(epoch(0), (0..10).collect::<Vec<u32>>());
    assert_eq!(epoch(1), (0..10).collect::<Vec<u32>>());
    assert_ne!(plan.batch(0), plan.batch(4), "epochs are shuffled differently");
    assert_eq!(plan.batch(5), SftPlan::new(&exs, 3, 8, false, true, 7, 0).unwrap().batch(5));
}

#[test]
fn examples_without_loss_tokens_are_dropped_and_counted() {
    let exs = [ex(&[1, 2, 3, 4], &[false, false, false, true]), ex(&[5, 6], &[false, true])];
    let plan = SftPlan::new(&exs, 2, 2, false, false, 0, 0).unwrap();
    assert_eq!((plan.dropped, plan.truncated, plan.units()), (1, 1, 1));
}
