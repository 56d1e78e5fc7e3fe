//! Prints nothing; writes the last-position logits of a token sequence as raw f32 to a file.
//! Usage: gguf_logits MODEL(.gguf|dir) OUT.bin ID ID ...
use smelt_core::Tensor;
use smelt_model::Logits;
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let p = std::path::Path::new(&a[1]);
    let m = if a[1].ends_with(".gguf") { smelt_gguf::load_model(p)? } else { smelt_model::Model::load(p)? };
    let ids: Vec<u32> = a[3..].iter().map(|s| s.parse().unwrap()).collect();
    let l = m.logits(&Tensor::from_u32(ids.clone(), &[1, ids.len()])?, None, Logits::Last)?;
    std::fs::write(&a[2], l.as_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
    Ok(())
}
