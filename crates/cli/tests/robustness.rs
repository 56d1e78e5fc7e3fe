//! The `smelt` binary against a hostile-but-realistic user (issue 13): each case runs the built
//! binary and asserts a non-zero exit with a message naming the flag or file, no panic, no
//! earlier output or checkpoint changed (hashed before and after) and no temporary left.
//! Cases that used to allocate without bound run under `ulimit -v`, so a regression fails
//! fast instead of freezing the machine. Tiny models, a few steps: seconds in all.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SMELT: &str = env!("CARGO_BIN_EXE_smelt");
/// Address-space limit for the memory-bound cases (KiB): far above what any of them needs
/// when it refuses early, far below what the old behaviour allocated.
const MEM_LIMIT_KB: u64 = 3_000_000;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("robustness-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn smelt(args: &[&str]) -> Output {
    Command::new(SMELT).args(args).output().unwrap()
}

/// `smelt args` under `ulimit -v` (and, with `fsize_blocks`, `ulimit -f`, SIGXFSZ ignored so
/// that a write past it fails like a full disk).
fn smelt_limited(args: &[&str], fsize_blocks: Option<u64>) -> Output {
    let mut script = format!("ulimit -v {MEM_LIMIT_KB}; ");
    if let Some(b) = fsize_blocks {
        script += &format!("trap '' XFSZ; ulimit -f {b}; ");
    }
    script += "exec \"$0\" \"$@\"";
    Command::new("sh").arg("-c").arg(script).arg(SMELT).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Non-zero exit, no panic, and every `needles` in the message.
#[track_caller]
fn refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal, got success; stderr:\n{e}");
    assert_ne!(o.status.code(), Some(101), "panicked:\n{e}");
    assert!(!e.contains("panicked at") && !e.contains("memory allocation"), "panic or abort:\n{e}");
    assert!(o.status.code().is_some(), "killed by a signal ({:?}):\n{e}", o.status);
    for n in needles {
        assert!(e.contains(n), "message lacks {n:?}:\n{e}");
    }
}

#[track_caller]
fn ok(o: &Output) -> String {
    let e = stderr(o);
    assert!(o.status.success(), "failed ({:?}):\n{e}", o.status);
    e
}

/// Every file under `d` (relative path → hash of its bytes) but the lock (it holds its holder's pid).
fn snapshot(d: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if e.file_name() != ".lock" {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), h.finish());
            }
        }
    }
    let mut out = BTreeMap::new();
    if d.exists() {
        walk(d, d, &mut out);
    }
    out
}

/// No temporary (`….tmp-<pid>-<hex>`, `<out>.tmp`, `.tmp-*`, `.old-*`) anywhere under `d`.
#[track_caller]
fn no_temps(d: &Path) {
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp") && !n.starts_with(".old-"), "temporary left: {}", e.path().display());
        if e.path().is_dir() {
            no_temps(&e.path());
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Shared inputs, made once: a corpus, a 300-token BPE tokenizer, a token file and a trained
/// 1-layer model (checkpoint dir `run`, steps 1..3 every step).
struct Base {
    d: PathBuf,
}

impl Base {
    fn p(&self, f: &str) -> PathBuf {
        self.d.join(f)
    }
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let d = dir("base");
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/linux-doc-slice.txt.gz");
        let mut text = gunzip(&corpus);
        text.truncate(text.char_indices().nth(60_000).map_or(text.len(), |c| c.0));
        std::fs::write(d.join("corpus.txt"), &text).unwrap();
        ok(&smelt(&[
            "tokenizer",
            "--input",
            s(&d.join("corpus.txt")),
            "--vocab-size",
            "300",
            "--output",
            s(&d.join("tok.json")),
        ]));
        ok(&smelt(&[
            "prepare",
            "-i",
            s(&d.join("corpus.txt")),
            "--tokenizer",
            s(&d.join("tok.json")),
            "-o",
            s(&d.join("train.bin")),
        ]));
        ok(&train(&d, &d.join("run"), &["--steps", "3"]));
        Base { d }
    })
}

/// The corpus through `gzip -dc`.
fn gunzip(p: &Path) -> String {
    let o = Command::new("gzip").arg("-dc").arg(p).output().expect("gzip");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `smelt train` of the tiny model on the base data into `ckpt`, checkpoints every step;
/// `extra` flags (`--flag value`, or a lone `--flag`) replace the defaults of the same name.
fn train(d: &Path, ckpt: &Path, extra: &[&str]) -> Output {
    smelt_train(d, ckpt, extra, false)
}

fn smelt_train(d: &Path, ckpt: &Path, extra: &[&str], limited: bool) -> Output {
    let (data, tok) = (d.join("train.bin"), d.join("tok.json"));
    let mut flags: Vec<(&str, Option<&str>)> = vec![
        ("--dataset", Some(s(&data))),
        ("--tokenizer", Some(s(&tok))),
        ("--size", Some("custom")),
        ("--dim", Some("16")),
        ("--layers", Some("1")),
        ("--heads", Some("2")),
        ("--ffn-hidden", Some("32")),
        ("--batch-size", Some("2")),
        ("--seq-len", Some("16")),
        ("--checkpoint-interval", Some("1")),
        ("--keep-checkpoints", Some("5")),
        ("--device", Some("cpu")),
        ("--checkpoint-dir", Some(s(ckpt))),
    ];
    let mut i = 0;
    while i < extra.len() {
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--")).copied();
        flags.retain(|(f, _)| *f != extra[i]);
        flags.push((extra[i], value));
        i += 1 + value.is_some() as usize;
    }
    // `--flag=value`, so that negative values are not taken for flags.
    let args: Vec<String> = std::iter::once("train".to_string())
        .chain(flags.into_iter().map(|(f, v)| v.map_or(f.to_string(), |v| format!("{f}={v}"))))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if limited {
        smelt_limited(&args, None)
    } else {
        smelt(&args)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn edit_json(p: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

// ---- 1. a used checkpoint dir is refused; --overwrite replaces it ----

#[test]
fn item1_training_into_a_used_checkpoint_dir_is_refused() {
    let b = base();
    let d = dir("item1");
    let ck = d.join("ck");
    ok(&train(&b.d, &ck, &["--steps", "2"]));
    let before = snapshot(&ck);
    let o = train(&b.d, &ck, &["--steps", "3", "--seed", "9"]);
    refused(&o, &[s(&ck), "--overwrite", "--resume", "step-000001"]);
    assert_eq!(snapshot(&ck), before, "the earlier run changed");
    no_temps(&ck);
    // --overwrite is the explicit way to start over: the earlier run's checkpoints are gone.
    ok(&train(&b.d, &ck, &["--steps", "3", "--seed", "9", "--overwrite"]));
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("final/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(st["step"], 3);
    assert_eq!(std::fs::read_to_string(ck.join("metrics.jsonl")).unwrap().lines().count(), 3);
    no_temps(&ck);
}

// ---- 2. non-finite updates: refused up front, or never saved ----

#[test]
fn item2_nonsense_hyperparameters_are_refused_before_anything() {
    let b = base();
    let d = dir("item2a");
    for (flag, v) in [
        ("--lr", "NaN"),
        ("--lr", "inf"),
        ("--lr", "-1"),
        ("--beta2", "1"),
        ("--beta1", "-0.1"),
        ("--eps", "0"),
        ("--min-lr", "NaN"),
    ] {
        let ck = d.join(format!("ck{}{v}", &flag[2..]));
        let o = train(&b.d, &ck, &["--steps", "2", flag, v]);
        refused(&o, &[flag]);
        assert!(!ck.exists(), "{flag} {v}: the checkpoint dir was created");
    }
}

#[test]
fn item2_an_update_that_overflows_saves_nothing_and_names_the_last_good_checkpoint() {
    let b = base();
    let d = dir("item2b");
    // Fresh: the first update overflows (finite --lr, but f32 steps of 1e39 are not).
    let ck = d.join("fresh");
    let o = train(&b.d, &ck, &["--steps", "3", "--lr", "1e39", "--warmup", "0"]);
    refused(&o, &["step 1", "NaN or infinite", "no checkpoint was written yet", "--lr"]);
    assert!(!ck.join("step-000001").exists() && !ck.join("final").exists());
    no_temps(&ck);
    // Resumed: the checkpoint resumed from is the last good one, not "none".
    let src = d.join("src");
    copy_dir(&b.p("run/final"), &src);
    edit_json(&src.join("trainer_state.json"), |v| {
        v["config"]["lr"] = serde_json::json!(1e39);
        v["config"]["warmup"] = serde_json::json!(0);
    });
    let before = snapshot(&src);
    let ck = d.join("resumed");
    let o = smelt(&[
        "train",
        "--resume",
        s(&src),
        "--steps",
        "6",
        "--checkpoint-dir",
        s(&ck),
        "--checkpoint-interval",
        "1",
        "--device",
        "cpu",
    ]);
    refused(&o, &["step 4", &format!("the last good checkpoint is {}", src.display())]);
    assert!(!ck.join("step-000004").exists() && !ck.join("final").exists());
    assert_eq!(snapshot(&src), before);
    no_temps(&ck);
}

// ---- 3. two writers ----

#[test]
fn item3_a_checkpoint_dir_in_use_is_refused() {
    let b = base();
    let d = dir("item3a");
    let ck = d.join("ck");
    ok(&train(&b.d, &ck, &["--steps", "2"]));
    let before = snapshot(&ck);
    // Another writer holds the lock (as a running `smelt train` does).
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(ck.join(".lock")).unwrap();
    f.lock().unwrap();
    let o = smelt(&[
        "train",
        "--resume",
        s(&ck.join("final")),
        "--steps",
        "4",
        "--checkpoint-dir",
        s(&ck),
        "--device",
        "cpu",
    ]);
    refused(&o, &["in use", s(&ck.join(".lock"))]);
    drop(f);
    assert_eq!(snapshot(&ck), before);
    no_temps(&ck);
}

#[test]
fn item3_two_writers_of_one_output_never_mix() {
    let b = base();
    let d = dir("item3b");
    let text = std::fs::read_to_string(b.p("corpus.txt")).unwrap();
    let (half_a, half_b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).unwrap().0);
    std::fs::write(d.join("a.txt"), half_a.repeat(4)).unwrap();
    std::fs::write(d.join("b.txt"), half_b).unwrap();
    let alone = |name: &str| {
        let out = d.join(format!("{name}.bin"));
        ok(&smelt(&[
            "prepare",
            "-i",
            s(&d.join(format!("{name}.txt"))),
            "--tokenizer",
            s(&b.p("tok.json")),
            "-o",
            s(&out),
        ]));
        std::fs::read(out).unwrap()
    };
    let (a, bb) = (alone("a"), alone("b"));
    let out = d.join("both.bin");
    for _ in 0..3 {
        let spawn = |name: &str| {
            Command::new(SMELT)
                .args([
                    "prepare",
                    "-i",
                    s(&d.join(format!("{name}.txt"))),
                    "--tokenizer",
                    s(&b.p("tok.json")),
                    "-o",
                    s(&out),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut x, mut y) = (spawn("a"), spawn("b"));
        assert!(x.wait().unwrap().success() && y.wait().unwrap().success());
        let got = std::fs::read(&out).unwrap();
        assert!(got == a || got == bb, "the output mixes the two writers' data");
        no_temps(&d);
    }
}

// ---- 4. resuming an older checkpoint never mixes two trajectories ----

#[test]
fn item4_resuming_an_older_step_refuses_to_mix_trajectories() {
    let b = base();
    let d = dir("item4");
    let ck = d.join("ck");
    copy_dir(&b.p("run"), &ck);
    let _ = std::fs::remove_file(ck.join(".lock"));
    let before = snapshot(&ck);
    let o = smelt(&[
        "train",
        "--resume",
        s(&ck.join("step-000001")),
        "--steps",
        "3",
        "--checkpoint-dir",
        s(&ck),
        "--checkpoint-interval",
        "1",
        "--device",
        "cpu",
    ]);
    refused(&o, &["newer than step 1", "step-000002", "final", "--overwrite"]);
    assert_eq!(snapshot(&ck), before);
    // With --overwrite the abandoned newer ones go, and what is left is one trajectory.
    let o = smelt(&[
        "train",
        "--resume",
        s(&ck.join("step-000001")),
        "--steps",
        "3",
        "--checkpoint-dir",
        s(&ck),
        "--checkpoint-interval",
        "1",
        "--device",
        "cpu",
        "--overwrite",
        "--keep-checkpoints",
        "1",
    ]);
    ok(&o);
    let steps: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(steps, vec!["step-000002".to_string()], "rotation keeps this run's newest step only");
    let metrics = std::fs::read_to_string(ck.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    no_temps(&ck);
}

// ---- 5. debris: stale temporaries swept, Ctrl-C cleans up ----

#[test]
fn item5_stale_temporaries_of_dead_runs_are_swept() {
    let b = base();
    let d = dir("item5a");
    let ck = d.join("ck");
    copy_dir(&b.p("run"), &ck);
    let _ = std::fs::remove_file(ck.join(".lock"));
    // What a killed (or disk-full) save leaves: pid 2147483632 is no live process.
    std::fs::create_dir_all(ck.join(".step-000004.tmp-2147483632-0badcafe")).unwrap();
    std::fs::write(ck.join(".step-000004.tmp-2147483632-0badcafe/model.safetensors"), vec![0u8; 4096]).unwrap();
    std::fs::create_dir_all(ck.join(".tmp-step-000005-2147483632")).unwrap();
    let e = ok(&smelt(&[
        "train",
        "--resume",
        s(&ck.join("final")),
        "--steps",
        "4",
        "--checkpoint-dir",
        s(&ck),
        "--device",
        "cpu",
    ]));
    assert!(e.contains("removed 2 temporaries"), "{e}");
    no_temps(&ck);
}

#[test]
fn item5_ctrl_c_removes_the_output_being_written() {
    let b = base();
    let d = dir("item5b");
    // A FIFO input: prepare creates its output's temporary, then waits for text that never comes.
    let fifo = d.join("in.txt");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = d.join("out.bin");
    let mut child = Command::new(SMELT)
        .args(["prepare", "-i", s(&fifo), "--tokenizer", s(&b.p("tok.json")), "-o", s(&out)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let temp_exists =
        || std::fs::read_dir(&d).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(".tmp"));
    let t0 = std::time::Instant::now();
    while !temp_exists() {
        assert!(t0.elapsed().as_secs() < 20, "prepare never created its temporary");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!out.exists());
    no_temps(&d);
}

#[test]
fn item5_final_is_replaced_in_place() {
    let b = base();
    let d = dir("item5c");
    let ck = d.join("ck");
    copy_dir(&b.p("run"), &ck);
    let _ = std::fs::remove_file(ck.join(".lock"));
    ok(&smelt(&[
        "train",
        "--resume",
        s(&ck.join("final")),
        "--steps",
        "4",
        "--checkpoint-dir",
        s(&ck),
        "--device",
        "cpu",
    ]));
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("final/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(st["step"], 4);
    no_temps(&ck);
}

// ---- 6. claimed sizes checked against what is present (under a memory limit) ----

#[test]
fn item6_a_config_claiming_a_billion_layers_is_refused_at_once() {
    let b = base();
    let d = dir("item6a");
    let m = d.join("m");
    copy_dir(&b.p("run/final"), &m);
    edit_json(&m.join("config.json"), |v| v["num_hidden_layers"] = serde_json::json!(1_000_000_000u64));
    let o = smelt_limited(&["generate", "--model", s(&m), "--prompt", "hi", "--device", "cpu"], None);
    refused(&o, &["config.json", "1000000000 layers", "tensors for 1"]);
}

#[test]
fn item6_a_gguf_claiming_a_billion_blocks_is_refused_at_once() {
    let b = base();
    let d = dir("item6b");
    let g = d.join("m.gguf");
    ok(&smelt(&["export-gguf", "--model", s(&b.p("run/final")), "--output", s(&g), "--type", "f32", "--pre", "gpt-2"]));
    let mut bytes = std::fs::read(&g).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4, "block_count is a u32");
    bytes[at + 4..at + 8].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    std::fs::write(&g, bytes).unwrap();
    let o = smelt_limited(&["generate", "--model", s(&g), "--prompt", "hi", "--device", "cpu"], None);
    refused(&o, &["m.gguf", "block_count", "1000000000 layers"]);
}

#[test]
fn item6_gguf_metadata_arrays_are_bounded() {
    let d = dir("item6c");
    // One u8 array of 2^25 items: 32 MiB in the file, ~1 GiB as parsed values.
    let n: u64 = 1 << 25;
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(1u64.to_le_bytes());
    f.extend(1u64.to_le_bytes());
    f.push(b'x');
    f.extend(9u32.to_le_bytes());
    f.extend(0u32.to_le_bytes());
    f.extend(n.to_le_bytes());
    f.resize(f.len() + n as usize, 0);
    let g = d.join("big.gguf");
    std::fs::write(&g, f).unwrap();
    let o = smelt_limited(&["inspect", s(&g)], None);
    refused(&o, &["big.gguf", "metadata x", "16777216 items"]);
    let _ = std::fs::remove_file(&g);
}

// ---- 7. flags bounded by memory (under a memory limit) ----

#[test]
fn item7_generate_and_trace_cap_new_tokens_at_the_context() {
    let b = base();
    let m = b.p("run/final");
    let o = smelt_limited(
        &[
            "generate",
            "--model",
            s(&m),
            "--prompt",
            "hello",
            "--max-tokens",
            "1000000000000",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ],
        None,
    );
    let e = ok(&o);
    assert!(e.contains("--max-tokens 1000000000000 capped at"), "{e}");
    let o = smelt_limited(&["trace", s(&m), "hello", "--decode", "1000000000000"], None);
    let e = ok(&o);
    assert!(e.contains("--decode 1000000000000 capped at"), "{e}");
    let o = smelt(&["perplexity", "--model", s(&m), "--input", s(&b.p("corpus.txt")), "--seq-len", "100000"]);
    let e = ok(&o);
    assert!(e.contains("--seq-len 100000") && e.contains("past the model's context of 2048"), "{e}");
    let im = std::env::temp_dir().join(format!("robustness-{}-im.gguf", std::process::id()));
    let corpus = b.p("corpus.txt");
    let e =
        ok(&smelt(&["imatrix", "--model", s(&m), "--input", s(&corpus), "--output", s(&im), "--chunk-size", "10000"]));
    assert!(e.contains("--chunk-size 10000") && e.contains("past the model's context of 2048"), "{e}");
    let _ = std::fs::remove_file(&im);
}

#[test]
fn item7_memory_hungry_flags_are_refused_with_the_estimate() {
    let b = base();
    let d = dir("item7");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["bench", "--size", "tiny", "--decode-tokens", "1000000000000", "--device", "cpu"], "bench"),
        (vec!["bench", "--size", "tiny", "--seq-len", "100000000", "--device", "cpu"], "--seq-len 100000000"),
        (vec!["bench", "--size", "6.5b", "--device", "cpu"], "bench"),
    ];
    for (args, needle) in cases {
        let o = smelt_limited(&args, None);
        refused(&o, &[needle, "needs about", "available"]);
    }
    let ck = d.join("ck");
    for extra in [["--batch-size", "1000000000"], ["--dim", "1000000000"]] {
        refused(&smelt_train(&b.d, &ck, &extra, true), &["training a", "needs about", "available"]);
        assert!(!ck.exists());
    }
    // An absurd vocabulary size trains until the merges run out, in bounded memory.
    let tok = d.join("tok.json");
    let o = smelt_limited(
        &["tokenizer", "--input", s(&b.p("corpus.txt")), "--vocab-size", "4000000000", "--output", s(&tok)],
        None,
    );
    ok(&o);
    assert!(tok.exists());
    no_temps(&d);
}

// ---- 8. no panics, no hangs ----

#[test]
fn item8_flags_that_panicked_or_hung_are_refused() {
    let b = base();
    let d = dir("item8");
    let out = d.join("mixed.bin");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["bench".into(), "--batch-size".into(), "0".into()], "--batch-size"),
        (vec!["bench".into(), "--seq-len".into(), "0".into()], "--seq-len"),
        (
            vec![
                "tokenizer".into(),
                "--input".into(),
                s(&b.p("corpus.txt")).into(),
                "--vocab-size".into(),
                "18446744073709551615".into(),
                "--output".into(),
                s(&d.join("t.json")).into(),
            ],
            "--vocab-size",
        ),
        (
            vec![
                "mix".into(),
                "-i".into(),
                format!("{}:1", b.p("train.bin").display()),
                "-o".into(),
                s(&out).into(),
                "--tokens".into(),
                "1000000000000000".into(),
            ],
            "--tokens",
        ),
        (
            vec![
                "process".into(),
                "-i".into(),
                s(&b.p("corpus.txt")).into(),
                "-o".into(),
                s(&d.join("p.jsonl")).into(),
                "--num-perm".into(),
                "10000000000".into(),
            ],
            "--num-perm",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        refused(&smelt_limited(&args, None), &[needle]);
        assert!(t0.elapsed().as_secs() < 20, "{args:?} took {:?}", t0.elapsed());
    }
    assert!(!out.exists());
    no_temps(&d);
}

// ---- 9. nonsense refused, messages that name things ----

#[test]
fn item9_sampling_values_out_of_range_are_refused() {
    let b = base();
    let m = b.p("run/final");
    for (flag, v) in [
        ("--temperature", "-1"),
        ("--temperature", "NaN"),
        ("--top-p", "0"),
        ("--top-p", "1.5"),
        ("--min-p", "2"),
        ("--repetition-penalty", "0"),
        ("--repetition-penalty", "-1"),
    ] {
        refused(&smelt(&["generate", "--model", s(&m), "--prompt", "hi", &format!("{flag}={v}")]), &[flag]);
    }
}

#[test]
fn item9_training_settings_out_of_range_are_refused() {
    let b = base();
    let d = dir("item9a");
    for (flag, v) in [
        ("--grad-clip", "-1"),
        ("--val-batches", "0"),
        ("--keep-checkpoints", "0"),
        ("--steps", "0"),
        ("--batch-size", "0"),
        ("--rope-theta", "0"),
    ] {
        let ck = d.join("ck");
        refused(&train(&b.d, &ck, &[flag, v]), &[flag]);
        assert!(!ck.exists(), "{flag} {v}: created the checkpoint dir");
    }
}

#[test]
fn item9_config_rope_theta_and_rms_norm_eps_are_checked() {
    let b = base();
    let d = dir("item9b");
    for (key, v) in [
        ("rope_theta", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!(-10000.0)),
        ("rms_norm_eps", serde_json::json!(-1e-5)),
        ("max_position_embeddings", serde_json::json!(0)),
    ] {
        let m = d.join(format!("m-{key}"));
        copy_dir(&b.p("run/final"), &m);
        edit_json(&m.join("config.json"), |c| c[key] = v);
        refused(
            &smelt(&["perplexity", "--model", s(&m), "--input", s(&b.p("corpus.txt")), "--device", "cpu"]),
            &["config.json", key],
        );
    }
}

#[test]
fn item9_a_full_disk_names_the_file_and_leaves_nothing() {
    let b = base();
    let d = dir("item9c");
    let out = d.join("train.bin");
    // ulimit -f 8: writes past 4 KiB fail as on a full disk.
    let o = smelt_limited(
        &["prepare", "-i", s(&b.p("corpus.txt")), "--tokenizer", s(&b.p("tok.json")), "-o", s(&out)],
        Some(8),
    );
    refused(&o, &["train.bin"]);
    let out = d.join("kept.jsonl");
    let o = smelt_limited(
        &[
            "process",
            "-i",
            s(&b.p("corpus.txt")),
            "-o",
            s(&out),
            "--min-chars",
            "1",
            "--min-punct-lines",
            "0",
            "--max-symbol-ratio",
            "1",
            "--min-alpha-words",
            "0",
            "--max-dup-line-frac",
            "1",
            "--max-top-ngram-frac",
            "1",
            "--max-dup-ngram-frac",
            "1",
            "--max-boilerplate-frac",
            "1",
            "--max-digit-ratio",
            "1",
        ],
        Some(8),
    );
    refused(&o, &["kept.jsonl"]);
    assert!(std::fs::read_dir(&d).unwrap().next().is_none(), "left files behind");
}

#[test]
fn item9_imatrix_format_and_quantize_eval_are_checked_before_the_work() {
    let b = base();
    let d = dir("item9d");
    let m = b.p("run/final");
    let out = d.join("im.xml");
    let o =
        smelt(&["imatrix", "--model", s(&m), "--input", s(&b.p("corpus.txt")), "--output", s(&out), "--format", "xml"]);
    refused(&o, &["--format", "xml"]);
    assert!(!out.exists());
    let out = d.join("q.gguf");
    let missing = d.join("missing.txt");
    let o = smelt(&[
        "quantize",
        "--model",
        s(&m),
        "--type",
        "q8_0",
        "--output",
        s(&out),
        "--eval",
        s(&missing),
        "--pre",
        "gpt-2",
    ]);
    refused(&o, &["--eval", "missing.txt"]);
    assert!(!out.exists(), "the work was done before --eval was checked");
    no_temps(&d);
}

// ---- 10. an output that is one of the inputs, or a directory, is refused before the work ----

#[test]
fn item10_an_output_that_is_an_input_or_a_directory_is_refused() {
    let b = base();
    let d = dir("item10");
    let (corpus, bin, sub) = (d.join("corpus.txt"), d.join("train.bin"), d.join("sub"));
    std::fs::copy(b.p("corpus.txt"), &corpus).unwrap();
    std::fs::copy(b.p("train.bin"), &bin).unwrap();
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("keep"), "keep").unwrap();
    let vocab = d.join("vocab.json");
    std::fs::write(&vocab, r#"{"a": 0, "b": 1}"#).unwrap();
    let before = snapshot(&d);
    let (tok, model) = (b.p("tok.json"), b.p("run/final"));
    let (c, t, m, o) = (s(&corpus), s(&tok), s(&model), s(&sub));
    let mixed = format!("{}:1", s(&bin));
    let processed = d.join("p.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["prepare", "-i", c, "--tokenizer", t, "-o", c], "is also an input"),
        (vec!["process", "-i", c, "-o", c], "is also an input"),
        (vec!["process", "-i", c, "-o", s(&processed), "--report", c], "is also an input"),
        (vec!["mix", "-i", &mixed, "-o", s(&bin)], "is also an input"),
        (vec!["prepare", "-i", c, "--tokenizer", t, "-o", o], "is a directory"),
        (vec!["tokenizer", "--input", c, "--vocab-size", "300", "--output", o], "is a directory"),
        (vec!["import-bpe", "--vocab", s(&vocab), "--merges", c, "--output", s(&vocab)], "is also an input"),
        (vec!["export-gguf", "--model", m, "--output", o, "--type", "f32", "--pre", "gpt-2"], "is a directory"),
    ];
    for (args, needle) in cases {
        let flag = if args.contains(&"--report") { "--report" } else { "--output" };
        refused(&smelt(&args), &[flag, needle]);
    }
    assert_eq!(snapshot(&d), before, "an input or the directory changed");
    no_temps(&d);
}

// ---- 11. token ids outside the token file's vocabulary name the file ----

#[test]
fn item11_a_token_file_with_ids_outside_its_vocabulary_names_the_file() {
    let b = base();
    let d = dir("item11");
    let mut bytes = std::fs::read(b.p("train.bin")).unwrap();
    assert_eq!(&bytes[12..16], &2u32.to_le_bytes(), "u16 ids");
    for id in bytes[32..].chunks_exact_mut(2) {
        id.copy_from_slice(&65000u16.to_le_bytes());
    }
    std::fs::write(d.join("train.bin"), &bytes).unwrap();
    std::fs::copy(b.p("tok.json"), d.join("tok.json")).unwrap();
    let ck = d.join("ck");
    refused(&train(&d, &ck, &["--steps", "1"]), &["train.bin", "token 65000 at position", "vocabulary of 300"]);
    let o = smelt(&["mix", "-i", &format!("{}:1", s(&d.join("train.bin"))), "-o", s(&d.join("m.bin"))]);
    refused(&o, &["train.bin", "token 65000"]);
    assert!(!d.join("m.bin").exists());
}

// ---- 12. a head dim of dim / heads with a remainder, or zero, is refused ----

#[test]
fn item12_dim_not_a_multiple_of_heads_is_refused() {
    let b = base();
    let d = dir("item12");
    for (dim, heads) in [("18", "4"), ("16", "32")] {
        let ck = d.join("ck");
        let o = train(&b.d, &ck, &["--dim", dim, "--heads", heads, "--kv-heads", heads]);
        refused(&o, &[&format!("--dim {dim} is not a multiple of --heads {heads}")]);
        assert!(!ck.exists());
    }
    let m = d.join("m");
    copy_dir(&b.p("run/final"), &m);
    edit_json(&m.join("config.json"), |c| c["head_dim"] = serde_json::json!(0));
    let o = smelt(&["generate", "--model", s(&m), "--prompt", "hi", "--device", "cpu"]);
    refused(&o, &["config.json", "head dim 0"]);
}

// ---- 13. a model path that is neither a folder nor a .gguf says so ----

#[test]
fn item13_a_model_path_that_is_a_file_but_not_a_gguf_says_what_it_is() {
    let b = base();
    let d = dir("item13");
    let g = d.join("m.bin");
    let (exported, model) = (d.join("m.gguf"), b.p("run/final"));
    ok(&smelt(&["export-gguf", "--model", s(&model), "--output", s(&exported), "--type", "f32", "--pre", "gpt-2"]));
    std::fs::rename(&exported, &g).unwrap();
    let gen = |m: &Path| smelt(&["generate", "--model", s(m), "--prompt", "hi", "--device", "cpu"]);
    refused(&gen(&g), &["m.bin", "not a model folder", "GGUF file", ".gguf"]);
    refused(&gen(&b.p("corpus.txt")), &["corpus.txt", "not a model folder"]);
    refused(&gen(&d.join("missing")), &["missing", "no such model folder"]);
}

// ---- 14. serve flags that would refuse every request are refused at the start ----

#[test]
fn item14_serve_flags_that_refuse_every_request_are_refused() {
    let b = base();
    let m = b.p("run/final");
    for (flag, v) in [("--max-body", "0"), ("--alias", ""), ("--alias", " ")] {
        let o = smelt(&["serve", "--model", s(&m), "--device", "cpu", "--port", "0", &format!("{flag}={v}")]);
        refused(&o, &[flag]);
    }
}

// ---- 15. --overwrite never deletes what the run reads ----

#[test]
fn item15_overwrite_spares_the_model_the_run_starts_from() {
    let b = base();
    let d = dir("item15");
    let ck = d.join("run");
    copy_dir(&b.p("run"), &ck);
    let before = snapshot(&d);
    let o = train(&b.d, &ck, &["--init", s(&ck.join("step-000002")), "--steps", "1", "--overwrite"]);
    refused(&o, &["--overwrite would delete", "step-000002", "this run reads"]);
    std::fs::write(d.join("ok.jsonl"), "{\"text\": \"hello there\"}\n").unwrap();
    let o = smelt(&[
        "sft",
        "--model",
        s(&ck.join("final")),
        "--data",
        s(&d.join("ok.jsonl")),
        "--output",
        s(&ck),
        "--steps",
        "1",
        "--device",
        "cpu",
        "--overwrite",
    ]);
    refused(&o, &["--overwrite would delete", "final", "this run reads"]);
    let mut after = snapshot(&d);
    after.remove(Path::new("ok.jsonl"));
    assert_eq!(after, before, "a checkpoint changed");
}

// ---- 16. export-gguf --pre takes only names smelt reads back ----

#[test]
fn item16_export_gguf_refuses_a_pre_tokeniser_it_cannot_read_back() {
    let b = base();
    let d = dir("item16");
    let (g, model) = (d.join("m.gguf"), b.p("run/final"));
    let o = smelt(&["export-gguf", "--model", s(&model), "--output", s(&g), "--type", "f32", "--pre", "bogus"]);
    refused(&o, &["--pre", "bogus"]);
    assert!(!g.exists(), "a GGUF with a pre-tokeniser nothing reads was written");
    no_temps(&d);
}

// ---- 17. a flag that only applies with another is refused, not ignored, beside a rival ----

#[test]
fn item17_flags_that_would_be_ignored_are_refused() {
    let b = base();
    let d = dir("item17");
    let m = b.p("run/final");
    let o = smelt(&["generate", "--model", s(&m), "--prompt", "hi", "--system", "be brief", "--max-tokens", "1"]);
    refused(&o, &["--system", "--prompt"]);
    let (out, im) = (d.join("q.gguf"), d.join("im.gguf"));
    let args = ["quantize", "--model", s(&m), "--type", "q8_0", "--output", s(&out), "--imatrix", s(&im)];
    refused(&smelt(&[&args[..], &["--imatrix-chunks", "3"]].concat()), &["--imatrix-chunks", "--imatrix"]);
    assert!(!out.exists());
}

/// `inspect` on a file that is neither GGUF nor safetensors says so (it said "HeaderTooLarge");
/// a GGUF named without `.gguf` is read by its magic.
#[test]
fn inspect_names_what_it_cannot_read() {
    let d = dir("inspect");
    let txt = d.join("notes.txt");
    std::fs::write(&txt, "just some notes\n").unwrap();
    refused(&smelt(&["inspect", txt.to_str().unwrap()]), &["notes.txt", "not a GGUF file"]);
    refused(&smelt(&["inspect", d.join("missing.bin").to_str().unwrap()]), &["missing.bin", "no such file"]);
    let bad = d.join("bad.bin");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").unwrap();
    refused(&smelt(&["inspect", bad.to_str().unwrap()]), &["bad.bin", "GGUF"]);
}

/// `quantize --type q4_k` of a model whose rows are not whole 256-value blocks says which types
/// the matrices took (they fall back: here to f16, the rows being 16 values), rather than
/// reporting "q4_k" alone.
#[test]
fn quantize_reports_the_fallback_types_it_wrote() {
    let b = base();
    let d = dir("quantize-types");
    let out = d.join("q.gguf");
    let o =
        smelt(&["quantize", "--model", s(&b.p("run/final")), "--type", "q4_k", "--output", s(&out), "--pre", "gpt-2"]);
    let text = ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("tensor types:") && stdout.contains("f16") && stdout.contains("fallback"),
        "{stdout}\n{text}"
    );
}

/// `sft --model` naming a GGUF without `.gguf`, or a file that is not text, says what the file
/// is, not "stream did not contain valid UTF-8" from the tokenizer reader.
#[test]
fn a_model_file_that_is_not_a_tokenizer_is_named() {
    let d = dir("not-a-tokenizer");
    let data = d.join("d.jsonl");
    std::fs::write(&data, "{\"text\": \"hi\"}\n").unwrap();
    let gguf_named_bin = d.join("m.bin");
    std::fs::write(&gguf_named_bin, b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00").unwrap();
    let junk = d.join("junk.json");
    std::fs::write(&junk, [0xffu8, 0xfe, 0x00, 0x81]).unwrap();
    for (model, needle) in [(&gguf_named_bin, "give it a name ending in .gguf"), (&junk, "not UTF-8 text")] {
        let o = smelt(&["sft", "--model", s(model), "--data", s(&data), "--output", s(&d.join("out")), "--steps", "1"]);
        refused(&o, &[needle]);
    }
}

/// An SFT `--grad-accum` that makes one update read the data many times over warns, with the
/// number of passes, before the first (long) update.
#[test]
fn sft_warns_when_one_update_is_many_passes_over_the_data() {
    let b = base();
    let d = dir("sft-accum");
    std::fs::write(d.join("one.jsonl"), "{\"text\": \"hello there\"}\n").unwrap();
    let o = smelt(&[
        "sft",
        "--model",
        s(&b.p("run/final")),
        "--data",
        s(&d.join("one.jsonl")),
        "--output",
        s(&d.join("out")),
        "--steps",
        "1",
        "--grad-accum",
        "6",
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--device",
        "cpu",
    ]);
    let e = ok(&o);
    assert!(e.contains("warning: --grad-accum 6: one update reads 6 batches, 6.0 passes over"), "{e}");
}
