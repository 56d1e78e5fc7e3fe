//! Any bytes through the GGUF reader, the llama config, every tensor's bounds and its
//! dequantisation: errors are fine, panics and out-of-bounds reads are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smelt_core::quant::dequantize;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = smelt_gguf::GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    let _ = smelt_convert::load::config(&f);
    for t in &f.tensors {
        if let Ok((ty, bytes)) = f.tensor_bytes(t) {
            let n: u64 = t.dims.iter().product();
            if n < 1 << 20 {
                let _ = dequantize(ty, bytes, n as usize);
            }
        }
    }
});
