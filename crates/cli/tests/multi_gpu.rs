//! `--nproc` and the launcher's environment, where they must be refused (a CPU machine can
//! check these; the runs themselves are in smelt-train's gpu_nccl.rs and the GPU suite).

use std::process::{Command, Output};

const SMELT: &str = env!("CARGO_BIN_EXE_smelt");

fn smelt(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(SMELT);
    c.args(args);
    for k in ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn refused(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a refusal, got success: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn nproc_on_the_cpu_is_refused() {
    refused(&smelt(&["train", "--dataset", "x.bin", "--nproc", "2", "--device", "cpu"], &[]), &["--nproc 2", "CPU"]);
    // A CPU-only build says it has no CUDA; a CUDA build on a machine without GPUs says so.
    refused(&smelt(&["train", "--dataset", "x.bin", "--nproc", "2"], &[]), &["--nproc 2"]);
    refused(
        &smelt(&["train", "--dataset", "x.bin", "--nproc", "2"], &[("WORLD_SIZE", "2")]),
        &["WORLD_SIZE set", "drop --nproc"],
    );
    refused(&smelt(&["train", "--dataset", "x.bin", "--nproc", "0"], &[]), &["--nproc"]);
    // sft, dpo and distill start their ranks the same way, with the same checks.
    let m = ["--model", "m", "--data", "x.jsonl", "--output", "o"];
    let distill = ["distill", "--teacher", "t", "--dataset", "x.bin", "--output", "o"];
    for cmd in [&["sft"][..], &["dpo"][..]].map(|c| [c, &m[..]].concat()).into_iter().chain([distill.to_vec()]) {
        let args: Vec<&str> = cmd.iter().copied().chain(["--nproc", "2", "--device", "cpu"]).collect();
        refused(&smelt(&args, &[]), &["--nproc 2", "CPU"]);
    }
    refused(&smelt(&["train", "--dataset", "x.bin", "--zero", "2"], &[]), &["--zero"]);
}

#[test]
fn a_launchers_environment_is_checked() {
    let two = [("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1")];
    refused(&smelt(&["train", "--dataset", "x.bin", "--device", "cpu"], &two), &["WORLD_SIZE=2", "CPU"]);
    refused(&smelt(&["train", "--dataset", "x.bin"], &[("WORLD_SIZE", "2"), ("RANK", "1")]), &["MASTER_ADDR"]);
    refused(&smelt(&["train", "--dataset", "x.bin"], &[("WORLD_SIZE", "2"), ("RANK", "x")]), &["RANK=\"x\""]);
}
