//! The batch loader is stateless in the step: any instance, any call order, same batches.
mod common;

use common::tmpdir;
use smelt_data::{Batcher, TokenFile, TokenWriter};

fn make(path: &std::path::Path, n: usize) {
    let mut w = TokenWriter::create(path, 1000, Some(0)).unwrap();
    let ids: Vec<u32> = (0..n).map(|i| (i * 7919 % 1000) as u32).collect();
    w.push(&ids).unwrap();
    w.finish().unwrap();
}

#[test]
fn resume_at_any_step_is_exact() {
    let d = tmpdir("loader");
    make(&d.join("t.bin"), 10_000);
    let a = Batcher::new(TokenFile::open(&d.join("t.bin")).unwrap(), 4, 64, 42).unwrap();
    let b = Batcher::new(TokenFile::open(&d.join("t.bin")).unwrap(), 4, 64, 42).unwrap();
    let (mut x, mut y, mut x2, mut y2) = (vec![], vec![], vec![], vec![]);
    let forward: Vec<_> = (0..50)
        .map(|s| {
            a.batch(s, &mut x, &mut y).unwrap();
            (x.clone(), y.clone())
        })
        .collect();
    // a "resumed" loader asked for steps in reverse order gives the same batches
    for s in (0..50).rev() {
        b.batch(s, &mut x2, &mut y2).unwrap();
        assert_eq!((&x2, &y2), (&forward[s as usize].0, &forward[s as usize].1), "step {s}");
    }
    assert_eq!(x2.len(), 4 * 64);
    assert_ne!(forward[0].0, forward[1].0, "steps differ");
    let c = Batcher::new(TokenFile::open(&d.join("t.bin")).unwrap(), 4, 64, 43).unwrap();
    c.batch(0, &mut x, &mut y).unwrap();
    assert_ne!(x, forward[0].0, "seeds differ");
}

#[test]
fn too_short_file_is_an_error_naming_it() {
    let d = tmpdir("loader-short");
    make(&d.join("short.bin"), 64);
    let e = Batcher::new(TokenFile::open(&d.join("short.bin")).unwrap(), 1, 64, 0).err().unwrap().to_string();
    assert!(e.contains("short.bin") && e.contains("65"), "{e}");
    assert!(Batcher::new(TokenFile::open(&d.join("short.bin")).unwrap(), 1, 63, 0).is_ok());
}
