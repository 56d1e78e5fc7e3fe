//! SFT examples tokenised by smelt equal what the Hugging Face stack makes of them
//! (scripts/sft_tokens_peer.py: `apply_chat_template(tokenize=True)` for conversations, the
//! tokenizer + EOS for text and string prompt/completion) with a real model's tokenizer and chat template (SmolLM2-135M-Instruct,
//! fetched by scripts/fetch_smollm2.sh): every shape, multi-turn, a system turn, unicode, and
//! whitespace at the piece boundaries. The masks are checked to cover exactly each assistant
//! turn's content and its `<|im_end|>`.

use smelt_data::sft::Format;
use smelt_tokenizer::{ChatTemplate, Tokenizer};
use std::path::Path;
use std::process::Command;

/// The version the peer's ids were checked with.
const TRANSFORMERS: &str = "transformers==5.24.0";

#[test]
fn sft_token_ids_match_transformers_on_smollm2() {
    let Some(model) = smelt_testing::input("smollm2/hf") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The tokenizer side of transformers needs no torch: installed on demand, as serve.rs does
    // with the openai client (nothing happens when the venv has it already).
    let venv = Command::new(root.join("scripts/venv.sh")).arg(TRANSFORMERS).output().unwrap();
    if !venv.status.success() {
        let why = String::from_utf8_lossy(&venv.stderr);
        smelt_testing::skip(
            smelt_testing::Need::Input,
            format!("transformers could not be installed (scripts/venv.sh {TRANSFORMERS}): {}", why.trim()),
        );
        return;
    }
    let py = String::from_utf8_lossy(&venv.stdout).trim().to_string();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]}"#,
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello there!\n"}, {"role": "user", "content": "Ça va ? 日本"}, {"role": "assistant", "content": "Oui, très bien."}]}"#,
        r#"{"prompt": [{"role": "user", "content": "Name a colour."}], "completion": [{"role": "assistant", "content": "Blue"}]}"#,
        r#"{"prompt": "Translate to French: cat =>", "completion": " chat"}"#,
        r#"{"prompt": "2 + 2 =", "completion": "4\n"}"#,
        r#"{"text": "The kernel's documentation lives in Documentation/."}"#,
    ];
    let dir = std::env::temp_dir().join(format!("smelt-sft-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("ex.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let o = Command::new(&py).arg(root.join("scripts/sft_tokens_peer.py")).arg(&model).arg(&data).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Vec<Vec<u32>> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();

    let tok = Tokenizer::from_file(&model).unwrap();
    let tmpl = ChatTemplate::from_tokenizer_config(&model).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let fmt = Format {
        tokenizer: &tok,
        template: Some(&tmpl),
        end_of_turn: vec![im_end],
        eos: tok.eos_id(),
        train_on_prompt: false,
    };
    let got = fmt.read_jsonl(&data).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(&g.ids, w, "example {}: {}", i + 1, lines[i]);
    }
    // The trained text of the conversations: each assistant turn's content and its <|im_end|>.
    let trained = |i: usize| {
        let e = &got[i];
        let ids: Vec<u32> = e.ids.iter().zip(&e.loss).filter(|(_, &l)| l).map(|(&t, _)| t).collect();
        tok.decode_with(&ids, false)
    };
    assert_eq!(trained(0), "Paris.<|im_end|>");
    assert_eq!(trained(1), " Hello there!\n<|im_end|>Oui, très bien.<|im_end|>");
    assert_eq!(trained(2), "Blue<|im_end|>");
    assert_eq!(trained(3), " chat<|im_end|>");
    std::fs::remove_dir_all(&dir).unwrap();
}
