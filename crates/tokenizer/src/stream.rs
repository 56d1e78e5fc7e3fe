//! Decoding ids one at a time, as generation produces them: [`StreamDecoder`] returns the text
//! each new id completes, holding back the bytes of a UTF-8 character that later ids finish.
//!
//! It decodes a small window, not the whole history: the ids of the last piece it returned
//! (the context) and the ids since. The new text is what the window decodes to beyond what the
//! context alone decodes to, so decoders that look at neighbours (a SentencePiece leading space
//! is stripped only at the start of the text) give the same text as one `decode` of every id,
//! at a cost per id that does not grow with the length of the generation (Hugging Face
//! `tokenizers`' `DecodeStream` works the same way).

use crate::Tokenizer;

/// Incremental decoder of one sequence of ids; see the module docs.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// The window: context ids first, then the ids not yet returned as text.
    ids: Vec<u32>,
    /// How many of `ids` are context.
    context: usize,
    /// What the context decodes to alone.
    prefix: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that skips special tokens, as [`Tokenizer::decode`] does.
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self::with_special(tok, true)
    }

    pub fn with_special(tok: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder { tok, skip_special, ids: Vec::new(), context: 0, prefix: Vec::new() }
    }

    /// Adds `id` and returns the text it completes: empty while the bytes so far end inside a
    /// UTF-8 character (or the id decodes to nothing, like a skipped special token). Invalid
    /// bytes followed by more text come out as U+FFFD, as in `decode`.
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let bytes = self.tok.decode_bytes(&self.ids, self.skip_special);
        let start = common_prefix(&bytes, &self.prefix);
        let new = &bytes[start..];
        if new.is_empty() || incomplete_tail(new) {
            return String::new();
        }
        let text = String::from_utf8_lossy(new).into_owned();
        // The ids just returned become the context of the next piece.
        self.ids.drain(..self.context);
        self.context = self.ids.len();
        self.prefix = self.tok.decode_bytes(&self.ids, self.skip_special);
        text
    }

    /// The text still held back (an unfinished UTF-8 character, as U+FFFD), at the end of
    /// the sequence.
    pub fn finish(&mut self) -> String {
        let bytes = self.tok.decode_bytes(&self.ids, self.skip_special);
        let start = common_prefix(&bytes, &self.prefix);
        let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
        self.ids.clear();
        self.context = 0;
        self.prefix.clear();
        text
    }
}

/// Length of the common prefix of `a` and `b` (all of `b` unless a decoder rewrote text it
/// had already produced; then the text from the first difference on is returned again).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Whether `b` ends inside a UTF-8 character that more bytes could complete.
fn incomplete_tail(b: &[u8]) -> bool {
    match std::str::from_utf8(b) {
        Ok(_) => false,
        Err(e) => e.error_len().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level ids (one per byte): multi-byte characters arrive in pieces.
    #[test]
    fn holds_back_incomplete_characters_and_joins_to_decode() {
        let tok = Tokenizer::byte_level();
        let text = "héllo, 世界 🙂!";
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let mut s = StreamDecoder::new(&tok);
        let pieces: Vec<String> = ids.iter().map(|&id| s.push(id)).collect();
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // The three bytes of 世 give "", "", "世".
        let at = text.find('世').unwrap();
        assert_eq!(pieces[at..at + 3], [String::new(), String::new(), "世".to_string()]);
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces.concat(), tok.decode(&ids));
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_come_out_as_replacement_characters() {
        let tok = Tokenizer::byte_level();
        let mut s = StreamDecoder::new(&tok);
        // A lone lead byte is held until the next byte shows it cannot complete.
        assert_eq!(s.push(0xE4), "");
        assert_eq!(s.push(u32::from(b'a')), "\u{FFFD}a");
        // An unfinished character at the end is flushed by `finish`.
        assert_eq!(s.push(0xF0), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn special_tokens_are_skipped_like_decode() {
        let tok = Tokenizer::byte_level();
        let eos = tok.eos_id().unwrap();
        let mut s = StreamDecoder::new(&tok);
        let ids = [u32::from(b'o'), eos, u32::from(b'k')];
        let pieces: Vec<String> = ids.iter().map(|&id| s.push(id)).collect();
        assert_eq!(pieces.concat(), tok.decode(&ids));
        assert_eq!(pieces.concat(), "ok");
    }
}
