//! The global `-t/--threads N` flag and `smelt tokenize`'s text argument and `--show-tokens`,
//! through the built binary.

use std::path::PathBuf;
use std::process::{Command, Output};

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt")).args(args).env_remove("RAYON_NUM_THREADS").output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "smelt failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `"threads"` of a tiny `smelt bench` run with these extra arguments.
fn bench_threads(before: &[&str], after: &[&str]) -> u64 {
    let mut args = before.to_vec();
    args.extend([
        "bench",
        "--size",
        "tiny",
        "--vocab-size",
        "256",
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--iters",
        "1",
        "--decode-tokens",
        "2",
        "--device",
        "cpu",
        "--format",
        "json",
    ]);
    args.extend(after);
    let out = stdout(&smelt(&args));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    v["threads"].as_u64().unwrap()
}

#[test]
fn threads_flag_sizes_the_pool_before_or_after_the_subcommand() {
    assert_eq!(bench_threads(&["-t", "3"], &[]), 3);
    assert_eq!(bench_threads(&[], &["--threads", "2"]), 2);
    // Without it, rayon's default: RAYON_NUM_THREADS (removed above), else one per logical CPU.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(bench_threads(&[], &[]), cpus);
    let help = stdout(&smelt(&["--help"]));
    assert!(help.contains("-t, --threads <N>"), "{help}");
    for bad in ["0", "x"] {
        let o = smelt(&["--threads", bad, "sizes"]);
        assert!(!o.status.success(), "--threads {bad} was accepted");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--threads"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn tokenize_takes_the_text_and_shows_tokens() {
    let d = tmpdir("tokenize");
    let tok = d.join("bytes.json");
    std::fs::write(&tok, r#"{"model": {"type": "smelt-bytes"}}"#).unwrap();
    let tok = tok.to_str().unwrap();
    let text = "Hi é\n";
    let file = d.join("t.txt");
    std::fs::write(&file, text).unwrap();
    // The text as an argument gives what the same text in a file gives.
    let from_arg = stdout(&smelt(&["tokenize", "--tokenizer", tok, text]));
    let from_file = stdout(&smelt(&["tokenize", "--tokenizer", tok, "--input", file.to_str().unwrap()]));
    assert_eq!(from_arg, from_file);
    let ids: Vec<u32> = serde_json::from_str(from_arg.trim()).unwrap();
    assert_eq!(ids.len(), text.len(), "byte-level: one id per byte");
    // One line per token: its id and its piece; "é" is two byte pieces, neither UTF-8 alone.
    let shown = stdout(&smelt(&["tokenize", "--tokenizer", tok, "--show-tokens", text]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), ids.len(), "{shown}");
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line.split_whitespace().next().unwrap().parse::<u32>().unwrap(), *id, "{shown}");
    }
    assert_eq!(lines[0].trim_start(), format!("{} \"H\"", ids[0]));
    assert!(lines[3].ends_with(r#" b"\xc3""#) && lines[4].ends_with(r#" b"\xa9""#), "{shown}");
    assert!(lines[5].ends_with(r#" "\n""#), "{shown}");
    // Text and a file together are refused; no input at all too.
    assert!(!smelt(&["tokenize", "--tokenizer", tok, "--input", file.to_str().unwrap(), "x"]).status.success());
    let o = smelt(&["tokenize", "--tokenizer", tok]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("give the text"));
}

/// A real BPE vocabulary (GPT-2's, from llama.cpp's test files): the pieces `--show-tokens`
/// prints are the text cut where the ids cut it.
#[test]
fn show_tokens_pieces_of_a_real_vocabulary_join_into_the_text() {
    let Some(gguf) = smelt_testing::input("llama.cpp/models/ggml-vocab-gpt-2.gguf") else {
        return;
    };
    let text = "Hello, world! It's 2024.";
    let shown = stdout(&smelt(&["tokenize", "--tokenizer", gguf.to_str().unwrap(), "--show-tokens", text]));
    let pieces: Vec<String> = shown
        .lines()
        .map(|l| {
            let quoted = l.trim_start().split_once(' ').unwrap().1;
            serde_json::from_str::<String>(quoted).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .collect();
    assert_eq!(pieces.concat(), text, "{shown}");
    assert_eq!(pieces[..3], ["Hello", ",", " world"], "{shown}");
}
