//! Decoders: token strings back to bytes (ByteLevel table, `<0xNN>` byte fallback, Metaspace's
//! `▁`, Replace/Fuse/Strip as in Llama-2 style tokenizer.json files).

use crate::bytelevel;

#[derive(Clone, Debug)]
pub enum DecStep {
    ByteLevel,
    ByteFallback,
    Fuse,
    Replace(String, String),
    Strip { content: char, start: usize, stop: usize },
    Metaspace { replacement: char, strip_first: bool },
}

fn parse_byte_token(t: &[u8]) -> Option<u8> {
    if t.len() == 6 && t.starts_with(b"<0x") && t[5] == b'>' {
        u8::from_str_radix(std::str::from_utf8(&t[3..5]).ok()?, 16).ok()
    } else {
        None
    }
}

pub fn decode(steps: &[DecStep], tokens: Vec<Vec<u8>>) -> Vec<u8> {
    let mut toks = tokens;
    for step in steps {
        toks = match step {
            DecStep::ByteLevel => toks
                .into_iter()
                .map(|t| {
                    // HF keeps a token as-is when any of its chars is outside the byte table.
                    let s = String::from_utf8_lossy(&t);
                    if s.chars().all(|c| bytelevel::char_byte(c).is_some()) {
                        let mut b = Vec::with_capacity(t.len());
                        bytelevel::decode_token(&s, &mut b);
                        b
                    } else {
                        t
                    }
                })
                .collect(),
            DecStep::ByteFallback => toks
                .into_iter()
                .map(|t| match parse_byte_token(&t) {
                    Some(b) => vec![b],
                    None => t,
                })
                .collect(),
            DecStep::Fuse => vec![toks.concat()],
            DecStep::Replace(a, b) => toks
                .into_iter()
                .map(|t| {
                    let s = String::from_utf8_lossy(&t);
                    if a.is_empty() || !s.contains(a.as_str()) {
                        t
                    } else {
                        s.replace(a.as_str(), b).into_bytes()
                    }
                })
                .collect(),
            DecStep::Strip { content, start, stop } => toks
                .into_iter()
                .map(|t| {
                    let s = String::from_utf8_lossy(&t).into_owned();
                    let mut chars: Vec<char> = s.chars().collect();
                    let lead = chars.iter().take(*start).take_while(|&&c| c == *content).count();
                    chars.drain(..lead);
                    let trail = chars.iter().rev().take(*stop).take_while(|&&c| c == *content).count();
                    chars.truncate(chars.len() - trail);
                    chars.into_iter().collect::<String>().into_bytes()
                })
                .collect(),
            DecStep::Metaspace { replacement, strip_first } => toks
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    // As HF: in the first token every replacement char is dropped, not only the
                    // leading one (a prefix of spaces collapses with the prepended one).
                    let s = String::from_utf8_lossy(&t);
                    let drop = i == 0 && *strip_first;
                    s.chars()
                        .filter_map(|c| if c == *replacement { (!drop).then_some(' ') } else { Some(c) })
                        .collect::<String>()
                        .into_bytes()
                })
                .collect(),
        };
    }
    toks.concat()
}
