//! GPT-2's byte ↔ unicode table: every byte maps to a printable char, so byte-level BPE works on
//! strings yet covers all 256 byte values (and so any input, even invalid UTF-8).

use std::sync::OnceLock;

struct Tables {
    to_char: [char; 256],
    to_byte: Vec<Option<u8>>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        // Printable Latin-1 bytes map to themselves; the rest go to U+0100.. in byte order.
        let keep = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let mut to_char = ['\0'; 256];
        let mut n = 0;
        for b in 0..256u32 {
            let c = if keep(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            to_char[b as usize] = char::from_u32(c).expect("table chars are valid");
        }
        let mut to_byte = vec![None; 0x144];
        for (b, c) in to_char.iter().enumerate() {
            to_byte[*c as usize] = Some(b as u8);
        }
        Tables { to_char, to_byte }
    })
}

/// The char standing for byte `b`.
pub fn byte_char(b: u8) -> char {
    tables().to_char[b as usize]
}

/// The byte a table char stands for (None for chars outside the table).
pub fn char_byte(c: char) -> Option<u8> {
    tables().to_byte.get(c as usize).copied().flatten()
}

/// Map bytes to their table chars.
pub fn encode_bytes(bytes: &[u8], out: &mut String) {
    out.extend(bytes.iter().map(|&b| byte_char(b)))
}

/// Map a byte-level token back to bytes; chars outside the table (added tokens) keep their UTF-8.
pub fn decode_token(tok: &str, out: &mut Vec<u8>) {
    for c in tok.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0; 4];
                out.extend(c.encode_utf8(&mut buf).as_bytes())
            }
        }
    }
}

/// The 256 table chars in byte order (the initial alphabet of a byte-level BPE).
pub fn alphabet() -> Vec<char> {
    (0..=255u8).map(byte_char).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_gpt2s() {
        assert_eq!(super::byte_char(b' '), 'Ġ');
        assert_eq!(super::byte_char(b'\n'), 'Ċ');
        assert_eq!(super::byte_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(super::char_byte(super::byte_char(b)), Some(b));
        }
    }
}
