//! The training attention alone, kernel time at issue 14's and issue 16's shapes: one layer's
//! forward (`ops::attention::attention`) and backward (`attention_backward`: delta, dk/dv, dq,
//! whatever forms the environment picks — `SMELT_CUDA_ATTN_FWD`, `_DQ`, `_DKDV`, `_DS`, as in
//! training), bf16 q/k/v, causal, timed over ITERS calls after a warm-up. One JSON line a shape
//! with milliseconds and TFLOP/s in FlashAttention's accounting (causal forward 2·B·H·T²·D,
//! backward 2.5× that), so `bench/attn_vs_torch.py` can set it beside PyTorch's SDPA (cuDNN's
//! kernels on Hopper) at the same shapes in the same call. A program that prints numbers, not
//! a test.
//!
//!     cargo build --release --features cuda -p smelt-core --example attn_bench
//!     target/release/examples/attn_bench [--shapes 124m,large,1b,lora] [--iters 20]

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use smelt_core::{cuda, ops, rng::Rng, DType, Device, Tensor};
    use std::time::Instant;

    // (name, B, T, H, KVH): head dim 64 throughout (issue 14's 124M, large and 1B training
    // shapes; issue 16's LoRA shape, Qwen2.5-0.5B's 14 heads over 2 KV heads).
    const SHAPES: [(&str, usize, usize, usize, usize); 4] =
        [("124m", 16, 1024, 12, 12), ("large", 16, 1024, 16, 16), ("1b", 8, 2048, 32, 8), ("lora", 8, 2048, 14, 2)];
    const D: usize = 64;
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let want = arg("--shapes").unwrap_or_else(|| "124m,large,1b,lora".into());
    let iters: usize = arg("--iters").map(|s| s.parse()).transpose()?.unwrap_or(20);
    let gpu = cuda::gpu(0)?;
    cuda::set_matmul_precision(cuda::MatmulPrecision::Bf16); // bf16 activations, as training runs
    let dev = Device::Cuda(0);
    let mut rng = Rng::new(7);
    for &(name, b, t, h, kvh) in SHAPES.iter().filter(|s| want.split(',').any(|w| w == s.0)) {
        let mut rand = |shape: &[usize]| -> anyhow::Result<Tensor> {
            let n = shape.iter().product::<usize>();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            Tensor::from_f32(v, shape)?.to_dtype(DType::BF16)?.to_device(dev)
        };
        let (q, k, v, dout) =
            (rand(&[b, t, h, D])?, rand(&[b, t, kvh, D])?, rand(&[b, t, kvh, D])?, rand(&[b, t, h, D])?);
        let scale = 1.0 / (D as f32).sqrt();
        let (out, lse) = ops::attention::attention(&q, &k, &v, t, None, scale)?;
        ops::attention::attention_backward(&q, &k, &v, &out, &lse, &dout, None, scale)?;
        gpu.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..iters {
            ops::attention::attention(&q, &k, &v, t, None, scale)?;
        }
        gpu.synchronize()?;
        let fwd = t0.elapsed().as_secs_f64() / iters as f64;
        let t0 = Instant::now();
        for _ in 0..iters {
            ops::attention::attention_backward(&q, &k, &v, &out, &lse, &dout, None, scale)?;
        }
        gpu.synchronize()?;
        let bwd = t0.elapsed().as_secs_f64() / iters as f64;
        let flop = 2.0 * (b * h * t * t * D) as f64;
        println!(
            "{{\"shape\": \"{name}\", \"impl\": \"smelt\", \"gpu\": \"{}\", \"b\": {b}, \"t\": {t}, \"h\": {h}, \"kvh\": {kvh}, \"d\": {D}, \
             \"fwd_ms\": {:.4}, \"bwd_ms\": {:.4}, \"fwd_tflops\": {:.1}, \"bwd_tflops\": {:.1}}}",
            gpu.name,
            fwd * 1e3,
            bwd * 1e3,
            flop / fwd / 1e12,
            2.5 * flop / bwd / 1e12
        );
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("attn_bench: built without the cuda feature (cargo build --features cuda --example attn_bench)");
    std::process::exit(2);
}
