//! Range checks for numeric flags, as clap value parsers: each flag's range is declared beside
//! it (`#[arg(value_parser = checks::count)]`), and a value out of range is refused before any
//! work with clap's message naming the flag. `smelt train`'s settings are checked by
//! `TrainConfig::validate` instead (they are also read back from checkpoints).

use std::str::FromStr;

fn parse<T: FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("{s:?} is not a number of the expected kind"))
}

/// An integer ≥ 1 (sizes, counts, lengths).
pub fn count(s: &str) -> Result<usize, String> {
    let v: usize = parse(s)?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// An integer ≥ 1 (u64 flags).
pub fn count_u64(s: &str) -> Result<u64, String> {
    let v: u64 = parse(s)?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// A vocabulary size: token ids are u32.
pub fn vocab_size(s: &str) -> Result<usize, String> {
    let v = count(s)?;
    if v > u32::MAX as usize {
        return Err(format!("must be at most {} (token ids are 32-bit)", u32::MAX));
    }
    Ok(v)
}

/// MinHash permutations: each kept document keeps a signature of this many values.
pub fn num_perm(s: &str) -> Result<usize, String> {
    let v = count(s)?;
    if v > 8192 {
        return Err(
            "must be at most 8192 (each kept document's signature holds this many 32-bit values; 128 to 256 is usual)"
                .into(),
        );
    }
    Ok(v)
}

fn float<T: FromStr + Into<f64> + Copy>(s: &str, ok: impl Fn(f64) -> bool, want: &str) -> Result<T, String> {
    let v: T = parse(s)?;
    if !ok(v.into()) {
        return Err(format!("must be {want}"));
    }
    Ok(v)
}

/// A finite number ≥ 0 (a temperature).
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    float(s, |x| x.is_finite() && x >= 0.0, "a finite number >= 0")
}

/// A finite number > 0 (a repetition penalty).
pub fn positive_f32(s: &str) -> Result<f32, String> {
    float(s, |x| x.is_finite() && x > 0.0, "a finite number > 0")
}

/// A probability in (0, 1] (top-p: 1 keeps everything, 0 would keep nothing).
pub fn top_p(s: &str) -> Result<f32, String> {
    float(s, |x| x > 0.0 && x <= 1.0, "in (0, 1]")
}

/// A fraction in [0, 1] (min-p, filter ratios).
pub fn fraction_f32(s: &str) -> Result<f32, String> {
    float(s, |x| (0.0..=1.0).contains(&x), "in [0, 1]")
}

/// A fraction in [0, 1].
pub fn fraction(s: &str) -> Result<f64, String> {
    float(s, |x| (0.0..=1.0).contains(&x), "in [0, 1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_what_would_panic_or_mislead() {
        assert!(count("0").is_err() && count("-1").is_err() && count("3").unwrap() == 3);
        assert!(vocab_size("18446744073709551615").is_err() && vocab_size("4000000000").is_ok());
        assert!(num_perm("10000000000").is_err());
        assert!(non_negative_f32("NaN").is_err() && non_negative_f32("-0.5").is_err() && non_negative_f32("0").is_ok());
        assert!(top_p("0").is_err() && top_p("1.5").is_err() && top_p("1").is_ok());
        assert!(fraction_f32("1.1").is_err() && positive_f32("0").is_err() && positive_f32("inf").is_err());
    }
}
