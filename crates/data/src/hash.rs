//! Small deterministic hashing and random numbers shared by the data stages.
//!
//! Everything that decides which document goes where (validation split, dedup, mixing, batch
//! offsets) must give the same answer on every machine and every Rust version, so it uses these
//! fixed functions rather than `std`'s `DefaultHasher` (whose algorithm is unspecified) or the
//! `rand` crate (whose streams change between versions).

/// The splitmix64 finaliser: a bijective 64-bit mixer with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a short tuple of integers (seed, index, ...): each value is folded in and re-mixed.
#[inline]
pub fn hash_u64s(vals: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &v in vals {
        h = mix64(h ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    mix64(h)
}

/// 64-bit hash of bytes, seeded. Reads 8 bytes at a time; not cryptographic, only well mixed.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h = mix64(seed ^ (bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().unwrap());
        h = mix64(h ^ v).rotate_left(23).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = mix64(h ^ u64::from_le_bytes(buf)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    mix64(h)
}

/// A uniform value in `0..n` from a 64-bit hash (Lemire's multiply-shift; bias ≤ n / 2^64).
#[inline]
pub fn below(h: u64, n: u64) -> u64 {
    ((h as u128 * n as u128) >> 64) as u64
}

/// A uniform float in `[0, 1)` from a 64-bit hash (top 53 bits).
#[inline]
pub fn unit_f64(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// splitmix64 as a stream, for shuffles that need many numbers in sequence.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = below(self.next_u64(), i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_values_and_ranges() {
        // Pinned so that an accidental change to the hash (which would silently change every
        // validation split and mix) fails here.
        assert_eq!(mix64(0), 0);
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_ne!(hash_bytes(b"abc", 0), hash_bytes(b"abd", 0));
        assert_ne!(hash_bytes(b"abc", 0), hash_bytes(b"abc", 1));
        assert_ne!(hash_bytes(b"", 0), hash_bytes(b"\0", 0));
        for i in 0..1000 {
            assert!(below(hash_u64s(&[i]), 7) < 7);
            let u = unit_f64(hash_u64s(&[i, 1]));
            assert!((0.0..1.0).contains(&u));
        }
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::new(5).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
