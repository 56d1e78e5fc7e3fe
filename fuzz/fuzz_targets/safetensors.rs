//! Any bytes through smelt's safetensors reading (header, dtypes, conversion to tensors).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smelt_model::io::parse_safetensors(data, std::path::Path::new("fuzz.safetensors"));
});
